//! Models in service: which validated package each slot (a camera's default model or a recipe
//! name) serves now, and how a new one gets there.
//!
//! One mechanism for every replica: an activation (CLI `models activate`, the admin API) is
//! validated, then recorded with its audit entry in the `model_activations` table; each service
//! instance [`follow`]s that table, validates the package locally and only then swaps it into
//! its [`ModelRegistry`]. So replicas sharing one PostgreSQL all serve what was activated.
//!
//! Invariants:
//! - A package is in a registry only after [`Validator::validate`] passed on this machine:
//!   it opens, its contract is detected, a warm-up inference gives a finite score, and every
//!   golden image gets its expected verdict. A package that fails keeps the old model serving.
//! - The swap is atomic per slot: [`ModelRegistry::current`] returns the old or the new model,
//!   never a mix and never nothing once a slot has a model. Loading and validating happen
//!   before the swap, so readers never wait for a load; the swap itself is one pointer store.
//! - Each swap raises the slot's generation by one and notifies [`ModelRegistry::subscribe`]rs.
//!   Workers own their ONNX Runtime sessions (`Session::run` takes `&mut self`): they build a
//!   new [`Detector`] from the new package and switch between two frames, so every result
//!   carries exactly one model's SHA-256.
//!
//! Golden images: a package may carry `golden/good/` and `golden/defect/` folders of images
//! (jpg, jpeg, png, bmp, tif, tiff); `models activate --golden DIR` adds a folder with the same
//! layout. Every image must get the verdict of its folder, or the activation is refused.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::package::PackageError;
use super::{Detector, ModelError, ModelPackage, OrtRuntime, SessionOptions};
use crate::inspect::{InspectError, Inspector};
use crate::postprocess::Verdict;
use crate::preprocess::DecodeLimits;
use crate::store::{ActivationState, ModelActivation, NewModelActivation, Store, StoreError};

/// `[models]` settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelsConfig {
    /// How often a service reads `model_activations` to follow activations.
    pub poll_interval_ms: u64,
}

impl Default for ModelsConfig {
    fn default() -> Self {
        ModelsConfig {
            poll_interval_ms: 5_000,
        }
    }
}

impl ModelsConfig {
    /// Problems with the values, each naming its key.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !(100..=3_600_000).contains(&self.poll_interval_ms) {
            p.push(format!(
                "models.poll_interval_ms = {}: must be between 100 and 3600000",
                self.poll_interval_ms
            ));
        }
        p
    }
}

/// A validated package serving a slot.
#[derive(Debug)]
pub struct ActiveModel {
    pub slot: String,
    pub package: ModelPackage,
    /// The package's SHA-256 (what every result it produces carries).
    pub sha256: String,
    /// 1 for the slot's first model, +1 at every swap.
    pub generation: u64,
    /// The `model_activations` row it follows, when it came from the store.
    pub activation_id: Option<i64>,
}

type SlotCell = watch::Sender<Option<Arc<ActiveModel>>>;

/// The active model of every slot. Cheap to clone; clones share the slots.
#[derive(Debug, Clone, Default)]
pub struct ModelRegistry {
    slots: Arc<RwLock<HashMap<String, SlotCell>>>,
}

impl ModelRegistry {
    pub fn new() -> ModelRegistry {
        ModelRegistry::default()
    }

    fn cell(&self, slot: &str) -> SlotCell {
        if let Some(cell) = self
            .slots
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(slot)
        {
            return cell.clone();
        }
        self.slots
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(slot.to_owned())
            .or_insert_with(|| watch::channel(None).0)
            .clone()
    }

    /// The model serving `slot` now, `None` before its first activation.
    pub fn current(&self, slot: &str) -> Option<Arc<ActiveModel>> {
        self.slots
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(slot)
            .and_then(|cell| cell.borrow().clone())
    }

    /// A receiver that sees every swap of `slot` (`changed()` fires once per swap).
    pub fn subscribe(&self, slot: &str) -> watch::Receiver<Option<Arc<ActiveModel>>> {
        self.cell(slot).subscribe()
    }

    /// Slots that have a model, sorted.
    pub fn slots(&self) -> Vec<String> {
        let slots = self.slots.read().unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<String> = slots
            .iter()
            .filter(|(_, c)| c.borrow().is_some())
            .map(|(n, _)| n.clone())
            .collect();
        names.sort();
        names
    }

    /// Puts a validated package into service for `slot`: one atomic swap.
    pub fn install(
        &self,
        slot: &str,
        model: ValidatedModel,
        activation_id: Option<i64>,
    ) -> Arc<ActiveModel> {
        let cell = self.cell(slot);
        let mut installed = None;
        cell.send_modify(|current| {
            let generation = current.as_ref().map_or(0, |m| m.generation) + 1;
            let active = Arc::new(ActiveModel {
                slot: slot.to_owned(),
                sha256: model.package.sha256.clone(),
                package: model.package,
                generation,
                activation_id,
            });
            installed = Some(active.clone());
            *current = Some(active);
        });
        let active = installed.expect("send_modify runs its closure");
        tracing::info!(
            slot,
            sha256 = %active.sha256,
            generation = active.generation,
            "Model swapped in."
        );
        active
    }
}

/// Why a package was refused.
#[derive(Debug, thiserror::Error)]
pub enum ValidationError {
    #[error(transparent)]
    Package(#[from] PackageError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("warm-up inference failed: {0}")]
    WarmUp(#[source] InspectError),
    #[error("cannot read golden images in {path}: {source}")]
    GoldenRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "golden folder {dir} has no images in good/ or defect/ (expected golden/good/*.png, golden/defect/*.png, …)"
    )]
    GoldenEmpty { dir: PathBuf },
    #[error("{failed} of {checked} golden images did not get their expected verdict: {}", .details.join("; "))]
    GoldenMismatch {
        failed: usize,
        checked: usize,
        details: Vec<String>,
    },
    #[error(
        "package SHA-256 here is {found}, but the activation recorded {expected}: this machine has other files at that path"
    )]
    HashMismatch { expected: String, found: String },
}

/// A package that passed validation.
#[derive(Debug)]
pub struct ValidatedModel {
    pub package: ModelPackage,
    /// Time of the warm-up inference (session creation excluded).
    pub warmup_ms: f64,
    /// Golden images checked (all matched).
    pub golden_checked: usize,
}

/// Validates packages on the configured runtime and execution providers.
#[derive(Debug, Clone)]
pub struct Validator {
    pub runtime: &'static OrtRuntime,
    pub options: SessionOptions,
    pub limits: DecodeLimits,
}

const IMAGE_EXTENSIONS: [&str; 6] = ["jpg", "jpeg", "png", "bmp", "tif", "tiff"];

/// Folder name of golden images inside a package.
pub const GOLDEN_DIR: &str = "golden";

impl Validator {
    /// Opens `dir`, builds a detector, runs a warm-up inference and checks golden images (the
    /// package's `golden/` and `extra_golden`). Blocking: call it off the async runtime.
    pub fn validate(
        &self,
        dir: &Path,
        extra_golden: Option<&Path>,
    ) -> Result<ValidatedModel, ValidationError> {
        let package = ModelPackage::open(dir)?;
        let detector = Detector::new(self.runtime, package.clone(), &self.options, None)?;
        let mut inspector = Inspector::new(detector, self.limits)?;

        // A flat grey frame at the model's size exercises the whole path (preprocess,
        // session, postprocess) without depending on any image being present.
        let (w, h) = (
            inspector.detector.input.width,
            inspector.detector.input.height,
        );
        let grey = image::RgbImage::from_pixel(w, h, image::Rgb([128, 128, 128]));
        let start = Instant::now();
        let warm = inspector
            .inspect_images(&[("warm-up".into(), &grey)])
            .pop()
            .expect("one result per image");
        warm.map_err(ValidationError::WarmUp)?;
        let warmup_ms = start.elapsed().as_secs_f64() * 1e3;

        let mut golden = Vec::new();
        let own = package.dir.join(GOLDEN_DIR);
        if own.is_dir() {
            golden.extend(golden_images(&own)?);
        }
        if let Some(extra) = extra_golden {
            let images = golden_images(extra)?;
            if images.is_empty() {
                return Err(ValidationError::GoldenEmpty {
                    dir: extra.to_path_buf(),
                });
            }
            golden.extend(images);
        }
        let mut details = Vec::new();
        for (path, expected) in &golden {
            let bytes = std::fs::read(path).map_err(|source| ValidationError::GoldenRead {
                path: path.clone(),
                source,
            })?;
            let name = path.display().to_string();
            let (mut results, _) = inspector.inspect_batch(&[(name.clone(), bytes.as_slice())]);
            match results.pop().expect("one result per image") {
                Ok(i) if i.verdict == *expected => {}
                Ok(i) => details.push(format!(
                    "{name}: expected {expected:?}, got {:?} (score {:.4}, threshold {})",
                    i.verdict, i.score, i.threshold
                )),
                Err(e) => details.push(format!("{name}: {e}")),
            }
        }
        if !details.is_empty() {
            return Err(ValidationError::GoldenMismatch {
                failed: details.len(),
                checked: golden.len(),
                details,
            });
        }
        Ok(ValidatedModel {
            package,
            warmup_ms,
            golden_checked: golden.len(),
        })
    }
}

/// Images under `dir/good` and `dir/defect` with the verdict each must get, sorted.
fn golden_images(dir: &Path) -> Result<Vec<(PathBuf, Verdict)>, ValidationError> {
    let mut found = Vec::new();
    for (sub, verdict) in [("good", Verdict::Good), ("defect", Verdict::Defect)] {
        let folder = dir.join(sub);
        if !folder.is_dir() {
            continue;
        }
        let entries = std::fs::read_dir(&folder).map_err(|source| ValidationError::GoldenRead {
            path: folder.clone(),
            source,
        })?;
        let mut paths = Vec::new();
        for entry in entries {
            let path = entry
                .map_err(|source| ValidationError::GoldenRead {
                    path: folder.clone(),
                    source,
                })?
                .path();
            let is_image = path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
            if path.is_file() && is_image {
                paths.push(path);
            }
        }
        paths.sort();
        found.extend(paths.into_iter().map(|p| (p, verdict)));
    }
    Ok(found)
}

/// What `activate` needs.
#[derive(Debug, Clone)]
pub struct ActivationRequest {
    pub slot: String,
    pub package: PathBuf,
    pub golden: Option<PathBuf>,
    /// Who asks (audited).
    pub actor: String,
}

/// Why an activation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    #[error("model for slot {slot} refused, the current model keeps serving: {reason}")]
    Refused {
        slot: String,
        reason: String,
        /// The recorded refusal.
        activation: Box<ModelActivation>,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("validation task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Refuses a slot that is not among `known` (the slots of this configuration's cameras:
/// `<camera>` and `<camera>/<recipe>`), so that a mistyped or half-named slot ("washer-b" for
/// "cam1/washer-b") is not recorded as active while nothing follows it. A configuration with
/// no cameras cannot tell, and lets every slot through.
pub fn check_slot(known: &[String], slot: &str) -> Result<(), String> {
    if known.is_empty() || known.iter().any(|k| k == slot) {
        Ok(())
    } else {
        Err(format!(
            "unknown slot {slot:?}: the slots configured here are {}",
            known.join(", ")
        ))
    }
}

/// Validates `request.package` here, then records it as the slot's model (or records the
/// refusal), with its audit entry. Services pick it up through [`follow`].
pub async fn activate(
    store: &Store,
    validator: &Validator,
    request: ActivationRequest,
) -> Result<(ModelActivation, ValidatedModel), ActivationError> {
    // Replicas open the package by this path: make it absolute.
    let package_path = std::path::absolute(&request.package).unwrap_or(request.package.clone());
    let v = validator.clone();
    let (dir, golden) = (package_path.clone(), request.golden.clone());
    let outcome = tokio::task::spawn_blocking(move || v.validate(&dir, golden.as_deref())).await?;
    let path_text = package_path.display().to_string();
    match outcome {
        Ok(validated) => {
            let activation = store
                .record_model_activation(NewModelActivation {
                    slot: request.slot,
                    package_path: path_text,
                    sha256: validated.package.sha256.clone(),
                    state: ActivationState::Active,
                    reason: None,
                    actor: request.actor,
                })
                .await?;
            Ok((activation, validated))
        }
        Err(e) => {
            let reason = e.to_string();
            // The digest of what was refused, when the package could at least be read (on a
            // blocking thread: hashing a large package would hold up the runtime's threads).
            let dir = package_path.clone();
            let sha256 = tokio::task::spawn_blocking(move || {
                ModelPackage::open(&dir)
                    .map(|p| p.sha256)
                    .unwrap_or_default()
            })
            .await
            .unwrap_or_default();
            let activation = store
                .record_model_activation(NewModelActivation {
                    slot: request.slot.clone(),
                    package_path: path_text,
                    sha256,
                    state: ActivationState::Refused,
                    reason: Some(reason.clone()),
                    actor: request.actor,
                })
                .await?;
            Err(ActivationError::Refused {
                slot: request.slot,
                reason,
                activation: Box::new(activation),
            })
        }
    }
}

/// What one poll of the activations table did.
#[derive(Debug)]
pub enum FollowEvent {
    /// The slot now serves the recorded package.
    Swapped {
        slot: String,
        active: Arc<ActiveModel>,
    },
    /// The recorded package failed validation here; the old model keeps serving. Not retried
    /// until a newer activation of the slot is recorded (a package that is not there yet is
    /// looked for again at every poll instead).
    Failed {
        slot: String,
        activation_id: i64,
        error: String,
    },
}

/// Makes a registry follow the activations recorded in a store.
#[derive(Debug)]
pub struct Follower {
    store: Store,
    registry: ModelRegistry,
    validator: Validator,
    /// Activation id last handled per slot (swapped, already served, or failed).
    handled: HashMap<String, i64>,
}

impl Follower {
    pub fn new(store: Store, registry: ModelRegistry, validator: Validator) -> Follower {
        Follower {
            store,
            registry,
            validator,
            handled: HashMap::new(),
        }
    }

    /// Reads the active activation of every slot once and swaps in what changed.
    pub async fn poll_once(&mut self) -> Result<Vec<FollowEvent>, StoreError> {
        let mut events = Vec::new();
        for row in self.store.active_models().await? {
            if self.handled.get(&row.slot) == Some(&row.id) {
                continue;
            }
            self.handled.insert(row.slot.clone(), row.id);
            if self
                .registry
                .current(&row.slot)
                .is_some_and(|m| m.sha256 == row.sha256)
            {
                continue;
            }
            let v = self.validator.clone();
            let path = PathBuf::from(&row.package_path);
            let expected = row.sha256.clone();
            let outcome = tokio::task::spawn_blocking(move || {
                let validated = v.validate(&path, None)?;
                if !validated.package.is_activated_as(&expected) {
                    return Err(ValidationError::HashMismatch {
                        expected,
                        found: validated.package.sha256,
                    });
                }
                Ok(validated)
            })
            .await;
            match outcome {
                Ok(Ok(validated)) => {
                    let active = self.registry.install(&row.slot, validated, Some(row.id));
                    events.push(FollowEvent::Swapped {
                        slot: row.slot,
                        active,
                    });
                }
                Ok(Err(ValidationError::Package(PackageError::NotFound { path }))) => {
                    // The package may still be on its way to this machine (a volume or S3
                    // sync): look again at the next poll.
                    self.handled.remove(&row.slot);
                    tracing::warn!(
                        slot = %row.slot,
                        activation = row.id,
                        path = %path.display(),
                        "Activated model is not on this machine yet; the current model keeps serving."
                    );
                }
                Ok(Err(e)) => {
                    tracing::error!(
                        slot = %row.slot,
                        activation = row.id,
                        path = %row.package_path,
                        error = %e,
                        "Activated model failed validation here; the current model keeps serving."
                    );
                    self.audit_failure(&row.slot, row.id, &row.sha256, &e.to_string())
                        .await;
                    events.push(FollowEvent::Failed {
                        slot: row.slot,
                        activation_id: row.id,
                        error: e.to_string(),
                    });
                }
                Err(e) => {
                    let error = format!("validation task failed: {e}");
                    self.audit_failure(&row.slot, row.id, &row.sha256, &error)
                        .await;
                    events.push(FollowEvent::Failed {
                        slot: row.slot,
                        activation_id: row.id,
                        error,
                    });
                }
            }
        }
        Ok(events)
    }

    /// Audits a failure to serve an activation here; a store error is only logged (the
    /// follower must keep following, and the failure is in the log either way).
    async fn audit_failure(&self, slot: &str, activation_id: i64, sha256: &str, error: &str) {
        if let Err(e) = self
            .store
            .record_model_load_failure(slot, Some(activation_id), sha256, &instance_name(), error)
            .await
        {
            tracing::warn!(slot, error = %e, "Cannot audit the model load failure.");
        }
    }

    /// Polls every `interval` until `shutdown` turns true. A database error is logged and the
    /// next poll retries; the models in service stay as they are meanwhile.
    pub async fn run(mut self, interval: Duration, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => {}
            }
            if *shutdown.borrow() {
                return;
            }
            if let Err(e) = self.poll_once().await {
                tracing::warn!(error = %e, "Cannot read model activations; will retry.");
            }
        }
    }
}

/// The name this service instance is audited under: the host (the pod's name on Kubernetes).
pub fn instance_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "unknown-host".into())
}

/// Follows the store's activations into `registry` every `config.poll_interval_ms` until
/// `shutdown`; the first poll happens at once.
pub fn follow(
    store: Store,
    registry: ModelRegistry,
    validator: Validator,
    config: &ModelsConfig,
    shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let interval = Duration::from_millis(config.poll_interval_ms);
    tokio::spawn(Follower::new(store, registry, validator).run(interval, shutdown))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_interval_is_bounded() {
        assert!(ModelsConfig::default().problems().is_empty());
        let p = ModelsConfig {
            poll_interval_ms: 5,
        }
        .problems();
        assert!(p[0].contains("models.poll_interval_ms = 5"), "{p:?}");
    }

    #[test]
    fn golden_images_take_the_verdict_of_their_folder() {
        let dir = tempfile::tempdir().unwrap();
        for (sub, name) in [("good", "b.png"), ("good", "a.PNG"), ("defect", "c.jpg")] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
            std::fs::write(dir.path().join(sub).join(name), b"x").unwrap();
        }
        std::fs::write(dir.path().join("good/notes.txt"), b"x").unwrap();
        let found = golden_images(dir.path()).unwrap();
        let names: Vec<(String, Verdict)> = found
            .iter()
            .map(|(p, v)| (p.file_name().unwrap().to_string_lossy().into_owned(), *v))
            .collect();
        assert_eq!(
            names,
            vec![
                ("a.PNG".into(), Verdict::Good),
                ("b.png".into(), Verdict::Good),
                ("c.jpg".into(), Verdict::Defect)
            ]
        );
    }
}
