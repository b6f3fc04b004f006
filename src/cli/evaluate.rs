//! `linesight evaluate`: metrics of a model on an MVTec-layout dataset, with a progress bar,
//! a summary on stdout and, with `--report DIR`, `report.json` and PNG plots.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::{open_detector, parse_threshold};
use crate::config::Settings;
use crate::evaluate::{evaluate_dataset, write_report};
use crate::inspect::Inspector;

#[derive(Debug, Args)]
pub struct EvaluateArgs {
    /// Model package directory.
    #[arg(long, short)]
    pub model: PathBuf,
    /// Decision threshold; overrides model.toml and the graph's own (anomalib: 0.5).
    #[arg(long, value_parser = parse_threshold)]
    pub threshold: Option<f32>,
    /// Images per inference call.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub batch_size: u16,
    /// Folder for report.json and the PNG plots (ROC curve, score histogram).
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
    /// Dataset root in MVTec AD layout (test/good, test/<defect>, ground_truth/<defect>).
    pub dataset: PathBuf,
}

pub fn run(settings: &Settings, ort_lib: Option<&Path>, args: EvaluateArgs) -> anyhow::Result<i32> {
    let detector = open_detector(
        settings,
        ort_lib,
        &args.model,
        &settings.inference,
        args.threshold,
    )?;
    let mut inspector = Inspector::new(detector, settings.decode)?;
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} images, {eta} left")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message("Evaluating");
    let report = evaluate_dataset(
        &mut inspector,
        &args.dataset,
        usize::from(args.batch_size),
        |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
    )?;
    bar.finish_and_clear();
    let mut out = std::io::stdout().lock();
    out.write_all(report.render_text().as_bytes())?;
    if let Some(dir) = &args.report {
        for path in write_report(dir, &report)? {
            writeln!(out, "wrote {}", path.display())?;
        }
    }
    Ok(if report.skipped.is_empty() { 0 } else { 1 })
}
