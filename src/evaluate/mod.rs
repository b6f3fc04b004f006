//! Evaluation of a model on a labelled dataset in MVTec AD layout.

pub mod dataset;
pub mod metrics;
pub mod plots;
pub mod report;
