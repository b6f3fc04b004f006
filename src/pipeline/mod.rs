//! The live pipeline: the only place that spawns stage tasks and wires their channels.
//!
//! ```text
//! camera task (one per camera) ──► FrameQueue ──► inference workers ──► results channel ──► actions
//!   pace / wait for trigger          bounded,        one Detector per       bounded, awaited     sinks
//!   grab on a blocking thread        drop-oldest     model per worker,      (never drops)
//!   reopen with back-off             for free-run    on blocking threads
//! ```
//!
//! Decode happens in the source (a camera delivers pixels); ROI/resize/tensor, inference and
//! regions/verdict run in the worker through [`crate::inspect::Inspector`], so the pipeline adds
//! no stage logic of its own.
//!
//! Invariants:
//! - every accepted trigger produces exactly one result: a verdict, "busy" (queues full),
//!   "late" (deadline passed before inference, or shutdown deadline), or an error;
//! - free-run frames may be dropped only by the queue policy ([`queue`]), and every drop is
//!   counted for its camera;
//! - a failing source affects only its own camera: it is reopened with exponential back-off and
//!   its health says so;
//! - shutdown stops the sources, lets frames in flight finish within
//!   `shutdown_deadline_ms`, answers what is left, flushes the sinks, then returns.

pub mod config;
pub mod http;
pub mod metrics;
pub mod mqtt;
pub mod queue;
pub mod record;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use config::{CameraConfig, PipelineConfig, RecipeConfig, TriggerMode};
pub use metrics::Metrics;
pub use record::{ImagePolicy, Recorder};

use crate::actions::ResultSink;
use crate::inspect::{Inspector, ModelIdentity, PreparedImage};
use crate::model::{Detector, ModelError, ModelPackage, OrtRuntime, SessionOptions};
use crate::postprocess::{DefectRegion, Verdict};
use crate::preprocess::{DecodeLimits, InputSpec};
use crate::source::{Captured, FrameSource};
use crate::store::{Journalled, StoreError};
use queue::{Droppable, FrameQueue, Pushed};

/// Errors that stop the pipeline from starting.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("no cameras configured: add at least one [[cameras]] entry")]
    NoCameras,
    /// The package error names the path itself.
    #[error(transparent)]
    Package(#[from] crate::model::package::PackageError),
    #[error("model {path}: {source}")]
    Model {
        path: PathBuf,
        #[source]
        source: ModelError,
    },
    #[error("model {path} failed its warm-up inference: {message}")]
    WarmUp { path: PathBuf, message: String },
    #[error("model loading was interrupted: {0}")]
    Join(String),
}

/// Why a trigger was not accepted (the caller is told; nothing is recorded).
#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    #[error("unknown camera {camera:?}; cameras: {known}")]
    UnknownCamera { camera: String, known: String },
    #[error("camera {camera:?} runs free, not triggered")]
    NotTriggered { camera: String },
    #[error("the pipeline is shutting down")]
    ShuttingDown,
    #[error("{0}")]
    Invalid(String),
    /// The trigger could not be made durable; it was not accepted and the caller should retry.
    #[error("the trigger could not be journalled in the quality store: {0}")]
    Journal(String),
}

/// A request to inspect the next frame of a camera.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Trigger {
    pub camera: String,
    /// Unique id echoed in the result; generated when absent.
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub part_id: Option<String>,
    #[serde(default)]
    pub lot: Option<String>,
    /// Recipe name from the camera's `recipes`; none: the camera's default model.
    #[serde(default)]
    pub recipe: Option<String>,
    /// When the sender sent it, in milliseconds since the Unix epoch by the sender's clock.
    /// Given, the trigger's deadline counts from then: one that reaches linesight later than
    /// `pipeline.trigger_deadline_ms` after it was sent (held by the broker while linesight
    /// was not connected, or by the network) is answered late, without a frame of whatever
    /// part is under the camera by then. The two clocks must agree to well within the deadline.
    #[serde(default)]
    pub sent_at_ms: Option<i64>,
}

/// When a trigger reached linesight. Its deadline counts from then (or from when it was sent,
/// [`Trigger::sent_at_ms`]), however long it then waits to be journalled: an MQTT trigger
/// queued behind a store that is slow or being retried must not be served with a frame taken
/// seconds later. (A trigger the journal took before, delivered again after a restart, counts
/// from when the journal took it: the journal keeps that time, not the arrival.)
#[derive(Debug, Clone, Copy)]
pub struct Received {
    pub at: Instant,
    /// The same moment by the wall clock, to compare with [`Trigger::sent_at_ms`] and the
    /// journal's times. (The journal records when it took the trigger: another instance
    /// sharing the store counts its orphan delay from then.)
    pub at_ms: i64,
}

impl Received {
    pub fn now() -> Self {
        Received {
            at: Instant::now(),
            at_ms: record::now_ms(),
        }
    }
}

impl Trigger {
    /// Refuses a trigger whose id, part id, lot or recipe is longer than a record may hold
    /// ([`crate::quality::MAX_LABEL_BYTES`]), or whose id, part id or lot is given but blank
    /// (a record needs a name there; leave the field out to get the default): refused when it
    /// arrives, not when its inspection is recorded.
    /// The error names the field, and then says what is wrong with it.
    pub fn check_labels(&self) -> Result<(), (&'static str, String)> {
        for (field, value) in [
            ("id", &self.id),
            ("part_id", &self.part_id),
            ("lot", &self.lot),
            ("recipe", &self.recipe),
        ] {
            if let Some(value) = value {
                if field != "recipe" && value.trim().is_empty() {
                    return Err((field, format!("{field} is blank: leave it out instead")));
                }
                crate::quality::check_label(field, value).map_err(|m| (field, m))?;
            }
        }
        Ok(())
    }
}

/// What became of a frame or trigger.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum Outcome {
    Inspected {
        score: f32,
        verdict: Verdict,
        threshold: f32,
        regions: Vec<DefectRegion>,
    },
    /// The trigger's deadline passed before inference (or the shutdown deadline did).
    Late {
        reason: String,
        waited_ms: f64,
    },
    /// The queues were full when the trigger came.
    Busy {
        reason: String,
    },
    Error {
        message: String,
    },
}

/// Milliseconds per stage for one frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct PipelineTimings {
    pub capture_ms: f64,
    pub queue_ms: f64,
    pub preprocess_ms: f64,
    pub inference_ms: f64,
    pub postprocess_ms: f64,
    /// From the start of the grab (or the trigger) to the result.
    pub total_ms: f64,
}

/// One pipeline result: what the sinks record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InspectionResult {
    pub camera: String,
    /// Frame number within the camera's run (0 for triggers answered without a frame).
    pub sequence: u64,
    pub trigger_id: Option<String>,
    pub part_id: Option<String>,
    pub lot: Option<String>,
    pub recipe: Option<String>,
    /// Capture time, RFC 3339 UTC.
    pub frame_time: String,
    /// Where the frame came from (file, synthetic index, device).
    pub origin: String,
    #[serde(flatten)]
    pub outcome: Outcome,
    pub model: Option<ModelIdentity>,
    pub timings: PipelineTimings,
    /// Frames in the inference call that produced this result (0 without inference).
    pub batch_size: usize,
}

impl InspectionResult {
    /// Short status: `inspected`, `late`, `busy` or `error`.
    pub fn status(&self) -> &'static str {
        match self.outcome {
            Outcome::Inspected { .. } => "inspected",
            Outcome::Late { .. } => "late",
            Outcome::Busy { .. } => "busy",
            Outcome::Error { .. } => "error",
        }
    }
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-23T18:50:35.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Health of one camera.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum CameraHealth {
    Starting,
    Running,
    /// The source failed; it is reopened after `retry_in_ms`.
    Reopening {
        error: String,
        failures: u32,
        retry_in_ms: u64,
    },
    /// A grab has not returned for longer than `pipeline.probe_interval_ms` (and the trigger
    /// deadline): the camera is there but delivers nothing. Triggers are answered busy until
    /// a grab returns.
    Stalled {
        /// When the grab started, RFC 3339 UTC.
        since: String,
    },
    /// The source has no more frames (a folder replayed once).
    Finished,
    Stopped,
}

/// A camera to run: its settings and its source.
pub struct Camera {
    pub config: CameraConfig,
    pub source: Box<dyn FrameSource>,
}

/// Counts at the end of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub inspected: u64,
    pub late: u64,
    pub busy: u64,
    pub errors: u64,
    pub dropped: u64,
    /// Results the quality store did not record (refused, or down past the shutdown deadline).
    pub not_recorded: u64,
    /// Results a sink (the results file) failed to write.
    pub sink_errors: u64,
}

impl Summary {
    /// Whether every result reached the quality store and every sink.
    pub fn all_kept(&self) -> bool {
        self.not_recorded == 0 && self.sink_errors == 0
    }
}

#[derive(Debug, Clone)]
struct ModelChoice {
    /// Index into [`ModelTable::slots`].
    slot: usize,
    threshold: Option<f32>,
    recipe: Option<String>,
}

/// A result on its way to the actions task, with the frame's pixels when there was one.
struct Emitted {
    result: InspectionResult,
    image: Option<Arc<image::RgbImage>>,
}

struct PendingTrigger {
    trigger: Trigger,
    id: String,
    fired_at: Instant,
}

struct WorkItem {
    camera: Arc<str>,
    sequence: u64,
    captured: Captured,
    /// The frame as a model input, prepared on the camera's thread (so that preprocessing
    /// overlaps inference); it keeps the pixels. An error when preparation failed (an ROI
    /// outside the frame): the worker answers it as such.
    prepared: Result<PreparedImage, String>,
    capture_ms: f64,
    started: Instant,
    enqueued: Instant,
    trigger: Option<PendingTrigger>,
    /// The frame is a part without a trigger (a line-triggered camera's exposure): like a
    /// triggered frame, it is never dropped; under overload it is answered `busy`.
    a_part: bool,
    choice: ModelChoice,
}

impl Droppable for WorkItem {
    fn droppable(&self) -> bool {
        self.trigger.is_none() && !self.a_part
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Model slots and the models serving them.
///
/// A slot is what a camera asks for: `<camera>` (its default model) or `<camera>/<recipe>`. Each
/// slot is served by one loaded model (several slots may share one); every worker holds one
/// session per loaded model. A swap loads the new model into every worker first, then points
/// the slot at it in one step under this lock, so every frame is inspected by the old model or
/// the new one, never by neither.
struct ModelTable {
    slots: Vec<String>,
    /// Model index serving each slot.
    slot_model: Vec<usize>,
    /// Input and identity of each model index.
    inputs: Vec<InputSpec>,
    identities: Vec<ModelIdentity>,
    /// Per worker: models it must install before its next batch.
    installs: Vec<Vec<(usize, Inspector)>>,
    /// The camera's or recipe's own threshold of each slot, checked against every model
    /// swapped in.
    slot_thresholds: Vec<Option<f32>>,
}

impl ModelTable {
    fn input_for(&self, slot: usize) -> InputSpec {
        self.inputs[self.slot_model[slot]].clone()
    }
}

/// What the camera tasks, workers and trigger handle share.
struct Shared {
    config: PipelineConfig,
    /// Records results in the quality store (none: results go to the sinks only).
    recorder: Option<Recorder>,
    /// Journalled triggers this instance has not answered yet.
    in_flight: Mutex<std::collections::HashSet<String>>,
    /// Passed once the shutdown deadline has: store writes stop being retried.
    give_up: record::RetryStop,
    /// Which model serves which slot; swapped atomically by [`Pipeline::swap_model`].
    models: Mutex<ModelTable>,
    /// What loading another model needs.
    runtime: &'static OrtRuntime,
    inference: SessionOptions,
    limits: DecodeLimits,
    queue: FrameQueue<WorkItem>,
    results: mpsc::Sender<Emitted>,
    metrics: Arc<Metrics>,
    health: Mutex<BTreeMap<String, CameraHealth>>,
    accepting: AtomicBool,
    trigger_seq: AtomicU64,
    results_closed: AtomicBool,
    results_wake: tokio::sync::Notify,
    cameras_running: std::sync::atomic::AtomicUsize,
    cameras_done: tokio::sync::Notify,
}

impl Shared {
    fn in_flight(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn models(&self) -> std::sync::MutexGuard<'_, ModelTable> {
        self.models.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_health(&self, camera: &str, health: CameraHealth) {
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(camera.to_string(), health);
    }

    /// `camera` is being reopened after `failures` failed tries, the next in `backoff`.
    fn set_reopening(&self, camera: &str, error: String, failures: u32, backoff: Duration) {
        self.set_health(
            camera,
            CameraHealth::Reopening {
                error,
                failures,
                retry_in_ms: backoff.as_millis() as u64,
            },
        );
    }

    async fn record(&self, result: InspectionResult) {
        self.emit(result, None).await;
    }

    /// Hands a result (with the frame's pixels, for the store's images) to the actions task.
    async fn emit(&self, result: InspectionResult, image: Option<Arc<image::RgbImage>>) {
        if let Some(c) = self.metrics.camera(&result.camera) {
            let counter = match result.outcome {
                Outcome::Inspected { .. } => &c.inspected,
                Outcome::Late { .. } => &c.late,
                Outcome::Busy { .. } => &c.busy,
                Outcome::Error { .. } => &c.errors,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        if result.timings.total_ms > 0.0 {
            self.metrics.observe_ms("total", result.timings.total_ms);
        }
        // The actions task runs until every sender is gone, so this only fails if it panicked.
        // A trigger stays in flight until its result is recorded (by the actions task), so the
        // orphan scan never answers it meanwhile.
        if self.results.send(Emitted { result, image }).await.is_err() {
            tracing::error!("Result dropped: the actions task is gone.");
        }
    }

    fn count_drop(&self, item: &WorkItem) {
        if let Some(c) = self.metrics.camera(&item.camera) {
            c.frames_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn trigger_result(
    camera: &str,
    pending: &PendingTrigger,
    recipe: Option<String>,
    outcome: Outcome,
) -> InspectionResult {
    InspectionResult {
        camera: camera.to_string(),
        sequence: 0,
        trigger_id: Some(pending.id.clone()),
        part_id: pending.trigger.part_id.clone(),
        lot: pending.trigger.lot.clone(),
        recipe: recipe.or_else(|| pending.trigger.recipe.clone()),
        frame_time: rfc3339(SystemTime::now()),
        origin: String::new(),
        outcome,
        model: None,
        timings: PipelineTimings {
            total_ms: ms(pending.fired_at.elapsed()),
            ..PipelineTimings::default()
        },
        batch_size: 0,
    }
}

/// The answer of frame `sequence` of a camera without a trigger, which failed before it was a
/// frame (`origin`: its file, when it came from one).
fn frame_result(
    camera: &str,
    sequence: u64,
    origin: String,
    recipe: Option<String>,
    outcome: Outcome,
) -> InspectionResult {
    InspectionResult {
        camera: camera.to_string(),
        sequence,
        trigger_id: None,
        part_id: None,
        lot: None,
        recipe,
        frame_time: rfc3339(SystemTime::now()),
        origin,
        outcome,
        model: None,
        timings: PipelineTimings::default(),
        batch_size: 0,
    }
}

fn item_result(item: &WorkItem, outcome: Outcome) -> InspectionResult {
    let t = item.trigger.as_ref();
    InspectionResult {
        camera: item.camera.to_string(),
        sequence: item.sequence,
        trigger_id: t.map(|t| t.id.clone()),
        part_id: t.and_then(|t| t.trigger.part_id.clone()),
        lot: t.and_then(|t| t.trigger.lot.clone()),
        recipe: item.choice.recipe.clone(),
        frame_time: rfc3339(item.captured.captured_at),
        origin: item.captured.origin.clone(),
        outcome,
        model: None,
        timings: PipelineTimings {
            capture_ms: item.capture_ms,
            queue_ms: ms(item.enqueued.elapsed()),
            total_ms: ms(item.started.elapsed()),
            ..PipelineTimings::default()
        },
        batch_size: 0,
    }
}

/// Accepts triggers for the triggered cameras. Cheap to clone.
#[derive(Clone)]
pub struct Triggers {
    cameras: Arc<BTreeMap<String, Option<mpsc::Sender<PendingTrigger>>>>,
    shared: Arc<Shared>,
}

/// What happened to a fired trigger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct TriggerAccepted {
    pub id: String,
    /// `queued`; `busy` when it was answered at once because the camera's trigger queue was
    /// full; `duplicate` when a trigger with this id was accepted before (it is not served
    /// again: its first answer stands).
    pub status: &'static str,
}

impl Triggers {
    /// A fresh trigger id for `camera`, unique across restarts (the journal refuses an id seen
    /// before).
    pub fn new_id(&self, camera: &str) -> String {
        let n = self.shared.trigger_seq.fetch_add(1, Ordering::Relaxed);
        format!("{camera}-{}-{n}", record::now_ms())
    }

    /// Queues `trigger` for its camera. Once accepted, it gets exactly one result.
    ///
    /// Runs to its end even when the caller goes away (an HTTP client that timed out, whose
    /// request is then dropped): a trigger journalled and taken in flight must reach its queue
    /// or its answer, or it would stay in flight, unanswered, until a restart.
    pub async fn fire(&self, trigger: Trigger) -> Result<TriggerAccepted, TriggerError> {
        self.fire_received(trigger, Received::now()).await
    }

    /// [`Self::fire`] for a trigger that reached linesight at `received` (an MQTT message
    /// that waited for the triggers before it, or for the journal).
    pub async fn fire_received(
        &self,
        trigger: Trigger,
        received: Received,
    ) -> Result<TriggerAccepted, TriggerError> {
        let this = self.clone();
        tokio::spawn(async move { this.fire_to_the_end(trigger, received).await })
            .await
            .unwrap_or_else(|e| {
                Err(TriggerError::Journal(format!(
                    "the trigger's task failed: {e}"
                )))
            })
    }

    /// A journal call that failed: counted, and the caller told to try again.
    fn journal_failed(&self, e: StoreError) -> TriggerError {
        self.shared
            .metrics
            .store_errors
            .fetch_add(1, Ordering::Relaxed);
        TriggerError::Journal(e.to_string())
    }

    async fn fire_to_the_end(
        &self,
        mut trigger: Trigger,
        received: Received,
    ) -> Result<TriggerAccepted, TriggerError> {
        if !self.shared.accepting.load(Ordering::SeqCst) {
            return Err(TriggerError::ShuttingDown);
        }
        let sender = match self.cameras.get(&trigger.camera) {
            None => {
                return Err(TriggerError::UnknownCamera {
                    camera: trigger.camera,
                    known: self.cameras.keys().cloned().collect::<Vec<_>>().join(", "),
                });
            }
            Some(None) => {
                return Err(TriggerError::NotTriggered {
                    camera: trigger.camera,
                });
            }
            Some(Some(sender)) => sender,
        };
        let id = trigger
            .id
            .clone()
            .unwrap_or_else(|| self.new_id(&trigger.camera));
        // Older than this machine's clock goes back (received before a reboot): past its
        // deadline all the same.
        let past_deadline = Duration::from_millis(self.shared.config.trigger_deadline_ms + 1);
        let earlier = |at: Instant, age_ms: i64| {
            let age = Duration::from_millis(age_ms.max(0) as u64);
            at.checked_sub(age)
                .or_else(|| at.checked_sub(past_deadline))
                .unwrap_or(at)
        };
        // When the trigger came: when it reached linesight, or when it was sent if the
        // sender says so, or for one journalled before (a redelivery) when it was first
        // received, so that its deadline counts from then.
        let mut fired_at = match trigger.sent_at_ms {
            Some(sent) => earlier(received.at, received.at_ms.saturating_sub(sent)),
            None => received.at,
        };
        if let Some(recorder) = &self.shared.recorder {
            // Durable before acknowledged: once journalled, the trigger gets an answer even
            // if linesight stops before serving it (the next start answers it "late"). Each
            // try of a trigger asks the journal, so that none is answered before the trigger
            // is durable; the claim in flight then decides which try serves it.
            let journalled = recorder
                .store
                .journal_trigger(
                    &id,
                    &trigger.camera,
                    trigger.part_id.as_deref(),
                    trigger.lot.as_deref(),
                    trigger.recipe.as_deref(),
                    record::now_ms(),
                )
                .await;
            // Journalled by this try, or before and still pending for this camera (a try whose
            // commit went through although it reported an error, or a trigger from before a
            // restart: served now rather than left for the orphan scan to answer "late").
            let existing = match journalled {
                Ok(Journalled::New) => None,
                Ok(Journalled::Duplicate(existing))
                    if existing.state == "pending" && existing.camera == trigger.camera =>
                {
                    Some(existing)
                }
                Ok(Journalled::Duplicate(_)) => {
                    return Ok(TriggerAccepted {
                        id,
                        status: "duplicate",
                    });
                }
                Err(StoreError::Invalid(message)) => return Err(TriggerError::Invalid(message)),
                Err(e) => return Err(self.journal_failed(e)),
            };
            // The claim in flight decides which try serves it. Claimed, it is read again: another
            // try may have served it (and given its claim back) since this one's journal call.
            if !self.shared.in_flight().insert(id.clone()) {
                return Ok(TriggerAccepted {
                    id,
                    status: "duplicate",
                });
            }
            let claim = Claim {
                shared: &self.shared,
                id: Some(id.clone()),
            };
            match recorder.store.trigger(&id).await {
                Ok(Some(now)) if now.state == "pending" => claim.keep(),
                Ok(_) => {
                    return Ok(TriggerAccepted {
                        id,
                        status: "duplicate",
                    });
                }
                Err(e) => return Err(self.journal_failed(e)),
            }
            if let Some(existing) = existing {
                fired_at = fired_at.min(earlier(
                    received.at,
                    received.at_ms - existing.received_at_ms,
                ));
                // Served with the part, lot and recipe it was acknowledged with.
                trigger.part_id = existing.part_id;
                trigger.lot = existing.lot;
                trigger.recipe = existing.recipe;
            }
        }
        let pending = PendingTrigger {
            trigger,
            id: id.clone(),
            fired_at,
        };
        match sender.try_send(pending) {
            Ok(()) => Ok(TriggerAccepted {
                id,
                status: "queued",
            }),
            Err(mpsc::error::TrySendError::Full(pending)) => {
                let camera = pending.trigger.camera.clone();
                let result = trigger_result(
                    &camera,
                    &pending,
                    None,
                    Outcome::Busy {
                        reason: format!(
                            "{} triggers already waiting for camera {camera}",
                            self.shared.config.trigger_queue_capacity
                        ),
                    },
                );
                self.shared.record(result).await;
                Ok(TriggerAccepted { id, status: "busy" })
            }
            Err(mpsc::error::TrySendError::Closed(pending)) => {
                // Journalled already, so it is answered rather than refused.
                let camera = pending.trigger.camera.clone();
                let result = trigger_result(
                    &camera,
                    &pending,
                    None,
                    Outcome::Busy {
                        reason: "the pipeline is shutting down".into(),
                    },
                );
                self.shared.record(result).await;
                Ok(TriggerAccepted { id, status: "busy" })
            }
        }
    }
}

/// Why a model swap was refused; the old model keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    #[error("unknown model slot {slot:?}; slots: {known}")]
    UnknownSlot { slot: String, known: String },
    #[error("model {path}: {source}")]
    Load {
        path: PathBuf,
        #[source]
        source: ModelError,
    },
    #[error("model {path} failed its warm-up inference: {message}")]
    WarmUp { path: PathBuf, message: String },
    #[error("model loading was interrupted: {0}")]
    Join(String),
}

/// Swaps the model behind a slot while the pipeline runs. Cheap to clone.
#[derive(Clone)]
pub struct ModelSwitch {
    shared: Arc<Shared>,
}

impl ModelSwitch {
    /// Every slot (`<camera>` or `<camera>/<recipe>`) with the model serving it now.
    pub fn slots(&self) -> Vec<(String, ModelIdentity)> {
        let table = self.shared.models();
        table
            .slots
            .iter()
            .zip(&table.slot_model)
            .map(|(slot, &m)| (slot.clone(), table.identities[m].clone()))
            .collect()
    }

    /// Loads `package` into every worker (one session each), checks each with a warm-up
    /// inference, then points `slot` at it in one step. Frames already prepared for the old
    /// input are prepared again from their pixels. On any error the old model keeps serving.
    pub async fn swap(
        &self,
        slot: &str,
        package: ModelPackage,
    ) -> Result<ModelIdentity, SwapError> {
        let (index, workers, threshold) = {
            let table = self.shared.models();
            let index = table.slots.iter().position(|s| s == slot).ok_or_else(|| {
                SwapError::UnknownSlot {
                    slot: slot.to_string(),
                    known: table.slots.join(", "),
                }
            })?;
            (index, table.installs.len(), table.slot_thresholds[index])
        };
        // The slot's own threshold must be one the new model can decide with (checked below).
        let shared = self.shared.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            let path = package.dir.clone();
            (0..workers)
                .map(|_| {
                    let detector =
                        Detector::new(shared.runtime, package.clone(), &shared.inference, None)
                            .map_err(|source| SwapError::Load {
                                path: path.clone(),
                                source,
                            })?;
                    let mut inspector =
                        Inspector::new(detector, shared.limits).map_err(|source| {
                            SwapError::Load {
                                path: path.clone(),
                                source,
                            }
                        })?;
                    inspector
                        .warm_up(shared.config.batch_size)
                        .map_err(|e| SwapError::WarmUp {
                            path: path.clone(),
                            message: e.to_string(),
                        })?;
                    Ok(inspector)
                })
                .collect::<Result<Vec<Inspector>, SwapError>>()
        })
        .await
        .map_err(|e| SwapError::Join(e.to_string()))??;
        if let Some(t) = threshold {
            loaded[0]
                .detector
                .check_threshold("threshold", t)
                .map_err(|source| SwapError::Load {
                    path: loaded[0].detector.package.dir.clone(),
                    source,
                })?;
        }
        warn_if_padded(&loaded[0], self.shared.config.batch_size);
        let identity = loaded[0].identity().clone();
        let input = loaded[0].input().clone();
        let mut table = self.shared.models();
        let model = table.inputs.len();
        table.inputs.push(input);
        table.identities.push(identity.clone());
        for (w, inspector) in loaded.into_iter().enumerate() {
            table.installs[w].push((model, inspector));
        }
        let previous = table.slot_model[index];
        table.slot_model[index] = model;
        tracing::info!(
            slot,
            from = %table.identities[previous].sha256,
            to = %identity.sha256,
            model = %identity.name,
            "Model swapped."
        );
        Ok(identity)
    }
}

/// A running pipeline.
pub struct Pipeline {
    shared: Arc<Shared>,
    triggers: Triggers,
    shutdown: watch::Sender<bool>,
    cameras: Vec<JoinHandle<()>>,
    workers: Vec<JoinHandle<()>>,
    mqtt: Option<JoinHandle<()>>,
    orphans: Option<JoinHandle<()>>,
    actions: Option<JoinHandle<Vec<Box<dyn ResultSink>>>>,
    results_tx: Option<mpsc::Sender<Emitted>>,
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        // Dropped without `shutdown` (a panic or an early return): stop the tasks.
        let _ = self.shutdown.send(true);
        self.shared.queue.close();
    }
}

/// Warns when `inspector`'s graph runs a fixed batch larger than the pipeline's `batch_size`:
/// every call is then padded, and the line gets a fraction of the model's throughput without
/// any frame failing. Checked for the models loaded at start and for every model swapped in.
fn warn_if_padded(inspector: &Inspector, batch_size: usize) {
    if let crate::model::BatchSize::Fixed(fixed) = inspector.detector.contract.batch
        && fixed > batch_size
    {
        tracing::warn!(
            model = %inspector.identity().name,
            fixed_batch = fixed,
            batch_size,
            "The model's graph runs {fixed} frames a call, but pipeline.batch_size = \
             {batch_size}: each call is padded and does the work of {fixed} frames for \
             {batch_size}. Set pipeline.batch_size = {fixed} or more.",
        );
    }
}

/// Opens `models` (every model the cameras and their recipes name) for one worker, each warmed
/// up ([`Inspector::warm_up`]).
fn load_inspectors(
    runtime: &'static OrtRuntime,
    models: &[PathBuf],
    options: &SessionOptions,
    limits: DecodeLimits,
    batch_size: usize,
) -> Result<Vec<Inspector>, PipelineError> {
    models
        .iter()
        .map(|path| {
            let package = ModelPackage::open(path)?;
            let model = |source| PipelineError::Model {
                path: path.clone(),
                source,
            };
            let detector = Detector::new(runtime, package, options, None).map_err(model)?;
            let mut inspector = Inspector::new(detector, limits).map_err(model)?;
            inspector
                .warm_up(batch_size)
                .map_err(|e| PipelineError::WarmUp {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            Ok(inspector)
        })
        .collect()
}

impl Pipeline {
    /// Loads the models (one session per model per worker), then starts the camera tasks,
    /// workers and the actions task. Must be called inside a Tokio runtime.
    pub async fn start(
        config: PipelineConfig,
        runtime: &'static OrtRuntime,
        inference: SessionOptions,
        limits: DecodeLimits,
        cameras: Vec<Camera>,
        sinks: Vec<Box<dyn ResultSink>>,
        recorder: Option<Recorder>,
    ) -> Result<Pipeline, PipelineError> {
        if cameras.is_empty() {
            return Err(PipelineError::NoCameras);
        }
        // Slots in order; slots naming the same package path share one loaded model at first.
        let mut models: Vec<PathBuf> = Vec::new();
        let mut slots: Vec<String> = Vec::new();
        let mut slot_model: Vec<usize> = Vec::new();
        let mut add_slot = |name: String, path: &PathBuf| {
            let model = match models.iter().position(|m| m == path) {
                Some(i) => i,
                None => {
                    models.push(path.clone());
                    models.len() - 1
                }
            };
            slots.push(name);
            slot_model.push(model);
            slots.len() - 1
        };
        let mut choices = Vec::new();
        for camera in &cameras {
            let c = &camera.config;
            let default = ModelChoice {
                slot: add_slot(c.id.clone(), &c.model),
                threshold: c.threshold,
                recipe: None,
            };
            let recipes: BTreeMap<String, ModelChoice> = c
                .recipes
                .iter()
                .map(|(name, r)| {
                    (
                        name.clone(),
                        ModelChoice {
                            slot: add_slot(format!("{}/{name}", c.id), &r.model),
                            threshold: r.threshold,
                            recipe: Some(name.clone()),
                        },
                    )
                })
                .collect();
            choices.push((default, recipes));
        }
        let mut worker_inspectors = Vec::new();
        let batch_size = config.batch_size;
        for _ in 0..config.workers.max(1) {
            let models = models.clone();
            let options = inference.clone();
            let loaded = tokio::task::spawn_blocking(move || {
                load_inspectors(runtime, &models, &options, limits, batch_size)
            })
            .await
            .map_err(|e| PipelineError::Join(e.to_string()))??;
            worker_inspectors.push(loaded);
        }
        // A camera's or recipe's own threshold must be one its model can decide with.
        let mut slot_thresholds = vec![None; slot_model.len()];
        for (default, recipes) in &choices {
            for choice in std::iter::once(default).chain(recipes.values()) {
                slot_thresholds[choice.slot] = choice.threshold;
                let Some(t) = choice.threshold else { continue };
                let model = slot_model[choice.slot];
                worker_inspectors[0][model]
                    .detector
                    .check_threshold("threshold", t)
                    .map_err(|source| PipelineError::Model {
                        path: models[model].clone(),
                        source,
                    })?;
            }
        }
        let mut config = config;
        if config.batch_size > 1 && config.batch_autotune {
            let max = config.batch_size;
            let mut first = worker_inspectors.swap_remove(0);
            let (first, tuned) = tokio::task::spawn_blocking(move || {
                let tuned = first[0].detector.fastest_batch_size(max, 5);
                (first, tuned)
            })
            .await
            .map_err(|e| PipelineError::Join(e.to_string()))?;
            worker_inspectors.push(first);
            let last = worker_inspectors.len() - 1;
            worker_inspectors.swap(0, last);
            match tuned {
                Ok((best, figures)) => {
                    let table = figures
                        .iter()
                        .map(|(k, ms)| format!("{k}: {ms:.2} ms"))
                        .collect::<Vec<_>>()
                        .join(", ");
                    tracing::info!(
                        batch_size = best,
                        per_frame = %table,
                        "Batch size tuned to the fastest per frame (pipeline.batch_autotune)."
                    );
                    config.batch_size = best;
                }
                Err(e) => {
                    return Err(PipelineError::Model {
                        path: models[0].clone(),
                        source: e,
                    });
                }
            }
        }
        for inspector in &worker_inspectors[0] {
            warn_if_padded(inspector, config.batch_size);
        }
        let table = ModelTable {
            slots,
            slot_model,
            inputs: worker_inspectors[0]
                .iter()
                .map(|i| i.input().clone())
                .collect(),
            identities: worker_inspectors[0]
                .iter()
                .map(|i| i.identity().clone())
                .collect(),
            installs: worker_inspectors.iter().map(|_| Vec::new()).collect(),
            slot_thresholds,
        };

        let metrics = Arc::new(Metrics::new(cameras.iter().map(|c| c.config.id.as_str())));
        let (results_tx, results_rx) = mpsc::channel(256);
        let shared = Arc::new(Shared {
            queue: FrameQueue::new(config.queue_capacity),
            results: results_tx.clone(),
            metrics: metrics.clone(),
            health: Mutex::new(
                cameras
                    .iter()
                    .map(|c| (c.config.id.clone(), CameraHealth::Starting))
                    .collect(),
            ),
            accepting: AtomicBool::new(true),
            trigger_seq: AtomicU64::new(0),
            results_closed: AtomicBool::new(false),
            results_wake: tokio::sync::Notify::new(),
            cameras_running: std::sync::atomic::AtomicUsize::new(cameras.len()),
            cameras_done: tokio::sync::Notify::new(),
            recorder,
            give_up: record::RetryStop::default(),
            in_flight: Mutex::new(Default::default()),
            models: Mutex::new(table),
            runtime,
            inference,
            limits,
            config,
        });
        let actions = tokio::spawn(run_actions(results_rx, sinks, shared.clone()));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let orphans = shared.recorder.is_some().then(|| {
            tokio::spawn(answer_orphaned_triggers(
                shared.clone(),
                shutdown_rx.clone(),
            ))
        });
        let mut trigger_senders = BTreeMap::new();
        let mut camera_tasks = Vec::new();
        for (camera, (default, recipes)) in cameras.into_iter().zip(choices) {
            let triggers = if camera.config.mode == TriggerMode::Triggered {
                let (tx, rx) = mpsc::channel(shared.config.trigger_queue_capacity.max(1));
                trigger_senders.insert(camera.config.id.clone(), Some(tx));
                Some(rx)
            } else {
                trigger_senders.insert(camera.config.id.clone(), None);
                None
            };
            camera_tasks.push(tokio::spawn(run_camera(
                camera,
                default,
                recipes,
                triggers,
                shared.clone(),
                shutdown_rx.clone(),
            )));
        }
        let workers = worker_inspectors
            .into_iter()
            .enumerate()
            .map(|(w, inspectors)| {
                let inspectors = inspectors.into_iter().map(Some).collect();
                tokio::spawn(run_worker(w, inspectors, shared.clone()))
            })
            .collect();
        let triggers = Triggers {
            cameras: Arc::new(trigger_senders),
            shared: shared.clone(),
        };
        let mqtt =
            shared.config.mqtt_triggers.clone().map(|config| {
                tokio::spawn(mqtt::run(config, triggers.clone(), shutdown_rx.clone()))
            });
        Ok(Pipeline {
            triggers,
            mqtt,
            orphans,
            shared,
            shutdown,
            cameras: camera_tasks,
            workers,
            actions: Some(actions),
            results_tx: Some(results_tx),
        })
    }

    /// The model-swap handle (for model activation).
    pub fn model_switch(&self) -> ModelSwitch {
        ModelSwitch {
            shared: self.shared.clone(),
        }
    }

    /// The trigger handle (for HTTP, MQTT and tests).
    pub fn triggers(&self) -> Triggers {
        self.triggers.clone()
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.shared.metrics.clone()
    }

    /// Most frames per inference call, after `pipeline.batch_autotune` when it applied.
    pub fn batch_size(&self) -> usize {
        self.shared.config.batch_size
    }

    /// Health of every camera.
    pub fn health(&self) -> BTreeMap<String, CameraHealth> {
        self.shared
            .health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A view for the HTTP endpoint.
    pub fn status(&self) -> PipelineStatus {
        PipelineStatus {
            shared: self.shared.clone(),
            triggers: self.triggers.cameras.clone(),
        }
    }

    /// Runs until every camera's source has finished or `stop` completes, then shuts down
    /// gracefully and returns the counts.
    pub async fn run_until(self, stop: impl Future<Output = ()>) -> Summary {
        let shared = self.shared.clone();
        let all_finished = async move {
            loop {
                let done = shared.cameras_done.notified();
                tokio::pin!(done);
                done.as_mut().enable();
                if shared.cameras_running.load(Ordering::SeqCst) == 0 {
                    return;
                }
                done.await;
            }
        };
        tokio::select! {
            () = all_finished => {}
            () = stop => {}
        }
        self.shutdown().await
    }

    /// Stops the sources, lets frames in flight finish within the shutdown deadline, answers
    /// what is left, flushes the sinks.
    pub async fn shutdown(mut self) -> Summary {
        let shared = self.shared.clone();
        shared.accepting.store(false, Ordering::SeqCst);
        let deadline = Duration::from_millis(shared.config.shutdown_deadline_ms);
        let began = Instant::now();
        // Past the deadline, a store that is down no longer holds the exit up: counted from
        // the start, since the trigger and camera tasks stopped first may themselves wait to
        // hand a result to the store.
        let give_up = {
            let shared = shared.clone();
            tokio::spawn(async move {
                tokio::time::sleep(deadline).await;
                shared.give_up.pass();
            })
        };
        let _ = self.shutdown.send(true);
        if let Some(mqtt) = self.mqtt.take() {
            let _ = mqtt.await;
        }
        if let Some(orphans) = self.orphans.take() {
            let _ = orphans.await;
        }
        for task in self.cameras.drain(..) {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "Camera task failed.");
            }
        }
        shared.queue.close();
        let workers = join_within(
            std::mem::take(&mut self.workers),
            deadline.saturating_sub(began.elapsed()),
        )
        .await;
        // What is still queued is answered: past the deadline, or left by workers that ended
        // before the queue was empty.
        let left = shared.queue.drain();
        if !left.is_empty() {
            tracing::warn!(
                frames = left.len(),
                workers_running = workers.len(),
                "Frames still queued at shutdown."
            );
        }
        let reason = if workers.is_empty() {
            "no inference worker was left to serve it at shutdown"
        } else {
            "shutdown deadline passed before inference"
        };
        for item in left {
            if !item.droppable() {
                let waited_ms = ms(item.enqueued.elapsed());
                let result = item_result(
                    &item,
                    Outcome::Late {
                        reason: reason.into(),
                        waited_ms,
                    },
                );
                shared.record(result).await;
            } else {
                shared.count_drop(&item);
            }
        }
        // A batch already in inference is finished: its results are worth recording.
        for w in workers {
            report_worker_end(w.await);
        }
        drop(self.results_tx.take());
        // Senders also live in `shared`, which the HTTP state may keep: the actions task is
        // told to drain and finish explicitly.
        shared.results_done();
        let sinks = match self.actions.take() {
            Some(actions) => match actions.await {
                Ok(sinks) => sinks,
                Err(e) => {
                    tracing::error!(error = %e, "Actions task failed.");
                    Vec::new()
                }
            },
            None => Vec::new(),
        };
        drop(sinks);
        give_up.abort();
        let mut summary = Summary::default();
        for c in shared.metrics.cameras.values() {
            summary.inspected += c.inspected.load(Ordering::Relaxed);
            summary.late += c.late.load(Ordering::Relaxed);
            summary.busy += c.busy.load(Ordering::Relaxed);
            summary.errors += c.errors.load(Ordering::Relaxed);
            summary.dropped += c.frames_dropped.load(Ordering::Relaxed);
        }
        summary.not_recorded = shared.metrics.results_not_recorded.load(Ordering::Relaxed);
        summary.sink_errors = shared.metrics.sink_errors.load(Ordering::Relaxed);
        summary
    }
}

/// Waits up to `deadline` for every worker and returns those still running. A worker that has
/// finished is taken off the list before the next one is awaited, so that none is polled again
/// after completion (which panics).
async fn join_within(workers: Vec<JoinHandle<()>>, deadline: Duration) -> Vec<JoinHandle<()>> {
    let mut workers = std::collections::VecDeque::from(workers);
    let _ = tokio::time::timeout(deadline, async {
        while let Some(worker) = workers.front_mut() {
            let ended = worker.await;
            workers.pop_front();
            report_worker_end(ended);
        }
    })
    .await;
    workers.into()
}

fn report_worker_end(ended: Result<(), tokio::task::JoinError>) {
    if let Err(e) = ended {
        tracing::error!(error = %e, "Inference worker failed.");
    }
}

/// A trigger id taken in flight by [`Triggers::fire`] while it reads the trigger again;
/// given back when dropped (answered since, an error) unless kept: the trigger then stays in
/// flight until its result is delivered.
struct Claim<'a> {
    shared: &'a Shared,
    id: Option<String>,
}

impl Claim<'_> {
    fn keep(mut self) {
        self.id = None;
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.shared.in_flight().remove(&id);
        }
    }
}

/// Read-only view of a running pipeline for the HTTP endpoint.
#[derive(Clone)]
pub struct PipelineStatus {
    shared: Arc<Shared>,
    /// The triggered cameras' trigger queues, for their depths.
    triggers: Arc<BTreeMap<String, Option<mpsc::Sender<PendingTrigger>>>>,
}

impl PipelineStatus {
    pub fn metrics_text(&self) -> String {
        let health = self.health();
        let up = health
            .iter()
            .map(|(k, h)| (k.clone(), matches!(h, CameraHealth::Running)))
            .collect();
        let waiting: BTreeMap<String, usize> = self
            .triggers
            .iter()
            .filter_map(|(camera, sender)| {
                let s = sender.as_ref()?;
                Some((camera.clone(), s.max_capacity() - s.capacity()))
            })
            .collect();
        self.shared
            .metrics
            .render(self.shared.queue.len(), &waiting, &up)
    }

    pub fn health(&self) -> BTreeMap<String, CameraHealth> {
        self.shared
            .health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Shared {
    /// Marks the end of results: the actions task drains what is queued and stops.
    fn results_done(&self) {
        self.results_closed.store(true, Ordering::SeqCst);
        self.results_wake.notify_one();
    }
}

/// Answers journalled triggers nobody answered within `orphan_trigger_after_ms` (their
/// instance stopped or crashed first) "late": their moment on the line is gone, but their
/// caller gets a result. Runs at start and then periodically until shutdown; triggers this
/// instance is still serving are left alone.
async fn answer_orphaned_triggers(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let Some(recorder) = shared.recorder.clone() else {
        return;
    };
    let grace = shared.config.orphan_trigger_after_ms as i64;
    let period =
        Duration::from_millis((shared.config.orphan_trigger_after_ms / 4).clamp(250, 15_000));
    loop {
        let before = record::now_ms() - grace;
        // Raced with the stop: a store that does not answer (up to store.acquire_timeout_ms)
        // must not hold the shutdown up; the triggers stay pending for the next read.
        let read = tokio::select! {
            read = recorder.store.pending_triggers(before) => read,
            _ = stop.changed() => return,
        };
        match read {
            Ok(pending) => {
                // Taken in flight here, so that a redelivery of one of them (an MQTT broker
                // sending it again after the restart) is a duplicate, not served beside its
                // "late" answer. One whose own answer was recorded since the read is
                // superseded at the store and goes no further.
                let orphans: Vec<_> = {
                    let mut in_flight = shared.in_flight();
                    pending
                        .into_iter()
                        .filter(|t| in_flight.insert(t.id.clone()))
                        .collect()
                };
                if !orphans.is_empty() {
                    tracing::warn!(
                        triggers = orphans.len(),
                        "Answering triggers accepted by an instance that stopped before serving them."
                    );
                }
                for t in orphans {
                    let waited_ms = (record::now_ms() - t.received_at_ms).max(0) as f64;
                    let result = InspectionResult {
                        camera: t.camera,
                        sequence: 0,
                        trigger_id: Some(t.id),
                        part_id: t.part_id,
                        lot: t.lot,
                        recipe: t.recipe,
                        frame_time: rfc3339(SystemTime::now()),
                        origin: String::new(),
                        outcome: Outcome::Late {
                            reason: "the linesight instance that accepted this trigger stopped before serving it".into(),
                            waited_ms,
                        },
                        model: None,
                        timings: PipelineTimings::default(),
                        batch_size: 0,
                    };
                    shared.record(result).await;
                }
            }
            Err(e) => {
                shared.metrics.store_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "Cannot read the trigger journal; orphaned triggers stay pending for now.");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            _ = stop.changed() => return,
        }
    }
}

async fn run_actions(
    mut rx: mpsc::Receiver<Emitted>,
    mut sinks: Vec<Box<dyn ResultSink>>,
    shared: Arc<Shared>,
) -> Vec<Box<dyn ResultSink>> {
    // The store first: what the other sinks show is recorded.
    async fn deliver(shared: &Shared, sinks: &mut [Box<dyn ResultSink>], emitted: Emitted) {
        let Emitted { result, image } = emitted;
        let stored = match &shared.recorder {
            Some(recorder) => Some(
                recorder
                    .record_with_retry(
                        &result,
                        image.as_ref(),
                        &shared.give_up,
                        &shared.metrics.store_errors,
                    )
                    .await,
            ),
            None => None,
        };
        if let Some(id) = &result.trigger_id {
            shared.in_flight().remove(id);
        }
        match stored {
            Some(record::Stored::Superseded) => return,
            Some(record::Stored::NotRecorded) => {
                shared
                    .metrics
                    .results_not_recorded
                    .fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        for sink in sinks.iter_mut() {
            if let Err(e) = sink.record(&result) {
                shared.metrics.sink_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, camera = %result.camera, "Result not recorded by a sink.");
            }
        }
    }
    loop {
        tokio::select! {
            biased;
            Some(emitted) = rx.recv() => deliver(&shared, &mut sinks, emitted).await,
            () = shared.results_wake.notified() => {
                if shared.results_closed.load(Ordering::SeqCst) {
                    while let Ok(emitted) = rx.try_recv() {
                        deliver(&shared, &mut sinks, emitted).await;
                    }
                    break;
                }
            }
        }
    }
    for sink in sinks.iter_mut() {
        if let Err(e) = sink.flush() {
            shared.metrics.sink_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "Sink flush failed at shutdown.");
        }
    }
    sinks
}

/// A frame grabbed and, when it is to be inspected, prepared for its model (or why not).
type Grabbed = Result<Option<(Captured, Option<Result<PreparedImage, String>>)>, GrabFailed>;

/// Unusable frames in a row that make a camera failed (reopened with back-off) rather than
/// answered frame by frame.
const BAD_FRAMES_IN_A_ROW: u32 = 3;

/// Why a grab brought no frame.
#[derive(Debug)]
struct GrabFailed {
    message: String,
    /// Only this frame failed ([`crate::source::SourceError::is_bad_frame`]).
    bad_frame: bool,
    /// The file the bad frame came from, if any.
    origin: String,
}

impl GrabFailed {
    fn of(error: &crate::source::SourceError) -> GrabFailed {
        GrabFailed {
            message: error.to_string(),
            bad_frame: error.is_bad_frame(),
            origin: match error {
                crate::source::SourceError::Decode { path, .. } => path.display().to_string(),
                _ => String::new(),
            },
        }
    }
}

/// Grabs one frame on a blocking thread and prepares it for `input` (none: the frame is
/// skipped, only counted); gives the source back. Returns the capture time alone
/// (preparation is timed in the [`PreparedImage`]).
async fn grab(
    mut source: Box<dyn FrameSource>,
    input: Option<InputSpec>,
    reopen_first: bool,
    fresh: impl FnOnce() -> Box<dyn FrameSource>,
) -> (Box<dyn FrameSource>, Grabbed, f64) {
    let joined = tokio::task::spawn_blocking(move || {
        let start = std::time::Instant::now();
        let result = if reopen_first {
            source.reopen()
        } else {
            Ok(())
        }
        .and_then(|()| source.next_frame())
        .map_err(|e| GrabFailed::of(&e));
        let capture_ms = ms(start.elapsed());
        let result = result.map(|frame| {
            frame.map(|mut captured| {
                // The pixels move into the prepared image (no copy); `captured` keeps the
                // frame's time and origin.
                let prepared = input.map(|input| {
                    let image = Arc::new(std::mem::take(&mut captured.image));
                    PreparedImage::new(captured.origin.clone(), &image, &input)
                        .map(|mut p| {
                            p.image = Some(image);
                            p
                        })
                        .map_err(|e| e.to_string())
                });
                (captured, prepared)
            })
        });
        (source, result, capture_ms)
    })
    .await;
    match joined {
        Ok(done) => done,
        // A panicking driver must not take the pipeline down. The source went down with its
        // thread; a fresh one from the camera's configuration takes its place and is opened
        // by the reopening that follows the error.
        Err(e) => (
            fresh(),
            Err(GrabFailed {
                message: format!("source panicked: {e}"),
                bad_frame: false,
                origin: String::new(),
            }),
            0.0,
        ),
    }
}

/// Runs `work` on `source` on a blocking thread (`what`: "reopening", "being checked") and
/// gives the source back: a fresh one when its driver panicked.
async fn on_blocking_thread(
    mut source: Box<dyn FrameSource>,
    what: &'static str,
    work: impl FnOnce(&mut dyn FrameSource) -> Result<(), crate::source::SourceError> + Send + 'static,
    fresh: impl FnOnce() -> Box<dyn FrameSource>,
) -> (Box<dyn FrameSource>, Result<(), String>) {
    match tokio::task::spawn_blocking(move || {
        let r = work(source.as_mut()).map_err(|e| e.to_string());
        (source, r)
    })
    .await
    {
        Ok(done) => done,
        Err(e) => (fresh(), Err(format!("source panicked while {what}: {e}"))),
    }
}

/// Checks an idle source ([`FrameSource::probe`]); after a failure, reopens it first.
async fn check_idle(
    source: Box<dyn FrameSource>,
    reopen_first: bool,
    fresh: impl FnOnce() -> Box<dyn FrameSource>,
) -> (Box<dyn FrameSource>, Result<(), String>) {
    let work = move |s: &mut dyn FrameSource| {
        if reopen_first {
            s.reopen()?;
        }
        s.probe()
    };
    on_blocking_thread(source, "being checked", work, fresh).await
}

async fn reopen(
    source: Box<dyn FrameSource>,
    fresh: impl FnOnce() -> Box<dyn FrameSource>,
) -> (Box<dyn FrameSource>, Result<(), String>) {
    on_blocking_thread(source, "reopening", |s| s.reopen(), fresh).await
}

async fn run_camera(
    camera: Camera,
    default: ModelChoice,
    recipes: BTreeMap<String, ModelChoice>,
    mut triggers: Option<mpsc::Receiver<PendingTrigger>>,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let config = camera.config;
    let id: Arc<str> = Arc::from(config.id.as_str());
    let described = camera.source.describe();
    // What takes the place of a source whose driver panicked: the same camera, opened afresh.
    let fresh = {
        let (source_config, limits) = (config.source.clone(), shared.limits);
        move || -> Box<dyn FrameSource> {
            Box::new(crate::source::LazySource::new(
                source_config.clone(),
                limits,
            ))
        }
    };
    // `None` only while a grab, check or reopen has it on a blocking thread, and after a stop
    // during a grab or check (that thread drops it when it returns).
    let mut source = Some(camera.source);
    let counters = shared.metrics.camera(&id);
    let initial_backoff = Duration::from_millis(shared.config.reopen_backoff_initial_ms);
    let max_backoff = Duration::from_millis(shared.config.reopen_backoff_max_ms);
    let mut backoff = initial_backoff;
    let mut failures = 0u32;
    let mut interval = (config.fps > 0.0).then(|| {
        let mut i = tokio::time::interval(Duration::from_secs_f64(1.0 / config.fps));
        // A grab slower than the period delays the next one by what it overran, rather than
        // skipping a whole period (which would halve the rate of a camera just short of it).
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    let mut sequence = 0u64;
    let mut delivered = 0u64;
    tracing::info!(
        camera = %id,
        source = %described,
        mode = ?config.mode,
        "Camera started."
    );
    // A triggered camera grabs only on a trigger. While it waits, its device is checked
    // (`FrameSource::probe`): first at start, then every `probe_interval_ms`; after a failure
    // it is reopened with back-off instead. So health (and readiness) tell a camera that is
    // missing, or went away, before the next part comes.
    let probe_interval = Duration::from_millis(shared.config.probe_interval_ms);
    let trigger_deadline = Duration::from_millis(shared.config.trigger_deadline_ms);
    let each_frame_a_part = config.source.each_frame_is_a_part();
    let mut check_at = tokio::time::Instant::now();
    // The last check or grab failed: the source is reopened before its next use.
    let mut reopen_first = false;
    // The last grab failed. A check shows the device is there, not that it delivers frames,
    // so until a grab succeeds again a passing check does not report the camera running.
    let mut grab_failed = false;
    let mut ever_running = false;
    // Bad frames in a row (`SourceError::is_bad_frame`): one is that frame's error; a run of
    // them is a camera that fails (a network that loses packets of every frame, a stream
    // whose frames never decode) and is handled as one, with back-off.
    let mut bad_frames = 0u32;
    // The device delivered a frame (good or bad): the camera runs.
    macro_rules! device_delivered {
        () => {
            if failures > 0 {
                tracing::info!(camera = %id, failures, "Source recovered.");
            }
            failures = 0;
            backoff = initial_backoff;
            check_at = tokio::time::Instant::now() + probe_interval;
            grab_failed = false;
            ever_running = true;
            shared.set_health(&id, CameraHealth::Running);
        };
    }
    let final_health = 'camera: loop {
        if *shutdown.borrow() {
            break CameraHealth::Stopped;
        }
        // Free-run: pace. Triggered: wait for a trigger, checking the device meanwhile.
        let mut pending = match triggers.as_mut() {
            Some(rx) => tokio::select! {
                biased;
                _ = shutdown.changed() => break CameraHealth::Stopped,
                t = rx.recv() => match t {
                    Some(t) => Some(t),
                    None => break CameraHealth::Stopped,
                },
                () = tokio::time::sleep_until(check_at) => {
                    let checking = check_idle(
                        source.take().expect("the source is back between grabs"),
                        reopen_first,
                        &fresh,
                    );
                    // A device whose check hangs does not hold up a shutdown (its thread
                    // keeps it; the loop then stops at once).
                    let (back, checked) = tokio::select! {
                        done = checking => done,
                        _ = shutdown.changed() => break CameraHealth::Stopped,
                    };
                    source = Some(back);
                    match checked {
                        Ok(()) if grab_failed => {
                            reopen_first = false;
                            check_at = tokio::time::Instant::now() + probe_interval;
                        }
                        Ok(()) => {
                            if failures > 0 {
                                tracing::info!(camera = %id, failures, "Source recovered.");
                            }
                            failures = 0;
                            backoff = initial_backoff;
                            reopen_first = false;
                            ever_running = true;
                            shared.set_health(&id, CameraHealth::Running);
                            check_at = tokio::time::Instant::now() + probe_interval;
                        }
                        Err(error) => {
                            failures += 1;
                            if let Some(c) = counters {
                                c.source_errors.fetch_add(1, Ordering::Relaxed);
                            }
                            // Once per outage in the log; health counts the attempts.
                            if failures == 1 {
                                let what = if ever_running {
                                    "Triggered camera failed its check while waiting for triggers; reopening with back-off."
                                } else {
                                    "Triggered camera cannot be opened yet; retrying with back-off."
                                };
                                tracing::warn!(camera = %id, %error, retry_in_ms = backoff.as_millis() as u64, "{what}");
                            } else {
                                tracing::debug!(camera = %id, %error, failures, "Reopen failed.");
                            }
                            shared.set_reopening(&id, error, failures, backoff);
                            reopen_first = true;
                            check_at = tokio::time::Instant::now() + backoff;
                            backoff = (backoff * 2).min(max_backoff);
                        }
                    }
                    continue;
                }
            },
            None => {
                if let Some(i) = interval.as_mut() {
                    tokio::select! {
                        _ = i.tick() => {}
                        _ = shutdown.changed() => break CameraHealth::Stopped,
                    }
                } else {
                    // As fast as possible, but let other tasks (and shutdown) in.
                    tokio::task::yield_now().await;
                }
                None
            }
        };
        let started = pending.as_ref().map_or_else(Instant::now, |p| p.fired_at);
        let choice = match pending.as_ref().and_then(|p| p.trigger.recipe.as_ref()) {
            None => default.clone(),
            Some(name) => match recipes.get(name) {
                Some(choice) => choice.clone(),
                None => {
                    let pending = pending.as_ref().expect("a recipe comes with a trigger");
                    let known: Vec<&str> = recipes.keys().map(String::as_str).collect();
                    let result = trigger_result(
                        &id,
                        pending,
                        Some(name.clone()),
                        Outcome::Error {
                            message: format!(
                                "unknown recipe {name:?} for camera {id}; recipes: {}",
                                if known.is_empty() {
                                    "none".to_string()
                                } else {
                                    known.join(", ")
                                }
                            ),
                        },
                    );
                    shared.record(result).await;
                    continue;
                }
            },
        };
        // A trigger that waited past its deadline for this camera (busy with the triggers
        // before it) is answered late without a grab: its part has moved on, and a frame
        // grabbed now would show another part under its id.
        if let Some(p) = pending.as_ref()
            && p.fired_at.elapsed() > trigger_deadline
        {
            let result = trigger_result(
                &id,
                p,
                choice.recipe,
                Outcome::Late {
                    reason: format!(
                        "trigger deadline of {} ms passed before the camera could grab",
                        shared.config.trigger_deadline_ms
                    ),
                    waited_ms: ms(p.fired_at.elapsed()),
                },
            );
            shared.record(result).await;
            continue;
        }
        // Free-run frames past `every_nth` are grabbed (the camera must be drained) but not
        // prepared.
        let inspect =
            pending.is_some() || each_frame_a_part || delivered.is_multiple_of(config.every_nth);
        let input = inspect.then(|| shared.models().input_for(choice.slot));
        // A grab can wait long (a line-triggered camera waits for its next pulse): shutdown
        // does not wait for it. The blocking thread keeps the source until its grab returns,
        // then drops it.
        let reopens_first = std::mem::take(&mut reopen_first);
        let grabbing = grab(
            source.take().expect("the source is back between grabs"),
            input,
            reopens_first,
            &fresh,
        );
        tokio::pin!(grabbing);
        // A grab that does not return is watched (a USB camera that stopped sending but is
        // still there: its driver waits without end). Its trigger is answered late at its
        // deadline, as inference would answer the frame; past `stall_after` the camera shows
        // `stalled` and the triggers that come meanwhile are answered busy at once, until a
        // grab returns. A line-triggered camera's grab waits for the next pulse, and a grab
        // that reopens the camera first takes the driver's time to open it: neither is watched
        // for a stall (the trigger's deadline still holds).
        let grab_started = tokio::time::Instant::now();
        let deadline_at = pending.as_ref().map(|p| p.fired_at + trigger_deadline);
        let stall_after = probe_interval.max(trigger_deadline);
        let mut stalled = false;
        let mut triggers_open = true;
        // The grab's trigger was answered while it waited: its frame, when it comes, is dropped.
        let mut answered_meanwhile = false;
        let (back, grabbed, capture_ms) = loop {
            tokio::select! {
                done = &mut grabbing => break done,
                _ = shutdown.changed() => {
                    if let Some(p) = pending {
                        let result = trigger_result(
                            &id,
                            &p,
                            choice.recipe,
                            Outcome::Busy {
                                reason: "the pipeline stopped while the camera was waiting for a frame".into(),
                            },
                        );
                        shared.record(result).await;
                    }
                    tracing::info!(camera = %id, "Stopped during a grab; the camera is released when its grab returns.");
                    break 'camera CameraHealth::Stopped;
                }
                () = tokio::time::sleep_until(deadline_at.unwrap_or(grab_started)),
                    if deadline_at.is_some() && pending.is_some() =>
                {
                    let p = pending.take().expect("checked by the branch's condition");
                    answered_meanwhile = true;
                    let result = trigger_result(
                        &id,
                        &p,
                        choice.recipe.clone(),
                        Outcome::Late {
                            reason: format!(
                                "no frame from the camera within the trigger deadline of {} ms",
                                shared.config.trigger_deadline_ms
                            ),
                            waited_ms: ms(p.fired_at.elapsed()),
                        },
                    );
                    shared.record(result).await;
                }
                () = tokio::time::sleep_until(grab_started + stall_after),
                    if !stalled && !each_frame_a_part && !reopens_first =>
                {
                    stalled = true;
                    tracing::warn!(camera = %id, waited_ms = stall_after.as_millis() as u64, "Camera delivers no frame; its grab has not returned.");
                    let now = SystemTime::now();
                    shared.set_health(
                        &id,
                        CameraHealth::Stalled {
                            since: rfc3339(now.checked_sub(stall_after).unwrap_or(now)),
                        },
                    );
                }
                t = async {
                    match triggers.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                }, if stalled && triggers_open => {
                    // Closed: the pipeline is stopping (the shutdown branch follows).
                    let Some(t) = t else {
                        triggers_open = false;
                        continue;
                    };
                    let result = trigger_result(
                        &id,
                        &t,
                        None,
                        Outcome::Busy {
                            reason: format!(
                                "camera {id} delivers no frames: its grab has not returned for over {} ms",
                                stall_after.as_millis()
                            ),
                        },
                    );
                    shared.record(result).await;
                }
            }
        };
        if stalled {
            tracing::info!(camera = %id, "Camera delivers frames again.");
        }
        source = Some(back);
        let delivered_a_frame = match &grabbed {
            Ok(Some(_)) => true,
            Err(f) => f.bad_frame,
            Ok(None) => false,
        };
        if answered_meanwhile && delivered_a_frame {
            // The frame of a trigger answered late meanwhile shows a part that moved on. The
            // camera delivers (a failed grab, or a finished source, goes on below).
            device_delivered!();
            continue;
        }
        match grabbed {
            Ok(Some((captured, prepared))) => {
                // Frames only: failed grabs and finished sources are counted elsewhere.
                shared.metrics.observe_ms("capture", capture_ms);
                bad_frames = 0;
                device_delivered!();
                if let Some(c) = counters {
                    c.frames_in.fetch_add(1, Ordering::Relaxed);
                }
                sequence += 1;
                if pending.is_none() {
                    delivered += 1;
                }
                let Some(prepared) = prepared else {
                    continue;
                };
                if let Ok(p) = &prepared {
                    shared.metrics.observe_ms("preprocess", p.preprocess_ms);
                }
                let item = WorkItem {
                    camera: id.clone(),
                    sequence,
                    captured,
                    prepared,
                    capture_ms,
                    started,
                    enqueued: Instant::now(),
                    trigger: pending,
                    a_part: each_frame_a_part,
                    choice,
                };
                match shared.queue.push(item) {
                    Pushed::Queued => {}
                    Pushed::QueuedEvicting(old) => shared.count_drop(&old),
                    Pushed::Refused(item) if !item.droppable() => {
                        let result = item_result(
                            &item,
                            Outcome::Busy {
                                reason: format!(
                                    "inference queue full ({} triggered frames waiting)",
                                    shared.config.queue_capacity
                                ),
                            },
                        );
                        shared.record(result).await;
                    }
                    Pushed::Refused(item) => shared.count_drop(&item),
                }
            }
            Ok(None) => {
                if let Some(p) = pending {
                    let result = trigger_result(
                        &id,
                        &p,
                        choice.recipe,
                        Outcome::Error {
                            message: format!("camera {id} has no more frames"),
                        },
                    );
                    shared.record(result).await;
                }
                tracing::info!(camera = %id, frames = sequence, "Source finished.");
                break CameraHealth::Finished;
            }
            Err(failed) if failed.bad_frame && bad_frames + 1 < BAD_FRAMES_IN_A_ROW => {
                bad_frames += 1;
                device_delivered!();
                // The device delivered and this frame cannot be used (a file or frame that does
                // not decode, an incomplete GigE exposure): the frame (or its trigger) gets an
                // error result, and the camera, which is not lost, goes on with the next.
                if let Some(c) = counters {
                    c.source_errors.fetch_add(1, Ordering::Relaxed);
                }
                sequence += 1;
                if pending.is_none() {
                    delivered += 1;
                }
                if !inspect {
                    // A free-run frame past `every_nth`: it would not have been inspected.
                    continue;
                }
                tracing::warn!(camera = %id, error = %failed.message, "Frame unusable; answered as an error.");
                let outcome = Outcome::Error {
                    message: format!("capture failed: {}", failed.message),
                };
                let result = match &pending {
                    Some(p) => trigger_result(&id, p, choice.recipe, outcome),
                    None => frame_result(&id, sequence, failed.origin, choice.recipe, outcome),
                };
                shared.record(result).await;
            }
            Err(GrabFailed {
                message,
                bad_frame,
                origin,
            }) => {
                let error = if bad_frame {
                    format!("{BAD_FRAMES_IN_A_ROW} frames in a row unusable, the last: {message}")
                } else {
                    message
                };
                bad_frames = 0;
                failures += 1;
                if let Some(c) = counters {
                    c.source_errors.fetch_add(1, Ordering::Relaxed);
                }
                let outcome = Outcome::Error {
                    message: format!("capture failed: {error}"),
                };
                if let Some(p) = pending {
                    shared
                        .record(trigger_result(&id, &p, choice.recipe, outcome))
                        .await;
                } else if bad_frame && inspect {
                    // The last of the run of bad frames is answered like the ones before it.
                    sequence += 1;
                    shared
                        .record(frame_result(&id, sequence, origin, choice.recipe, outcome))
                        .await;
                }
                tracing::warn!(camera = %id, %error, failures, retry_in_ms = backoff.as_millis() as u64, "Source failed; reopening.");
                shared.set_reopening(&id, error.clone(), failures, backoff);
                if triggers.is_some() {
                    // Reopened by the check after the back-off, or before the grab of a
                    // trigger that comes sooner.
                    reopen_first = true;
                    grab_failed = true;
                    check_at = tokio::time::Instant::now() + backoff;
                    backoff = (backoff * 2).min(max_backoff);
                    continue;
                }
                // Free-run: reopened after the back-off, again with a longer one while it
                // fails (each try counted in health; the outage logged once, above), then the
                // next grab.
                loop {
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => break 'camera CameraHealth::Stopped,
                    }
                    backoff = (backoff * 2).min(max_backoff);
                    let reopening = reopen(
                        source.take().expect("the source is back between grabs"),
                        &fresh,
                    );
                    // A reopen that hangs (a vanished GigE camera takes the driver's timeouts)
                    // does not hold up a shutdown, whose deadline the other cameras' frames need.
                    let (back, reopened) = tokio::select! {
                        done = reopening => done,
                        _ = shutdown.changed() => break 'camera CameraHealth::Stopped,
                    };
                    source = Some(back);
                    let Err(error) = reopened else { break };
                    failures += 1;
                    if let Some(c) = counters {
                        c.source_errors.fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::debug!(camera = %id, %error, failures, "Reopen failed.");
                    shared.set_reopening(&id, error, failures, backoff);
                }
            }
        }
    };
    // Triggers still waiting get an answer; new ones are refused by the closed channel.
    if let Some(rx) = triggers.as_mut() {
        rx.close();
        while let Ok(p) = rx.try_recv() {
            let result = trigger_result(
                &id,
                &p,
                None,
                Outcome::Busy {
                    reason: "the pipeline stopped before this trigger was served".into(),
                },
            );
            shared.record(result).await;
        }
    }
    // Closing a camera can block (an RTSP teardown, a GigE camera that vanished: Aravis's
    // control timeouts): it is done on a blocking thread, not on the runtime's, and the stop
    // waits for it at most half its deadline, so that frames in flight keep the rest.
    if let Some(source) = source.take() {
        let closing = tokio::task::spawn_blocking(move || drop(source));
        let wait = Duration::from_millis(shared.config.shutdown_deadline_ms / 2);
        if tokio::time::timeout(wait, closing).await.is_err() {
            tracing::warn!(camera = %id, waited_ms = wait.as_millis() as u64, "Camera still closing; the stop goes on without it.");
        }
    }
    shared.set_health(&id, final_health);
    shared.cameras_running.fetch_sub(1, Ordering::SeqCst);
    shared.cameras_done.notify_waiters();
}

/// An inference worker. It waits for frames on the async runtime; once it has some, it moves
/// to a blocking thread and **stays there while full batches keep waiting**, taking them from the
/// queue, running them and handing the results on without going back to the runtime in between.
/// On a loaded line a frame then costs no thread switch at all (each would be a wait for a core
/// when inference keeps the cores busy), and ONNX Runtime's calling thread stays the same.
async fn run_worker(worker: usize, mut inspectors: Vec<Option<Inspector>>, shared: Arc<Shared>) {
    let max_wait = Duration::from_millis(shared.config.max_batch_wait_ms);
    loop {
        let batch = shared
            .queue
            .pop_batch(shared.config.batch_size, max_wait)
            .await;
        if batch.is_empty() {
            return;
        }
        let (shared, runtime) = (shared.clone(), tokio::runtime::Handle::current());
        let streak = tokio::task::spawn_blocking(move || {
            let mut batch = batch;
            loop {
                run_batch(worker, &mut inspectors, &shared, &runtime, batch);
                batch = shared.queue.try_pop_full(shared.config.batch_size);
                if batch.is_empty() {
                    return inspectors;
                }
            }
        })
        .await;
        match streak {
            Ok(back) => inspectors = back,
            Err(e) => {
                // The items went down with the thread; nothing to answer them with but the log.
                tracing::error!(error = %e, "Inference worker panicked; worker stops.");
                return;
            }
        }
    }
}

/// Runs one batch on the worker's blocking thread and hands its results on (waiting on the
/// async results channel with `runtime.block_on`). When inference panics, every frame of the
/// batch is answered with the error and the worker's sessions are opened afresh
/// ([`reopen_sessions`]), so that it goes on serving the queue.
fn run_batch(
    worker: usize,
    inspectors: &mut Vec<Option<Inspector>>,
    shared: &Shared,
    runtime: &tokio::runtime::Handle,
    batch: Vec<WorkItem>,
) {
    let deadline = Duration::from_millis(shared.config.trigger_deadline_ms);
    let dequeued = Instant::now();
    let mut ready = Vec::with_capacity(batch.len());
    for item in batch {
        shared.metrics.observe_ms(
            "queue",
            ms(dequeued.saturating_duration_since(item.enqueued)),
        );
        match &item.trigger {
            Some(t) if t.fired_at.elapsed() > deadline => {
                let waited_ms = ms(t.fired_at.elapsed());
                let result = item_result(
                    &item,
                    Outcome::Late {
                        reason: format!(
                            "trigger deadline of {} ms passed before inference",
                            shared.config.trigger_deadline_ms
                        ),
                        waited_ms,
                    },
                );
                runtime.block_on(shared.record(result));
            }
            _ => ready.push(item),
        }
    }
    if ready.is_empty() {
        return;
    }
    // Models swapped in since the last batch are installed before the mapping that may point at
    // them is read (both under the table's lock).
    let slot_model = {
        let mut table = shared.models();
        for (m, inspector) in table.installs[worker].drain(..) {
            if inspectors.len() <= m {
                inspectors.resize_with(m + 1, || None);
            }
            inspectors[m] = Some(inspector);
        }
        let mapping = table.slot_model.clone();
        // A model no slot uses any more is unloaded.
        for (m, inspector) in inspectors.iter_mut().enumerate() {
            if inspector.is_some() && !mapping.contains(&m) {
                *inspector = None;
            }
        }
        mapping
    };
    let inferred = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        infer(inspectors, &slot_model, &ready, &shared.metrics.batch_size)
    }));
    let results = match inferred {
        Ok(results) => results,
        Err(payload) => {
            // Every frame of the batch is answered with the error; the sessions, which may
            // have been left mid-call, are replaced before the next batch.
            let message = crate::panic_text(payload.as_ref()).unwrap_or("unknown panic");
            tracing::error!(
                worker,
                frames = ready.len(),
                error = message,
                "Inference worker panicked; its sessions are opened again."
            );
            for item in &ready {
                let result = item_result(
                    item,
                    Outcome::Error {
                        message: format!("inference worker {worker} failed: {message}"),
                    },
                );
                runtime.block_on(shared.record(result));
            }
            reopen_sessions(worker, inspectors, shared);
            return;
        }
    };
    for (item, (outcome, model, timings, batch_size)) in ready.iter().zip(results) {
        let mut result = item_result(item, outcome);
        result.model = model;
        result.batch_size = batch_size;
        result.timings.preprocess_ms = timings.preprocess_ms;
        result.timings.inference_ms = timings.inference_ms;
        result.timings.postprocess_ms = timings.postprocess_ms;
        // Queued from the camera's hand-over (its preparation done) to the batch's start:
        // not the batch's inference, nor that of the model groups run before this frame's.
        result.timings.queue_ms = ms(dequeued.saturating_duration_since(item.enqueued));
        for (stage, v) in [
            ("inference", timings.inference_ms),
            ("postprocess", timings.postprocess_ms),
        ] {
            shared.metrics.observe_ms(stage, v);
        }
        let image = item.prepared.as_ref().ok().and_then(|p| p.image.clone());
        runtime.block_on(shared.emit(result, image));
    }
}

/// Replaces every session of a worker whose inference panicked with a fresh one of the same
/// package, warmed up. A package whose files no longer have the SHA-256 it was loaded with, or
/// that fails to open, keeps its old session (and the log says why): a panic unwinds through
/// linesight's own code only, never through ONNX Runtime's, so that session is whole, and its
/// results still carry the identity they were loaded with.
fn reopen_sessions(worker: usize, inspectors: &mut [Option<Inspector>], shared: &Shared) {
    for slot in inspectors.iter_mut() {
        let Some(old) = slot.as_ref() else { continue };
        let name = old.identity().name.clone();
        let (dir, sha256) = (
            old.detector.package.dir.clone(),
            old.detector.package.sha256.clone(),
        );
        // The reopening runs inference too (the warm-up): a panic there, which the failure
        // that brought it here may well cause again, must not end the worker either.
        let reopen = || {
            #[cfg(test)]
            tests::maybe_panic_reopening();
            ModelPackage::open(&dir)
                .map_err(|e| e.to_string())
                .and_then(|package| {
                    if package.sha256 != sha256 {
                        return Err(format!(
                            "its model package changed since it was loaded (SHA-256 {} instead \
                         of {sha256})",
                            package.sha256
                        ));
                    }
                    let detector = Detector::new(shared.runtime, package, &shared.inference, None)
                        .map_err(|e| e.to_string())?;
                    let mut inspector =
                        Inspector::new(detector, shared.limits).map_err(|e| e.to_string())?;
                    inspector
                        .warm_up(shared.config.batch_size)
                        .map_err(|e| e.to_string())?;
                    Ok(inspector)
                })
        };
        let reopened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(reopen))
            .unwrap_or_else(|payload| {
                Err(format!(
                    "opening it again panicked: {}",
                    crate::panic_text(payload.as_ref()).unwrap_or("unknown panic")
                ))
            });
        match reopened {
            Ok(inspector) => {
                tracing::info!(worker, model = %name, "Inference session opened again.");
                *slot = Some(inspector);
            }
            Err(e) => tracing::error!(
                worker,
                model = %name,
                path = %dir.display(),
                error = %e,
                "Cannot open the model's session again; the session in place goes on serving."
            ),
        }
    }
}

type Inferred = (
    Outcome,
    Option<ModelIdentity>,
    crate::inspect::StageTimings,
    usize,
);

/// Runs `items` through their models, one call per (model, threshold) group; each call's size
/// goes to `batch_sizes`.
fn infer(
    inspectors: &mut [Option<Inspector>],
    slot_model: &[usize],
    items: &[WorkItem],
    batch_sizes: &metrics::Histogram,
) -> Vec<Inferred> {
    #[cfg(test)]
    tests::maybe_panic(items);
    let mut out: Vec<Option<Inferred>> = (0..items.len()).map(|_| None).collect();
    let mut groups: Vec<(usize, Option<f32>, Vec<usize>)> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let model = slot_model[item.choice.slot];
        if let Err(message) = &item.prepared {
            let identity = inspectors[model].as_ref().map(|i| i.identity().clone());
            out[i] = Some((
                Outcome::Error {
                    message: format!("cannot prepare the frame: {message}"),
                },
                identity,
                Default::default(),
                0,
            ));
            continue;
        }
        let key = (model, item.choice.threshold.map(f32::to_bits));
        match groups
            .iter_mut()
            .find(|(m, t, _)| (*m, t.map(f32::to_bits)) == key)
        {
            Some(g) => g.2.push(i),
            None => groups.push((model, item.choice.threshold, vec![i])),
        }
    }
    for (model, threshold, members) in groups {
        let Some(inspector) = inspectors[model].as_mut() else {
            // Unreachable: a worker installs every model a slot points at before reading the
            // mapping. Answered rather than panicking all the same.
            for &i in &members {
                out[i] = Some((
                    Outcome::Error {
                        message: format!("model {model} is not loaded in this worker"),
                    },
                    None,
                    Default::default(),
                    0,
                ));
            }
            continue;
        };
        let images: Vec<&PreparedImage> = members
            .iter()
            .filter_map(|&i| items[i].prepared.as_ref().ok())
            .collect();
        batch_sizes.observe(images.len() as f64);
        let results = inspector.inspect_prepared(&images, threshold);
        let n = members.len();
        for (&i, r) in members.iter().zip(results) {
            out[i] = Some(match r {
                Ok(insp) => (
                    Outcome::Inspected {
                        score: insp.score,
                        verdict: insp.verdict,
                        threshold: insp.threshold,
                        regions: insp.regions,
                    },
                    Some(insp.model),
                    insp.timings,
                    n,
                ),
                Err(e) => (
                    Outcome::Error {
                        message: e.to_string(),
                    },
                    Some(inspector.identity().clone()),
                    Default::default(),
                    n,
                ),
            });
        }
    }
    out.into_iter()
        .map(|o| o.expect("every item is in one group"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inference of a batch holding a frame of this camera panics while `PANICS` is above 0.
    const PANICKING_CAMERA: &str = "panics-once";
    static PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    /// Opening a worker's sessions again panics while `REOPEN_PANICS` is above 0.
    static REOPEN_PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    /// Takes one of the panics `counter` still holds.
    fn take_one(counter: &std::sync::atomic::AtomicUsize) -> bool {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    pub(super) fn maybe_panic_reopening() {
        if take_one(&REOPEN_PANICS) {
            panic!("injected failure while opening sessions again");
        }
    }

    pub(super) fn maybe_panic(items: &[WorkItem]) {
        if items.iter().any(|i| &*i.camera == PANICKING_CAMERA) && take_one(&PANICS) {
            panic!("injected failure in inference");
        }
    }

    /// With one worker, a panic in inference answers its frame with the error, and the worker
    /// goes on with fresh sessions: the next trigger is inspected, not left in the queue.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_worker_whose_inference_panicked_goes_on_serving_the_queue() {
        let runtime = OrtRuntime::init(None, None).expect("scripts/test installs ONNX Runtime");
        let config = CameraConfig {
            id: PANICKING_CAMERA.into(),
            source: crate::source::SourceConfig::Synthetic {
                seed: 3,
                defect_rate: 0.0,
                frames: None,
            },
            mode: TriggerMode::Triggered,
            fps: 0.0,
            every_nth: 1,
            model: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/demo"),
            threshold: None,
            recipes: BTreeMap::new(),
        };
        let source = config.source.open(DecodeLimits::default()).unwrap();
        let sink = crate::actions::MemorySink::default();
        let pipeline = Pipeline::start(
            PipelineConfig {
                workers: 1,
                batch_size: 1,
                ..PipelineConfig::default()
            },
            runtime,
            SessionOptions {
                intra_threads: 1,
                ..SessionOptions::default()
            },
            DecodeLimits::default(),
            vec![Camera { config, source }],
            vec![Box::new(sink.clone())],
            None,
        )
        .await
        .unwrap();
        PANICS.store(1, Ordering::SeqCst);
        let trigger = |id: &str| Trigger {
            camera: PANICKING_CAMERA.into(),
            id: Some(id.into()),
            part_id: None,
            lot: None,
            recipe: None,
            sent_at_ms: None,
        };
        let answered = |n: usize| {
            let sink = sink.clone();
            async move {
                for _ in 0..2_000 {
                    if sink.results().len() >= n {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        pipeline.triggers().fire(trigger("first")).await.unwrap();
        answered(1).await;
        pipeline.triggers().fire(trigger("second")).await.unwrap();
        answered(2).await;
        // Again, and this time opening the sessions again panics too: the sessions in place
        // go on serving.
        PANICS.store(1, Ordering::SeqCst);
        REOPEN_PANICS.store(1, Ordering::SeqCst);
        pipeline.triggers().fire(trigger("third")).await.unwrap();
        answered(3).await;
        pipeline.triggers().fire(trigger("fourth")).await.unwrap();
        answered(4).await;
        assert_eq!(
            REOPEN_PANICS.load(Ordering::SeqCst),
            0,
            "the reopening was tried"
        );
        let results = sink.results();
        assert_eq!(results.len(), 4, "{results:?}");
        // Each time: the frame that met the panic answered with the error, the next inspected.
        for pair in results.chunks(2) {
            assert!(
                matches!(&pair[0].outcome, Outcome::Error { message } if message.contains("injected failure")),
                "{:?}",
                pair[0].outcome
            );
            assert!(
                matches!(pair[1].outcome, Outcome::Inspected { .. }),
                "{:?}",
                pair[1].outcome
            );
        }
        let summary = pipeline.shutdown().await;
        assert_eq!((summary.inspected, summary.errors), (2, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn workers_past_the_deadline_are_handed_back_and_finished_ones_left_alone() {
        let quick = tokio::spawn(async {});
        let slow = tokio::spawn(tokio::time::sleep(Duration::from_millis(300)));
        let left = join_within(vec![quick, slow], Duration::from_millis(50)).await;
        assert_eq!(left.len(), 1, "only the slow worker is still running");
        // Awaiting what is left must not poll the quick worker's handle a second time.
        for worker in left {
            worker.await.unwrap();
        }
        let quick = tokio::spawn(async {});
        assert!(
            join_within(vec![quick], Duration::from_millis(50))
                .await
                .is_empty()
        );
    }

    #[test]
    fn rfc3339_formats_utc_with_milliseconds() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        assert_eq!(rfc3339(t), "2026-11-18T11:06:40.123Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
