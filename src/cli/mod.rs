//! The `linesight` command line. Each subcommand is a thin function over the library; errors
//! are `anyhow` here and only here, with context that names the file or setting involved.

pub mod bench;
pub mod cameras;
pub mod evaluate;
pub mod inspect;
pub mod models;
pub mod outbox;
pub mod quality;
pub mod run;
pub mod serve;

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
    /// Measure a model's speed here, through linesight and bare ONNX Runtime, side by side.
    Bench(bench::BenchArgs),
    /// Model packages.
    #[command(subcommand)]
    Models(models::ModelsCommand),
    /// Configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Audit trail of the quality records.
    #[command(subcommand)]
    Audit(quality::AuditCommand),
    /// Users of the quality records (operators, inspectors, QA approvers, administrators).
    #[command(subcommand)]
    Users(quality::UsersCommand),
    /// Stored inspection images.
    #[command(subcommand)]
    Images(quality::ImagesCommand),
    /// Run the live inspection service (cameras, triggers, results) until stopped.
    Run(run::RunArgs),
    /// Serve the HTTP API (manual inspections, tasks, NCRs, lots) without cameras.
    Serve(serve::ServeArgs),
    /// The delivery outbox (MQTT events, S3 samples).
    #[command(subcommand)]
    Outbox(outbox::OutboxCommand),
    /// List the cameras this machine sees (USB / V4L2, GigE Vision) and their formats.
    Cameras(cameras::CamerasArgs),
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration (defaults, file and environment merged).
    Show,
    /// Load and validate the configuration (`--config FILE` and the environment) and the model
    /// packages it names; print every problem and exit 2 if there is any.
    Check,
}

/// Loads settings, installs logging and runs the command. Returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    if let Command::Config(ConfigCommand::Check) = cli.command {
        return Ok(check_config(cli.config.as_deref()));
    }
    let mut settings = Settings::load(cli.config.as_deref())?;
    if let Some(format) = cli.log_format {
        settings.log.format = format;
    }
    crate::telemetry::init(&settings.log);
    match cli.command {
        Command::Inspect(args) => inspect::run(&settings, cli.ort_lib.as_deref(), args),
        Command::Evaluate(args) => evaluate::run(&settings, cli.ort_lib.as_deref(), args),
        Command::Models(cmd) => models::run(&settings, cli.ort_lib.as_deref(), cmd),
        Command::Bench(args) => bench::run(&settings, cli.ort_lib.as_deref(), args),
        Command::Run(args) => run::run(&settings, cli.ort_lib.as_deref(), args),
        Command::Serve(args) => serve::run(&settings, cli.ort_lib.as_deref(), args),
        Command::Config(ConfigCommand::Check) => Ok(check_config(cli.config.as_deref())),
        Command::Config(ConfigCommand::Show) => {
            use std::io::Write as _;
            std::io::stdout()
                .lock()
                .write_all(settings.to_toml().as_bytes())?;
            Ok(0)
        }
        Command::Audit(cmd) => quality::run_audit(&settings, cmd),
        Command::Users(cmd) => quality::run_users(&settings, cmd),
        Command::Images(cmd) => quality::run_images(&settings, cmd),
        Command::Outbox(cmd) => outbox::run(&settings, cmd),
        Command::Cameras(args) => cameras::run(args),
    }
}

/// `config check`: every problem of the settings, then of the model packages the cameras
/// name (they must open: present, readable, with their external data). Returns the exit code.
fn check_config(file: Option<&Path>) -> i32 {
    let source = file.map_or_else(
        || "defaults and environment".to_string(),
        |f| f.display().to_string(),
    );
    let settings = match Settings::read(file) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{source}: {e}");
            return 2;
        }
    };
    // The range checks and the model packages, all in one run.
    let mut problems = settings
        .validate()
        .err()
        .map_or_else(Vec::new, |e| e.problems);
    for camera in &settings.cameras {
        let models = std::iter::once((format!("cameras.{}.model", camera.id), &camera.model))
            .chain(camera.recipes.iter().map(|(name, r)| {
                (
                    format!("cameras.{}.recipes.{name}.model", camera.id),
                    &r.model,
                )
            }));
        for (key, dir) in models {
            if let Err(e) = ModelPackage::open(dir) {
                problems.push(format!("{key} = {:?}: {e}", dir.display().to_string()));
            }
        }
    }
    if problems.is_empty() {
        println!(
            "{source}: configuration valid ({} cameras)",
            settings.cameras.len()
        );
        0
    } else {
        eprintln!(
            "{source}: invalid configuration:\n{}",
            problems
                .iter()
                .map(|p| format!("  - {p}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        2
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

/// An image file to inspect, with its path relative to the deepest folder that holds every
/// argument (used to mirror the folder structure for overlays without name clashes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageEntry {
    pub path: PathBuf,
    pub relative: PathBuf,
}

/// Image files under `paths` (files as given, folders recursively, sorted by name).
pub fn collect_images(paths: &[PathBuf]) -> anyhow::Result<Vec<ImageEntry>> {
    const EXTENSIONS: [&str; 6] = ["jpg", "jpeg", "png", "bmp", "tif", "tiff"];
    let mut found = Vec::new();
    for path in paths {
        if path.is_dir() {
            let before = found.len();
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
                    found.push(p.to_path_buf());
                }
            }
            if found.len() == before {
                anyhow::bail!(
                    "no images (jpg, jpeg, png, bmp, tif, tiff) under {}",
                    path.display()
                );
            }
        } else if path.exists() {
            found.push(path.clone());
        } else {
            anyhow::bail!("{} does not exist", path.display());
        }
    }
    let absolute: Vec<PathBuf> = found
        .iter()
        .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()))
        .collect();
    let base = common_folder(&absolute, paths);
    Ok(found
        .into_iter()
        .zip(absolute)
        .map(|(path, abs)| {
            let relative = abs
                .strip_prefix(&base)
                .map(Path::to_path_buf)
                .unwrap_or_else(|_| abs.file_name().map_or_else(|| abs.clone(), PathBuf::from));
            ImageEntry { path, relative }
        })
        .collect())
}

/// The deepest folder containing every file (a single folder argument is its own base).
fn common_folder(files: &[PathBuf], args: &[PathBuf]) -> PathBuf {
    if let [only] = args
        && only.is_dir()
    {
        return std::path::absolute(only).unwrap_or_else(|_| only.clone());
    }
    let mut base: Option<PathBuf> = None;
    for file in files {
        let parent = file.parent().map(Path::to_path_buf).unwrap_or_default();
        base = Some(match base {
            None => parent,
            Some(b) => {
                let mut common = PathBuf::new();
                for (x, y) in b.components().zip(parent.components()) {
                    if x != y {
                        break;
                    }
                    common.push(x);
                }
                common
            }
        });
    }
    base.unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_paths_do_not_clash_across_folders() {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["good", "scratch"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
            std::fs::write(dir.path().join(sub).join("000.png"), b"x").unwrap();
        }
        std::fs::write(dir.path().join("good/notes.txt"), b"x").unwrap();
        let entries =
            collect_images(&[dir.path().join("good"), dir.path().join("scratch")]).unwrap();
        let relative: Vec<_> = entries.iter().map(|e| e.relative.clone()).collect();
        assert_eq!(
            relative,
            vec![
                PathBuf::from("good/000.png"),
                PathBuf::from("scratch/000.png")
            ]
        );
        let single = collect_images(&[dir.path().to_path_buf()]).unwrap();
        assert_eq!(single[1].relative, PathBuf::from("scratch/000.png"));
        let file = collect_images(&[dir.path().join("good/000.png")]).unwrap();
        assert_eq!(file[0].relative, PathBuf::from("000.png"));
    }

    #[test]
    fn missing_paths_and_empty_folders_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let err = collect_images(&[dir.path().join("nope.png")]).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
        let err = collect_images(&[dir.path().to_path_buf()]).unwrap_err();
        assert!(err.to_string().contains("no images"), "{err}");
    }
}
