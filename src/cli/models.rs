//! `linesight models show DIR`: what linesight sees in a model package.
//! `linesight models activate --slot S DIR` and `models active`: models in service
//! (see [`crate::model::registry`]).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::Subcommand;

use crate::config::Settings;
use crate::model::registry::{ActivationError, ActivationRequest, Validator, activate};
use crate::model::report::ModelReport;

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Print a package's detected contract, opset, tensors, providers and SHA-256.
    Show {
        /// Model package directory.
        dir: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Validate a package (contract, warm-up inference, golden images) and make it the model of
    /// a slot; every running service follows within `models.poll_interval_ms`. Exits 1 when the
    /// package is refused (the current model keeps serving). Audited.
    Activate {
        /// A camera's default model or a recipe name.
        #[arg(long)]
        slot: String,
        /// Extra golden images: `good/` and `defect/` folders whose images must get that
        /// verdict (a package's own `golden/` folder is always checked).
        #[arg(long, value_name = "DIR")]
        golden: Option<PathBuf>,
        /// Model package directory, at a path every service instance can read.
        dir: PathBuf,
    },
    /// List the model each slot serves, as recorded in the quality store.
    Active {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(settings: &Settings, ort_lib: Option<&Path>, cmd: ModelsCommand) -> anyhow::Result<i32> {
    match cmd {
        ModelsCommand::Activate { slot, golden, dir } => {
            let known: Vec<String> = settings
                .cameras
                .iter()
                .flat_map(|c| {
                    std::iter::once(c.id.clone())
                        .chain(c.recipes.keys().map(|r| format!("{}/{r}", c.id)))
                })
                .collect();
            if let Err(message) = crate::model::registry::check_slot(&known, &slot) {
                anyhow::bail!("--slot: {message}");
            }
            let validator = Validator {
                runtime: super::runtime(settings, ort_lib)?,
                options: settings.inference.clone(),
                limits: settings.decode,
            };
            let request = ActivationRequest {
                slot,
                package: dir,
                golden,
                actor: super::quality::cli_actor(),
            };
            super::quality::runtime()?.block_on(async {
                let store = super::quality::open(settings).await?;
                let outcome = activate(&store, &validator, request).await;
                store.close().await;
                match outcome {
                    Ok((a, v)) => {
                        println!(
                            "slot {} now serves {} (sha256 {}); warm-up {:.1} ms, {} golden images matched; activation #{} by {}",
                            a.slot,
                            a.package_path,
                            a.sha256,
                            v.warmup_ms,
                            v.golden_checked,
                            a.id,
                            a.actor
                        );
                        Ok(0)
                    }
                    Err(e @ ActivationError::Refused { .. }) => {
                        eprintln!("linesight: {e}");
                        Ok(1)
                    }
                    Err(e) => Err(e.into()),
                }
            })
        }
        ModelsCommand::Active { json } => super::quality::runtime()?.block_on(async {
            let store = super::quality::open(settings).await?;
            let active = store.active_models().await;
            store.close().await;
            let active = active?;
            if json {
                println!("{}", serde_json::to_string_pretty(&active)?);
            } else if active.is_empty() {
                println!("no model activated yet (linesight models activate --slot SLOT DIR)");
            } else {
                for a in &active {
                    println!(
                        "{:<16} {}  {}  activated {} by {} (#{})",
                        a.slot,
                        a.sha256,
                        a.package_path,
                        crate::quality::format_ms(a.at_ms),
                        a.actor,
                        a.id
                    );
                }
            }
            Ok(0)
        }),
        ModelsCommand::Show { dir, json } => {
            let runtime = super::runtime(settings, ort_lib)?;
            let report = ModelReport::build(runtime, &dir, &settings.inference)?;
            let text = if json {
                serde_json::to_string_pretty(&report)? + "\n"
            } else {
                render(&report)
            };
            std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes())?;
            Ok(0)
        }
    }
}

fn render(r: &ModelReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "model        {} {}",
        r.name,
        r.version.as_deref().unwrap_or("(no version)")
    );
    if let Some(d) = &r.description {
        let _ = writeln!(s, "description  {d}");
    }
    let _ = writeln!(s, "sha256       {}", r.sha256);
    for f in &r.files {
        let _ = writeln!(
            s,
            "  file       {} ({} bytes) sha256 {}",
            f.name, f.bytes, f.sha256
        );
    }
    let opsets: Vec<String> = r.opsets.iter().map(|(d, v)| format!("{d} {v}")).collect();
    let _ = writeln!(
        s,
        "onnx         IR {}, opset {}, producer {}",
        r.ir_version,
        opsets.join(", "),
        if r.producer.is_empty() {
            "unknown"
        } else {
            &r.producer
        }
    );
    let _ = writeln!(
        s,
        "manifest     {}",
        if r.manifest {
            "model.toml"
        } else {
            "none (contract detected from the graph)"
        }
    );
    let _ = writeln!(s, "contract     {}", r.contract.kind);
    let _ = writeln!(
        s,
        "  input      {} {}x{}, batch {}",
        r.contract.input,
        r.contract.width,
        r.contract.height,
        match r.contract.batch {
            crate::model::BatchSize::Dynamic => "dynamic".to_string(),
            crate::model::BatchSize::Fixed(n) => format!("fixed at {n} (padded)"),
        }
    );
    if let Some(o) = &r.contract.score_output {
        let _ = writeln!(s, "  score      {o}");
    }
    if let Some(o) = &r.contract.map_output {
        let _ = writeln!(s, "  map        {o}");
    }
    let _ = writeln!(s, "inputs");
    for t in &r.io.inputs {
        let _ = writeln!(s, "  {t}");
    }
    let _ = writeln!(s, "outputs");
    for t in &r.io.outputs {
        let _ = writeln!(s, "  {t}");
    }
    let _ = writeln!(s, "preprocess   {}", r.preprocessing);
    match &r.thresholds {
        Some(t) => {
            let _ = writeln!(
                s,
                "thresholds   image {} (defect when score > threshold), pixel {}, min region {} px",
                t.image, t.pixel, t.min_region_area_px
            );
        }
        None => {
            let _ = writeln!(
                s,
                "thresholds   none: the graph carries none; set decision.threshold in model.toml or pass --threshold"
            );
        }
    }
    let _ = writeln!(s, "runtime      {}", r.onnxruntime);
    let _ = writeln!(s, "providers    {}", r.available_providers.join(", "));
    s
}
