//! [`ModelReport`]: what linesight sees in a model package (`linesight models show`, and
//! `GET /api/v1/models/contract`).

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::contract::{GraphIo, ModelContract};
use super::package::PackageFile;
use super::{Detector, ModelPackage, OrtRuntime, SessionOptions, Thresholds};
use crate::preprocess::InputSpec;

/// Everything `models show` reports.
#[derive(Debug, Clone, Serialize)]
pub struct ModelReport {
    pub name: String,
    pub version: Option<String>,
    pub description: Option<String>,
    pub sha256: String,
    pub files: Vec<PackageFile>,
    pub ir_version: i64,
    pub producer: String,
    pub opsets: Vec<(String, i64)>,
    pub manifest: bool,
    pub contract: ModelContract,
    pub io: GraphIo,
    pub preprocessing: String,
    pub thresholds: Option<Thresholds>,
    pub onnxruntime: String,
    pub available_providers: Vec<String>,
}

impl ModelReport {
    /// Opens the package and builds a session with `options` to report what it finds.
    pub fn build(
        runtime: &'static OrtRuntime,
        dir: &Path,
        options: &SessionOptions,
    ) -> anyhow::Result<ModelReport> {
        let package = ModelPackage::open(dir)?;
        let description = package
            .manifest
            .as_ref()
            .and_then(|m| m.description.clone());
        let detector = Detector::new(runtime, package, options, None)?;
        Ok(ModelReport {
            name: detector.package.name(),
            version: detector.package.version().map(str::to_string),
            description,
            sha256: detector.package.sha256.clone(),
            files: detector.package.files.clone(),
            ir_version: detector.package.header.ir_version,
            producer: detector.package.header.producer.clone(),
            opsets: detector.package.header.opsets.clone(),
            manifest: detector.package.manifest.is_some(),
            contract: detector.contract.clone(),
            io: detector.io.clone(),
            preprocessing: describe_input(&detector.input),
            thresholds: detector.thresholds,
            onnxruntime: format!("{} ({})", runtime.library.display(), runtime.source),
            available_providers: runtime.available_providers(),
        })
    }
}

/// The preprocessing in one line.
pub fn describe_input(input: &InputSpec) -> String {
    let mut s = format!(
        "{:?} resize to {}x{}, {:?}, /255",
        input.resize, input.width, input.height, input.channel_order
    );
    match &input.normalisation {
        crate::preprocess::Normalisation::None => {
            s.push_str(", no normalisation (inside the graph)")
        }
        crate::preprocess::Normalisation::MeanStd { mean, std } => {
            let _ = write!(s, ", normalise mean {mean:?} std {std:?}");
        }
    }
    if let Some(roi) = input.roi {
        let _ = write!(
            s,
            ", ROI x={} y={} {}x{}",
            roi.x, roi.y, roi.width, roi.height
        );
    }
    s
}
