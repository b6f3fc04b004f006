//! `model.toml`: the optional manifest next to `model.onnx`.
//!
//! Everything in it is optional; what it leaves out is detected from the graph (see
//! [`super::contract`]). A manifest is how a quality engineer pins what the graph cannot say:
//! the preprocessing the thresholds were calibrated with, an ROI, a re-calibrated threshold.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::preprocess::{ChannelOrder, Normalisation, ResizeMode, Roi};

/// The parsed `model.toml`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Human name of the model, e.g. `washer-padim`.
    pub name: Option<String>,
    /// Version string the plant tracks (change control), e.g. `1.2.0`.
    pub version: Option<String>,
    pub description: Option<String>,
    #[serde(default)]
    pub input: InputSection,
    #[serde(default)]
    pub decision: DecisionSection,
}

/// `[input]`: how images are brought to the model input.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSection {
    /// Model input width in pixels; required when the graph's width is dynamic.
    pub width: Option<u32>,
    /// Model input height in pixels; required when the graph's height is dynamic.
    pub height: Option<u32>,
    pub channel_order: Option<ChannelOrder>,
    /// `"none"` (anomalib 2.x: normalisation is inside the graph), `"imagenet"`, or
    /// `{ mean = [..], std = [..] }`.
    pub normalisation: Option<NormalisationSpec>,
    /// `"pillow-bilinear"` (default) or `"torchvision-antialias"`: the one the threshold was
    /// calibrated with.
    pub resize: Option<ResizeMode>,
    /// Region of interest in original-image pixels, cropped before resizing.
    pub roi: Option<Roi>,
}

/// Normalisation as written in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum NormalisationSpec {
    Named(NamedNormalisation),
    MeanStd { mean: [f32; 3], std: [f32; 3] },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NamedNormalisation {
    None,
    Imagenet,
}

impl NormalisationSpec {
    pub fn to_normalisation(&self) -> Normalisation {
        match self {
            NormalisationSpec::Named(NamedNormalisation::None) => Normalisation::None,
            NormalisationSpec::Named(NamedNormalisation::Imagenet) => Normalisation::IMAGENET,
            NormalisationSpec::MeanStd { mean, std } => Normalisation::MeanStd {
                mean: *mean,
                std: *std,
            },
        }
    }
}

/// `[decision]`: thresholds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionSection {
    /// Image score above which (strictly) a part is defective.
    pub threshold: Option<f32>,
    /// Anomaly-map value above which (strictly) a pixel belongs to a defect region; defaults to
    /// `threshold`.
    pub pixel_threshold: Option<f32>,
    /// Regions smaller than this many original-image pixels are not reported.
    pub min_region_area_px: Option<u64>,
}

/// Errors reading a manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid manifest {path}: {message}")]
    Parse {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("invalid manifest {path}: {field} = {value} ({limit})")]
    Invalid {
        path: std::path::PathBuf,
        field: &'static str,
        value: String,
        limit: &'static str,
    },
}

impl Manifest {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Manifest::parse(&text, path)
    }

    /// Parses and validates manifest text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Manifest, ManifestError> {
        let manifest: Manifest = toml::from_str(text).map_err(|e| ManifestError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim().to_string(),
        })?;
        manifest.validate(path)?;
        Ok(manifest)
    }

    fn validate(&self, path: &Path) -> Result<(), ManifestError> {
        let invalid = |field, value: String, limit| ManifestError::Invalid {
            path: path.to_path_buf(),
            field,
            value,
            limit,
        };
        for (field, v) in [
            ("input.width", self.input.width),
            ("input.height", self.input.height),
        ] {
            if let Some(v) = v
                && !(1..=8192).contains(&v)
            {
                return Err(invalid(field, v.to_string(), "must be between 1 and 8192"));
            }
        }
        for (field, v) in [
            ("decision.threshold", self.decision.threshold),
            ("decision.pixel_threshold", self.decision.pixel_threshold),
        ] {
            if let Some(v) = v
                && !v.is_finite()
            {
                return Err(invalid(field, v.to_string(), "must be a finite number"));
            }
        }
        if let Some(roi) = self.input.roi
            && (roi.width == 0 || roi.height == 0)
        {
            return Err(invalid(
                "input.roi",
                format!("{roi:?}"),
                "width and height must be > 0",
            ));
        }
        if let Some(NormalisationSpec::MeanStd { std, .. }) = &self.input.normalisation
            && std.iter().any(|s| !(s.is_finite() && *s > 0.0))
        {
            return Err(invalid(
                "input.normalisation.std",
                format!("{std:?}"),
                "every value must be finite and > 0",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(text, Path::new("model.toml"))
    }

    #[test]
    fn full_manifest_parses() {
        let m = parse(
            r#"
            name = "washer"
            version = "1.2.0"
            [input]
            width = 256
            height = 256
            channel_order = "bgr"
            normalisation = "imagenet"
            resize = "torchvision-antialias"
            roi = { x = 10, y = 20, width = 100, height = 50 }
            [decision]
            threshold = 0.6
            pixel_threshold = 0.55
            "#,
        )
        .unwrap();
        assert_eq!(m.name.as_deref(), Some("washer"));
        assert_eq!(m.input.channel_order, Some(ChannelOrder::Bgr));
        assert_eq!(m.input.resize, Some(ResizeMode::TorchvisionAntialias));
        assert_eq!(
            m.input.normalisation.unwrap().to_normalisation(),
            Normalisation::IMAGENET
        );
        assert_eq!(m.decision.pixel_threshold, Some(0.55));
    }

    #[test]
    fn custom_mean_std_parses() {
        let m = parse(
            "[input]\nnormalisation = { mean = [0.5, 0.5, 0.5], std = [0.25, 0.25, 0.25] }\n",
        )
        .unwrap();
        assert_eq!(
            m.input.normalisation.unwrap().to_normalisation(),
            Normalisation::MeanStd {
                mean: [0.5; 3],
                std: [0.25; 3]
            }
        );
    }

    #[test]
    fn unknown_field_is_named() {
        let err = parse("[input]\nwidht = 256\n").unwrap_err().to_string();
        assert!(err.contains("widht"), "{err}");
    }

    #[test]
    fn out_of_range_values_name_field_and_limit() {
        let err = parse("[input]\nwidth = 0\n").unwrap_err().to_string();
        assert!(
            err.contains("input.width") && err.contains("between 1 and 8192"),
            "{err}"
        );
        let err =
            parse("[input]\nnormalisation = { mean = [0.5, 0.5, 0.5], std = [0.0, 1.0, 1.0] }\n")
                .unwrap_err()
                .to_string();
        assert!(err.contains("input.normalisation.std"), "{err}");
        let err = parse("[decision]\nthreshold = nan\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("decision.threshold"), "{err}");
    }
}
