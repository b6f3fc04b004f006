//! `linesight inspect`: score image files or folders and print a table, JSON Lines or CSV.
//!
//! Exit code: 0 when every image was inspected, 1 when at least one could not be (each failure
//! is reported in the output, and the run continues).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use serde::Serialize;

use super::{ImageEntry, collect_images, open_detector, parse_threshold};
use crate::config::Settings;
use crate::inspect::{Inspection, Inspector};
use crate::model::ExecutionProvider;
use crate::postprocess::{OverlayOptions, SourceGeometry, render_overlay};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum OutputFormat {
    /// Aligned table for people.
    #[default]
    Table,
    /// One JSON object per image and line (JSON Lines).
    Json,
    /// CSV with a header row; columns start with path,score,verdict.
    Csv,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Model package directory (model.onnx + optional model.toml).
    #[arg(long, short)]
    pub model: PathBuf,
    /// Image threshold; overrides model.toml and the graph's own (anomalib: 0.5).
    #[arg(long, value_parser = parse_threshold)]
    pub threshold: Option<f32>,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: OutputFormat,
    /// Write a heat-map overlay PNG per image into this folder (mirrors the input folders).
    #[arg(long, value_name = "DIR")]
    pub overlays: Option<PathBuf>,
    /// Images per inference call.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub batch_size: u16,
    /// Execution providers in order of preference (overrides inference.execution_providers).
    #[arg(long = "execution-provider", value_enum, value_delimiter = ',')]
    pub execution_providers: Vec<ExecutionProvider>,
    /// Image files or folders (searched recursively for jpg, png, bmp, tif).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

/// One CSV / JSON row: either an inspection or the error that prevented it.
#[derive(Debug, Serialize)]
struct Row<'a> {
    path: String,
    #[serde(flatten)]
    inspection: Option<&'a Inspection>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

pub fn run(settings: &Settings, ort_lib: Option<&Path>, args: InspectArgs) -> anyhow::Result<i32> {
    let images = collect_images(&args.paths)?;
    let mut options = settings.inference.clone();
    if !args.execution_providers.is_empty() {
        options.execution_providers = args.execution_providers.clone();
    }
    let detector = open_detector(settings, ort_lib, &args.model, &options, args.threshold)?;
    let mut inspector = Inspector::new(detector, settings.decode)?;
    if let Some(dir) = &args.overlays {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create overlay folder {}", dir.display()))?;
    }

    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut csv = (args.format == OutputFormat::Csv).then(|| csv::Writer::from_writer(Vec::new()));
    if args.format == OutputFormat::Table {
        writeln!(
            out,
            "{:>9} {:>7} {:>7} {:>9}  path",
            "score", "verdict", "regions", "total ms"
        )?;
    }
    if let Some(w) = csv.as_mut() {
        w.write_record([
            "path",
            "score",
            "verdict",
            "threshold",
            "regions",
            "largest_region_area_px",
            "model_sha256",
            "total_ms",
            "error",
        ])?;
    }

    let mut summary = Summary::default();
    for chunk in images.chunks(usize::from(args.batch_size)) {
        let mut read_errors = Vec::new();
        let mut bytes = Vec::new();
        for entry in chunk {
            match std::fs::read(&entry.path) {
                Ok(b) => bytes.push((entry, b)),
                Err(e) => read_errors.push((entry, format!("cannot read file: {e}"))),
            }
        }
        let items: Vec<(String, &[u8])> = bytes
            .iter()
            .map(|(e, b)| (e.path.display().to_string(), b.as_slice()))
            .collect();
        let (results, decoded) = inspector.inspect_batch(&items);
        let mut rows: Vec<(&ImageEntry, Result<Inspection, String>)> = read_errors
            .into_iter()
            .map(|(e, msg)| (e, Err(msg)))
            .collect();
        for (((entry, _), result), image) in bytes.iter().zip(results).zip(decoded) {
            let result = result.map_err(|e| e.to_string());
            if let (Ok(inspection), Some(dir), Some(image)) = (&result, &args.overlays, image) {
                write_overlay(dir, entry, inspection, &image, &inspector)?;
            }
            rows.push((entry, result));
        }
        for (entry, result) in rows {
            summary.add(&result);
            emit(&mut out, csv.as_mut(), args.format, entry, &result)?;
        }
    }
    if let Some(w) = csv {
        out.write_all(&w.into_inner()?)?;
    }
    out.flush()?;
    drop(out);
    eprintln!("{}", summary.line(inspector.identity().name.as_str()));
    Ok(if summary.failed > 0 { 1 } else { 0 })
}

fn emit(
    out: &mut impl Write,
    csv: Option<&mut csv::Writer<Vec<u8>>>,
    format: OutputFormat,
    entry: &ImageEntry,
    result: &Result<Inspection, String>,
) -> anyhow::Result<()> {
    let path = entry.path.display().to_string();
    match format {
        OutputFormat::Table => match result {
            Ok(i) => writeln!(
                out,
                "{:>9.6} {:>7} {:>7} {:>9.2}  {path}",
                i.score,
                i.verdict.to_string(),
                i.regions.len(),
                i.timings.total_ms()
            )?,
            Err(e) => writeln!(
                out,
                "{:>9} {:>7} {:>7} {:>9}  {path}: {e}",
                "-", "ERROR", "-", "-"
            )?,
        },
        OutputFormat::Json => {
            let row = Row {
                path,
                inspection: result.as_ref().ok(),
                error: result.as_ref().err().cloned(),
            };
            serde_json::to_writer(&mut *out, &row)?;
            writeln!(out)?;
        }
        OutputFormat::Csv => {
            let w = csv.expect("csv writer exists for csv format");
            match result {
                Ok(i) => w.write_record([
                    path,
                    i.score.to_string(),
                    i.verdict.to_string(),
                    i.threshold.to_string(),
                    i.regions.len().to_string(),
                    i.regions
                        .iter()
                        .map(|r| r.area_px)
                        .max()
                        .unwrap_or(0)
                        .to_string(),
                    i.model.sha256.clone(),
                    format!("{:.3}", i.timings.total_ms()),
                    String::new(),
                ])?,
                Err(e) => {
                    w.write_record([path.as_str(), "", "", "", "", "", "", "", e.as_str()])?
                }
            }
        }
    }
    Ok(())
}

fn write_overlay(
    dir: &Path,
    entry: &ImageEntry,
    inspection: &Inspection,
    image: &image::RgbImage,
    inspector: &Inspector,
) -> anyhow::Result<()> {
    let Some(map) = &inspection.map else {
        return Ok(());
    };
    let geometry = SourceGeometry {
        width: image.width(),
        height: image.height(),
        roi: inspector.detector.input.roi,
    };
    let overlay = render_overlay(
        image,
        map,
        geometry,
        &inspection.regions,
        &OverlayOptions::default(),
    );
    let target = dir.join(&entry.relative).with_extension("png");
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    overlay
        .save(&target)
        .with_context(|| format!("cannot write overlay {}", target.display()))?;
    Ok(())
}

#[derive(Debug, Default)]
struct Summary {
    good: usize,
    defect: usize,
    failed: usize,
    total_ms: f64,
    inference_ms: f64,
}

impl Summary {
    fn add(&mut self, result: &Result<Inspection, String>) {
        match result {
            Ok(i) => {
                match i.verdict {
                    crate::postprocess::Verdict::Good => self.good += 1,
                    crate::postprocess::Verdict::Defect => self.defect += 1,
                }
                self.total_ms += i.timings.total_ms();
                self.inference_ms += i.timings.inference_ms;
            }
            Err(_) => self.failed += 1,
        }
    }

    fn line(&self, model: &str) -> String {
        let n = self.good + self.defect;
        let mean = |v: f64| if n > 0 { v / n as f64 } else { 0.0 };
        format!(
            "{} images with {model}: {} good, {} defect, {} failed; mean {:.2} ms per image ({:.2} ms inference)",
            n + self.failed,
            self.good,
            self.defect,
            self.failed,
            mean(self.total_ms),
            mean(self.inference_ms)
        )
    }
}
