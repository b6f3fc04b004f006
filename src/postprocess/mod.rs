//! Post-processing: model outputs → score, verdict, defect regions, heat-map overlay.
//!
//! Pure functions over buffers (no I/O, no async). Regions are found on the anomaly map at model
//! resolution (cheap: 256 × 256 pixels) and only their geometry is scaled back to the original
//! image, so the per-frame cost does not grow with the camera resolution. The overlay, drawn only
//! on request, is rendered at the original size.

mod overlay;
mod regions;

pub use overlay::{OverlayOptions, render_overlay, render_overlay_in_place};
pub use regions::extract_regions;

use serde::{Deserialize, Serialize};

use crate::preprocess::Roi;

/// Per-pixel anomaly scores at model resolution, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct AnomalyMap {
    pub width: u32,
    pub height: u32,
    pub values: Vec<f32>,
}

/// The decision for one part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Score at or below the threshold.
    Good,
    /// Score strictly above the threshold (anomalib's `pred_label = pred_score > threshold`).
    Defect,
}

impl Verdict {
    /// anomalib's rule: a part is defective when its score is **strictly** greater than the threshold.
    pub fn from_score(score: f32, threshold: f32) -> Verdict {
        if score > threshold {
            Verdict::Defect
        } else {
            Verdict::Good
        }
    }
}

impl Verdict {
    /// The lower-case name used in files, JSON and database rows.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Good => "good",
            Verdict::Defect => "defect",
        }
    }

    /// Reads [`Verdict::as_str`]'s form back.
    pub fn parse(s: &str) -> Option<Verdict> {
        match s {
            "good" => Some(Verdict::Good),
            "defect" => Some(Verdict::Defect),
            _ => None,
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A connected area of the anomaly map above the threshold, in original-image pixels.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DefectRegion {
    /// Left edge of the bounding box.
    pub x: u32,
    /// Top edge of the bounding box.
    pub y: u32,
    pub width: u32,
    pub height: u32,
    /// Area of the region itself (not of its box), in original-image pixels.
    pub area_px: u64,
    /// Highest anomaly-map value inside the region.
    pub peak_score: f32,
}

/// Where the model input came from in the original image: its full size and the ROI, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceGeometry {
    pub width: u32,
    pub height: u32,
    pub roi: Option<Roi>,
}
