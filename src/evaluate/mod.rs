//! Evaluation of a model on a labelled test split in MVTec AD layout.
//!
//! The `linesight evaluate` command drives it: [`discover`] lists the test images and their
//! masks, the command scores each image with the model, feeds anomaly maps and masks
//! ([`load_mask`]) to a [`PixelAurocAccumulator`], and hands the per-image results to
//! [`EvaluationReport::build`], which computes the image metrics and writes `report.json`; the
//! ROC curve and score histogram go to PNG files ([`write_roc_png`],
//! [`write_score_histogram_png`]).
//!
//! Everything here except file reading/writing is pure and deterministic: the same dataset and
//! scores give byte-identical reports. Conventions shared by all parts:
//! - a defect is the positive class; the decision rule is anomalib's `score > threshold`;
//! - AUROC is exact with ties (sklearn's `roc_auc_score`), image and pixel level alike;
//! - pixel metrics pool every pixel of every good image and of every defect image that has a
//!   mask, with masks resized to the anomaly-map size as torchvision's nearest neighbour does.
//!
//! - [`dataset`] — MVTec layout discovery and mask loading.
//! - [`metrics`] — AUROC, ROC curve, confusion counts, pixel accumulator.
//! - [`report`] — `report.json` and the terminal summary.
//! - [`plots`] — ROC and score-histogram PNGs.
//! - [`evaluate_dataset`], [`write_report`] — the loop the command runs, and its output files.

pub mod dataset;
pub mod metrics;
pub mod plots;
pub mod report;
mod run;

pub use dataset::{DatasetError, Sample, discover, load_mask, load_mask_in};
pub use metrics::{BinaryCounts, MetricsError, PixelAurocAccumulator, RocPoint, auroc, roc_curve};
pub use plots::{PlotError, write_roc_png, write_score_histogram_png};
pub use report::{
    EvaluationReport, ImageResult, ModelIdentity, PixelSummary, ReportError, ReportInputs,
    SkippedImage,
};
pub use run::{EvaluateError, evaluate_dataset, write_report};
