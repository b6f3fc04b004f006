//! `[pipeline]` and `[[cameras]]` settings.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::source::SourceConfig;

/// `[pipeline]`: queues, batching, workers, shutdown and the HTTP endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Inference workers; each owns one ONNX Runtime session per model (threads per session:
    /// `[inference] intra_threads`; providers: `[inference] execution_providers`).
    pub workers: usize,
    /// Most frames per inference call. A fixed-batch model is fed in chunks of its own size.
    pub batch_size: usize,
    /// How long a worker holding fewer than `batch_size` frames waits for more.
    pub max_batch_wait_ms: u64,
    /// With `batch_size` above 1: at start, time the first camera's model at batch sizes 1, 2,
    /// 4, … up to `batch_size` and batch up to the size fastest per frame (logged), so that
    /// batching never costs throughput on hardware where larger batches are slower.
    pub batch_autotune: bool,
    /// Frames waiting for inference, all cameras together.
    pub queue_capacity: usize,
    /// Triggers waiting for a frame, per camera; a trigger beyond it is answered "busy".
    pub trigger_queue_capacity: usize,
    /// A triggered frame not inferred within this time of its trigger is answered "late".
    pub trigger_deadline_ms: u64,
    /// On SIGTERM/SIGINT, time given to frames in flight before they are answered "late".
    pub shutdown_deadline_ms: u64,
    /// First wait before reopening a failed source; doubled per failure up to the maximum.
    pub reopen_backoff_initial_ms: u64,
    pub reopen_backoff_max_ms: u64,
    /// A triggered camera waiting for its next trigger is checked this often (device still
    /// there, stream still arriving; [`crate::source::FrameSource::probe`]), so that health
    /// tells a camera that went away before the next part comes. One that failed is reopened
    /// with the back-off above while it waits.
    pub probe_interval_ms: u64,
    /// Folder for `results.jsonl` (none: no file).
    pub results_dir: Option<PathBuf>,
    /// Print one line per result on stdout.
    pub print_results: bool,
    /// Address of the HTTP endpoint (`POST /api/v1/triggers`, `GET /metrics`,
    /// `GET /api/v1/health`); none: no endpoint.
    pub listen: Option<String>,
    /// Subscribe to triggers over MQTT (none: no subscription).
    pub mqtt_triggers: Option<super::mqtt::MqttTriggerConfig>,
    /// Record every result in the quality store (`[store]`), journal triggers there before
    /// acknowledging them, and open secondary inspections for rejects (`[quality]` rules).
    pub record: bool,
    /// Production line name written on every record.
    pub line: String,
    /// Lot of free-run frames and of triggers that name none.
    pub default_lot: String,
    /// A journalled trigger still unanswered this long after it came is taken for the trigger
    /// of an instance that stopped (or crashed) before serving it, and answered "late" by
    /// whichever instance sharing the store sees it first.
    pub orphan_trigger_after_ms: u64,
    /// Frames kept as images with their records: `none`, `rejects` (defect or uncertain
    /// scores, and passes of parts found defective before: what an inspector must see) or
    /// `all`.
    pub store_images: super::ImagePolicy,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            workers: 1,
            batch_size: 1,
            max_batch_wait_ms: 2,
            batch_autotune: true,
            queue_capacity: 8,
            trigger_queue_capacity: 64,
            trigger_deadline_ms: 2_000,
            shutdown_deadline_ms: 5_000,
            reopen_backoff_initial_ms: 200,
            reopen_backoff_max_ms: 10_000,
            probe_interval_ms: 5_000,
            results_dir: None,
            print_results: false,
            listen: None,
            mqtt_triggers: None,
            record: true,
            line: "line-1".into(),
            default_lot: "unassigned".into(),
            orphan_trigger_after_ms: 60_000,
            store_images: super::ImagePolicy::Rejects,
        }
    }
}

/// Whether a camera inspects every frame it delivers or only frames asked for by a trigger.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TriggerMode {
    #[default]
    FreeRun,
    Triggered,
}

/// A recipe: the model and threshold a camera uses for one product.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipeConfig {
    pub model: PathBuf,
    /// Image threshold (defect when score > threshold); none: the model's own.
    #[serde(default)]
    pub threshold: Option<f32>,
}

/// One `[[cameras]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    /// Unique name, carried by every result.
    pub id: String,
    pub source: SourceConfig,
    #[serde(default)]
    pub mode: TriggerMode,
    /// Free-run: frames per second asked of the source; 0: as fast as it delivers. Triggered
    /// cameras grab one frame per trigger.
    #[serde(default)]
    pub fps: f64,
    /// Free-run: inspect every Nth frame delivered.
    #[serde(default = "one")]
    pub every_nth: u64,
    /// The model and threshold when no recipe is named.
    pub model: PathBuf,
    #[serde(default)]
    pub threshold: Option<f32>,
    /// Named recipes a trigger may select (product change-over).
    #[serde(default)]
    pub recipes: BTreeMap<String, RecipeConfig>,
}

fn one() -> u64 {
    1
}

/// Problems with the pipeline and camera settings, all of them.
pub fn problems(pipeline: &PipelineConfig, cameras: &[CameraConfig]) -> Vec<String> {
    let mut p = Vec::new();
    let mut range = |field: &str, value: u64, lo: u64, hi: u64| {
        if !(lo..=hi).contains(&value) {
            p.push(format!(
                "pipeline.{field} = {value}: must be between {lo} and {hi}"
            ));
        }
    };
    range("workers", pipeline.workers as u64, 1, 64);
    range(
        "orphan_trigger_after_ms",
        pipeline.orphan_trigger_after_ms,
        1_000,
        86_400_000,
    );
    range("batch_size", pipeline.batch_size as u64, 1, 256);
    range("max_batch_wait_ms", pipeline.max_batch_wait_ms, 0, 10_000);
    range("queue_capacity", pipeline.queue_capacity as u64, 1, 100_000);
    range(
        "trigger_queue_capacity",
        pipeline.trigger_queue_capacity as u64,
        1,
        100_000,
    );
    range(
        "trigger_deadline_ms",
        pipeline.trigger_deadline_ms,
        1,
        3_600_000,
    );
    range(
        "shutdown_deadline_ms",
        pipeline.shutdown_deadline_ms,
        0,
        600_000,
    );
    range(
        "reopen_backoff_initial_ms",
        pipeline.reopen_backoff_initial_ms,
        1,
        3_600_000,
    );
    range(
        "reopen_backoff_max_ms",
        pipeline.reopen_backoff_max_ms,
        1,
        3_600_000,
    );
    range(
        "probe_interval_ms",
        pipeline.probe_interval_ms,
        10,
        3_600_000,
    );
    if pipeline.reopen_backoff_initial_ms > pipeline.reopen_backoff_max_ms {
        p.push(format!(
            "pipeline.reopen_backoff_initial_ms = {}: must be at most pipeline.reopen_backoff_max_ms \
             = {} (the first wait would be longer than the longest)",
            pipeline.reopen_backoff_initial_ms, pipeline.reopen_backoff_max_ms
        ));
    }
    if pipeline.queue_capacity < pipeline.batch_size {
        p.push(format!(
            "pipeline.queue_capacity = {}: must be at least pipeline.batch_size = {}, or a batch \
             never fills and every batch waits max_batch_wait_ms",
            pipeline.queue_capacity, pipeline.batch_size
        ));
    }
    if pipeline.batch_size > 1 && pipeline.trigger_deadline_ms <= pipeline.max_batch_wait_ms {
        p.push(format!(
            "pipeline.trigger_deadline_ms = {}: must be more than pipeline.max_batch_wait_ms = {} \
             when batch_size is above 1, or a lone trigger waiting for its batch is always late",
            pipeline.trigger_deadline_ms, pipeline.max_batch_wait_ms
        ));
    }
    if pipeline.orphan_trigger_after_ms <= pipeline.trigger_deadline_ms {
        p.push(format!(
            "pipeline.orphan_trigger_after_ms = {}: must be more than pipeline.trigger_deadline_ms \
             = {}, or a trigger still being served is answered \"late\" as an orphan",
            pipeline.orphan_trigger_after_ms, pipeline.trigger_deadline_ms
        ));
    }
    if let Some(mqtt) = &pipeline.mqtt_triggers {
        p.extend(mqtt.problems());
    }
    if pipeline.mqtt_triggers.is_some() && !pipeline.record {
        p.push(
            "pipeline.mqtt_triggers needs pipeline.record = true: an MQTT trigger is acknowledged \
             to the broker once it is journalled in the quality store, and without the store it \
             would be acknowledged and then lost by a restart"
                .into(),
        );
    }
    if let Some(listen) = &pipeline.listen
        && listen.parse::<std::net::SocketAddr>().is_err()
    {
        p.push(format!(
            "pipeline.listen = {listen:?}: must be an address and port such as \"127.0.0.1:8090\""
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, c) in cameras.iter().enumerate() {
        let field = format!("cameras[{i}]");
        if c.id.is_empty()
            || c.id.len() > 64
            || !c
                .id
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
        {
            p.push(format!(
                "{field}.id = {:?}: must be 1 to 64 characters of letters, digits, '-', '_' or '.'",
                c.id
            ));
        }
        if !seen.insert(c.id.clone()) {
            p.push(format!(
                "{field}.id = {:?}: another camera has this id",
                c.id
            ));
        }
        if !(c.fps.is_finite() && (c.fps == 0.0 || (0.001..=1000.0).contains(&c.fps))) {
            p.push(format!(
                "{field}.fps = {}: must be 0 (as fast as the source delivers) or between 0.001 \
                 and 1000",
                c.fps
            ));
        }
        if c.every_nth == 0 {
            p.push(format!("{field}.every_nth = 0: must be at least 1"));
        }
        // A line-triggered camera's frames queue in the camera, one per pulse: pairing them
        // with HTTP or MQTT triggers would shift every later part onto the wrong trigger
        // the first time one pulse or one trigger went missing (or came late).
        if c.source.each_frame_is_a_part() && c.mode == TriggerMode::Triggered {
            p.push(format!(
                "{field}.mode = \"triggered\": a line-triggered camera (source trigger = \"line\") \
                 runs with mode = \"free-run\", each pulse a part; for triggers that carry part \
                 ids, use trigger = \"software\""
            ));
        }
        // Each pulse on a line-triggered camera's input is a part: none may be skipped.
        if c.source.each_frame_is_a_part() && c.mode == TriggerMode::FreeRun {
            if c.every_nth != 1 {
                p.push(format!(
                    "{field}.every_nth = {}: must be 1 for a line-triggered camera (each frame is \
                     a part; skipping frames would leave parts uninspected)",
                    c.every_nth
                ));
            }
            if c.fps != 0.0 {
                p.push(format!(
                    "{field}.fps = {}: must be 0 for a line-triggered camera (the line paces it; \
                     a slower pace would let parts pile up in the camera)",
                    c.fps
                ));
            }
        }
        for (name, t) in std::iter::once(("threshold".to_string(), c.threshold)).chain(
            c.recipes
                .iter()
                .map(|(n, r)| (format!("recipes.{n}.threshold"), r.threshold)),
        ) {
            if t.is_some_and(|t| !t.is_finite()) {
                p.push(format!("{field}.{name}: must be a finite number"));
            }
        }
        p.extend(c.source.problems(&format!("{field}.source")));
    }
    for (field, value) in [
        ("line", &pipeline.line),
        ("default_lot", &pipeline.default_lot),
    ] {
        if value.trim().is_empty() || value.len() > 200 {
            p.push(format!(
                "pipeline.{field} = {value:?}: must be 1 to 200 bytes, not blank"
            ));
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Settings each valid alone but not together, and a frame rate too slow to pace.
    #[test]
    fn settings_that_would_make_every_trigger_late_or_lose_one_are_refused() {
        let camera = CameraConfig {
            id: "press".into(),
            source: SourceConfig::Synthetic {
                seed: 1,
                defect_rate: 0.0,
                frames: None,
            },
            mode: TriggerMode::Triggered,
            fps: 1e-20,
            every_nth: 1,
            model: PathBuf::from("models/demo"),
            threshold: None,
            recipes: BTreeMap::new(),
        };
        let pipeline = PipelineConfig {
            batch_size: 4,
            queue_capacity: 2,
            reopen_backoff_initial_ms: 20_000,
            max_batch_wait_ms: 50,
            trigger_deadline_ms: 50,
            orphan_trigger_after_ms: 1_000,
            record: false,
            mqtt_triggers: Some(super::super::mqtt::MqttTriggerConfig::default()),
            ..PipelineConfig::default()
        };
        let p = problems(&pipeline, std::slice::from_ref(&camera)).join("\n");
        for expected in [
            "pipeline.trigger_deadline_ms = 50: must be more than pipeline.max_batch_wait_ms = 50",
            "pipeline.queue_capacity = 2: must be at least pipeline.batch_size = 4",
            "pipeline.reopen_backoff_initial_ms = 20000: must be at most pipeline.reopen_backoff_max_ms = 10000",
            "cameras[0].fps = 0.00000000000000000001: must be 0",
            "pipeline.mqtt_triggers needs pipeline.record = true",
        ] {
            assert!(p.contains(expected), "{expected:?} missing from\n{p}");
        }
        let late_orphans = PipelineConfig {
            trigger_deadline_ms: 2_000,
            ..pipeline
        };
        let p = problems(&late_orphans, &[]).join("\n");
        assert!(
            p.contains("pipeline.orphan_trigger_after_ms = 1000: must be more than"),
            "{p}"
        );
        let bad_mqtt = PipelineConfig {
            mqtt_triggers: Some(super::super::mqtt::MqttTriggerConfig {
                client_id: String::new(),
                topic_prefix: "plant/triggers/".into(),
                ..Default::default()
            }),
            ..PipelineConfig::default()
        };
        let p = problems(&bad_mqtt, &[]).join("\n");
        for expected in [
            "pipeline.mqtt_triggers.client_id = \"\": must be 1 to 256 bytes",
            "pipeline.mqtt_triggers.topic_prefix = \"plant/triggers/\": must be",
        ] {
            assert!(p.contains(expected), "{expected:?} missing from\n{p}");
        }
        let fine = CameraConfig { fps: 0.5, ..camera };
        assert!(problems(&PipelineConfig::default(), std::slice::from_ref(&fine)).is_empty());

        // A line-triggered camera's frames are parts: none skipped, none left to pile up.
        let line = CameraConfig {
            source: serde_json::from_value(serde_json::json!({"kind": "gige", "trigger": "line"}))
                .unwrap(),
            mode: TriggerMode::FreeRun,
            every_nth: 3,
            ..fine
        };
        let p = problems(&PipelineConfig::default(), std::slice::from_ref(&line)).join("\n");
        for expected in [
            "cameras[0].every_nth = 3: must be 1 for a line-triggered camera",
            "cameras[0].fps = 0.5: must be 0 for a line-triggered camera",
        ] {
            assert!(p.contains(expected), "{expected:?} missing from\n{p}");
        }
        let paired_with_triggers = CameraConfig {
            mode: TriggerMode::Triggered,
            ..line.clone()
        };
        let p = problems(&PipelineConfig::default(), &[paired_with_triggers]).join("\n");
        assert!(
            p.contains("cameras[0].mode = \"triggered\": a line-triggered camera"),
            "{p}"
        );
        let paced_by_the_line = CameraConfig {
            every_nth: 1,
            fps: 0.0,
            ..line
        };
        let p = problems(&PipelineConfig::default(), &[paced_by_the_line]);
        assert!(
            p.iter()
                .all(|p| p.contains("built without GigE Vision support")),
            "{p:?}"
        );
    }
}
