//! Camera sources: a missing USB camera goes through the pipeline's reopen path, `linesight
//! cameras` on a machine without cameras, and (feature `gige`) GigE Vision against Aravis's fake
//! camera (`arv-fake-gv-camera-0.8` from Debian's `aravis-tools`) on 127.0.0.1: free-run,
//! software trigger, Bayer conversion, a camera that vanishes and comes back, and triggered
//! inspection through the pipeline; and (feature `rtsp`) RTSP against GStreamer's RTSP server
//! (`tests/rtsp/serve.py`) on 127.0.0.1.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use linesight::actions::{MemorySink, ResultSink};
use linesight::model::SessionOptions;
use linesight::pipeline::{
    Camera, CameraConfig, CameraHealth, Pipeline, PipelineConfig, TriggerMode,
};
use linesight::preprocess::DecodeLimits;
use linesight::source::usb::{UsbConfig, UsbDevice, UsbPixelFormat};
use linesight::source::{LazySource, SourceConfig};

use crate::common::{linesight, repo, runtime};

/// One fake GigE camera at a time: they all answer on 127.0.0.1's GVCP port. `linesight cameras`
/// takes it too, so that it sees no fake camera.
static FAKE_CAMERA: Mutex<()> = Mutex::new(());

fn camera_config(id: &str, source: SourceConfig, mode: TriggerMode) -> CameraConfig {
    CameraConfig {
        id: id.into(),
        source,
        mode,
        fps: 0.0,
        every_nth: 1,
        model: repo().join("models/demo"),
        threshold: None,
        recipes: BTreeMap::new(),
    }
}

async fn start(config: PipelineConfig, cameras: Vec<Camera>) -> (Pipeline, MemorySink) {
    let sink = MemorySink::default();
    let sinks: Vec<Box<dyn ResultSink>> = vec![Box::new(sink.clone())];
    let options = SessionOptions {
        intra_threads: 1,
        ..SessionOptions::default()
    };
    let pipeline = Pipeline::start(
        config,
        runtime(),
        options,
        DecodeLimits::default(),
        cameras,
        sinks,
        None,
    )
    .await
    .unwrap();
    (pipeline, sink)
}

/// A camera as `linesight run` builds it: opened on first use, reopened from its config.
fn lazy(config: CameraConfig) -> Camera {
    let source = Box::new(LazySource::new(
        config.source.clone(),
        DecodeLimits::default(),
    ));
    Camera { config, source }
}

fn missing_usb() -> SourceConfig {
    SourceConfig::Usb(UsbConfig {
        device: UsbDevice::Path("/dev/video63".into()),
        width_px: 640,
        height_px: 480,
        frame_rate_fps: 30,
        pixel_format: UsbPixelFormat::Yuyv,
    })
}

#[test]
fn usb_kind_parses_and_validates_with_the_camera_settings() {
    let text = r#"
        id = "cam1"
        model = "models/demo"
        source = { kind = "usb", device = 0, width_px = 1920, height_px = 1080, frame_rate_fps = 0, pixel_format = "mjpeg" }
    "#;
    let c: CameraConfig = toml::from_str(text).unwrap();
    let problems = linesight::pipeline::config::problems(&PipelineConfig::default(), &[c]);
    assert_eq!(
        problems,
        vec!["cameras[0].source.frame_rate_fps = 0: must be between 1 and 1000".to_string()]
    );
    let bad = text.replace("pixel_format", "pixelformat");
    let e = toml::from_str::<CameraConfig>(&bad)
        .unwrap_err()
        .to_string();
    assert!(e.contains("pixelformat"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_usb_camera_is_reported_and_retried_while_others_run() {
    let config = PipelineConfig {
        reopen_backoff_initial_ms: 20,
        reopen_backoff_max_ms: 40,
        ..PipelineConfig::default()
    };
    let usb = lazy(camera_config("usb0", missing_usb(), TriggerMode::FreeRun));
    let steady = lazy(camera_config(
        "steady",
        SourceConfig::Synthetic {
            seed: 3,
            defect_rate: 0.3,
            frames: Some(4),
        },
        TriggerMode::FreeRun,
    ));
    let (pipeline, sink) = start(config, vec![usb, steady]).await;
    let status = pipeline.status();
    let metrics = pipeline.metrics();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let errors = metrics.camera("usb0").map_or(0, |c| {
            c.source_errors.load(std::sync::atomic::Ordering::Relaxed)
        });
        let steady_done = sink
            .results()
            .iter()
            .filter(|r| r.camera == "steady")
            .count()
            == 4;
        if (errors >= 3 && steady_done) || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    match &status.health()["usb0"] {
        CameraHealth::Reopening {
            error, failures, ..
        } => {
            assert!(
                error.contains("usb /dev/video63: no such device"),
                "{error}"
            );
            assert!(*failures >= 2, "retried: {failures}");
        }
        other => panic!("usb0 should be reopening, is {other:?}"),
    }
    pipeline.shutdown().await;
    let results = sink.results();
    assert_eq!(results.iter().filter(|r| r.camera == "steady").count(), 4);
    assert!(results.iter().all(|r| r.camera != "usb0"));
}

#[test]
fn a_missing_usb_camera_fails_to_open_with_its_name() {
    let e = missing_usb()
        .open(DecodeLimits::default())
        .err()
        .expect("no /dev/video63 here")
        .to_string();
    assert!(e.starts_with("usb /dev/video63: no such device"), "{e}");
}

#[test]
fn cameras_command_exits_zero_and_says_what_it_found() {
    let _one = FAKE_CAMERA.lock().unwrap_or_else(|e| e.into_inner());
    let out = linesight().arg("cameras").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let json = linesight().args(["cameras", "--json"]).output().unwrap();
    assert_eq!(json.status.code(), Some(0), "{json:?}");
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let usb = report["usb"].as_array().expect("usb is a default feature");
    // What V4L2 would list is what /dev holds.
    let nodes = std::fs::read_dir("/dev")
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("video")
        })
        .count();
    assert_eq!(usb.len(), nodes, "{report}");
    let gige = report["gige"].as_array().map_or(0, Vec::len);
    if nodes + gige == 0 {
        assert!(text.contains("no cameras found"), "{text}");
    } else {
        assert!(!text.contains("no cameras found"), "{text}");
    }
}

/// Without the `rtsp` feature, `--probe` says which feature it needs.
#[cfg(not(feature = "rtsp"))]
#[test]
fn probing_an_rtsp_camera_needs_the_rtsp_feature() {
    let out = linesight()
        .args(["cameras", "--probe", "rtsp://127.0.0.1:9/stream"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("built without the cargo feature `rtsp`"),
        "{out:?}"
    );
}

#[cfg(feature = "gige")]
mod gige {
    use std::process::{Child, Command, Stdio};
    use std::time::Instant;

    use linesight::pipeline::Trigger;
    use linesight::source::FrameSource;
    use linesight::source::gige::{GigeConfig, GigePixelFormat, GigeSource, GigeTrigger};

    use super::*;

    /// `arv-fake-gv-camera-0.8` on 127.0.0.1, stopped on drop.
    struct FakeCamera {
        child: Child,
        id: String,
    }

    impl FakeCamera {
        fn start(serial: &str) -> FakeCamera {
            let child = Command::new("arv-fake-gv-camera-0.8")
                .args(["-i", "127.0.0.1", "-s", serial])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("arv-fake-gv-camera-0.8 (Debian aravis-tools; scripts/test installs it)");
            let id = format!("Aravis-Fake-{serial}");
            // Wait until discovery sees it.
            let deadline = Instant::now() + Duration::from_secs(10);
            while !linesight::source::gige::list_cameras()
                .iter()
                .any(|c| c.camera_id == id)
            {
                assert!(Instant::now() < deadline, "fake camera {id} never answered");
                std::thread::sleep(Duration::from_millis(50));
            }
            FakeCamera { child, id }
        }
    }

    impl Drop for FakeCamera {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn config(id: &str, trigger: GigeTrigger) -> GigeConfig {
        GigeConfig {
            camera_id: Some(id.into()),
            pixel_format: GigePixelFormat::Mono8,
            exposure_us: Some(2_000.0),
            frame_rate_fps: Some(50.0),
            trigger,
            trigger_line: "Line1".into(),
            frame_timeout_ms: 2_000,
        }
    }

    /// `gige:<id>#<frame id>@<timestamp>` → frame id.
    fn frame_id(origin: &str, id: &str) -> u64 {
        let rest = origin
            .strip_prefix(&format!("gige:{id}#"))
            .unwrap_or_else(|| panic!("origin {origin}"));
        rest.split('@').next().unwrap().parse().unwrap()
    }

    /// Frames between two ids; GigE Vision 1 frame ids are 16 bits and wrap (skipping 0).
    fn frames_between(a: u64, b: u64) -> u64 {
        if a < 65_536 && b < 65_536 && b < a {
            b + 65_535 - a
        } else {
            b - a
        }
    }

    #[test]
    fn free_run_streams_fresh_frames_in_mono8_and_bayer() {
        let _one = FAKE_CAMERA.lock().unwrap_or_else(|e| e.into_inner());
        let cam = FakeCamera::start("LSFREE");
        let mut source = GigeSource::open(config(&cam.id, GigeTrigger::FreeRun)).unwrap();
        assert_eq!(source.describe(), format!("gige {} Mono8 free-run", cam.id));
        let mut ids = Vec::new();
        for _ in 0..3 {
            let f = source.next_frame().unwrap().unwrap();
            assert_eq!(f.image.dimensions(), (512, 512));
            // The fake camera draws a diagonal gradient: not a flat image.
            let p = f.image.get_pixel(10, 10).0;
            assert_eq!(p[0], p[1]);
            assert_eq!(p[1], p[2]);
            assert_ne!(f.image.get_pixel(10, 10), f.image.get_pixel(300, 10));
            ids.push(frame_id(&f.origin, &cam.id));
            // The camera streams at 50 fps meanwhile; the next grab skips what queued up.
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(
            ids.windows(2).all(|w| frames_between(w[0], w[1]) >= 5),
            "grabs 200 ms apart at 50 fps take the newest frame: {ids:?}"
        );
        drop(source);

        let bayer = GigeConfig {
            pixel_format: GigePixelFormat::BayerRG8,
            ..config(&cam.id, GigeTrigger::FreeRun)
        };
        let mut source = GigeSource::open(bayer).unwrap();
        let f = source.next_frame().unwrap().unwrap();
        assert_eq!(f.image.dimensions(), (512, 512));
    }

    #[test]
    fn software_trigger_gives_exactly_one_exposure_per_grab() {
        let _one = FAKE_CAMERA.lock().unwrap_or_else(|e| e.into_inner());
        let cam = FakeCamera::start("LSSOFT");
        let mut source = GigeSource::open(config(&cam.id, GigeTrigger::Software)).unwrap();
        let mut ids = Vec::new();
        for _ in 0..4 {
            let f = source.next_frame().unwrap().unwrap();
            assert_eq!(f.image.dimensions(), (512, 512));
            ids.push(frame_id(&f.origin, &cam.id));
            // In free-run, 200 ms would be ten frames; triggered, the camera waits.
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(
            ids.windows(2).all(|w| frames_between(w[0], w[1]) == 1),
            "one frame per software trigger: {ids:?}"
        );
    }

    /// Line trigger on the fake camera's digital input `Line0`. Aravis's fake camera never
    /// pulses that input (it only simulates software triggers), so this checks what can be
    /// checked without a pulse: the camera is armed on the line and sends nothing while the
    /// line is quiet (a free-running camera would send a frame every 20 ms); a camera that
    /// vanishes while armed is reported, naming it, instead of waiting forever; and a line the
    /// camera does not have is refused at open, naming it.
    #[test]
    fn line_trigger_waits_for_the_line_and_reports_a_camera_that_vanishes() {
        let _one = FAKE_CAMERA.lock().unwrap_or_else(|e| e.into_inner());
        let cam = FakeCamera::start("LSLINE");
        let id = cam.id.clone();
        let e = GigeSource::open(GigeConfig {
            trigger_line: "Line7".into(),
            ..config(&id, GigeTrigger::Line)
        })
        .err()
        .expect("no Line7 on the fake camera")
        .to_string();
        assert!(
            e.starts_with(&format!("gige {id}: ")) && e.contains("Line7"),
            "{e}"
        );

        let line = GigeConfig {
            trigger_line: "Line0".into(),
            ..config(&id, GigeTrigger::Line)
        };
        let mut source = GigeSource::open(line).unwrap();
        assert_eq!(
            source.describe(),
            format!("gige {id} Mono8 trigger on Line0")
        );
        let (tx, rx) = std::sync::mpsc::channel();
        let grab = std::thread::spawn(move || {
            let outcome = source.next_frame().map(|f| f.map(|f| f.origin));
            let _ = tx.send(outcome.map_err(|e| e.to_string()));
        });
        assert!(
            rx.recv_timeout(Duration::from_millis(1500)).is_err(),
            "no frame while the line is quiet"
        );
        drop(cam);
        let outcome = rx
            .recv_timeout(Duration::from_secs(15))
            .expect("a vanished camera ends the wait");
        let e = outcome.expect_err("camera gone");
        assert!(
            e.starts_with(&format!("gige {id}: stopped answering")),
            "{e}"
        );
        grab.join().unwrap();
    }

    #[test]
    fn an_absent_camera_is_a_device_error_naming_it() {
        let e = GigeSource::open(config("Aravis-Fake-ABSENT", GigeTrigger::FreeRun))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.starts_with("gige Aravis-Fake-ABSENT: cannot connect"),
            "{e}"
        );
    }

    #[test]
    fn a_camera_that_vanishes_fails_and_is_reopened_when_back() {
        let _one = FAKE_CAMERA.lock().unwrap_or_else(|e| e.into_inner());
        let cam = FakeCamera::start("LSBACK");
        let id = cam.id.clone();
        let mut source = GigeSource::open(GigeConfig {
            frame_timeout_ms: 500,
            ..config(&id, GigeTrigger::FreeRun)
        })
        .unwrap();
        source.next_frame().unwrap().unwrap();
        drop(cam);
        // A frame whose packets were already received when the camera vanished may still be
        // completed and delivered (seen on a loaded machine); after that the source fails.
        let e = (0..3)
            .find_map(|_| source.next_frame().err())
            .expect("camera gone")
            .to_string();
        assert!(e.starts_with(&format!("gige {id}: ")), "{e}");
        assert!(source.reopen().is_err(), "nothing to reopen yet");
        let _back = FakeCamera::start("LSBACK");
        source.reopen().unwrap();
        let f = source.next_frame().unwrap().unwrap();
        assert_eq!(f.image.dimensions(), (512, 512));
    }

    /// The check the pipeline makes of a triggered camera between triggers: it answers while
    /// the camera is there, fails naming it once the camera is gone (no grab needed), and
    /// connects again once it is back.
    #[test]
    fn a_probe_sees_a_waiting_camera_vanish_and_come_back() {
        let _one = FAKE_CAMERA.lock().unwrap_or_else(|e| e.into_inner());
        let cam = FakeCamera::start("LSPROBE");
        let id = cam.id.clone();
        let mut source = GigeSource::open(config(&id, GigeTrigger::Software)).unwrap();
        source.probe().unwrap();
        drop(cam);
        // Aravis gives up on the dead camera after its control timeouts and retries (about
        // 12 s here): long, but only while no part could be inspected anyway.
        let e = source.probe().unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("gige {id}: stopped answering")),
            "{e}"
        );
        assert!(source.probe().is_err(), "nothing to connect to yet");
        let _back = FakeCamera::start("LSPROBE");
        source.probe().unwrap();
        let f = source.next_frame().unwrap().unwrap();
        assert_eq!(f.image.dimensions(), (512, 512));
    }

    #[test]
    fn pipeline_triggers_fire_the_camera_and_carry_part_and_lot() {
        let _one = FAKE_CAMERA.lock().unwrap_or_else(|e| e.into_inner());
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(pipeline_triggers());
    }

    async fn pipeline_triggers() {
        let cam = FakeCamera::start("LSPIPE");
        let source = SourceConfig::Gige(config(&cam.id, GigeTrigger::Software));
        let (pipeline, sink) = start(
            PipelineConfig::default(),
            vec![lazy(camera_config("gige1", source, TriggerMode::Triggered))],
        )
        .await;
        let triggers = pipeline.triggers();
        for i in 0..3 {
            let t = Trigger {
                camera: "gige1".into(),
                id: Some(format!("t{i}")),
                part_id: Some(format!("part-{i}")),
                lot: Some("lot-9".into()),
                recipe: None,
                sent_at_ms: None,
            };
            assert_eq!(triggers.fire(t).await.unwrap().status, "queued");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while sink.results().len() < 3 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        pipeline.shutdown().await;
        let results = sink.results();
        assert_eq!(results.len(), 3, "{results:#?}");
        let mut frame_ids = Vec::new();
        for (i, r) in results.iter().enumerate() {
            assert_eq!(r.status(), "inspected", "{r:?}");
            assert_eq!(r.part_id.as_deref(), Some(format!("part-{i}").as_str()));
            assert_eq!(r.lot.as_deref(), Some("lot-9"));
            frame_ids.push(frame_id(&r.origin, &cam.id));
        }
        assert!(
            frame_ids
                .windows(2)
                .all(|w| frames_between(w[0], w[1]) == 1),
            "one exposure per trigger: {frame_ids:?}"
        );
    }
}

/// RTSP cameras (feature `rtsp`) against `tests/rtsp/serve.py`, GStreamer's RTSP server serving
/// H.264 test video on 127.0.0.1.
#[cfg(feature = "rtsp")]
mod rtsp {
    use std::io::{BufRead, BufReader};
    use std::process::{Child, Command, Stdio};
    use std::time::Instant;

    use linesight::source::FrameSource;
    use linesight::source::rtsp::{RtspConfig, RtspSource, RtspTransport};

    use super::*;

    /// `tests/rtsp/serve.py` streaming 320×240 at 25 fps on `port`, killed on drop.
    struct TestCamera {
        child: Child,
        port: u16,
    }

    impl TestCamera {
        fn start(port: u16, extra: &[&str]) -> TestCamera {
            // Debian's python3, where apt installs PyGObject (python3-gi), not a virtualenv's.
            let mut child = Command::new("/usr/bin/python3")
                .arg(repo().join("tests/rtsp/serve.py"))
                .args(["--port", &port.to_string(), "--path", "/cam"])
                .args(["--width", "320", "--height", "240", "--fps", "25"])
                .args(extra)
                .stdout(Stdio::piped())
                .spawn()
                .expect("python3 with GStreamer's RTSP server (scripts/test installs them)");
            let mut line = String::new();
            BufReader::new(child.stdout.take().unwrap())
                .read_line(&mut line)
                .unwrap();
            assert_eq!(line.trim(), "ready", "the test camera did not start");
            TestCamera { child, port }
        }

        fn url(&self) -> String {
            format!("rtsp://127.0.0.1:{}/cam", self.port)
        }
    }

    impl Drop for TestCamera {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn config(url: &str) -> RtspConfig {
        RtspConfig {
            url: url.into(),
            transport: RtspTransport::Tcp,
            latency_ms: 50,
            frame_timeout_ms: 10_000,
            max_frame_age_ms: 1_000,
        }
    }

    /// `rtsp:<url>#<index>@<pts>` → index.
    fn index(origin: &str) -> u64 {
        let rest = origin.rsplit_once('#').unwrap().1;
        rest.split('@').next().unwrap().parse().unwrap()
    }

    #[test]
    fn a_stream_gives_fresh_decoded_frames_never_the_same_twice() {
        let cam = TestCamera::start(free_port(), &[]);
        let mut source = RtspSource::open(config(&cam.url()), DecodeLimits::default()).unwrap();
        assert_eq!(source.describe(), format!("rtsp {} tcp", cam.url()));
        let mut seen = Vec::new();
        for pause in [0, 0, 300, 300] {
            std::thread::sleep(Duration::from_millis(pause));
            let f = source.next_frame().unwrap().unwrap();
            assert_eq!(f.image.dimensions(), (320, 240));
            assert!(
                f.origin.starts_with(&format!("rtsp:{}#", cam.url())),
                "{}",
                f.origin
            );
            // SMPTE bars through H.264: light grey at the left, blue at the right.
            let [r, g, b] = f.image.get_pixel(10, 10).0;
            assert!(r > 140 && g > 140 && b > 140, "grey bar: {r} {g} {b}");
            let [r, _, b] = f.image.get_pixel(300, 10).0;
            assert!(b > r + 80, "blue bar: {r} {b}");
            seen.push(index(&f.origin));
        }
        assert!(
            seen.windows(2).all(|w| w[1] > w[0]),
            "a frame is grabbed once: {seen:?}"
        );
        // 300 ms at 25 fps is 7 frames: the grab after a pause takes the newest.
        assert!(
            seen[3] - seen[2] >= 3,
            "newest frame after a pause: {seen:?}"
        );
        assert!(source.skipped() >= 2, "skipped {}", source.skipped());
    }

    /// A camera describing two video tracks: the first (SMPTE bars) is the one inspected.
    #[test]
    fn the_first_video_track_is_the_one_inspected() {
        let cam = TestCamera::start(free_port(), &["--second-video"]);
        let mut source = RtspSource::open(config(&cam.url()), DecodeLimits::default()).unwrap();
        for _ in 0..5 {
            let f = source.next_frame().unwrap().unwrap();
            let [r, g, b] = f.image.get_pixel(10, 10).0;
            assert!(
                r > 140 && g > 140 && b > 140,
                "grey bar, not red: {r} {g} {b}"
            );
        }
    }

    #[test]
    fn mjpeg_streams_decode_too() {
        let cam = TestCamera::start(free_port(), &["--codec", "jpeg"]);
        let mut source = RtspSource::open(config(&cam.url()), DecodeLimits::default()).unwrap();
        let f = source.next_frame().unwrap().unwrap();
        assert_eq!(f.image.dimensions(), (320, 240));
        let [r, g, b] = f.image.get_pixel(10, 10).0;
        assert!(r > 140 && g > 140 && b > 140, "grey bar: {r} {g} {b}");
        let [r, _, b] = f.image.get_pixel(300, 10).0;
        assert!(b > r + 80, "blue bar: {r} {b}");
    }

    #[test]
    fn udp_transport_audio_tracks_and_credentials() {
        let cam = TestCamera::start(
            free_port(),
            &["--audio", "--user", "qa", "--password", "s3cret"],
        );
        let with = |user: &str| format!("rtsp://{user}@127.0.0.1:{}/cam", cam.port);
        for transport in [RtspTransport::Tcp, RtspTransport::Udp] {
            let mut source = RtspSource::open(
                RtspConfig {
                    transport,
                    ..config(&with("qa:s3cret"))
                },
                DecodeLimits::default(),
            )
            .unwrap();
            assert!(
                source.describe().contains("qa:***@"),
                "{}",
                source.describe()
            );
            let f = source.next_frame().unwrap().unwrap();
            assert_eq!(f.image.dimensions(), (320, 240), "{transport:?}");
            assert!(!f.origin.contains("s3cret"), "{}", f.origin);
        }
        let mut refused =
            RtspSource::open(config(&with("qa:wrong-pw")), DecodeLimits::default()).unwrap();
        let e = failure(refused.next_frame());
        assert!(e.starts_with("rtsp rtsp://qa:***@127.0.0.1:"), "{e}");
        assert!(e.contains("check the user and password"), "{e}");
        assert!(!e.contains("wrong-pw"), "{e}");
    }

    #[test]
    fn frames_over_the_decode_limits_are_refused_with_their_size() {
        let cam = TestCamera::start(free_port(), &[]);
        let limits = DecodeLimits {
            max_width: 256,
            ..DecodeLimits::default()
        };
        let mut source = RtspSource::open(config(&cam.url()), limits).unwrap();
        let e = failure(source.next_frame());
        assert!(
            e.contains("frames are 320×240, over the decode limits (decode.max_width = 256"),
            "{e}"
        );
    }

    /// The error of a grab that must fail; a frame (named by its origin, not printed whole)
    /// fails the test.
    fn failure(
        grabbed: Result<Option<linesight::source::Captured>, linesight::source::SourceError>,
    ) -> String {
        match grabbed {
            Ok(frame) => panic!("a frame was served: {:?}", frame.map(|f| f.origin)),
            Err(e) => e.to_string(),
        }
    }

    /// `url`'s stream with `frame_timeout_ms`, its first frame already taken.
    fn streaming(url: &str, frame_timeout_ms: u64) -> RtspSource {
        let mut source = RtspSource::open(
            RtspConfig {
                frame_timeout_ms,
                ..config(url)
            },
            DecodeLimits::default(),
        )
        .unwrap();
        source.next_frame().unwrap().unwrap();
        source
    }

    /// Grabs until the source fails (frames decoded before the failure may still come first);
    /// asserts that the error names the camera and came within `limit`.
    fn fails_within(source: &mut RtspSource, url: &str, limit: Duration) -> String {
        let started = Instant::now();
        let e = (0..100)
            .find_map(|_| source.next_frame().err())
            .expect("the source fails")
            .to_string();
        assert!(e.starts_with(&format!("rtsp {url}: ")), "{e}");
        assert!(
            started.elapsed() < limit,
            "{e} after {:?}",
            started.elapsed()
        );
        e
    }

    /// Reopens `source` and takes a frame of the test camera's size.
    fn streams_again(source: &mut RtspSource) {
        source.reopen().unwrap();
        let f = source.next_frame().unwrap().unwrap();
        assert_eq!(f.image.dimensions(), (320, 240));
    }

    #[test]
    fn a_camera_that_stops_fails_and_is_reopened_when_back() {
        let port = free_port();
        let cam = TestCamera::start(port, &[]);
        let url = cam.url();
        let mut source = streaming(&url, 2_000);
        drop(cam);
        fails_within(&mut source, &url, Duration::from_secs(10));
        // Nothing listens: the reopened source says so at its next grab, without waiting for
        // the frame timeout.
        source.reopen().unwrap();
        let e = fails_within(&mut source, &url, Duration::from_secs(2));
        assert!(!e.contains("no frame within"), "{e}");
        let _back = TestCamera::start(port, &[]);
        streams_again(&mut source);
    }

    /// A camera that hangs with its connection open (SIGSTOP: no FIN, no RST): its last frame,
    /// older than `max_frame_age_ms` by the next grab, is not served as if new; the grab fails at
    /// the frame timeout; the reopen does not hang on the dead connection, and the camera
    /// streams again once it answers.
    #[test]
    fn a_camera_that_hangs_fails_at_the_frame_timeout_and_recovers() {
        let cam = TestCamera::start(free_port(), &[]);
        let url = cam.url();
        let mut source = streaming(&url, 1_500);
        let signal = |sig: &str| {
            let sent = Command::new("kill")
                .args([sig, &cam.child.id().to_string()])
                .status()
                .unwrap();
            assert!(sent.success());
        };
        // Frames keep arriving into the source's slot meanwhile (25 fps); the last one before
        // the stall is still there when the next grab comes.
        std::thread::sleep(Duration::from_millis(200));
        signal("-STOP");
        std::thread::sleep(Duration::from_millis(1_200));
        let started = Instant::now();
        // The frame from before the stall is stale: not served.
        let e = failure(source.next_frame());
        assert!(
            e.ends_with("no frame within frame_timeout_ms = 1500 ms"),
            "{e}"
        );
        assert!(started.elapsed() < Duration::from_secs(3), "{e}");
        assert!(source.skipped() >= 3, "skipped {}", source.skipped());
        let started = Instant::now();
        source.reopen().unwrap();
        assert!(started.elapsed() < Duration::from_secs(2));
        fails_within(&mut source, &url, Duration::from_secs(5));
        signal("-CONT");
        streams_again(&mut source);
    }

    /// The check the pipeline makes of a triggered camera between triggers: a stream that
    /// stopped, or hangs (no frame for `frame_timeout_ms`), fails it without a grab; once the
    /// camera is back, the check connects again and waits for the first frame.
    #[test]
    fn a_probe_sees_a_stream_stop_or_hang_and_come_back() {
        let port = free_port();
        let cam = TestCamera::start(port, &[]);
        let url = cam.url();
        let mut source = RtspSource::open(
            RtspConfig {
                frame_timeout_ms: 3_000,
                ..config(&url)
            },
            DecodeLimits::default(),
        )
        .unwrap();
        source.probe().unwrap();
        let sent = Command::new("kill")
            .args(["-STOP", &cam.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        // Frames already on their way may still arrive; then the stream is quiet.
        let hung = Instant::now();
        let e = loop {
            match source.probe() {
                Err(e) => break e.to_string(),
                Ok(()) => {
                    assert!(hung.elapsed() < Duration::from_secs(15), "never failed");
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        };
        assert!(
            e.starts_with(&format!("rtsp {url}: no frame for "))
                && e.contains("frame_timeout_ms = 3000"),
            "{e}"
        );
        assert!(hung.elapsed() >= Duration::from_secs(2), "{e}");
        drop(cam);
        let started = Instant::now();
        let e = source.probe().unwrap_err().to_string();
        assert!(e.starts_with(&format!("rtsp {url}: ")), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5), "{e}");
        let _back = TestCamera::start(port, &[]);
        let back = Instant::now();
        while let Err(e) = source.probe() {
            assert!(back.elapsed() < Duration::from_secs(30), "{e}");
        }
        let f = source.next_frame().unwrap().unwrap();
        assert_eq!(f.image.dimensions(), (320, 240));
    }

    /// `linesight cameras --probe URL`: size and rate of a camera's stream, for setting one up;
    /// a camera that cannot be read is exit code 2 with its error.
    #[test]
    fn the_cameras_command_probes_an_rtsp_camera() {
        let cam = TestCamera::start(free_port(), &["--user", "qa", "--password", "s3cret"]);
        let url = format!("rtsp://qa:s3cret@127.0.0.1:{}/cam", cam.port);
        let out = linesight()
            .args(["cameras", "--probe", &url, "--json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            report["url"],
            format!("rtsp://qa:***@127.0.0.1:{}/cam", cam.port)
        );
        assert_eq!(
            (report["width"].as_u64(), report["height"].as_u64()),
            (Some(320), Some(240))
        );
        let fps = report["frames_per_second"].as_f64().unwrap();
        assert!(
            (20.0..=30.0).contains(&fps),
            "the test camera sends 25 frames/s: {fps}"
        );

        let wrong = format!("rtsp://qa:wrong@127.0.0.1:{}/cam", cam.port);
        let out = linesight()
            .args(["cameras", "--probe", &wrong])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("check the user and password"), "{stderr}");
        assert!(!stderr.contains("wrong"), "{stderr}");
        let out = linesight()
            .args(["cameras", "--probe", "http://cam/x"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr)
                .contains("--probe.url = \"http://cam/x\": must start with rtsp://"),
            "{out:?}"
        );
    }

    #[test]
    fn an_rtsp_camera_feeds_the_pipeline() {
        let cam = TestCamera::start(free_port(), &[]);
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let source = SourceConfig::Rtsp(config(&cam.url()));
                assert!(source.problems("cameras[0].source").is_empty());
                let mut dock = camera_config("dock", source, TriggerMode::FreeRun);
                dock.fps = 10.0;
                let (pipeline, sink) = start(PipelineConfig::default(), vec![lazy(dock)]).await;
                let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                while sink.results().len() < 5 && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                assert_eq!(pipeline.health()["dock"], CameraHealth::Running);
                pipeline.shutdown().await;
                let results = sink.results();
                assert!(results.len() >= 5, "{results:#?}");
                for r in &results {
                    assert_eq!(r.status(), "inspected", "{r:?}");
                    assert!(
                        r.origin.starts_with("rtsp:rtsp://127.0.0.1:"),
                        "{}",
                        r.origin
                    );
                }
            });
    }
}
