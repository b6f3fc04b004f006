//! Recording results in the quality store: the pipeline's durable action.
//!
//! Every inspected frame becomes an inspection record (which applies the quality rules: a
//! reject opens a secondary-inspection task, a lot's reject rate may raise an NCR); a trigger
//! is answered in the trigger journal in the same transaction. Late, busy and failed triggers
//! are answered in the journal too.
//!
//! Invariants:
//! - a result is recorded before the other sinks see it (results.jsonl, stdout), so what an
//!   operator saw printed is in the store;
//! - a write that fails is retried with back-off until it succeeds or the pipeline's shutdown
//!   deadline passes: the queues back up meanwhile (free-run frames drop, new triggers are
//!   answered "busy"), and nothing is dropped silently - every give-up is logged with the
//!   result and counted (`linesight_store_errors_total`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use image::RgbImage;
use serde::{Deserialize, Serialize};

use super::{InspectionResult, Outcome};
use crate::quality::{NewInspection, QualityConfig};
use crate::store::{Store, StoreError, TriggerAnswer, write_image_files};

/// `[pipeline] store_images`: which frames are kept as images with their record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImagePolicy {
    /// No frame images (records only).
    None,
    /// Frames judged defect or within the uncertainty band of the threshold: the ones an
    /// inspector has to look at.
    #[default]
    Rejects,
    /// Every inspected frame (disk use is bounded by `quality.image_quota_bytes`).
    All,
}

/// What the pipeline needs to record into the quality store.
#[derive(Debug, Clone)]
pub struct Recorder {
    pub store: Store,
    pub quality: QualityConfig,
    /// Production line name written on every record.
    pub line: String,
    /// Lot of free-run frames and of triggers that name none.
    pub default_lot: String,
    pub images: ImagePolicy,
    /// Where frame images go (content-addressed).
    pub image_dir: PathBuf,
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> i64 {
    crate::quality::now_ms()
}

impl Recorder {
    /// The record of an inspected result (`None` for late, busy and error results).
    fn new_inspection(&self, r: &InspectionResult) -> Option<NewInspection> {
        let Outcome::Inspected {
            score,
            verdict,
            threshold,
            regions,
        } = &r.outcome
        else {
            return None;
        };
        let model = r.model.as_ref()?;
        Some(NewInspection {
            part_id: r.part_id.clone().unwrap_or_else(|| {
                // Free-run frames have no part id: camera, frame time and number make one that
                // is unique across restarts.
                format!("{}-{}-{}", r.camera, r.frame_time, r.sequence)
            }),
            lot: r.lot.clone().unwrap_or_else(|| self.default_lot.clone()),
            line: self.line.clone(),
            recipe: r.recipe.clone().unwrap_or_else(|| "default".into()),
            camera: r.camera.clone(),
            model_name: model.name.clone(),
            model_sha256: model.sha256.clone(),
            threshold: f64::from(*threshold),
            score: f64::from(*score),
            verdict: *verdict,
            regions_json: serde_json::to_string(regions).unwrap_or_else(|_| "[]".into()),
            image_ref: None,
            overlay_ref: None,
            timings_json: serde_json::to_string(&r.timings).unwrap_or_else(|_| "{}".into()),
            source: "automatic".into(),
            defect_class: None,
        })
    }

    fn keeps_image(&self, new: &NewInspection) -> bool {
        match self.images {
            ImagePolicy::None => false,
            ImagePolicy::All => true,
            ImagePolicy::Rejects => {
                new.verdict == crate::postprocess::Verdict::Defect
                    || (new.score - new.threshold).abs() <= self.quality.uncertainty_band
            }
        }
    }

    /// Records `result` once; the caller retries on error. `Ok(false)`: a late, busy or error
    /// answer to a trigger that had its answer already, which is not an answer any more (an
    /// orphan scan that read the journal just before the trigger's own answer was recorded).
    pub async fn record(
        &self,
        result: &InspectionResult,
        image: Option<&Arc<RgbImage>>,
    ) -> Result<bool, StoreError> {
        let trigger = result.trigger_id.as_deref();
        let Some(mut new) = self.new_inspection(result) else {
            let (answer, reason) = match &result.outcome {
                Outcome::Late { reason, .. } => (TriggerAnswer::Late, reason.as_str()),
                Outcome::Busy { reason } => (TriggerAnswer::Busy, reason.as_str()),
                Outcome::Error { message } => (TriggerAnswer::Error, message.as_str()),
                Outcome::Inspected { .. } => (TriggerAnswer::Error, "no model identity"),
            };
            let Some(id) = trigger else { return Ok(true) };
            if self
                .store
                .answer_trigger(id, answer, reason, now_ms())
                .await?
            {
                return Ok(true);
            }
            // Answered already: by an earlier try of this very answer whose commit went
            // through although it reported an error (then it is this answer, recorded), or
            // otherwise (then this one is superseded).
            let stored = self.store.trigger(id).await?;
            return Ok(stored.is_some_and(|t| {
                t.state == answer.as_str() && t.reason.as_deref() == Some(reason)
            }));
        };
        // A pass of a part found defective before goes to an inspector, who needs its image
        // (free-run frames have no part id of their own: never a re-test).
        let keep = self.keeps_image(&new)
            || (self.images == ImagePolicy::Rejects
                && result.part_id.is_some()
                && image.is_some()
                && new.verdict != crate::postprocess::Verdict::Defect
                && self.store.part_found_defective(&new.part_id).await?);
        let mut files = Vec::new();
        if let Some(image) = image.filter(|_| keep) {
            // A record the store would refuse writes no file (the quota counts recorded ones).
            Store::check_inspection(&new)?;
            let (image, dir) = (image.clone(), self.image_dir.clone());
            let written = tokio::task::spawn_blocking(move || {
                write_image_files(&dir, &[encode_png(&image)?])
            })
            .await
            .map_err(|e| StoreError::Invalid(format!("image encoding and writing stopped: {e}")))
            .and_then(|w| w);
            match written {
                Ok(written) => files = written,
                // The verdict matters more than its picture: a frame whose image cannot be
                // written (a full or failing disk) is recorded without it, and the log says so.
                Err(e) => tracing::error!(
                    camera = %result.camera,
                    part = %new.part_id,
                    error = %e,
                    "Frame image not kept; the inspection is recorded without it."
                ),
            }
            new.image_ref = files.first().map(|f| f.hash.clone());
        }
        // The frame's image row, the inspection and the trigger's answer: one transaction.
        self.store
            .record_inspection_for_trigger(
                &new,
                &self.quality,
                crate::store::SYSTEM_ACTOR,
                trigger,
                &files,
            )
            .await?;
        Ok(true)
    }

    /// Records with retries until it succeeds or `stop` says stop ([`RetryStop`]).
    pub async fn record_with_retry(
        &self,
        result: &InspectionResult,
        image: Option<&Arc<RgbImage>>,
        stop: &RetryStop,
        errors: &std::sync::atomic::AtomicU64,
    ) -> Stored {
        let not_recorded = |e: &dyn std::fmt::Display| {
            tracing::error!(camera = %result.camera, sequence = result.sequence, trigger = ?result.trigger_id, error = %e, "Result NOT recorded in the quality store (or not confirmed): shutdown deadline passed (it is in results.jsonl if configured).");
            Stored::NotRecorded
        };
        let mut backoff = Duration::from_millis(50);
        loop {
            if stop.has_passed() && stop.failing() {
                return not_recorded(&"the store's last write failed too");
            }
            // A task of its own: past the deadline the stop stops waiting for it rather than
            // dropping it in the middle of a transaction (on SQLite the one writer connection
            // could go back to the pool inside an open transaction); it finishes, or ends with
            // the runtime.
            let write = {
                let (recorder, result, image) = (self.clone(), result.clone(), image.cloned());
                tokio::spawn(async move { recorder.record(&result, image.as_ref()).await })
            };
            tokio::pin!(write);
            let finished = if stop.has_passed() {
                None
            } else {
                tokio::select! {
                    attempt = &mut write => Some(attempt),
                    () = stop.wait() => None,
                }
            };
            // Past the deadline, a write gets [`AFTER_DEADLINE`] more to finish: a store that
            // works answers within it, one that is slow or away holds the stop no longer.
            let joined = match finished {
                Some(joined) => joined,
                None => match tokio::time::timeout(AFTER_DEADLINE, &mut write).await {
                    Ok(joined) => joined,
                    Err(_) => {
                        stop.set_failing(true);
                        errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        return not_recorded(&format!(
                            "its write (image and record) had not finished {} ms past the shutdown deadline; not waited for any longer, it may still complete",
                            AFTER_DEADLINE.as_millis()
                        ));
                    }
                },
            };
            let attempt = joined.unwrap_or_else(|e| {
                Err(StoreError::Io {
                    what: "record a result".into(),
                    source: std::io::Error::other(e),
                })
            });
            let retryable = matches!(
                attempt,
                Err(StoreError::Db { .. } | StoreError::Connect { .. })
            );
            stop.set_failing(retryable);
            match attempt {
                Ok(true) => return Stored::Recorded,
                Ok(false) => {
                    tracing::info!(camera = %result.camera, trigger = ?result.trigger_id, "A second answer to a trigger is dropped: its first answer stands.");
                    return Stored::Superseded;
                }
                Err(e @ StoreError::TriggerAnswered { .. }) => {
                    tracing::warn!(camera = %result.camera, trigger = ?result.trigger_id, error = %e, "Result not recorded again: an earlier try of it was.");
                    return Stored::Recorded;
                }
                // `ImageGone`: image retention deleted a byte-identical file between its
                // writing and the record; the next attempt writes it again.
                Err(
                    e @ (StoreError::Db { .. }
                    | StoreError::Connect { .. }
                    | StoreError::ImageGone { .. }),
                ) => {
                    errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if stop.has_passed() {
                        return not_recorded(&e);
                    }
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "Quality store write failed; retrying.");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = stop.wait() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    // Refused data does not get better by retrying. Its trigger is answered
                    // with the refusal, so that it is not taken for an orphan and answered a
                    // second time, "late", later.
                    errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::error!(camera = %result.camera, sequence = result.sequence, trigger = ?result.trigger_id, error = %e, "Result refused by the quality store.");
                    if let Some(id) = &result.trigger_id {
                        let why = format!("its result was refused by the quality store: {e}");
                        if let Err(e) = self
                            .store
                            .answer_trigger(id, TriggerAnswer::Error, &why, now_ms())
                            .await
                        {
                            tracing::error!(trigger = %id, error = %e, "Cannot answer the trigger of a refused result; it stays pending.");
                        }
                    }
                    return Stored::NotRecorded;
                }
            }
        }
    }
}

/// How long a write may take once the shutdown deadline has passed.
const AFTER_DEADLINE: Duration = Duration::from_secs(2);

/// When [`Recorder::record_with_retry`] stops retrying: once the shutdown deadline has
/// passed ([`Self::pass`]), a store that is down no longer holds the stop up. Each write, the
/// one in progress at that moment included, gets [`AFTER_DEADLINE`] more (an unreachable
/// PostgreSQL would hold it for `store.acquire_timeout_ms`); a failed or abandoned write is not
/// retried, and while the store's last write failed, the results still queued are not tried
/// one by one. While it works, they are all still written.
#[derive(Debug)]
pub struct RetryStop {
    passed: tokio::sync::watch::Sender<bool>,
    /// Whether the store's last write failed (a success clears it).
    failing: std::sync::atomic::AtomicBool,
}

impl Default for RetryStop {
    fn default() -> Self {
        RetryStop {
            passed: tokio::sync::watch::Sender::new(false),
            failing: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl RetryStop {
    /// One whose deadline has passed already: each result gets one attempt.
    pub fn passed_already() -> Self {
        let stop = Self::default();
        stop.pass();
        stop
    }

    /// The deadline has passed.
    pub fn pass(&self) {
        self.passed.send_replace(true);
    }

    pub fn has_passed(&self) -> bool {
        *self.passed.borrow()
    }

    fn failing(&self) -> bool {
        self.failing.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn set_failing(&self, failing: bool) {
        self.failing
            .store(failing, std::sync::atomic::Ordering::SeqCst);
    }

    /// Resolves when the deadline passes.
    async fn wait(&self) {
        let mut passed = self.passed.subscribe();
        // The sender lives in `self`: the channel cannot close while this waits.
        let _ = passed.wait_for(|p| *p).await;
    }
}

/// What became of a result in the quality store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    Recorded,
    /// A late, busy or error answer to a trigger already answered: not an answer; it goes to
    /// no sink either, so that each trigger has one result everywhere.
    Superseded,
    /// Not recorded: the store refused it, or stayed away past the shutdown deadline.
    NotRecorded,
}

/// PNG with fast compression: lossless evidence, cheap enough for the actions path.
fn encode_png(image: &RgbImage) -> Result<Vec<u8>, StoreError> {
    use image::ImageEncoder as _;
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new_with_quality(
        &mut out,
        image::codecs::png::CompressionType::Fast,
        image::codecs::png::FilterType::Adaptive,
    )
    .write_image(
        image.as_raw(),
        image.width(),
        image.height(),
        image::ExtendedColorType::Rgb8,
    )
    .map_err(|e| StoreError::Invalid(format!("cannot encode the frame as PNG: {e}")))?;
    Ok(out)
}
