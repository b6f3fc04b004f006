//! The `linesight` command line. Each subcommand is a thin function over the library; errors
//! are `anyhow` here and only here, with context that names the file or setting involved.

pub mod inspect;
pub mod models;

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::config::Settings;
use crate::model::{Detector, ModelPackage, OrtRuntime, SessionOptions};
use crate::telemetry::LogFormat;

/// Visual quality inspection on production lines.
#[derive(Debug, Parser)]
#[command(name = "linesight", version, about, long_about = None)]
pub struct Cli {
    /// Configuration file (TOML); `LINESIGHT__SECTION__KEY` variables override it.
    #[arg(long, global = true, env = "LINESIGHT_CONFIG")]
    pub config: Option<PathBuf>,
    /// ONNX Runtime shared library (overrides ORT_DYLIB_PATH and the config).
    #[arg(long, global = true, value_name = "PATH")]
    pub ort_lib: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Inspect image files or folders with a model and print score, verdict and regions.
    Inspect(inspect::InspectArgs),
    /// Evaluate a model on a labelled dataset in MVTec AD layout.
    Evaluate(crate::cli::evaluate::EvaluateArgs),
    /// Model packages.
    #[command(subcommand)]
    Models(models::ModelsCommand),
    /// Configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration (defaults, file and environment merged).
    Show,
}

pub mod evaluate;

/// Loads settings, installs logging and runs the command. Returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    let mut settings = Settings::load(cli.config.as_deref())?;
    if let Some(format) = cli.log_format {
        settings.log.format = format;
    }
    crate::telemetry::init(&settings.log);
    match cli.command {
        Command::Inspect(args) => inspect::run(&settings, cli.ort_lib.as_deref(), args),
        Command::Evaluate(args) => evaluate::run(&settings, cli.ort_lib.as_deref(), args),
        Command::Models(cmd) => models::run(&settings, cli.ort_lib.as_deref(), cmd),
        Command::Config(ConfigCommand::Show) => {
            print!("{}", settings.to_toml());
            Ok(0)
        }
    }
}

/// Loads ONNX Runtime as configured.
pub fn runtime(settings: &Settings, ort_lib: Option<&Path>) -> anyhow::Result<&'static OrtRuntime> {
    Ok(OrtRuntime::init(
        ort_lib,
        settings.runtime.ort_library.as_deref(),
    )?)
}

/// Opens a model package and builds its detector.
pub fn open_detector(
    settings: &Settings,
    ort_lib: Option<&Path>,
    model: &Path,
    options: &SessionOptions,
    threshold: Option<f32>,
) -> anyhow::Result<Detector> {
    let runtime = runtime(settings, ort_lib)?;
    let package = ModelPackage::open(model)?;
    let detector = Detector::new(runtime, package, options, threshold)
        .with_context(|| format!("cannot use model {}", model.display()))?;
    Ok(detector)
}

/// Validates a `--threshold` value.
pub fn parse_threshold(s: &str) -> Result<f32, String> {
    let v: f32 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(format!("{s} must be a finite number"))
    }
}

/// An image file to inspect, with its path relative to the argument it was found under (used to
/// mirror the folder structure for overlays).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageEntry {
    pub path: PathBuf,
    pub relative: PathBuf,
}

/// Image files under `paths` (files as given, folders recursively, sorted by name).
pub fn collect_images(paths: &[PathBuf]) -> anyhow::Result<Vec<ImageEntry>> {
    const EXTENSIONS: [&str; 6] = ["jpg", "jpeg", "png", "bmp", "tif", "tiff"];
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() {
            let before = out.len();
            for entry in walkdir::WalkDir::new(path)
                .follow_links(true)
                .sort_by_file_name()
            {
                let entry = entry.with_context(|| format!("cannot list {}", path.display()))?;
                let p = entry.path();
                let is_image = p
                    .extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
                if entry.file_type().is_file() && is_image {
                    out.push(ImageEntry {
                        path: p.to_path_buf(),
                        relative: p.strip_prefix(path).unwrap_or(p).to_path_buf(),
                    });
                }
            }
            if out.len() == before {
                anyhow::bail!(
                    "no images (jpg, jpeg, png, bmp, tif, tiff) under {}",
                    path.display()
                );
            }
        } else if path.exists() {
            out.push(ImageEntry {
                path: path.clone(),
                relative: path.file_name().map_or_else(|| path.clone(), PathBuf::from),
            });
        } else {
            anyhow::bail!("{} does not exist", path.display());
        }
    }
    Ok(out)
}
