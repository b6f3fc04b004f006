//! The whole live pipeline on the folder source, side by side with bare `ort::Session::run` on
//! the same frames, model and threads: their throughput ratio is what the pipeline costs (see
//! BENCHMARKS.md). The ratios are measured in alternating rounds (bare pass, pipeline pass, …) on
//! the demo model and, when `../shared/data` is there, the reference PaDiM export, and printed
//! as medians; the criterion group times the demo model alone. A second group measures the
//! worker's non-model work per 1280×1024 frame (preprocess to 256×256, regions and verdict) and
//! prints its p99.
//!
//! `cargo bench --bench pipeline` to measure (`LINESIGHT_BENCH_STAGES=1` also prints the mean
//! time of each stage per run); `cargo bench -- --test` runs each once (CI).

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use linesight::actions::{MemorySink, ResultSink};
use linesight::model::{Detector, ModelPackage, SessionOptions};
use linesight::pipeline::{Camera, CameraConfig, Pipeline, PipelineConfig, TriggerMode};
use linesight::preprocess::{DecodeLimits, decode, prepare};
use linesight::source::SourceConfig;

#[path = "common/mod.rs"]
mod common;
use common::{bare_run, repo, rounds, runtime, shared_data, spread};

const THREADS: usize = 2;

fn options() -> SessionOptions {
    SessionOptions {
        intra_threads: THREADS,
        ..SessionOptions::default()
    }
}

/// The same, with ONNX Runtime's intra-op threads not spinning between runs.
fn options_no_spin() -> SessionOptions {
    SessionOptions {
        intra_op_spinning: false,
        ..options()
    }
}

/// The images under `folder`, in the order the folder source replays them.
fn frames(folder: &Path) -> Vec<PathBuf> {
    linesight::cli::collect_images(&[folder.to_path_buf()])
        .expect("images")
        .into_iter()
        .map(|e| e.path)
        .collect()
}

/// A model and the frames it is measured on.
struct Subject {
    name: &'static str,
    model: PathBuf,
    /// The frames, `copies` times over in one folder, so that a run lasts long enough for its
    /// start and stop not to weigh on the throughput.
    folder: tempfile::TempDir,
    frames: usize,
    /// Each distinct frame prepared for the model, for bare ONNX Runtime; a bare pass runs them
    /// `copies` times, like the pipeline.
    tensors: Vec<Vec<f32>>,
    copies: usize,
    width: usize,
    height: usize,
}

impl Subject {
    fn new(name: &'static str, model: PathBuf, images: &Path, copies: usize) -> Subject {
        let files = frames(images);
        assert!(!files.is_empty(), "no images under {}", images.display());
        let folder = tempfile::tempdir().expect("temporary folder");
        for copy in 0..copies {
            for (i, file) in files.iter().enumerate() {
                let ext = file.extension().and_then(|x| x.to_str()).unwrap_or("png");
                std::fs::copy(file, folder.path().join(format!("{copy:02}-{i:03}.{ext}")))
                    .expect("copy a frame");
            }
        }
        let package = ModelPackage::open(&model).expect("model package");
        let detector = Detector::new(runtime(), package, &options(), None).expect("detector");
        let tensors = files
            .iter()
            .map(|f| {
                let image = decode(&std::fs::read(f).expect("read"), &DecodeLimits::default())
                    .expect("decode");
                let mut t = vec![0.0; detector.image_len()];
                prepare(&image, &detector.input, &mut t).expect("prepare");
                t
            })
            .collect();
        Subject {
            name,
            model,
            folder,
            frames: files.len() * copies,
            tensors,
            copies,
            width: detector.input.width as usize,
            height: detector.input.height as usize,
        }
    }

    /// A bare session with the benchmark's threads.
    fn session(&self, spin: bool) -> ort::session::Session {
        ort::session::Session::builder(&runtime().environment)
            .expect("builder")
            .with_optimization_level(ort::session::builder::GraphOptimizationLevel::All)
            .expect("opt level")
            .with_intra_threads(THREADS)
            .expect("threads")
            .with_intra_op_spinning(spin)
            .expect("spinning")
            .commit_from_file(self.model.join("model.onnx"))
            .expect("bare session")
    }

    /// Every frame once through bare `Session::run`, `batch` frames per call.
    fn bare_pass(&self, session: &mut ort::session::Session, batch: usize) {
        let (w, h) = (self.width, self.height);
        let mut stacked = Vec::with_capacity(batch * 3 * w * h);
        for _ in 0..self.copies {
            for chunk in self.tensors.chunks(batch) {
                stacked.clear();
                for t in chunk {
                    stacked.extend_from_slice(t);
                }
                bare_run(session, chunk.len(), &stacked, w, h);
            }
        }
    }

    fn pipeline_pass(
        &self,
        rt: &tokio::runtime::Runtime,
        batch: usize,
        options: &SessionOptions,
    ) -> Duration {
        run_pipeline(
            rt,
            &self.model,
            self.folder.path(),
            self.frames,
            batch,
            options,
        )
    }
}

/// The throughput ratio pipeline / bare ONNX Runtime measured in alternating rounds (bare pass,
/// pipeline pass, bare pass, …), each pipeline pass against the bare pass just before it, so
/// that a machine whose speed drifts slows both alike. Bare ONNX Runtime's batch size is the
/// fastest of `bare_batches` in each round. Prints the median and the range.
fn alternating(
    rt: &tokio::runtime::Runtime,
    subject: &Subject,
    label: &str,
    spin: bool,
    bare_batches: &[usize],
    pipeline_batch: usize,
    rounds: usize,
) {
    let mut bare = subject.session(spin);
    let options = SessionOptions {
        intra_op_spinning: spin,
        ..options()
    };
    // Warm-up: both sides once, unmeasured.
    subject.bare_pass(&mut bare, bare_batches[0]);
    subject.pipeline_pass(rt, pipeline_batch, &options);
    let mut ratios = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let bare_time = bare_batches
            .iter()
            .map(|&b| {
                let start = Instant::now();
                subject.bare_pass(&mut bare, b);
                start.elapsed()
            })
            .min()
            .expect("a batch size");
        let ours = subject.pipeline_pass(rt, pipeline_batch, &options);
        ratios.push(bare_time.as_secs_f64() / ours.as_secs_f64());
    }
    let (median, low, high) = spread(ratios);
    eprintln!(
        "pipeline / bare ORT throughput, {} ({} frames), {label}: median {median:.3} over {rounds} alternating rounds (lowest {low:.3}, highest {high:.3})",
        subject.name, subject.frames,
    );
}

/// Runs the pipeline over `folder` once; returns the time from start of frames to last result.
fn run_pipeline(
    rt: &tokio::runtime::Runtime,
    model: &Path,
    folder: &Path,
    expect: usize,
    batch_size: usize,
    options: &SessionOptions,
) -> Duration {
    rt.block_on(async {
        let config = CameraConfig {
            id: "bench".into(),
            source: SourceConfig::Folder {
                path: folder.to_path_buf(),
                repeat: false,
            },
            mode: TriggerMode::FreeRun,
            fps: 0.0,
            every_nth: 1,
            model: model.to_path_buf(),
            threshold: None,
            recipes: Default::default(),
        };
        let source = config.source.open(DecodeLimits::default()).expect("folder");
        let sink = MemorySink::default();
        let sinks: Vec<Box<dyn ResultSink>> = vec![Box::new(sink.clone())];
        let pipeline = Pipeline::start(
            PipelineConfig {
                queue_capacity: 4096,
                batch_size,
                ..PipelineConfig::default()
            },
            runtime(),
            options.clone(),
            DecodeLimits::default(),
            vec![Camera { config, source }],
            sinks,
            None,
        )
        .await
        .expect("pipeline");
        // Model loading is outside the timed part.
        let start = Instant::now();
        pipeline.run_until(std::future::pending()).await;
        let elapsed = start.elapsed();
        let results = sink.results();
        assert_eq!(results.len(), expect, "no frame dropped or lost");
        if std::env::var_os("LINESIGHT_BENCH_STAGES").is_some() {
            let mean = |f: fn(&linesight::pipeline::PipelineTimings) -> f64| {
                results.iter().map(|r| f(&r.timings)).sum::<f64>() / results.len() as f64
            };
            eprintln!(
                "per frame, mean ms: capture {:.3}, preprocess {:.3}, queue {:.3}, inference {:.3}, postprocess {:.3}, total {:.3}; wall {:.3} per frame",
                mean(|t| t.capture_ms),
                mean(|t| t.preprocess_ms),
                mean(|t| t.queue_ms),
                mean(|t| t.inference_ms),
                mean(|t| t.postprocess_ms),
                mean(|t| t.total_ms),
                elapsed.as_secs_f64() * 1e3 / expect as f64,
            );
        }
        elapsed
    })
}

fn throughput(c: &mut Criterion) {
    let demo = Subject::new(
        "demo-washer",
        repo().join("models/demo"),
        &repo().join("testdata/synthetic/test"),
        4,
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let rounds = rounds();
    let mut subjects = vec![demo];
    if let Some(shared) = shared_data() {
        subjects.push(Subject::new(
            "padim-magnetic-tile",
            shared.join("models/padim-magnetic-tile"),
            &shared.join("mini/test"),
            1,
        ));
    }
    for subject in &subjects {
        alternating(&rt, subject, "batch 1", true, &[1], 1, rounds);
        alternating(
            &rt,
            subject,
            "batch 1, threads not spinning",
            false,
            &[1],
            1,
            rounds,
        );
        alternating(
            &rt,
            subject,
            "dynamic batching (up to 8, autotuned, not spinning) vs the best bare batch of 1/2/4/8",
            false,
            &[1, 2, 4, 8],
            8,
            rounds,
        );
    }

    let demo = &subjects[0];
    let n = demo.frames;
    let mut bare = demo.session(true);
    let mut bare_no_spin = demo.session(false);
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(n as u64));
    group.sample_size(10);
    let id = format!("demo-washer/batch1/threads{THREADS}/cpu/{n}frames");
    group.bench_function(BenchmarkId::new("bare_ort_session_run", &id), |b| {
        b.iter(|| demo.bare_pass(&mut bare, 1))
    });
    group.bench_function(BenchmarkId::new("folder_pipeline", &id), |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| demo.pipeline_pass(&rt, 1, &options()))
                .sum()
        })
    });
    // Intra-op threads that do not spin between runs leave the cores to the camera thread's
    // decode and preparation; bare ONNX Runtime is measured with the same setting too.
    let id_no_spin = format!("demo-washer/batch1/threads{THREADS}-nospin/cpu/{n}frames");
    group.bench_function(BenchmarkId::new("bare_ort_session_run", &id_no_spin), |b| {
        b.iter(|| demo.bare_pass(&mut bare_no_spin, 1))
    });
    group.bench_function(BenchmarkId::new("folder_pipeline", &id_no_spin), |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| demo.pipeline_pass(&rt, 1, &options_no_spin()))
                .sum()
        })
    });
    // Dynamic batching: the pipeline groups what is queued (up to 8 frames) and is compared
    // with bare ONNX Runtime at its best fixed batch size.
    for batch in [2usize, 4, 8] {
        let id = format!("demo-washer/batch{batch}/threads{THREADS}/cpu/{n}frames");
        group.bench_function(BenchmarkId::new("bare_ort_session_run", &id), |b| {
            b.iter(|| demo.bare_pass(&mut bare, batch))
        });
    }
    let id = format!("demo-washer/dynamic-batch8/threads{THREADS}-nospin/cpu/{n}frames");
    group.bench_function(BenchmarkId::new("folder_pipeline", &id), |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| demo.pipeline_pass(&rt, 8, &options_no_spin()))
                .sum()
        })
    });
    group.finish();
}

/// Non-model work a worker does per 1280×1024 frame: prepare (crop, exact resize, tensor) and
/// decide (regions on the 256×256 map). Prints the p99 over 200 frames.
fn overhead(c: &mut Criterion) {
    let package = ModelPackage::open(&repo().join("models/demo")).expect("demo model");
    let mut detector = Detector::new(runtime(), package, &options(), None).expect("detector");
    let thresholds = detector.require_thresholds().expect("thresholds");
    let frame = image::RgbImage::from_fn(1280, 1024, |x, y| {
        image::Rgb([(x % 251) as u8, (y % 241) as u8, ((x + y) % 239) as u8])
    });
    let input = detector.input.clone();
    let mut tensor = vec![0.0; detector.image_len()];
    prepare(&frame, &input, &mut tensor).expect("prepare");
    let output = detector.run(&tensor).expect("run").remove(0);
    let map = output.map.expect("demo model has a map");
    let geometry = linesight::postprocess::SourceGeometry {
        width: 1280,
        height: 1024,
        roi: None,
    };
    let work = |tensor: &mut Vec<f32>| {
        prepare(black_box(&frame), &input, tensor).expect("prepare");
        black_box(linesight::postprocess::extract_regions(
            &map,
            thresholds.pixel,
            geometry,
            thresholds.min_region_area_px,
        ));
    };
    let percentiles = |f: &mut dyn FnMut()| {
        let mut samples: Vec<f64> = (0..200)
            .map(|_| {
                let start = Instant::now();
                f();
                start.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        samples.sort_by(f64::total_cmp);
        (samples[100], samples[197])
    };
    let (p50, p99) = percentiles(&mut || work(&mut tensor));
    let (prepare_p50, prepare_p99) = percentiles(&mut || {
        prepare(black_box(&frame), &input, &mut tensor).expect("prepare");
    });
    let above = map.values.iter().filter(|&&v| v > thresholds.pixel).count();
    let (regions_p50, regions_p99) = percentiles(&mut || {
        black_box(linesight::postprocess::extract_regions(
            &map,
            thresholds.pixel,
            geometry,
            thresholds.min_region_area_px,
        ));
    });
    eprintln!(
        "non-model work per 1280x1024 frame: p50 {p50:.2} ms, p99 {p99:.2} ms (200 frames); \
         prepare p50 {prepare_p50:.2} / p99 {prepare_p99:.2} ms, regions p50 {regions_p50:.3} / \
         p99 {regions_p99:.3} ms ({above} of {} map pixels above the threshold)",
        map.values.len()
    );
    let mut group = c.benchmark_group("pipeline_overhead");
    group.throughput(Throughput::Elements(1));
    group.bench_function(
        BenchmarkId::new("prepare_and_decide", "1280x1024/pillow-bilinear"),
        |b| b.iter(|| work(&mut tensor)),
    );
    group.finish();
}

criterion_group!(benches, throughput, overhead);
criterion_main!(benches);
