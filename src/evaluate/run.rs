//! The evaluation loop: every test image through an [`Inspector`], image scores and pixel maps
//! into the metrics, and the report with its plots onto disk.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::inspect::Inspector;

use super::dataset::{DatasetError, Sample, discover, load_mask_in};
use super::metrics::{PixelAurocAccumulator, roc_curve};
use super::plots::{PlotError, write_roc_png, write_score_histogram_png};
use super::report::{
    EvaluationReport, ImageResult, PixelSummary, ReportError, ReportInputs, SkippedImage,
};

/// Errors that stop an evaluation (a single bad image does not: it is listed as skipped).
#[derive(Debug, thiserror::Error)]
pub enum EvaluateError {
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error(transparent)]
    Report(#[from] ReportError),
    #[error(transparent)]
    Plot(#[from] PlotError),
    #[error("cannot create report folder {path}: {source}")]
    ReportDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Scores every image of the MVTec-layout dataset at `root` and builds the report.
///
/// `batch_size` images go through the model per call; `progress(done, total)` is called after
/// each batch. Pixel metrics are computed when the model outputs an anomaly map; with an ROI,
/// masks are cropped to it as the images are.
pub fn evaluate_dataset(
    inspector: &mut Inspector,
    root: &Path,
    batch_size: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<EvaluationReport, EvaluateError> {
    let started = Instant::now();
    let samples = discover(root)?;
    let wants_pixels = inspector.detector.contract.map_output.is_some();
    let roi = inspector.detector.input.roi;
    let mut pixels = wants_pixels.then(PixelAurocAccumulator::new);
    let mut pixel_images = 0usize;
    let mut without_mask: Vec<PathBuf> = Vec::new();
    let mut images = Vec::with_capacity(samples.len());
    let mut skipped = Vec::new();

    for chunk in samples.chunks(batch_size.max(1)) {
        let mut readable: Vec<(&Sample, Vec<u8>)> = Vec::with_capacity(chunk.len());
        for sample in chunk {
            match std::fs::read(&sample.path) {
                Ok(bytes) => readable.push((sample, bytes)),
                Err(e) => skipped.push(SkippedImage::new(&sample.path, &e)),
            }
        }
        let items: Vec<(String, &[u8])> = readable
            .iter()
            .map(|(s, b)| (s.path.display().to_string(), b.as_slice()))
            .collect();
        let (results, _) = inspector.inspect_batch(&items);
        for ((sample, _), result) in readable.iter().zip(results) {
            let inspection = match result {
                Ok(i) => i,
                Err(e) => {
                    skipped.push(SkippedImage::new(&sample.path, &e));
                    continue;
                }
            };
            images.push(ImageResult::new(
                sample,
                inspection.score,
                inspection.timings.total_ms(),
            ));
            if let (Some(acc), Some(map)) = (pixels.as_mut(), inspection.map.as_ref()) {
                if !sample.is_defect {
                    acc.add_all_good(&map.values);
                    pixel_images += 1;
                } else if let Some(mask_path) = &sample.mask {
                    let mask = load_mask_in(mask_path, roi, map.width, map.height)?;
                    acc.add(&map.values, &mask)
                        .expect("mask resized to the map's size");
                    pixel_images += 1;
                } else {
                    without_mask.push(sample.path.clone());
                }
            }
        }
        progress(images.len() + skipped.len(), samples.len());
    }

    let pixel_threshold = inspector.thresholds.pixel;
    let pixel = pixels.as_mut().map(|acc| {
        PixelSummary::from_accumulator(acc, pixel_threshold, pixel_images, &without_mask)
    });
    Ok(EvaluationReport::build(ReportInputs {
        dataset: root.to_path_buf(),
        model: inspector.identity().clone(),
        threshold: inspector.thresholds.image,
        images,
        skipped,
        pixel,
        wall_ms: Some(started.elapsed().as_secs_f64() * 1e3),
    }))
}

/// Writes `report.json`, `roc.png` and `score_histogram.png` into `dir`; returns their paths.
pub fn write_report(dir: &Path, report: &EvaluationReport) -> Result<Vec<PathBuf>, EvaluateError> {
    std::fs::create_dir_all(dir).map_err(|source| EvaluateError::ReportDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let json = dir.join("report.json");
    report.write_json(&json)?;
    let mut written = vec![json];

    let scores: Vec<f32> = report.images.iter().map(|r| r.score).collect();
    let labels: Vec<bool> = report
        .images
        .iter()
        .map(|r| r.label == super::report::Label::Defect)
        .collect();
    if let Some(auc) = report.image_auroc {
        let roc = dir.join("roc.png");
        write_roc_png(&roc, &roc_curve(&scores, &labels), auc)?;
        written.push(roc);
    }
    let good: Vec<f32> = scores
        .iter()
        .zip(&labels)
        .filter(|(_, d)| !**d)
        .map(|(s, _)| *s)
        .collect();
    let defect: Vec<f32> = scores
        .iter()
        .zip(&labels)
        .filter(|(_, d)| **d)
        .map(|(s, _)| *s)
        .collect();
    let histogram = dir.join("score_histogram.png");
    write_score_histogram_png(&histogram, &good, &defect, report.threshold)?;
    written.push(histogram);
    Ok(written)
}
