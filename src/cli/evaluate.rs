//! `linesight evaluate`: metrics of a model on an MVTec-layout dataset.

use std::path::{Path, PathBuf};

use clap::Args;

use crate::config::Settings;

#[derive(Debug, Args)]
pub struct EvaluateArgs {
    /// Model package directory.
    #[arg(long, short)]
    pub model: PathBuf,
    /// Dataset root in MVTec AD layout (test/good, test/<defect>, ground_truth/<defect>).
    pub dataset: PathBuf,
    /// Folder for report.json and the PNG plots.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

pub fn run(settings: &Settings, ort_lib: Option<&Path>, args: EvaluateArgs) -> anyhow::Result<i32> {
    let _ = (settings, ort_lib, args);
    anyhow::bail!("evaluate is being written")
}
