//! Pipeline metrics in the Prometheus text format (`GET /metrics`).
//!
//! Lock-free counters per camera (frames in, results out by status, drops, source errors),
//! histograms of stage latencies and batch sizes, and queue depths read when rendered. Names
//! follow `linesight_<thing>_<unit>` / `_total`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one camera.
#[derive(Debug, Default)]
pub struct CameraCounters {
    pub frames_in: AtomicU64,
    pub frames_dropped: AtomicU64,
    pub inspected: AtomicU64,
    pub late: AtomicU64,
    pub busy: AtomicU64,
    pub errors: AtomicU64,
    pub source_errors: AtomicU64,
}

/// A fixed-bucket histogram.
#[derive(Debug)]
pub struct Histogram {
    bounds: Vec<f64>,
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &[f64]) -> Histogram {
        Histogram {
            bounds: bounds.to_vec(),
            counts: (0..bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: f64) {
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            if value <= *bound {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((value.max(0.0) * 1e6) as u64, Ordering::Relaxed);
    }

    pub(crate) fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {}",
                count.load(Ordering::Relaxed)
            );
        }
        let total = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {total}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {total}");
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// The stages whose latency is measured.
pub const STAGES: [&str; 6] = [
    "capture",
    "queue",
    "preprocess",
    "inference",
    "postprocess",
    "total",
];

/// All pipeline metrics.
#[derive(Debug)]
pub struct Metrics {
    pub cameras: BTreeMap<String, CameraCounters>,
    /// Seconds per stage, in [`STAGES`] order.
    pub stage_seconds: Vec<Histogram>,
    pub batch_size: Histogram,
    pub sink_errors: AtomicU64,
    /// Quality-store writes that failed (each retried one counts once per failure).
    pub store_errors: AtomicU64,
    /// Results the quality store did not record in the end: refused, or the store still down
    /// when the shutdown deadline passed.
    pub results_not_recorded: AtomicU64,
}

impl Metrics {
    pub fn new<'a>(cameras: impl IntoIterator<Item = &'a str>) -> Metrics {
        let latency = [
            0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
        ];
        Metrics {
            cameras: cameras
                .into_iter()
                .map(|c| (c.to_string(), CameraCounters::default()))
                .collect(),
            stage_seconds: STAGES.iter().map(|_| Histogram::new(&latency)).collect(),
            batch_size: Histogram::new(&[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
            sink_errors: AtomicU64::new(0),
            store_errors: AtomicU64::new(0),
            results_not_recorded: AtomicU64::new(0),
        }
    }

    /// The counters of `camera` (every camera is registered at start).
    pub fn camera(&self, camera: &str) -> Option<&CameraCounters> {
        self.cameras.get(camera)
    }

    /// Records a stage latency in milliseconds.
    pub fn observe_ms(&self, stage: &str, ms: f64) {
        if let Some(i) = STAGES.iter().position(|s| *s == stage) {
            self.stage_seconds[i].observe(ms / 1e3);
        }
    }

    /// Prometheus text exposition; `queue_depth` (the inference queue) and `triggers_waiting`
    /// (each triggered camera's trigger queue) are read by the caller at render time.
    pub fn render(
        &self,
        queue_depth: usize,
        triggers_waiting: &BTreeMap<String, usize>,
        camera_up: &BTreeMap<String, bool>,
    ) -> String {
        let mut out = String::new();
        let counter =
            |out: &mut String, name: &str, help: &str, get: &dyn Fn(&CameraCounters) -> u64| {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
                for (camera, c) in &self.cameras {
                    let _ = writeln!(out, "{name}{{camera=\"{camera}\"}} {}", get(c));
                }
            };
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            &mut out,
            "linesight_frames_in_total",
            "Frames delivered by the source.",
            &|c| load(&c.frames_in),
        );
        counter(
            &mut out,
            "linesight_frames_dropped_total",
            "Free-run frames dropped at a full queue.",
            &|c| load(&c.frames_dropped),
        );
        counter(
            &mut out,
            "linesight_frames_out_total",
            "Frames inspected (results with a verdict).",
            &|c| load(&c.inspected),
        );
        counter(
            &mut out,
            "linesight_results_late_total",
            "Triggers answered late (deadline passed before inference).",
            &|c| load(&c.late),
        );
        counter(
            &mut out,
            "linesight_results_busy_total",
            "Triggers answered busy (queues full).",
            &|c| load(&c.busy),
        );
        counter(
            &mut out,
            "linesight_results_error_total",
            "Frames or triggers that ended in an error result.",
            &|c| load(&c.errors),
        );
        counter(
            &mut out,
            "linesight_source_errors_total",
            "Failed grabs and reopen attempts.",
            &|c| load(&c.source_errors),
        );
        let _ = writeln!(
            out,
            "# HELP linesight_camera_up 1 when the camera's last grab succeeded.\n# TYPE linesight_camera_up gauge"
        );
        for (camera, up) in camera_up {
            let _ = writeln!(
                out,
                "linesight_camera_up{{camera=\"{camera}\"}} {}",
                u8::from(*up)
            );
        }
        let _ = writeln!(
            out,
            "# HELP linesight_queue_depth Frames waiting for inference, and triggers waiting for their camera.\n# TYPE linesight_queue_depth gauge\nlinesight_queue_depth{{queue=\"inference\"}} {queue_depth}"
        );
        for (camera, waiting) in triggers_waiting {
            let _ = writeln!(
                out,
                "linesight_queue_depth{{queue=\"triggers\",camera=\"{camera}\"}} {waiting}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP linesight_stage_latency_seconds Time per frame in each stage.\n# TYPE linesight_stage_latency_seconds histogram"
        );
        for (stage, h) in STAGES.iter().zip(&self.stage_seconds) {
            h.render(
                &mut out,
                "linesight_stage_latency_seconds",
                &format!("stage=\"{stage}\""),
            );
        }
        let _ = writeln!(
            out,
            "# HELP linesight_inference_batch_size Frames per inference call.\n# TYPE linesight_inference_batch_size histogram"
        );
        self.batch_size
            .render(&mut out, "linesight_inference_batch_size", "");
        let _ = writeln!(
            out,
            "# HELP linesight_sink_errors_total Results a sink failed to record.\n# TYPE linesight_sink_errors_total counter\nlinesight_sink_errors_total {}",
            load(&self.sink_errors)
        );
        let _ = writeln!(
            out,
            "# HELP linesight_store_errors_total Failed quality-store writes (retried until the shutdown deadline).\n# TYPE linesight_store_errors_total counter\nlinesight_store_errors_total {}",
            load(&self.store_errors)
        );
        let _ = writeln!(
            out,
            "# HELP linesight_results_not_recorded_total Results the quality store did not record or confirm: refused (a trigger is then answered error), or still failing at the shutdown deadline (a trigger is then answered at the next start); each is in the results file when one is configured.\n# TYPE linesight_results_not_recorded_total counter\nlinesight_results_not_recorded_total {}",
            load(&self.results_not_recorded)
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let m = Metrics::new(["cam1"]);
        m.camera("cam1")
            .unwrap()
            .frames_in
            .fetch_add(3, Ordering::Relaxed);
        m.observe_ms("inference", 3.0);
        m.observe_ms("inference", 30.0);
        let text = m.render(
            2,
            &BTreeMap::from([("press".to_string(), 3)]),
            &BTreeMap::from([("cam1".to_string(), true)]),
        );
        assert!(text.contains("linesight_queue_depth{queue=\"triggers\",camera=\"press\"} 3"));
        assert!(
            text.contains("linesight_frames_in_total{camera=\"cam1\"} 3"),
            "{text}"
        );
        assert!(text.contains("linesight_queue_depth{queue=\"inference\"} 2"));
        assert!(text.contains(
            "linesight_stage_latency_seconds_bucket{stage=\"inference\",le=\"0.005\"} 1"
        ));
        assert!(
            text.contains(
                "linesight_stage_latency_seconds_bucket{stage=\"inference\",le=\"0.05\"} 2"
            )
        );
        assert!(text.contains("linesight_stage_latency_seconds_count{stage=\"inference\"} 2"));
        assert!(text.contains("linesight_camera_up{camera=\"cam1\"} 1"));
    }
}
