//! The live pipeline end to end, with the demo model: synthetic and folder sources, triggers
//! under overload, free-run drops, a failing source, shutdown with frames in flight, the HTTP
//! endpoint and the `run` command.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use linesight::actions::{MemorySink, ResultSink};
use linesight::inspect::Inspector;
use linesight::model::SessionOptions;
use linesight::pipeline::http::{HttpState, app};
use linesight::pipeline::{
    Camera, CameraConfig, CameraHealth, InspectionResult, Outcome, Pipeline, PipelineConfig,
    Trigger, TriggerMode,
};
use linesight::postprocess::Verdict;
use linesight::preprocess::DecodeLimits;
use linesight::source::synthetic::{PartKind, render};
use linesight::source::{Captured, FrameSource, SourceConfig, SourceError};

use crate::common::{inspector, repo, runtime};

fn demo_model() -> PathBuf {
    repo().join("models/demo")
}

fn camera(id: &str, source: SourceConfig, mode: TriggerMode) -> CameraConfig {
    CameraConfig {
        id: id.into(),
        source,
        mode,
        fps: 0.0,
        every_nth: 1,
        model: demo_model(),
        threshold: None,
        recipes: BTreeMap::new(),
    }
}

fn synthetic(frames: Option<u64>) -> SourceConfig {
    SourceConfig::Synthetic {
        seed: 11,
        defect_rate: 0.5,
        frames,
    }
}

fn open(config: CameraConfig) -> Camera {
    let source = config.source.open(DecodeLimits::default()).unwrap();
    Camera { config, source }
}

fn options() -> SessionOptions {
    SessionOptions {
        intra_threads: 1,
        ..SessionOptions::default()
    }
}

async fn start(config: PipelineConfig, cameras: Vec<Camera>) -> (Pipeline, MemorySink) {
    let sink = MemorySink::default();
    let sinks: Vec<Box<dyn ResultSink>> = vec![Box::new(sink.clone())];
    let pipeline = Pipeline::start(
        config,
        runtime(),
        options(),
        DecodeLimits::default(),
        cameras,
        sinks,
        None,
    )
    .await
    .unwrap();
    (pipeline, sink)
}

/// Waits (up to 20 s, for loaded machines) until `sink` holds `n` results.
async fn wait_for(sink: &MemorySink, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while sink.results().len() < n && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn kind_of(origin: &str) -> &str {
    origin.rsplit(':').next().unwrap()
}

#[test]
fn demo_model_tells_synthetic_good_parts_from_defective_ones() {
    let mut inspector: Inspector = inspector(&demo_model(), None);
    let mut wrong = Vec::new();
    let mut total = 0;
    for index in 0..12 {
        for kind in [
            PartKind::Good,
            PartKind::Good,
            PartKind::Scratch,
            PartKind::Spot,
            PartKind::Chip,
        ] {
            let image = render(5, index, kind);
            let r = inspector.inspect_images(&[(String::new(), &image)]);
            let r = r.into_iter().next().unwrap().unwrap();
            total += 1;
            if (r.verdict == Verdict::Defect) != kind.is_defect() {
                wrong.push(format!("{index} {kind:?} {:.3}", r.score));
            }
        }
    }
    // The Python generator's held-out accuracy is 0.974; ours must be as good.
    assert!(
        wrong.len() * 100 <= total * 5,
        "{} of {total} misclassified: {wrong:?}",
        wrong.len()
    );
}

/// Batch-size tuning: the demo model is timed at 1, 2, 4 and 8 images, the pipeline batches up
/// to the fastest size per frame, and no inference call is larger. A fixed-batch model has one
/// size, its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_autotune_picks_the_fastest_size_per_frame() {
    let package = linesight::model::ModelPackage::open(&repo().join("models/demo")).unwrap();
    let mut detector =
        linesight::model::Detector::new(runtime(), package, &options(), None).unwrap();
    let (best, figures) = detector.fastest_batch_size(8, 3).unwrap();
    let sizes: Vec<usize> = figures.iter().map(|f| f.0).collect();
    assert_eq!(sizes, vec![1, 2, 4, 8]);
    let fastest = figures.iter().min_by(|a, b| a.1.total_cmp(&b.1)).unwrap();
    assert_eq!(best, fastest.0, "{figures:?}");
    assert!(figures.iter().all(|f| f.1 > 0.0 && f.1.is_finite()));
    let package =
        linesight::model::ModelPackage::open(&repo().join("testdata/models/fixed-batch")).unwrap();
    let mut fixed = linesight::model::Detector::new(runtime(), package, &options(), None).unwrap();
    let (size, figures) = fixed.fastest_batch_size(8, 1).unwrap();
    assert!(size > 1 && figures.is_empty(), "fixed batch {size}");

    let config = PipelineConfig {
        batch_size: 4,
        queue_capacity: 64,
        ..PipelineConfig::default()
    };
    let (pipeline, sink) = start(
        config,
        vec![open(camera(
            "cam-a",
            synthetic(Some(12)),
            TriggerMode::FreeRun,
        ))],
    )
    .await;
    let tuned = pipeline.batch_size();
    assert!([1, 2, 4].contains(&tuned), "{tuned}");
    pipeline.run_until(std::future::pending()).await;
    let results = sink.results();
    assert_eq!(results.len(), 12);
    assert!(
        results.iter().all(|r| r.batch_size <= tuned),
        "tuned to {tuned}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synthetic_camera_end_to_end() {
    let config = PipelineConfig {
        batch_size: 4,
        // Batching itself is under test: keep the configured size.
        batch_autotune: false,
        queue_capacity: 64,
        ..PipelineConfig::default()
    };
    let (pipeline, sink) = start(
        config,
        vec![open(camera(
            "cam-a",
            synthetic(Some(16)),
            TriggerMode::FreeRun,
        ))],
    )
    .await;
    let summary = pipeline.run_until(std::future::pending()).await;
    let results = sink.results();
    assert_eq!(results.len(), 16);
    assert_eq!(summary.inspected + summary.dropped, 16, "{summary:?}");
    let mut sequences: Vec<u64> = results.iter().map(|r| r.sequence).collect();
    sequences.sort();
    sequences.dedup();
    assert_eq!(sequences.len(), results.len(), "each frame once");
    let mut agree = 0;
    for r in &results {
        assert_eq!(r.camera, "cam-a");
        let model = r.model.as_ref().unwrap();
        assert_eq!(model.name, "demo-washer");
        assert_eq!(model.sha256.len(), 64);
        assert!(r.frame_time.ends_with('Z') && r.frame_time.starts_with("20"));
        let Outcome::Inspected { verdict, .. } = r.outcome else {
            panic!("{r:?}")
        };
        assert!(r.timings.inference_ms > 0.0 && r.timings.total_ms >= r.timings.inference_ms);
        if (verdict == Verdict::Defect) == (kind_of(&r.origin) != "good") {
            agree += 1;
        }
    }
    assert!(
        agree >= 15,
        "{agree} of 16 verdicts match the generated part"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folder_replay_end_to_end_matches_the_python_reference_verdicts() {
    let folder = repo().join("testdata/synthetic/test");
    let config = PipelineConfig {
        batch_size: 3,
        // Batching itself is under test: keep the configured size.
        batch_autotune: false,
        queue_capacity: 64,
        max_batch_wait_ms: 20,
        ..PipelineConfig::default()
    };
    let source = SourceConfig::Folder {
        path: folder,
        repeat: false,
        preload_mib: None,
    };
    // A slow-ish pace would not drop anything either; as fast as possible with a big queue must
    // not drop with two workers.
    let (pipeline, sink) = start(
        PipelineConfig {
            workers: 2,
            ..config
        },
        vec![open(camera("folder", source, TriggerMode::FreeRun))],
    )
    .await;
    let summary = pipeline.run_until(std::future::pending()).await;
    assert_eq!(summary.dropped, 0);
    let results = sink.results();
    assert_eq!(results.len(), 25);
    for r in &results {
        let Outcome::Inspected { verdict, .. } = r.outcome else {
            panic!("{r:?}")
        };
        let good = r.origin.contains("/good/");
        assert_eq!(verdict == Verdict::Good, good, "{}", r.origin);
    }
    assert!(
        results.iter().any(|r| r.batch_size > 1),
        "dynamic batching groups frames"
    );
}

fn trigger(camera: &str, i: usize) -> Trigger {
    Trigger {
        camera: camera.into(),
        id: Some(format!("t{i}")),
        part_id: Some(format!("part-{i}")),
        lot: Some("lot-7".into()),
        recipe: None,
        sent_at_ms: None,
    }
}

fn assert_each_trigger_once(results: &[InspectionResult], n: usize) {
    let mut seen = BTreeMap::new();
    for r in results {
        let id = r
            .trigger_id
            .clone()
            .expect("triggered results carry the id");
        *seen.entry(id).or_insert(0) += 1;
    }
    for i in 0..n {
        assert_eq!(
            seen.get(&format!("t{i}")),
            Some(&1),
            "trigger t{i}: {seen:?}"
        );
    }
    assert_eq!(seen.len(), n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triggered_mode_under_overload_answers_every_trigger_exactly_once() {
    let config = PipelineConfig {
        queue_capacity: 1,
        trigger_queue_capacity: 3,
        ..PipelineConfig::default()
    };
    let (pipeline, sink) = start(
        config,
        vec![open(camera(
            "press",
            synthetic(None),
            TriggerMode::Triggered,
        ))],
    )
    .await;
    let triggers = pipeline.triggers();
    let n = 40;
    let mut statuses = Vec::new();
    for i in 0..n {
        statuses.push(triggers.fire(trigger("press", i)).await.unwrap().status);
    }
    assert!(
        statuses.contains(&"busy"),
        "40 triggers at once overflow 3 slots"
    );
    // Let the pipeline serve what it accepted, then stop.
    tokio::time::sleep(Duration::from_millis(300)).await;
    pipeline.shutdown().await;
    let results = sink.results();
    assert_each_trigger_once(&results, n);
    let busy = results.iter().filter(|r| r.status() == "busy").count();
    let inspected: Vec<_> = results
        .iter()
        .filter(|r| r.status() == "inspected")
        .collect();
    assert!(
        busy > 0 && !inspected.is_empty(),
        "busy {busy}, inspected {}",
        inspected.len()
    );
    for r in &inspected {
        let i: usize = r.trigger_id.as_ref().unwrap()[1..].parse().unwrap();
        assert_eq!(r.part_id.as_deref(), Some(format!("part-{i}").as_str()));
        assert_eq!(r.lot.as_deref(), Some("lot-7"));
        assert!(r.model.is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_triggers_are_answered_late_not_dropped() {
    // A deadline shorter than one inference: everything behind the first frame is late.
    let config = PipelineConfig {
        trigger_deadline_ms: 1,
        queue_capacity: 16,
        ..PipelineConfig::default()
    };
    let (pipeline, sink) = start(
        config,
        vec![open(camera(
            "press",
            synthetic(None),
            TriggerMode::Triggered,
        ))],
    )
    .await;
    let triggers = pipeline.triggers();
    for i in 0..10 {
        triggers.fire(trigger("press", i)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    pipeline.shutdown().await;
    let results = sink.results();
    assert_each_trigger_once(&results, 10);
    let late = results.iter().filter(|r| r.status() == "late").count();
    assert!(late > 0, "{results:?}");
}

/// A trigger that says it was sent longer than the deadline ago (held by a broker while
/// linesight was away) is answered late without a grab; one sent just now, or by a clock a
/// little ahead, is inspected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_sent_before_its_deadline_is_answered_late() {
    let (pipeline, sink) = start(
        PipelineConfig::default(),
        vec![open(camera(
            "press",
            synthetic(None),
            TriggerMode::Triggered,
        ))],
    )
    .await;
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    };
    let triggers = pipeline.triggers();
    for (i, sent) in [
        now_ms() - 600_000,
        now_ms(),
        now_ms() + 500,
        i64::MIN,
        now_ms() - 2_500,
    ]
    .into_iter()
    .enumerate()
    {
        let mut t = trigger("press", i);
        t.sent_at_ms = Some(sent);
        triggers.fire(t).await.unwrap();
        wait_for(&sink, i + 1).await;
    }
    pipeline.shutdown().await;
    let results = sink.results();
    assert_each_trigger_once(&results, 5);
    let status = |id: &str| {
        results
            .iter()
            .find(|r| r.trigger_id.as_deref() == Some(id))
            .unwrap()
            .status()
    };
    assert_eq!(
        ["t0", "t1", "t2", "t3", "t4"].map(status),
        ["late", "inspected", "inspected", "late", "late"],
        "{results:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn free_run_drops_are_counted() {
    // PNG decoding outruns inference many times over: with one slot, most frames are dropped.
    let config = PipelineConfig {
        queue_capacity: 1,
        ..PipelineConfig::default()
    };
    let source = SourceConfig::Folder {
        path: repo().join("testdata/synthetic/test"),
        repeat: false,
        preload_mib: None,
    };
    let (pipeline, sink) = start(
        config,
        vec![open(camera("fast", source, TriggerMode::FreeRun))],
    )
    .await;
    let metrics = pipeline.metrics();
    let status = pipeline.status();
    let summary = pipeline.run_until(std::future::pending()).await;
    let c = metrics.camera("fast").unwrap();
    assert_eq!(c.frames_in.load(Ordering::Relaxed), 25);
    assert_eq!(sink.results().len() as u64, summary.inspected);
    assert_eq!(summary.inspected + summary.dropped, 25, "{summary:?}");
    assert!(summary.dropped > 0, "{summary:?}");
    let text = status.metrics_text();
    assert!(
        text.contains(&format!(
            "linesight_frames_dropped_total{{camera=\"fast\"}} {}",
            summary.dropped
        )),
        "{text}"
    );
}

/// A line-triggered camera's frames are parts: under the same overload as
/// `free_run_drops_are_counted`, none is dropped; each is inspected or answered `busy`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_triggered_cameras_frames_are_never_dropped() {
    let config = PipelineConfig {
        queue_capacity: 1,
        ..PipelineConfig::default()
    };
    let line: SourceConfig =
        serde_json::from_value(serde_json::json!({"kind": "gige", "trigger": "line"})).unwrap();
    assert!(line.each_frame_is_a_part());
    // The frames of the folder, delivered as fast as a busy line's pulses.
    let frames = SourceConfig::Folder {
        path: repo().join("testdata/synthetic/test"),
        repeat: false,
        preload_mib: None,
    }
    .open(DecodeLimits::default())
    .unwrap();
    let camera = Camera {
        config: camera("line", line, TriggerMode::FreeRun),
        source: frames,
    };
    let (pipeline, sink) = start(config, vec![camera]).await;
    let summary = pipeline.run_until(std::future::pending()).await;
    assert_eq!(summary.dropped, 0, "{summary:?}");
    assert_eq!(summary.inspected + summary.busy, 25, "{summary:?}");
    assert!(summary.busy > 0, "the overload was real: {summary:?}");
    let results = sink.results();
    assert_eq!(results.len(), 25, "every part has its answer");
    let busy = results
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Busy { .. }))
        .count() as u64;
    assert_eq!(busy, summary.busy);
}

/// Blocks in `next_frame` until the test lets go (a camera waiting for a line pulse that
/// never comes).
struct Stuck(std::sync::mpsc::Receiver<()>);

impl FrameSource for Stuck {
    fn describe(&self) -> String {
        "stuck".into()
    }
    fn next_frame(&mut self) -> Result<Option<Captured>, SourceError> {
        let _ = self.0.recv();
        Ok(None)
    }
    fn reopen(&mut self) -> Result<(), SourceError> {
        Ok(())
    }
}

/// Shutdown does not wait for a grab that waits forever: the pending trigger is answered busy,
/// the other camera's frames are finished, and the pipeline stops within its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_for_a_grab_in_progress() {
    let (release, stuck) = std::sync::mpsc::channel();
    let memory = MemorySink::default();
    let pipeline = Pipeline::start(
        PipelineConfig {
            shutdown_deadline_ms: 1_000,
            ..PipelineConfig::default()
        },
        runtime(),
        options(),
        DecodeLimits::default(),
        vec![
            Camera {
                config: camera("line", synthetic(None), TriggerMode::Triggered),
                source: Box::new(Stuck(stuck)),
            },
            open(camera("belt", synthetic(Some(5)), TriggerMode::FreeRun)),
        ],
        vec![Box::new(memory.clone()) as Box<dyn ResultSink>],
        None,
    )
    .await
    .unwrap();
    let status = pipeline.status();
    let triggers = pipeline.triggers();
    triggers.fire(trigger("line", 1)).await.unwrap();
    // The camera task is now inside the grab.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = std::time::Instant::now();
    let summary = tokio::time::timeout(Duration::from_secs(10), pipeline.shutdown())
        .await
        .expect("shutdown does not hang on the stuck grab");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    let _ = summary;
    let health = status.health();
    assert!(
        matches!(health.get("line"), Some(CameraHealth::Stopped)),
        "{health:?}"
    );
    let line: Vec<_> = memory
        .results()
        .into_iter()
        .filter(|r| r.camera == "line")
        .collect();
    assert_eq!(line.len(), 1, "{line:?}");
    assert_eq!(line[0].status(), "busy", "{:?}", line[0]);
    release.send(()).ok();
}

/// Delivers one washer, then its next grab waits until `gate` opens (a USB camera that stops
/// sending while it stays plugged in: the driver waits without end); delivers from then on.
struct Stalling {
    delivered: u64,
    gate: Option<std::sync::mpsc::Receiver<()>>,
}

impl FrameSource for Stalling {
    fn describe(&self) -> String {
        "stalling".into()
    }
    fn next_frame(&mut self) -> Result<Option<Captured>, SourceError> {
        if self.delivered == 1
            && let Some(gate) = self.gate.take()
        {
            let _ = gate.recv();
        }
        self.delivered += 1;
        Ok(Some(Captured {
            image: render(3, self.delivered, PartKind::Good),
            captured_at: SystemTime::now(),
            origin: format!("stalling:{}", self.delivered),
        }))
    }
    fn reopen(&mut self) -> Result<(), SourceError> {
        Ok(())
    }
}

/// A camera whose grab does not return: its trigger is answered late at the deadline, health
/// says `stalled`, triggers meanwhile are answered busy at once; once it delivers again, the
/// stale frame is dropped and the next trigger is inspected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_camera_whose_grab_does_not_return_is_reported_and_its_triggers_answered() {
    let (open_gate, gate) = std::sync::mpsc::channel();
    let (pipeline, sink) = start(
        PipelineConfig {
            trigger_deadline_ms: 300,
            probe_interval_ms: 600,
            ..PipelineConfig::default()
        },
        vec![Camera {
            config: camera("usb", synthetic(None), TriggerMode::Triggered),
            source: Box::new(Stalling {
                delivered: 0,
                gate: Some(gate),
            }),
        }],
    )
    .await;
    let status = pipeline.status();
    let triggers = pipeline.triggers();
    let answer = |n: usize| {
        let sink = sink.clone();
        async move {
            wait_for(&sink, n).await;
            let results = sink.results();
            assert_eq!(results.len(), n, "{results:?}");
            results[n - 1].clone()
        }
    };
    triggers.fire(trigger("usb", 1)).await.unwrap();
    assert_eq!(answer(1).await.status(), "inspected");
    triggers.fire(trigger("usb", 2)).await.unwrap();
    let late = answer(2).await;
    assert_eq!(late.status(), "late", "{late:?}");
    assert_eq!(late.part_id.as_deref(), Some("part-2"));
    health_becomes(&status, "usb", "stalled", &|h| {
        matches!(h, CameraHealth::Stalled { .. })
    })
    .await;
    triggers.fire(trigger("usb", 3)).await.unwrap();
    let busy = answer(3).await;
    assert_eq!(busy.status(), "busy", "{busy:?}");
    let Outcome::Busy { reason } = &busy.outcome else {
        unreachable!()
    };
    assert!(reason.contains("delivers no frames"), "{reason}");

    open_gate.send(()).unwrap();
    health_becomes(&status, "usb", "running again", &|h| {
        matches!(h, CameraHealth::Running)
    })
    .await;
    triggers.fire(trigger("usb", 4)).await.unwrap();
    let inspected = answer(4).await;
    assert_eq!(inspected.status(), "inspected", "{inspected:?}");
    assert_eq!(inspected.part_id.as_deref(), Some("part-4"));
    pipeline.shutdown().await;
    assert_eq!(sink.results().len(), 4, "the stale frame is not a result");
}

/// Delivers washers; closing it takes 3 s (a GigE camera that vanished: Aravis's timeouts).
struct SlowToClose(u64);

impl FrameSource for SlowToClose {
    fn describe(&self) -> String {
        "slow to close".into()
    }
    fn next_frame(&mut self) -> Result<Option<Captured>, SourceError> {
        self.0 += 1;
        Ok(Some(Captured {
            image: render(3, self.0, PartKind::Good),
            captured_at: SystemTime::now(),
            origin: format!("slow:{}", self.0),
        }))
    }
    fn reopen(&mut self) -> Result<(), SourceError> {
        Ok(())
    }
}

impl Drop for SlowToClose {
    fn drop(&mut self) {
        std::thread::sleep(Duration::from_secs(3));
    }
}

/// A camera that takes long to close does not hold the stop past its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_camera_slow_to_close_does_not_hold_up_shutdown() {
    let mut config = camera("gige", synthetic(None), TriggerMode::FreeRun);
    config.fps = 20.0;
    let (pipeline, sink) = start(
        PipelineConfig {
            shutdown_deadline_ms: 1_000,
            ..PipelineConfig::default()
        },
        vec![Camera {
            config,
            source: Box::new(SlowToClose(0)),
        }],
    )
    .await;
    wait_for(&sink, 2).await;
    let started = std::time::Instant::now();
    pipeline.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_millis(2_000),
        "{:?}",
        started.elapsed()
    );
}

/// Fails `failures` times (grab, then reopen), then delivers `frames` washers and finishes.
struct Flaky {
    failures: u32,
    frames: u64,
    next: u64,
}

impl FrameSource for Flaky {
    fn describe(&self) -> String {
        "flaky".into()
    }
    fn next_frame(&mut self) -> Result<Option<Captured>, SourceError> {
        if self.failures > 0 {
            return Err(SourceError::Device {
                source_name: "flaky".into(),
                message: "cable unplugged".into(),
            });
        }
        if self.next == self.frames {
            return Ok(None);
        }
        self.next += 1;
        Ok(Some(Captured {
            image: render(3, self.next, PartKind::Good),
            captured_at: SystemTime::now(),
            origin: format!("flaky:{}", self.next),
        }))
    }
    fn reopen(&mut self) -> Result<(), SourceError> {
        self.failures -= 1;
        Ok(())
    }
}

/// A triggered camera's device is opened at start: health (and so readiness) says whether it
/// is there before the first trigger comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triggered_cameras_are_opened_at_start() {
    let lazy = |id: &str, source: SourceConfig| Camera {
        config: camera(id, source.clone(), TriggerMode::Triggered),
        source: Box::new(linesight::source::LazySource::new(
            source,
            DecodeLimits::default(),
        )),
    };
    let missing = SourceConfig::Folder {
        path: "/nonexistent/linesight-parts".into(),
        repeat: false,
        preload_mib: None,
    };
    let (pipeline, sink) = start(
        PipelineConfig::default(),
        vec![lazy("press", synthetic(None)), lazy("gone", missing)],
    )
    .await;
    let status = pipeline.status();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let settled = |h: &BTreeMap<String, CameraHealth>| {
        h["press"] == CameraHealth::Running && matches!(h["gone"], CameraHealth::Reopening { .. })
    };
    while !settled(&status.health()) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let health = status.health();
    assert!(settled(&health), "{health:?}");
    let CameraHealth::Reopening { error, .. } = &health["gone"] else {
        unreachable!()
    };
    assert!(error.contains("/nonexistent/linesight-parts"), "{error}");
    pipeline.shutdown().await;
    assert!(sink.results().is_empty(), "no frame without a trigger");
}

/// A folder to replay: `name` is a good washer of the synthetic test set, `bad:name` a file
/// that does not decode. Keep the folder alive while the source reads it.
fn replay_of(files: &[&str]) -> (tempfile::TempDir, SourceConfig) {
    let dir = tempfile::tempdir().unwrap();
    let good = repo().join("testdata/synthetic/test/good");
    for (i, file) in files.iter().enumerate() {
        match file.strip_prefix("bad:") {
            Some(name) => std::fs::write(dir.path().join(name), b"not a png").unwrap(),
            None => {
                std::fs::copy(good.join(format!("{i:03}.png")), dir.path().join(file)).unwrap();
            }
        }
    }
    let source = SourceConfig::Folder {
        path: dir.path().into(),
        repeat: false,
        preload_mib: None,
    };
    (dir, source)
}

/// The results in frame order (an error is recorded by the camera at once, an inspection
/// after its inference).
fn by_frame(sink: &MemorySink) -> Vec<InspectionResult> {
    let mut results = sink.results();
    results.sort_by_key(|r| r.sequence);
    results
}

/// Each result's file name and status.
fn files_and_statuses(results: &[InspectionResult]) -> Vec<(&str, &str)> {
    results
        .iter()
        .map(|r| (r.origin.rsplit('/').next().unwrap(), r.status()))
        .collect()
}

/// A file of a replayed folder that does not decode is that frame's error, recorded like a
/// result; the camera is not taken for lost (no reopen, no back-off) and goes on with the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_that_does_not_decode_is_answered_and_the_camera_goes_on() {
    let (_dir, source) = replay_of(&["a.png", "bad:b.png", "c.png"]);
    let (pipeline, sink) = start(
        PipelineConfig {
            // A reopen would show as a pause of this length.
            reopen_backoff_initial_ms: 5_000,
            ..PipelineConfig::default()
        },
        vec![open(camera("folder", source, TriggerMode::FreeRun))],
    )
    .await;
    let started = std::time::Instant::now();
    pipeline.run_until(std::future::pending()).await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "no back-off: {:?}",
        started.elapsed()
    );
    let results = by_frame(&sink);
    assert_eq!(
        files_and_statuses(&results),
        [
            ("a.png", "inspected"),
            ("b.png", "error"),
            ("c.png", "inspected")
        ],
        "{results:?}"
    );
    let Outcome::Error { message } = &results[1].outcome else {
        unreachable!()
    };
    assert!(message.contains("b.png"), "{message}");
    assert_eq!(results[1].sequence, 2);
}

/// Three frames in a row that do not decode are a failing camera: the third is answered too,
/// the camera shows `reopening` naming the run and is reopened after its back-off, and goes on
/// after the file it replayed last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_of_bad_frames_is_a_failing_camera() {
    let (_dir, source) = replay_of(&["a.png", "bad:b.png", "bad:c.png", "bad:d.png", "e.png"]);
    let (pipeline, sink) = start(
        PipelineConfig {
            reopen_backoff_initial_ms: 1_500,
            ..PipelineConfig::default()
        },
        vec![open(camera("folder", source, TriggerMode::FreeRun))],
    )
    .await;
    let status = pipeline.status();
    let run = tokio::spawn(pipeline.run_until(std::future::pending()));
    health_becomes(&status, "folder", "reopening after a run of bad frames", &|h| {
        matches!(h, CameraHealth::Reopening { error, .. } if error.contains("3 frames in a row unusable"))
    })
    .await;
    run.await.unwrap();
    let results = by_frame(&sink);
    assert_eq!(
        files_and_statuses(&results),
        [
            ("a.png", "inspected"),
            ("b.png", "error"),
            ("c.png", "error"),
            ("d.png", "error"),
            ("e.png", "inspected")
        ],
        "{results:?}"
    );
}

/// Waits (up to 20 s) until `camera`'s health satisfies `done`; fails saying `what` otherwise.
async fn health_becomes(
    status: &linesight::pipeline::PipelineStatus,
    camera: &str,
    what: &str,
    done: &dyn Fn(&CameraHealth) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let health = status.health();
        if done(&health[camera]) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {health:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A triggered camera waiting for triggers is checked meanwhile: the folder it reads vanishing
/// shows in health (and the camera's source errors) without any trigger, is reopened with
/// back-off, and shows running again once the folder is back; the next trigger is inspected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_triggered_camera_that_goes_away_shows_in_health_and_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let parts = dir.path().join("parts");
    std::fs::create_dir(&parts).unwrap();
    render(3, 0, PartKind::Good)
        .save(parts.join("part.png"))
        .unwrap();
    let source = SourceConfig::Folder {
        path: parts.clone(),
        repeat: true,
        preload_mib: None,
    };
    let config = PipelineConfig {
        probe_interval_ms: 50,
        reopen_backoff_initial_ms: 20,
        reopen_backoff_max_ms: 100,
        ..PipelineConfig::default()
    };
    let press = Camera {
        config: camera("press", source.clone(), TriggerMode::Triggered),
        source: Box::new(linesight::source::LazySource::new(
            source,
            DecodeLimits::default(),
        )),
    };
    let (pipeline, sink) = start(config, vec![press]).await;
    let status = pipeline.status();
    let metrics = pipeline.metrics();
    let errors = || {
        metrics
            .camera("press")
            .map_or(0, |c| c.source_errors.load(Ordering::Relaxed))
    };
    let until = |what, done| health_becomes(&status, "press", what, done);
    until("opened at start", &|h| *h == CameraHealth::Running).await;
    assert_eq!(errors(), 0);

    let away = dir.path().join("moved");
    std::fs::rename(&parts, &away).unwrap();
    until(
        "the vanished folder is seen without a trigger",
        &|h| matches!(h, CameraHealth::Reopening { failures, .. } if *failures >= 2),
    )
    .await;
    let CameraHealth::Reopening { error, .. } = &status.health()["press"] else {
        unreachable!()
    };
    assert!(error.contains(&parts.display().to_string()), "{error}");
    assert!(errors() >= 2, "each failed check counts: {}", errors());

    std::fs::rename(&away, &parts).unwrap();
    until("running again once the folder is back", &|h| {
        *h == CameraHealth::Running
    })
    .await;
    let triggers = pipeline.triggers();
    assert_eq!(
        triggers.fire(trigger("press", 1)).await.unwrap().status,
        "queued"
    );
    wait_for(&sink, 1).await;
    pipeline.shutdown().await;
    let results = sink.results();
    assert_eq!(results.len(), 1, "only the trigger's frame: {results:?}");
    assert_eq!(results[0].status(), "inspected", "{:?}", results[0]);
}

/// A triggered camera's source whose first grab fails and which delivers again only once
/// reopened; its probe can hang like a device that does not answer.
struct Fragile {
    failed_once: bool,
    broken: bool,
    reopens: Arc<AtomicUsize>,
    probe_hangs: Option<Duration>,
}

impl FrameSource for Fragile {
    fn describe(&self) -> String {
        "fragile".into()
    }
    fn next_frame(&mut self) -> Result<Option<Captured>, SourceError> {
        let fail = |message: &str| SourceError::Device {
            source_name: "fragile".into(),
            message: message.into(),
        };
        if !self.failed_once {
            self.failed_once = true;
            self.broken = true;
            return Err(fail("the first grab fails"));
        }
        if self.broken {
            return Err(fail("grabbed without being reopened"));
        }
        Ok(Some(Captured {
            image: render(2, 0, PartKind::Good),
            captured_at: SystemTime::now(),
            origin: "fragile".into(),
        }))
    }
    fn reopen(&mut self) -> Result<(), SourceError> {
        self.reopens.fetch_add(1, Ordering::SeqCst);
        self.broken = false;
        Ok(())
    }
    fn probe(&mut self) -> Result<(), SourceError> {
        if let Some(hang) = self.probe_hangs {
            std::thread::sleep(hang);
        }
        Ok(())
    }
}

/// A triggered `Fragile` camera with this reopening back-off and checks every 20 ms, running,
/// whose first trigger was answered with the failed grab; and its count of reopens.
async fn fragile_press_after_a_failed_grab(
    backoff_ms: u64,
) -> (Pipeline, MemorySink, Arc<AtomicUsize>) {
    let reopens = Arc::new(AtomicUsize::new(0));
    let config = PipelineConfig {
        reopen_backoff_initial_ms: backoff_ms,
        reopen_backoff_max_ms: backoff_ms,
        probe_interval_ms: 20,
        ..PipelineConfig::default()
    };
    let press = Camera {
        config: camera("press", synthetic(None), TriggerMode::Triggered),
        source: Box::new(Fragile {
            failed_once: false,
            broken: false,
            reopens: reopens.clone(),
            probe_hangs: None,
        }),
    };
    let (pipeline, sink) = start(config, vec![press]).await;
    health_becomes(&pipeline.status(), "press", "opened at start", &|h| {
        *h == CameraHealth::Running
    })
    .await;
    pipeline.triggers().fire(trigger("press", 1)).await.unwrap();
    wait_for(&sink, 1).await;
    assert!(
        matches!(&sink.results()[0].outcome, Outcome::Error { message } if message.contains("the first grab fails")),
        "{:?}",
        sink.results()
    );
    (pipeline, sink, reopens)
}

/// After a failed grab, the next trigger does not wait for the back-off: its grab reopens the
/// camera first, and it is inspected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_after_a_failed_grab_reopens_the_camera_before_its_grab() {
    // A back-off far beyond the test: only the trigger can reopen the camera in time.
    let (pipeline, sink, reopens) = fragile_press_after_a_failed_grab(600_000).await;
    pipeline.triggers().fire(trigger("press", 2)).await.unwrap();
    wait_for(&sink, 2).await;
    let results = sink.results();
    assert_eq!(results.len(), 2, "{results:?}");
    assert_eq!(results[1].status(), "inspected", "{:?}", results[1]);
    assert_eq!(reopens.load(Ordering::SeqCst), 1);
    assert_eq!(pipeline.status().health()["press"], CameraHealth::Running);
    pipeline.shutdown().await;
}

/// A camera whose grab failed is reopened by the check after the back-off, but a check alone
/// (the device is there) does not report it running: no frame came since. The next good grab
/// does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_camera_whose_grab_failed_is_running_again_only_after_a_good_grab() {
    let (pipeline, sink, reopens) = fragile_press_after_a_failed_grab(20).await;
    let status = pipeline.status();
    let triggers = pipeline.triggers();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while reopens.load(Ordering::SeqCst) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "never reopened");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Several passing checks later, still not running.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        matches!(status.health()["press"], CameraHealth::Reopening { .. }),
        "{:?}",
        status.health()
    );
    assert_eq!(
        reopens.load(Ordering::SeqCst),
        1,
        "reopened once, then checked"
    );
    triggers.fire(trigger("press", 2)).await.unwrap();
    wait_for(&sink, 2).await;
    assert_eq!(sink.results()[1].status(), "inspected");
    assert_eq!(status.health()["press"], CameraHealth::Running);
    pipeline.shutdown().await;
}

/// A triggered camera whose check hangs (a device that stopped answering) does not hold up a
/// shutdown: the blocking thread keeps the source until the check returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_check_does_not_hold_up_shutdown() {
    let press = Camera {
        config: camera("press", synthetic(None), TriggerMode::Triggered),
        source: Box::new(Fragile {
            failed_once: true,
            broken: false,
            reopens: Arc::default(),
            probe_hangs: Some(Duration::from_secs(4)),
        }),
    };
    let (pipeline, _sink) = start(PipelineConfig::default(), vec![press]).await;
    // The check at start is under way.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopping = std::time::Instant::now();
    pipeline.shutdown().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(2),
        "shutdown took {:?}",
        stopping.elapsed()
    );
}

/// A source whose driver panics on its first grab.
struct Panicking;

impl FrameSource for Panicking {
    fn describe(&self) -> String {
        "panicking".into()
    }
    fn next_frame(&mut self) -> Result<Option<Captured>, SourceError> {
        panic!("driver bug")
    }
    fn reopen(&mut self) -> Result<(), SourceError> {
        Ok(())
    }
}

/// A source whose driver panics is replaced by the camera's configured source, opened afresh
/// by the reopening: the camera comes back instead of failing until a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_whose_driver_panicked_is_opened_again_from_its_configuration() {
    let config = PipelineConfig {
        reopen_backoff_initial_ms: 20,
        reopen_backoff_max_ms: 50,
        ..PipelineConfig::default()
    };
    let cam = Camera {
        config: camera("press", synthetic(Some(3)), TriggerMode::FreeRun),
        source: Box::new(Panicking),
    };
    let (pipeline, sink) = start(config, vec![cam]).await;
    let status = pipeline.status();
    tokio::time::timeout(
        Duration::from_secs(30),
        pipeline.run_until(std::future::pending()),
    )
    .await
    .expect("the camera comes back and finishes its three frames");
    let results = sink.results();
    assert_eq!(results.len(), 3, "{results:?}");
    assert!(
        results
            .iter()
            .all(|r| matches!(r.outcome, Outcome::Inspected { .. }))
    );
    assert_eq!(status.health()["press"], CameraHealth::Finished);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_source_is_reopened_and_the_other_camera_keeps_running() {
    let config = PipelineConfig {
        reopen_backoff_initial_ms: 50,
        reopen_backoff_max_ms: 100,
        queue_capacity: 64,
        ..PipelineConfig::default()
    };
    let flaky = Camera {
        config: camera("flaky", synthetic(None), TriggerMode::FreeRun),
        source: Box::new(Flaky {
            failures: 4,
            frames: 4,
            next: 0,
        }),
    };
    let steady = open(camera("steady", synthetic(Some(6)), TriggerMode::FreeRun));
    let (pipeline, sink) = start(config, vec![flaky, steady]).await;
    let status = pipeline.status();
    // While it fails, health says so (it fails for about 400 ms).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut seen = Vec::new();
    while tokio::time::Instant::now() < deadline {
        let health = status.health()["flaky"].clone();
        if matches!(health, CameraHealth::Reopening { .. }) {
            break;
        }
        seen.push(health);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(
        matches!(status.health()["flaky"], CameraHealth::Reopening { .. }),
        "never seen reopening: {seen:?}"
    );
    let metrics = pipeline.metrics();
    pipeline.run_until(std::future::pending()).await;
    let results = sink.results();
    let count = |cam: &str| results.iter().filter(|r| r.camera == cam).count();
    assert_eq!(count("flaky"), 4, "frames after recovery are inspected");
    assert_eq!(count("steady"), 6);
    assert_eq!(
        metrics
            .camera("flaky")
            .unwrap()
            .source_errors
            .load(Ordering::Relaxed),
        4
    );
    assert_eq!(status.health()["flaky"], CameraHealth::Finished);
    let text = status.metrics_text();
    assert!(
        text.contains("linesight_source_errors_total{camera=\"flaky\"} 4"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_frames_in_flight_answers_every_trigger_and_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let config = PipelineConfig {
        queue_capacity: 8,
        batch_size: 2,
        // Batching itself is under test: keep the configured size.
        batch_autotune: false,
        shutdown_deadline_ms: 0,
        ..PipelineConfig::default()
    };
    let jsonl = linesight::actions::JsonLinesSink::open(dir.path()).unwrap();
    let memory = MemorySink::default();
    let sinks: Vec<Box<dyn ResultSink>> = vec![Box::new(jsonl), Box::new(memory.clone())];
    let pipeline = Pipeline::start(
        config,
        runtime(),
        options(),
        DecodeLimits::default(),
        vec![
            open(camera("press", synthetic(None), TriggerMode::Triggered)),
            open(camera("belt", synthetic(None), TriggerMode::FreeRun)),
        ],
        sinks,
        None,
    )
    .await
    .unwrap();
    let triggers = pipeline.triggers();
    for i in 0..12 {
        triggers.fire(trigger("press", i)).await.unwrap();
    }
    // Stop at once: triggers are queued, frames are in inference.
    let summary = pipeline.shutdown().await;
    let err = triggers.fire(trigger("press", 99)).await.unwrap_err();
    assert!(err.to_string().contains("shutting down"), "{err}");
    let results = memory.results();
    let triggered: Vec<_> = results
        .iter()
        .filter(|r| r.camera == "press")
        .cloned()
        .collect();
    assert_each_trigger_once(&triggered, 12);
    let lines = std::fs::read_to_string(dir.path().join("results.jsonl")).unwrap();
    assert_eq!(
        lines.lines().count(),
        results.len(),
        "every result is in the file"
    );
    for line in lines.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(v["status"].is_string() && v["camera"].is_string(), "{line}");
    }
    assert_eq!(
        summary.inspected + summary.late + summary.busy + summary.errors,
        results.len() as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipes_switch_threshold_and_unknown_recipes_are_answered() {
    let mut cam = camera("press", synthetic(None), TriggerMode::Triggered);
    cam.recipes.insert(
        "strict".into(),
        linesight::pipeline::RecipeConfig {
            model: demo_model(),
            threshold: Some(0.0),
        },
    );
    let (pipeline, sink) = start(PipelineConfig::default(), vec![open(cam)]).await;
    let triggers = pipeline.triggers();
    for (i, recipe) in [None, Some("strict"), Some("nope")].into_iter().enumerate() {
        let mut t = trigger("press", i);
        t.recipe = recipe.map(str::to_string);
        triggers.fire(t).await.unwrap();
    }
    wait_for(&sink, 3).await;
    pipeline.shutdown().await;
    let results = sink.results();
    assert_each_trigger_once(&results, 3);
    let by_id = |id: &str| {
        results
            .iter()
            .find(|r| r.trigger_id.as_deref() == Some(id))
            .unwrap()
    };
    let Outcome::Inspected { threshold, .. } = by_id("t0").outcome else {
        panic!()
    };
    assert_eq!(threshold, 0.5);
    let strict = by_id("t1");
    assert_eq!(strict.recipe.as_deref(), Some("strict"));
    let Outcome::Inspected {
        threshold, verdict, ..
    } = strict.outcome
    else {
        panic!()
    };
    assert_eq!((threshold, verdict), (0.0, Verdict::Defect));
    let Outcome::Error { message } = &by_id("t2").outcome else {
        panic!()
    };
    assert!(
        message.contains("unknown recipe \"nope\"") && message.contains("strict"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_triggers_metrics_and_problem_details() {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt as _;

    let (pipeline, sink) = start(
        PipelineConfig::default(),
        vec![
            open(camera("press", synthetic(None), TriggerMode::Triggered)),
            open(camera("belt", synthetic(Some(2)), TriggerMode::FreeRun)),
        ],
    )
    .await;
    let router = app(HttpState {
        triggers: pipeline.triggers(),
        status: pipeline.status(),
        store: None,
    });
    let post = |body: &str| {
        Request::post("/api/v1/triggers")
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    let body = |r: axum::response::Response| async move {
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    };
    let ok = router
        .clone()
        .oneshot(post(
            r#"{"camera":"press","id":"h1","part_id":"P-1","lot":"L-1"}"#,
        ))
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::ACCEPTED);
    assert!(body(ok).await.contains("\"id\":\"h1\""));
    for (request, status, needle) in [
        (
            r#"{"camera":"nope"}"#,
            StatusCode::NOT_FOUND,
            "unknown camera",
        ),
        (r#"{"camera":"belt"}"#, StatusCode::CONFLICT, "runs free"),
        (
            r#"{"camera":"press","colour":1}"#,
            StatusCode::BAD_REQUEST,
            "colour",
        ),
    ] {
        let r = router.clone().oneshot(post(request)).await.unwrap();
        assert_eq!(r.status(), status, "{request}");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        let text = body(r).await;
        assert!(text.contains(needle), "{text}");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !sink
        .results()
        .iter()
        .any(|r| r.trigger_id.as_deref() == Some("h1"))
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let metrics = router
        .clone()
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let text = body(metrics).await;
    assert!(
        text.contains("linesight_frames_out_total{camera=\"press\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("linesight_inference_batch_size_count"),
        "{text}"
    );
    // The probes a container orchestrator uses.
    let probe = |path: &'static str| {
        router
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
    };
    let alive = probe("/healthz").await.unwrap();
    assert_eq!(alive.status(), StatusCode::OK);
    // Ready once every camera has delivered (on a loaded machine the free-run camera may still
    // be starting when the trigger's answer is in).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let (status, text) = loop {
        let ready = probe("/readyz").await.unwrap();
        let status = ready.status();
        let text = body(ready).await;
        if status == StatusCode::OK || tokio::time::Instant::now() > deadline {
            break (status, text);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(
        text.contains("\"ready\":true") && text.contains("press"),
        "{text}"
    );
    pipeline.shutdown().await;
    let results = sink.results();
    let h1 = results
        .iter()
        .find(|r| r.trigger_id.as_deref() == Some("h1"))
        .unwrap();
    assert_eq!(
        (h1.part_id.as_deref(), h1.lot.as_deref()),
        (Some("P-1"), Some("L-1"))
    );
}

#[test]
fn run_demo_prints_and_writes_results_then_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    // A temporary image file an earlier crash left: the service's image keeping removes it at
    // start-up.
    let left = dir.path().join("images/.tmp/crashed.tmp");
    std::fs::create_dir_all(left.parent().unwrap()).unwrap();
    std::fs::File::create(&left)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(7200))
        .unwrap();
    let out = crate::common::linesight()
        .args(["run", "--demo", "--frames", "5", "--results"])
        .arg(dir.path())
        .env("LINESIGHT__PIPELINE__LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.lines().count(), 5, "{stdout}");
    assert!(stdout.contains("demo"), "{stdout}");
    let lines = std::fs::read_to_string(dir.path().join("results.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 5);
    assert!(!left.exists(), "left-over temporary file swept at start-up");
}

/// `linesight run --demo` writing its results under `dir`, its log on a pipe.
fn run_demo(dir: &std::path::Path, stdout: std::process::Stdio) -> std::process::Child {
    crate::common::linesight()
        .args(["run", "--demo", "--results"])
        .arg(dir)
        .stdout(stdout)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[cfg(unix)]
#[test]
fn run_stops_gracefully_on_sigterm() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let mut child = run_demo(dir.path(), std::process::Stdio::piped());
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains("demo"), "{first}");
    crate::common::sigterm(&child);
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let written = std::fs::read_to_string(dir.path().join("results.jsonl")).unwrap();
    assert_eq!(
        written.lines().count(),
        1 + rest.len(),
        "printed and written agree"
    );
}

/// A SIGTERM that comes while `linesight run` is still starting (its store open, its model
/// being loaded and warmed) is kept for the graceful stop after the start: exit 0, not the
/// process killed by the signal with its camera already running.
#[cfg(unix)]
#[test]
fn a_sigterm_during_start_up_stops_the_service_gracefully() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let mut child = run_demo(dir.path(), std::process::Stdio::null());
    let mut log = BufReader::new(child.stderr.take().unwrap()).lines();
    // Logged once the store is open, before the pipeline starts.
    let mut seen = Vec::new();
    for line in log.by_ref() {
        let line = line.unwrap();
        let opened = line.contains("Recording results in the quality store");
        seen.push(line);
        if opened {
            break;
        }
    }
    crate::common::sigterm(&child);
    seen.extend(log.map(Result::unwrap));
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}: {seen:#?}");
}

/// A start-up that hangs (a PostgreSQL server that accepts the connection and never answers)
/// keeps a first SIGTERM for the graceful stop after it; a second one ends the process at once,
/// with exit code 1.
#[cfg(unix)]
#[test]
fn a_second_sigterm_ends_a_hung_start_up_at_once() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let mut child = crate::common::linesight()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env(
            "LINESIGHT__STORE__URL",
            format!("postgres://linesight@127.0.0.1:{port}/quality"),
        )
        .env("LINESIGHT__STORE__DATA_DIR", dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The store is opened after the handlers are installed: its connection says they are.
    let (_connection, _) = silent.accept().unwrap();
    crate::common::sigterm(&child);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the first signal is kept for after the start-up"
    );
    crate::common::sigterm(&child);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "still running");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut log = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut log).unwrap();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("second stop signal"), "{log}");
}

/// A name no other test run uses on the shared broker, for client ids, and the trigger topic
/// prefix under it.
fn broker_names() -> (String, String) {
    let unique = format!(
        "{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let prefix = format!("linesight-test/{unique}/triggers");
    (unique, prefix)
}

/// The real Mosquitto on 127.0.0.1:1883 (scripts/test starts it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_triggers_from_the_real_broker() {
    use linesight::pipeline::mqtt::MqttTriggerConfig;
    use rumqttc::{AsyncClient, MqttOptions, QoS};

    let (unique, prefix) = broker_names();
    let config = PipelineConfig {
        mqtt_triggers: Some(MqttTriggerConfig {
            client_id: format!("lt-{unique}"),
            topic_prefix: prefix.clone(),
            ..MqttTriggerConfig::default()
        }),
        ..PipelineConfig::default()
    };
    let (pipeline, sink) = start(
        config,
        vec![open(camera(
            "press",
            synthetic(None),
            TriggerMode::Triggered,
        ))],
    )
    .await;
    let status = pipeline.status();
    // Wait for the subscription (the broker answers within milliseconds on loopback).
    let publisher_opts = MqttOptions::new(format!("lt-pub-{unique}"), "127.0.0.1", 1883);
    let (client, mut events) = AsyncClient::new(publisher_opts, 16);
    let poller = tokio::spawn(async move { while events.poll().await.is_ok() {} });
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..3 {
        let payload = format!(r#"{{"id":"t{i}","part_id":"part-{i}","lot":"lot-7"}}"#);
        client
            .publish(format!("{prefix}/press"), QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }
    client
        .publish(
            format!("{prefix}/press"),
            QoS::AtLeastOnce,
            false,
            "not json",
        )
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while sink.results().len() < 3 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    poller.abort();
    pipeline.shutdown().await;
    let results = sink.results();
    assert_each_trigger_once(&results, 3);
    assert!(
        results
            .iter()
            .all(|r| r.status() == "inspected" && r.lot.as_deref() == Some("lot-7"))
    );
    assert!(
        status
            .metrics_text()
            .contains("linesight_frames_out_total{camera=\"press\"} 3")
    );
}

/// A journal that keeps an MQTT trigger waiting longer than the broker's keep-alive allowance
/// (1.5 × 5 s: another writer holds the SQLite database for 9 s) does not cost the connection:
/// the broker does not deliver the trigger again, so a trigger without an id is inspected once,
/// not a second time under a new id. (Debian's Mosquitto 2.0.11 did not drop a silent client
/// after 9 s here, so on it this part also passes without the connection being polled
/// meanwhile; brokers that enforce the keep-alive drop it.) Then a stop comes while a second
/// trigger waits for the journal: it is journalled once the store is free, and its
/// acknowledgement reaches the broker before the disconnection, so a new session under the
/// same client id is handed nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_journal_keeps_the_mqtt_connection_and_triggers_are_acknowledged_by_the_stop() {
    use linesight::pipeline::mqtt::MqttTriggerConfig;
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    use sqlx::Connection as _;

    let (unique, prefix) = broker_names();
    let client_id = format!("lt-slow-{unique}");
    // The session and its subscription exist before the pipeline connects: the broker keeps
    // what is published meanwhile for it.
    {
        let mut options = MqttOptions::new(&client_id, "127.0.0.1", 1883);
        options.set_clean_session(false);
        let (session, mut events) = AsyncClient::new(options, 16);
        session
            .subscribe(format!("{prefix}/+"), QoS::AtLeastOnce)
            .await
            .unwrap();
        while !matches!(
            events.poll().await.unwrap(),
            Event::Incoming(Packet::SubAck(_))
        ) {}
        session.disconnect().await.unwrap();
        while events.poll().await.is_ok() {}
    }
    let db = crate::quality::sqlite().await;
    let images = tempfile::tempdir().unwrap();
    let (pipeline, sink) = start_recording_press(
        PipelineConfig {
            mqtt_triggers: Some(MqttTriggerConfig {
                client_id: client_id.clone(),
                topic_prefix: prefix.clone(),
                ..MqttTriggerConfig::default()
            }),
            ..PipelineConfig::default()
        },
        &db,
        images.path(),
    )
    .await;
    let (client, mut events) = AsyncClient::new(
        MqttOptions::new(format!("lt-pub-{unique}"), "127.0.0.1", 1883),
        16,
    );
    let poller = tokio::spawn(async move { while events.poll().await.is_ok() {} });
    let trigger = |part: &str| {
        client.publish(
            format!("{prefix}/press"),
            QoS::AtLeastOnce,
            false,
            format!(r#"{{"part_id":"{part}","lot":"L-1"}}"#),
        )
    };
    // Another writer holds the database: the journal waits (SQLite's busy timeout) for it.
    let url = db.config.url.clone().unwrap();
    let mut writer = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut writer)
        .await
        .unwrap();
    trigger("P-1").await.unwrap();
    tokio::time::sleep(Duration::from_secs(9)).await;
    sqlx::query("ROLLBACK").execute(&mut writer).await.unwrap();
    wait_for(&sink, 1).await;
    // Time for a redelivery to be served, had the broker dropped the connection.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let results = sink.results();
    assert_eq!(results.len(), 1, "answered once: {results:?}");
    assert_eq!(results[0].part_id.as_deref(), Some("P-1"));
    // Its deadline (2 s) counted from when it came, not from when the journal took it 9 s
    // later: answered late, without a frame of whatever part was under the camera by then.
    assert_eq!(results[0].status(), "late", "{results:?}");
    // A stop while a trigger waits for the journal: the trigger is journalled once the store
    // is free, and its acknowledgement goes out before the disconnection.
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut writer)
        .await
        .unwrap();
    trigger("P-2").await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stopping = tokio::spawn(async move { pipeline.shutdown().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    sqlx::query("ROLLBACK").execute(&mut writer).await.unwrap();
    stopping.await.unwrap();
    poller.abort();
    let journalled: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM triggers")
        .fetch_one(&mut writer)
        .await
        .unwrap();
    assert_eq!(journalled, 2, "both triggers journalled");
    // The same session again: nothing was left unacknowledged.
    let mut options = MqttOptions::new(&client_id, "127.0.0.1", 1883);
    options.set_clean_session(false);
    let (again, mut events) = AsyncClient::new(options, 16);
    again
        .subscribe(format!("{prefix}/+"), QoS::AtLeastOnce)
        .await
        .unwrap();
    let redelivered = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => return Some(p),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    })
    .await;
    assert!(
        !matches!(redelivered, Ok(Some(_))),
        "delivered again: {redelivered:?}"
    );
}

/// Back-off doubles up to its maximum, in virtual time: 1 s, 2 s, 2 s before the fourth grab.
#[tokio::test(start_paused = true)]
async fn reopen_back_off_doubles_up_to_its_maximum() {
    let config = PipelineConfig {
        reopen_backoff_initial_ms: 1_000,
        reopen_backoff_max_ms: 2_000,
        ..PipelineConfig::default()
    };
    let flaky = Camera {
        config: camera("flaky", synthetic(None), TriggerMode::FreeRun),
        source: Box::new(Flaky {
            failures: 3,
            frames: 1,
            next: 0,
        }),
    };
    let (pipeline, sink) = start(config, vec![flaky]).await;
    let start = tokio::time::Instant::now();
    let real = std::time::Instant::now();
    pipeline.run_until(std::future::pending()).await;
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(5) && waited < Duration::from_millis(5_500),
        "{waited:?}"
    );
    assert!(
        real.elapsed() < Duration::from_secs(5),
        "virtual time, not real"
    );
    assert_eq!(sink.results().len(), 1);
}

/// Its first grab fails, and so does every reopen (a camera unplugged for good).
struct Unplugged {
    grabs: Arc<AtomicUsize>,
    reopens: Arc<AtomicUsize>,
}

impl FrameSource for Unplugged {
    fn describe(&self) -> String {
        "unplugged".into()
    }
    fn next_frame(&mut self) -> Result<Option<Captured>, SourceError> {
        self.grabs.fetch_add(1, Ordering::SeqCst);
        Err(SourceError::Device {
            source_name: "unplugged".into(),
            message: "no such device".into(),
        })
    }
    fn reopen(&mut self) -> Result<(), SourceError> {
        self.reopens.fetch_add(1, Ordering::SeqCst);
        Err(SourceError::Device {
            source_name: "unplugged".into(),
            message: "no such device".into(),
        })
    }
}

/// A free-running camera that cannot be reopened is tried once per back-off period (not a
/// grab besides each reopen), and its health counts every try.
#[tokio::test(start_paused = true)]
async fn a_camera_that_cannot_be_reopened_is_tried_once_per_back_off() {
    let (grabs, reopens) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (pipeline, _sink) = start(
        PipelineConfig {
            reopen_backoff_initial_ms: 1_000,
            reopen_backoff_max_ms: 1_000,
            ..PipelineConfig::default()
        },
        vec![Camera {
            config: camera("gone", synthetic(None), TriggerMode::FreeRun),
            source: Box::new(Unplugged {
                grabs: grabs.clone(),
                reopens: reopens.clone(),
            }),
        }],
    )
    .await;
    let status = pipeline.status();
    tokio::time::sleep(Duration::from_millis(5_500)).await;
    assert_eq!(
        grabs.load(Ordering::SeqCst),
        1,
        "no grab on a camera not open"
    );
    assert_eq!(reopens.load(Ordering::SeqCst), 5);
    let health = status.health();
    let Some(CameraHealth::Reopening { failures, .. }) = health.get("gone") else {
        panic!("{health:?}")
    };
    assert_eq!(*failures, 6, "the grab and five reopens");
    pipeline.shutdown().await;
}

/// A free-running camera replaying the synthetic test parts through the fixed-batch test model
/// (a batch of 2 in its graph).
fn fixed_batch_camera() -> CameraConfig {
    let mut cam = camera(
        "fixed",
        SourceConfig::Folder {
            path: repo().join("testdata/synthetic/test"),
            repeat: false,
            preload_mib: None,
        },
        TriggerMode::FreeRun,
    );
    cam.model = repo().join("testdata/models/fixed-batch");
    cam
}

/// A model with a fixed batch of 2 under dynamic batches of up to 3: chunked and padded, same
/// verdicts as the dynamic-batch demo model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_batch_models_run_under_dynamic_batching() {
    let cam = fixed_batch_camera();
    let config = PipelineConfig {
        batch_size: 3,
        // Batching itself is under test: keep the configured size.
        batch_autotune: false,
        max_batch_wait_ms: 50,
        queue_capacity: 64,
        ..PipelineConfig::default()
    };
    let (pipeline, sink) = start(config, vec![open(cam)]).await;
    pipeline.run_until(std::future::pending()).await;
    let results = sink.results();
    assert_eq!(results.len(), 25);
    assert!(
        results.iter().any(|r| r.batch_size == 3),
        "batches of 3 formed"
    );
    for r in &results {
        let Outcome::Inspected { verdict, .. } = r.outcome else {
            panic!("{r:?}")
        };
        assert_eq!(
            verdict == Verdict::Good,
            r.origin.contains("/good/"),
            "{}",
            r.origin
        );
    }
}

/// A model that loads but cannot run (a manifest giving a size its graph does not take) stops
/// the start with an error naming it, before any camera runs, instead of failing on the parts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_cannot_run_fails_its_warm_up_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let model = crate::common::model_that_cannot_run(dir.path());
    let mut cam = camera(
        "wrong",
        SourceConfig::Synthetic {
            seed: 1,
            defect_rate: 0.0,
            frames: Some(1),
        },
        TriggerMode::FreeRun,
    );
    cam.model = model.clone();
    let err = Pipeline::start(
        PipelineConfig::default(),
        runtime(),
        options(),
        DecodeLimits::default(),
        vec![open(cam)],
        vec![],
        None,
    )
    .await
    .err()
    .expect("the start fails");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "model {} failed its warm-up inference:",
            model.display()
        )),
        "{text}"
    );
}

/// Log lines written while a test runs, for the few behaviours that only a log line shows.
#[derive(Clone, Default)]
struct Logs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// Captures what this thread logs until the guard is dropped.
    fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Asserts whether the fixed-batch padding warning for `batch_size` was logged.
    fn assert_padding_warning(&self, batch_size: usize, warned: bool) {
        let text = self.text();
        assert_eq!(
            text.contains(&format!(
                "pipeline.batch_size = {batch_size}: each call is padded"
            )) && text.contains("Set pipeline.batch_size = 2 or more."),
            warned,
            "batch_size {batch_size}:\n{text}"
        );
    }
}

/// A fixed-batch model under a smaller `batch_size` still gets every frame right (each call
/// padded), and the start-up says what that costs and what to set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_batch_model_under_a_smaller_batch_size_is_warned_about() {
    for (batch_size, warned) in [(1, true), (2, false)] {
        let (logs, _guard) = Logs::capture();
        let cam = fixed_batch_camera();
        let config = PipelineConfig {
            batch_size,
            queue_capacity: 64,
            ..PipelineConfig::default()
        };
        let (pipeline, sink) = start(config, vec![open(cam)]).await;
        pipeline.run_until(std::future::pending()).await;
        let results = sink.results();
        assert_eq!(results.len(), 25);
        assert!(
            results
                .iter()
                .all(|r| matches!(r.outcome, Outcome::Inspected { .. }))
        );
        logs.assert_padding_warning(batch_size, warned);
    }
}

/// The same warning for a fixed-batch model activated by a hot swap: a recipe's change of
/// model must not halve the line's throughput silently either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_batch_model_swapped_in_under_a_smaller_batch_size_is_warned_about() {
    for (batch_size, warned) in [(1, true), (2, false)] {
        let (logs, _guard) = Logs::capture();
        let mut belt = camera("belt", synthetic(None), TriggerMode::FreeRun);
        belt.fps = 40.0;
        let config = PipelineConfig {
            batch_size,
            batch_autotune: false,
            queue_capacity: 64,
            ..PipelineConfig::default()
        };
        let (pipeline, sink) = start(config, vec![open(belt)]).await;
        assert!(
            !logs.text().contains("each call is padded"),
            "the demo model takes any batch:\n{}",
            logs.text()
        );
        let fixed =
            linesight::model::ModelPackage::open(&repo().join("testdata/models/fixed-batch"))
                .unwrap();
        let identity = pipeline.model_switch().swap("belt", fixed).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !sink.results().iter().any(|r| {
            r.model
                .as_ref()
                .is_some_and(|m| m.sha256 == identity.sha256)
        }) && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        pipeline.shutdown().await;
        let results = sink.results();
        assert!(
            results.iter().any(|r| r
                .model
                .as_ref()
                .is_some_and(|m| m.sha256 == identity.sha256)),
            "the swapped-in model inspected frames"
        );
        assert!(
            results
                .iter()
                .all(|r| matches!(r.outcome, Outcome::Inspected { .. }))
        );
        logs.assert_padding_warning(batch_size, warned);
    }
}

/// A pipeline that records into `db`'s store.
/// [`start_recording`] with one triggered camera, "press", of synthetic parts.
async fn start_recording_press(
    config: PipelineConfig,
    db: &crate::quality::Db,
    image_dir: &std::path::Path,
) -> (Pipeline, MemorySink) {
    let press = open(camera("press", synthetic(None), TriggerMode::Triggered));
    start_recording(config, vec![press], db, image_dir).await
}

async fn start_recording(
    config: PipelineConfig,
    cameras: Vec<Camera>,
    db: &crate::quality::Db,
    image_dir: &std::path::Path,
) -> (Pipeline, MemorySink) {
    let sink = MemorySink::default();
    let sinks: Vec<Box<dyn ResultSink>> = vec![Box::new(sink.clone())];
    let recorder = linesight::pipeline::Recorder {
        store: db.store.clone(),
        quality: linesight::quality::QualityConfig::default(),
        line: "line-7".into(),
        default_lot: "free".into(),
        images: linesight::pipeline::ImagePolicy::Rejects,
        image_dir: image_dir.to_path_buf(),
    };
    let pipeline = Pipeline::start(
        config,
        runtime(),
        options(),
        DecodeLimits::default(),
        cameras,
        sinks,
        Some(recorder),
    )
    .await
    .unwrap();
    (pipeline, sink)
}

/// A late, busy or error answer that finds its trigger answered already: recorded when the
/// stored answer is this one (an earlier try whose commit went through although it reported
/// an error: the sinks must still get it), superseded otherwise (an orphan scan that read the
/// journal just before the trigger's own answer: the sinks must not get a second result).
#[tokio::test]
async fn a_second_answer_to_a_trigger_is_superseded_but_a_retried_one_is_not() {
    use linesight::pipeline::record::Stored;
    let db = crate::quality::sqlite().await;
    let images = tempfile::tempdir().unwrap();
    let recorder = linesight::pipeline::Recorder {
        store: db.store.clone(),
        quality: linesight::quality::QualityConfig::default(),
        line: "line-7".into(),
        default_lot: "free".into(),
        images: linesight::pipeline::ImagePolicy::Rejects,
        image_dir: images.path().to_path_buf(),
    };
    let late = |id: &str| InspectionResult {
        camera: "press".into(),
        sequence: 0,
        trigger_id: Some(id.into()),
        part_id: None,
        lot: None,
        recipe: None,
        frame_time: String::new(),
        origin: String::new(),
        outcome: Outcome::Late {
            reason: "the instance that accepted it stopped".into(),
            waited_ms: 70_000.0,
        },
        model: None,
        timings: Default::default(),
        batch_size: 0,
    };
    let errors = std::sync::atomic::AtomicU64::new(0);
    let stop = linesight::pipeline::record::RetryStop::passed_already();
    let now = linesight::quality::now_ms();
    for id in ["T-1", "T-2"] {
        db.store
            .journal_trigger(id, "press", None, None, None, now)
            .await
            .unwrap();
    }
    let record = |id: &'static str| {
        let (recorder, errors, stop, result) = (&recorder, &errors, &stop, late(id));
        async move {
            recorder
                .record_with_retry(&result, None, stop, errors)
                .await
        }
    };
    assert_eq!(record("T-1").await, Stored::Recorded);
    assert_eq!(
        record("T-1").await,
        Stored::Recorded,
        "its own earlier try: still this answer"
    );
    db.store
        .answer_trigger(
            "T-2",
            linesight::store::TriggerAnswer::Busy,
            "queue full",
            now,
        )
        .await
        .unwrap();
    assert_eq!(record("T-2").await, Stored::Superseded);
    assert_eq!(
        db.store.trigger("T-2").await.unwrap().unwrap().state,
        "busy"
    );
    assert_eq!(errors.load(Ordering::Relaxed), 0);
    db.finish().await;
}

async fn results_are_recorded_and_triggers_journalled(db: crate::quality::Db) {
    let images = tempfile::tempdir().unwrap();
    let (pipeline, sink) =
        start_recording_press(PipelineConfig::default(), &db, images.path()).await;
    let triggers = pipeline.triggers();
    for i in 0..6 {
        let accepted = triggers.fire(trigger("press", i)).await.unwrap();
        assert_eq!(accepted.status, "queued");
        // Durable before acknowledged: the journal has it as soon as `fire` returns.
        assert!(db.store.trigger(&accepted.id).await.unwrap().is_some());
    }
    wait_for(&sink, 6).await;
    // The same id again (a client retrying, an MQTT redelivery) is not served twice.
    let again = triggers.fire(trigger("press", 0)).await.unwrap();
    assert_eq!(again.status, "duplicate");
    // Journalled by a try whose caller saw an error although it committed: the next try
    // serves it instead of leaving it to be answered "late", as it was journalled (a retry
    // that says another part does not change the part acknowledged).
    db.store
        .journal_trigger(
            "press-retried",
            "press",
            Some("part-99"),
            Some("lot-7"),
            None,
            linesight::quality::now_ms(),
        )
        .await
        .unwrap();
    let mut retried = trigger("press", 99);
    retried.id = Some("press-retried".into());
    retried.part_id = Some("part-99-retyped".into());
    assert_eq!(triggers.fire(retried).await.unwrap().status, "queued");
    // Redelivered long after it was first received (the broker kept it over a restart): its
    // deadline counts from then, so it is answered late, without a frame of a later part.
    db.store
        .journal_trigger("press-old", "press", None, None, None, 1)
        .await
        .unwrap();
    let mut old = trigger("press", 98);
    old.id = Some("press-old".into());
    assert_eq!(triggers.fire(old).await.unwrap().status, "queued");
    wait_for(&sink, 8).await;
    let summary = pipeline.shutdown().await;
    assert_eq!(summary.inspected, 7, "{summary:?}");
    assert_eq!(summary.late, 1, "{summary:?}");
    let mut results = sink.results();
    assert_eq!(results.len(), 8, "the duplicate produced no result");
    let late = results.remove(
        results
            .iter()
            .position(|r| r.trigger_id.as_deref() == Some("press-old"))
            .unwrap(),
    );
    assert!(matches!(late.outcome, Outcome::Late { .. }), "{late:?}");
    assert_eq!(
        db.store.trigger("press-old").await.unwrap().unwrap().state,
        "late"
    );
    let retried = results
        .iter()
        .find(|r| r.trigger_id.as_deref() == Some("press-retried"))
        .unwrap();
    assert_eq!(retried.part_id.as_deref(), Some("part-99"), "{retried:?}");
    let mut rejects = 0;
    for r in &results {
        let id = r.trigger_id.as_deref().unwrap();
        let t = db.store.trigger(id).await.unwrap().unwrap();
        assert_eq!(t.state, "inspected", "{t:?}");
        let inspection = db.store.inspection(t.inspection_id.unwrap()).await.unwrap();
        let i = &inspection.inspection;
        assert_eq!(Some(i.part_id.clone()), r.part_id);
        assert_eq!(i.line, "line-7");
        assert_eq!(i.camera, "press");
        let Outcome::Inspected { score, verdict, .. } = &r.outcome else {
            panic!("{r:?}")
        };
        assert_eq!(i.verdict, *verdict);
        assert!((i.score - f64::from(*score)).abs() < 1e-6);
        assert_eq!(
            i.model_sha256,
            r.model.as_ref().unwrap().sha256,
            "the record names the model behind the verdict"
        );
        if *verdict == Verdict::Defect {
            rejects += 1;
            let hash = i.image_ref.as_deref().expect("a reject keeps its image");
            let png =
                std::fs::read(linesight::store::image_path(images.path(), hash).unwrap()).unwrap();
            let frame = image::load_from_memory(&png).unwrap();
            assert!(frame.width() > 0);
        }
    }
    assert!(rejects > 0, "the synthetic camera makes defective parts");
    assert_eq!(db.store.inspection_count().await.unwrap(), 7);
    // What `audit verify` compares: each result and the entry that recorded it agree.
    let check = db.store.verify_records().await.unwrap();
    assert_eq!(
        (check.inspections, check.mismatches_total),
        (7, 0),
        "{check:?}"
    );
    db.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_are_recorded_and_triggers_journalled_sqlite() {
    results_are_recorded_and_triggers_journalled(crate::quality::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_are_recorded_and_triggers_journalled_postgres() {
    results_are_recorded_and_triggers_journalled(crate::quality::postgres().await).await;
}

async fn triggers_left_by_a_stopped_run_are_answered_late(db: crate::quality::Db) {
    // A run that journalled (acknowledged) a trigger and died before serving it.
    let journalled = db
        .store
        .journal_trigger("press-crash-1", "press", Some("P-1"), Some("L-9"), None, 1)
        .await
        .unwrap();
    assert_eq!(journalled, linesight::store::Journalled::New);
    let images = tempfile::tempdir().unwrap();
    let (pipeline, sink) =
        start_recording_press(PipelineConfig::default(), &db, images.path()).await;
    wait_for(&sink, 1).await;
    pipeline.shutdown().await;
    let results = sink.results();
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(results[0].trigger_id.as_deref(), Some("press-crash-1"));
    assert_eq!(results[0].part_id.as_deref(), Some("P-1"));
    assert!(matches!(results[0].outcome, Outcome::Late { .. }));
    let t = db.store.trigger("press-crash-1").await.unwrap().unwrap();
    assert_eq!(t.state, "late");
    assert!(
        db.store
            .pending_triggers(i64::MAX)
            .await
            .unwrap()
            .is_empty()
    );
    db.finish().await;
}

/// Tries of one trigger at once (a client retrying while its first request is still being
/// journalled, a broker's redelivery) are served once: one is queued, the others are answered
/// "duplicate", and each trigger has one result, with the part it was first sent with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tries_of_one_trigger_at_once_are_served_once() {
    let db = crate::quality::sqlite().await;
    let images = tempfile::tempdir().unwrap();
    let (pipeline, sink) = start_recording_press(
        PipelineConfig {
            trigger_queue_capacity: 64,
            trigger_deadline_ms: 60_000,
            ..PipelineConfig::default()
        },
        &db,
        images.path(),
    )
    .await;
    let triggers = pipeline.triggers();
    const N: usize = 20;
    let mut tries = tokio::task::JoinSet::new();
    for i in 0..N {
        for copy in 0..3 {
            let triggers = triggers.clone();
            let mut t = trigger("press", i);
            // A retry with other fields is still the same trigger.
            if copy > 0 {
                t.part_id = Some(format!("other-{i}-{copy}"));
            }
            tries.spawn(async move { (i, triggers.fire(t).await.unwrap().status) });
        }
    }
    let mut answers = BTreeMap::<usize, Vec<&str>>::new();
    while let Some(answer) = tries.join_next().await {
        let (i, status) = answer.unwrap();
        answers.entry(i).or_default().push(status);
    }
    for (i, mut statuses) in answers {
        statuses.sort();
        assert_eq!(
            statuses,
            ["duplicate", "duplicate", "queued"],
            "trigger {i}"
        );
    }
    wait_for(&sink, N).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    pipeline.shutdown().await;
    let results = sink.results();
    assert_each_trigger_once(&results, N);
    for r in &results {
        let id = r.trigger_id.as_deref().unwrap();
        let journalled = db.store.trigger(id).await.unwrap().unwrap();
        assert_eq!(r.part_id, journalled.part_id, "{id}");
        assert_eq!(journalled.state, r.status(), "{id}");
    }
    db.finish().await;
}

/// Results the quality store cannot take are retried until the shutdown deadline, then
/// counted as not recorded: in the stop's summary (`run` exits 3 on it) and in `/metrics`.
/// Their triggers stay pending in the journal, for the next start to answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_the_store_cannot_take_are_counted_at_the_stop() {
    let db = crate::quality::sqlite().await;
    let images = tempfile::tempdir().unwrap();
    let (pipeline, sink) = start_recording_press(
        PipelineConfig {
            shutdown_deadline_ms: 500,
            ..PipelineConfig::default()
        },
        &db,
        images.path(),
    )
    .await;
    // The inspections table goes away under the running service (a restore gone wrong): the
    // journal still takes triggers, no inspection can be recorded.
    sqlx::query("ALTER TABLE inspections RENAME TO inspections_elsewhere")
        .execute(db.store.raw_pool())
        .await
        .unwrap();
    let triggers = pipeline.triggers();
    for i in 0..3 {
        assert_eq!(
            triggers.fire(trigger("press", i)).await.unwrap().status,
            "queued"
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The journal gone too: a trigger is refused 503, told to send it again, and the store's
    // own words stay in the log.
    sqlx::query("ALTER TABLE triggers RENAME TO triggers_elsewhere")
        .execute(db.store.raw_pool())
        .await
        .unwrap();
    {
        use tower::ServiceExt as _;
        let router = app(HttpState {
            triggers: pipeline.triggers(),
            status: pipeline.status(),
            store: None,
        });
        let answer = router
            .oneshot(
                axum::http::Request::post("/api/v1/triggers")
                    .header("content-type", "application/json")
                    .body(axum::body::Body::from(r#"{"camera":"press","id":"t9"}"#))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(answer.status(), axum::http::StatusCode::SERVICE_UNAVAILABLE);
        let text = axum::body::to_bytes(answer.into_body(), 1 << 20)
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&text);
        assert!(text.contains("send it again"), "{text}");
        assert!(!text.contains("triggers"), "the store's words: {text}");
    }
    let status = pipeline.status();
    let summary = pipeline.shutdown().await;
    assert!(!summary.all_kept(), "{summary:?}");
    assert_eq!(summary.not_recorded, 3, "{summary:?}");
    // The sinks still have each (the results file keeps what the store did not).
    assert_each_trigger_once(&sink.results(), 3);
    let text = status.metrics_text();
    assert!(
        text.contains("linesight_results_not_recorded_total 3"),
        "{text}"
    );
    sqlx::query("ALTER TABLE triggers_elsewhere RENAME TO triggers")
        .execute(db.store.raw_pool())
        .await
        .unwrap();
    let pending = db.store.pending_triggers(i64::MAX).await.unwrap();
    assert_eq!(pending.len(), 3, "{pending:?}");
    db.finish().await;
}

/// A stop whose deadline passes with results still on their way to a store that works: each
/// is still recorded (the deadline only stops waiting for a store that does not answer), every
/// trigger is answered in the journal, and the stop counts nothing as lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_working_store_still_records_what_is_left_at_the_deadline() {
    let db = crate::quality::sqlite().await;
    let images = tempfile::tempdir().unwrap();
    let (pipeline, sink) = start_recording_press(
        PipelineConfig {
            shutdown_deadline_ms: 1,
            trigger_queue_capacity: 32,
            ..PipelineConfig::default()
        },
        &db,
        images.path(),
    )
    .await;
    let triggers = pipeline.triggers();
    for i in 0..12 {
        assert_eq!(
            triggers.fire(trigger("press", i)).await.unwrap().status,
            "queued"
        );
    }
    let summary = pipeline.shutdown().await;
    assert!(summary.all_kept(), "{summary:?}");
    assert_each_trigger_once(&sink.results(), 12);
    let pending = db.store.pending_triggers(i64::MAX).await.unwrap();
    assert!(pending.is_empty(), "{pending:?}");
    db.finish().await;
}

/// A store that stops answering (here another writer holds SQLite's lock, and each write
/// would wait store's 30 s busy timeout; an unreachable PostgreSQL holds it for
/// store.acquire_timeout_ms) does not hold the stop up past its deadline: the write in progress
/// is given 2 s more, then not waited for, and the results still queued are not tried one by
/// one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_does_not_answer_does_not_hold_the_stop_past_its_deadline() {
    use sqlx::Connection as _;
    let db = crate::quality::sqlite().await;
    let images = tempfile::tempdir().unwrap();
    let (pipeline, sink) = start_recording(
        PipelineConfig {
            shutdown_deadline_ms: 500,
            ..PipelineConfig::default()
        },
        vec![open(camera("belt", synthetic(None), TriggerMode::FreeRun))],
        &db,
        images.path(),
    )
    .await;
    wait_for(&sink, 2).await;
    let url = db.config.url.clone().unwrap();
    let mut writer = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut writer)
        .await
        .unwrap();
    // A result's write is waiting for the lock now, and more results queue behind it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let began = std::time::Instant::now();
    let summary = pipeline.shutdown().await;
    let took = began.elapsed();
    sqlx::query("ROLLBACK").execute(&mut writer).await.unwrap();
    assert!(
        took < Duration::from_secs(10),
        "the stop took {took:?}, the busy timeout is 30 s"
    );
    assert!(summary.not_recorded >= 1, "{summary:?}");
    assert!(!summary.all_kept());
    db.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triggers_left_by_a_stopped_run_are_answered_late_sqlite() {
    triggers_left_by_a_stopped_run_are_answered_late(crate::quality::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triggers_left_by_a_stopped_run_are_answered_late_postgres() {
    triggers_left_by_a_stopped_run_are_answered_late(crate::quality::postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_swap_under_load_is_atomic_and_a_broken_model_is_refused() {
    let mut belt = camera("belt", synthetic(None), TriggerMode::FreeRun);
    belt.fps = 40.0;
    let (pipeline, sink) = start(
        PipelineConfig {
            workers: 2,
            queue_capacity: 64,
            ..PipelineConfig::default()
        },
        vec![open(belt)],
    )
    .await;
    let switch = pipeline.model_switch();
    let old = switch.slots();
    assert_eq!(old.len(), 1);
    assert_eq!(old[0].0, "belt");
    let old_hash = old[0].1.sha256.clone();
    wait_for(&sink, 5).await;

    // Refused: a package with no threshold to decide with, and a slot that does not exist.
    // The old model keeps serving.
    let no_threshold =
        linesight::model::ModelPackage::open(&repo().join("testdata/models/score-only")).unwrap();
    let err = switch.swap("belt", no_threshold.clone()).await.unwrap_err();
    assert!(err.to_string().contains("threshold"), "{err}");
    let err = switch.swap("press", no_threshold).await.unwrap_err();
    assert!(err.to_string().contains("unknown model slot"), "{err}");
    assert_eq!(switch.slots()[0].1.sha256, old_hash);
    let before = sink.results().len();
    wait_for(&sink, before + 5).await;

    // Accepted: another model (other graph, so another hash) with a threshold.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        repo().join("testdata/models/score-only/model.onnx"),
        dir.path().join("model.onnx"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("model.toml"),
        "name = \"score-only\"\nversion = \"2\"\n[decision]\nthreshold = 0.5\n",
    )
    .unwrap();
    let good = linesight::model::ModelPackage::open(dir.path()).unwrap();
    let new = switch.swap("belt", good).await.unwrap();
    let swapped_at = SystemTime::now();
    assert_ne!(new.sha256, old_hash);
    assert_eq!(switch.slots()[0].1.sha256, new.sha256);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while sink
        .results()
        .iter()
        .filter(|r| r.model.as_ref().is_some_and(|m| m.sha256 == new.sha256))
        .count()
        < 5
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    pipeline.shutdown().await;

    let mut results = sink.results();
    results.sort_by_key(|r| r.sequence);
    assert!(
        results
            .iter()
            .all(|r| matches!(r.outcome, Outcome::Inspected { .. })),
        "no frame failed during the swaps: {:?}",
        results
            .iter()
            .find(|r| !matches!(r.outcome, Outcome::Inspected { .. }))
    );
    // Every frame was inspected by the old model or the new one; every frame captured after
    // the swap returned by the new one (frame times are rounded to the millisecond).
    let mut after = 0;
    for r in &results {
        let hash = r.model.as_ref().unwrap().sha256.as_str();
        assert!(hash == old_hash || hash == new.sha256, "{hash}");
        let captured = humantime::parse_rfc3339(&r.frame_time).unwrap();
        if captured > swapped_at + Duration::from_millis(1) {
            after += 1;
            assert_eq!(
                hash, new.sha256,
                "frame {} captured after the swap",
                r.sequence
            );
        }
    }
    assert!(after >= 3, "frames after the swap: {after}");
    let old_served = results
        .iter()
        .filter(|r| r.model.as_ref().unwrap().sha256 == old_hash)
        .count();
    assert!(old_served >= 10, "the old model served until the swap");
}

/// A camera's own threshold must suit the model swapped in: one set on a model that scores on
/// its own scale (here 12) cannot decide with a normalised anomalib model (scores in [0, 1)),
/// so that swap is refused and the camera keeps its model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_to_a_model_the_camera_threshold_does_not_suit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        demo_model().join("model.onnx"),
        dir.path().join("model.onnx"),
    )
    .unwrap();
    let manifest = std::fs::read_to_string(demo_model().join("model.toml")).unwrap();
    assert!(manifest.contains("\nthreshold = 0.5\n"), "{manifest}");
    std::fs::write(
        dir.path().join("model.toml"),
        manifest.replacen("\nthreshold = 0.5\n", "\nthreshold = 12.0\n", 1),
    )
    .unwrap();
    let mut press = camera("press", synthetic(None), TriggerMode::Triggered);
    press.model = dir.path().to_path_buf();
    press.threshold = Some(12.0);
    let (pipeline, _sink) = start(PipelineConfig::default(), vec![open(press)]).await;
    let switch = pipeline.model_switch();
    let before = switch.slots()[0].1.sha256.clone();
    let normalised = linesight::model::ModelPackage::open(&demo_model()).unwrap();
    let err = switch.swap("press", normalised).await.unwrap_err();
    assert!(
        err.to_string().contains("threshold 12 for demo-washer"),
        "the refusal names the threshold: {err}"
    );
    assert_eq!(
        switch.slots()[0].1.sha256,
        before,
        "the old model serves on"
    );
    pipeline.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_instances_trigger_is_answered_only_after_the_orphan_delay() {
    let db = crate::quality::sqlite().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    // Journalled just now by another instance that may still serve it.
    db.store
        .journal_trigger("other-1", "press", None, None, None, now)
        .await
        .unwrap();
    let images = tempfile::tempdir().unwrap();
    let (pipeline, sink) = start_recording_press(
        PipelineConfig {
            orphan_trigger_after_ms: 1_000,
            ..PipelineConfig::default()
        },
        &db,
        images.path(),
    )
    .await;
    // Our own trigger, served normally, is never taken for an orphan.
    let ours = pipeline.triggers().fire(trigger("press", 1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let early: Vec<_> = sink
        .results()
        .into_iter()
        .filter(|r| r.trigger_id.as_deref() == Some("other-1"))
        .collect();
    assert!(
        early.is_empty(),
        "answered before the orphan delay: {early:?}"
    );
    assert_eq!(
        db.store.trigger("other-1").await.unwrap().unwrap().state,
        "pending"
    );
    wait_for(&sink, 2).await;
    pipeline.shutdown().await;
    let results = sink.results();
    assert_eq!(results.len(), 2, "{results:?}");
    let other = results
        .iter()
        .find(|r| r.trigger_id.as_deref() == Some("other-1"))
        .unwrap();
    assert!(matches!(other.outcome, Outcome::Late { .. }));
    let mine = results
        .iter()
        .find(|r| r.trigger_id.as_deref() == Some(ours.id.as_str()))
        .unwrap();
    assert!(matches!(mine.outcome, Outcome::Inspected { .. }));
    assert_eq!(
        db.store.trigger("other-1").await.unwrap().unwrap().state,
        "late"
    );
    db.finish().await;
}

/// `linesight run` follows model activations from another process: a refused model (command
/// line) leaves the running one serving, an accepted one (the admin API of the running service)
/// takes over without a failed frame, and `/readyz` stays ready throughout the swap.
#[test]
fn run_follows_model_activations_from_the_cli_and_the_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("line.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[store]
data_dir = "{data}"
[models]
poll_interval_ms = 200
[api]
listen = "127.0.0.1:{port}"
inspectors = 1
[pipeline]
results_dir = "{data}"
[[cameras]]
id = "belt"
source = {{ kind = "synthetic", seed = 3, defect_rate = 0.3 }}
fps = 20
model = "{model}"
"#,
            data = dir.path().display(),
            model = demo_model().display()
        ),
    )
    .unwrap();
    let cli = |args: &[&str], stdin: Option<&str>| {
        use std::io::Write as _;
        let mut child = crate::common::linesight()
            .arg("--config")
            .arg(&config)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).unwrap();
        }
        drop(input);
        child.wait_with_output().unwrap()
    };
    let added = cli(
        &[
            "users",
            "add",
            "ada",
            "--full-name",
            "Ada Admin",
            "--role",
            "admin",
        ],
        Some("ada-long-password\n"),
    );
    assert!(added.status.success(), "{added:?}");
    let issued = cli(
        &["users", "token", "ada", "--name", "release pipeline"],
        None,
    );
    assert!(issued.status.success(), "{issued:?}");
    let token = String::from_utf8(issued.stdout).unwrap().trim().to_owned();
    // `linesight run` in the background, and its stop by SIGTERM (exit 0 expected).
    let start = || {
        crate::common::linesight()
            .arg("--config")
            .arg(&config)
            .arg("run")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let stop = |mut child: std::process::Child| {
        crate::common::sigterm(&child);
        assert_eq!(child.wait().unwrap().code(), Some(0));
    };
    let child = start();
    let results = dir.path().join("results.jsonl");
    let lines = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&results)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    let wait = |pred: &dyn Fn(&[serde_json::Value]) -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !pred(&lines()) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let sha = |v: &serde_json::Value| v["model"]["sha256"].as_str().unwrap_or("").to_string();
    wait(&|l| l.len() >= 5);
    let old = sha(&lines()[0]);
    // Readiness, polled every 50 ms from now until the new model has served.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while crate::api::http(port, "GET /readyz HTTP/1.1", b"").0 != 200 {
        assert!(std::time::Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    let polling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let poller = {
        let polling = polling.clone();
        std::thread::spawn(move || {
            let mut answers = Vec::new();
            while polling.load(std::sync::atomic::Ordering::SeqCst) {
                answers.push(crate::api::http(port, "GET /readyz HTTP/1.1", b""));
                std::thread::sleep(Duration::from_millis(50));
            }
            answers
        })
    };
    let activate = |package: &std::path::Path| {
        crate::common::linesight()
            .arg("--config")
            .arg(&config)
            .args(["models", "activate", "--slot", "belt"])
            .arg(package)
            .output()
            .unwrap()
    };
    // No threshold to decide with: refused, the demo model keeps serving.
    let refused = activate(&repo().join("testdata/models/score-only"));
    assert_eq!(refused.status.code(), Some(1));
    let good = dir.path().join("score-only-v2");
    std::fs::create_dir(&good).unwrap();
    std::fs::copy(
        repo().join("testdata/models/score-only/model.onnx"),
        good.join("model.onnx"),
    )
    .unwrap();
    std::fs::write(
        good.join("model.toml"),
        "name = \"score-only\"\nversion = \"2\"\n[decision]\nthreshold = 0.5\n",
    )
    .unwrap();
    let body = format!(r#"{{"slot":"belt","package":"{}"}}"#, good.display());
    let (status, answer) = crate::api::http(
        port,
        &format!(
            "POST /api/v1/models/activate HTTP/1.1\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json"
        ),
        body.as_bytes(),
    );
    assert_eq!(status, 200, "{answer}");
    let new = linesight::model::ModelPackage::open(&good).unwrap().sha256;
    assert!(answer.contains(&new), "{answer}");
    wait(&|l| l.iter().filter(|v| sha(v) == new).count() >= 5);
    polling.store(false, std::sync::atomic::Ordering::SeqCst);
    let answers = poller.join().unwrap();
    assert!(answers.len() >= 5, "{answers:?}");
    assert!(
        answers
            .iter()
            .all(|(status, body)| *status == 200 && body.contains("\"ready\":true")),
        "ready throughout the swap: {:?}",
        answers.iter().find(|(s, _)| *s != 200)
    );
    stop(child);
    let all = lines();
    assert!(
        all.iter().all(|v| v["status"] == "inspected"),
        "no frame failed: {:?}",
        all.iter().find(|v| v["status"] != "inspected")
    );
    let hashes: Vec<String> = all.iter().map(sha).collect();
    let first_new = hashes
        .iter()
        .position(|h| *h == new)
        .expect("new model served");
    assert!(first_new >= 5 && hashes[..first_new].iter().all(|h| *h == old));
    assert!(
        hashes[first_new..].iter().filter(|h| **h == new).count() >= 5,
        "the new model serves after the swap"
    );

    // Started again, the service inspects with the activated model from its first frame, not
    // with the one its configuration names.
    let before = lines().len();
    let child = start();
    wait(&|l| l.len() >= before + 3);
    stop(child);
    let restarted = lines();
    assert!(
        restarted.len() >= before + 3,
        "the restarted service inspects"
    );
    assert!(
        restarted[before..].iter().all(|v| sha(v) == new),
        "every frame after the restart by the activated model: {:?}",
        restarted[before..].iter().map(sha).collect::<Vec<_>>()
    );
    // The activated package gone from this machine: the service does not start with another.
    std::fs::rename(&good, dir.path().join("moved-away")).unwrap();
    let refused = crate::common::linesight()
        .arg("--config")
        .arg(&config)
        .arg("run")
        .output()
        .unwrap();
    assert_ne!(refused.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("slot belt has model activation"),
        "{stderr}"
    );
}
