//! The whole live pipeline on the folder source, side by side with bare `ort::Session::run` on
//! the same frames, model and threads: their throughput ratio is what the pipeline costs (see
//! BENCHMARKS.md). The ratios are measured in alternating rounds (bare pass, pipeline pass, …) on
//! the demo model and, when `../shared/data` is there, the reference PaDiM export, and printed
//! as medians; the criterion group times the demo model alone. A second group measures the
//! worker's non-model work per 1280×1024 frame (preprocess to 256×256, regions and verdict) and
//! prints its p99.
//!
//! `cargo bench --bench pipeline` to measure (`LINESIGHT_BENCH_STAGES=1` also prints the mean
//! time of each stage per run, `LINESIGHT_BENCH_ROWS=text` runs only the alternating rows whose
//! label holds one of the `|`-separated texts, `LINESIGHT_BENCH_THREADS=N` gives N ONNX Runtime
//! threads to either side instead of 2, `LINESIGHT_BENCH_ROUNDS=N` sets the number of rounds,
//! `LINESIGHT_BENCH_MODEL=DIR` with `LINESIGHT_BENCH_IMAGES=DIR` adds a model of the user's,
//! e.g. a PatchCore export made by `tools/export_patchcore.py`); `cargo bench -- --test` runs
//! each once (CI).

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use linesight::actions::{MemorySink, ResultSink};
use linesight::model::{BatchSize, Detector, ModelPackage, SessionOptions};
use linesight::pipeline::{Camera, CameraConfig, Pipeline, PipelineConfig, TriggerMode};
use linesight::preprocess::{DecodeLimits, decode, prepare};
use linesight::source::SourceConfig;

#[path = "common/mod.rs"]
mod common;
use common::{bare_parallel, repo, rounds, runtime, settle, shared_data, spread, threads};

/// How a side runs ONNX Runtime: `sessions` sessions (bare) or inference workers (pipeline) of
/// `threads` intra-op threads each, spinning between runs or not.
#[derive(Debug, Clone, Copy)]
struct Layout {
    sessions: usize,
    threads: usize,
    spin: bool,
}

/// One session of all the threads: the lowest latency per frame.
fn one_session(spin: bool) -> Layout {
    Layout {
        sessions: 1,
        threads: threads(),
        spin,
    }
}

/// One single-threaded session per thread: frames run side by side, no intra-op barriers (and
/// nothing to spin).
fn session_per_thread() -> Layout {
    Layout {
        sessions: threads(),
        threads: 1,
        spin: false,
    }
}

/// One single-threaded session: the other core is left to the camera thread.
const ONE_THREAD: Layout = Layout {
    sessions: 1,
    threads: 1,
    spin: false,
};

impl Layout {
    /// The session options of each of the layout's sessions (or pipeline workers).
    fn options(self) -> SessionOptions {
        SessionOptions {
            intra_threads: self.threads,
            intra_op_spinning: self.spin,
            ..SessionOptions::default()
        }
    }
}

/// Session options of the detectors the benches prepare frames with.
fn options() -> SessionOptions {
    one_session(true).options()
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
    name: String,
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
    /// The graph's own batch size, when it has one (anomalib's PatchCore): bare ONNX Runtime
    /// then runs that many frames a call, the last call padded, as any client of it must.
    fixed_batch: Option<usize>,
}

impl Subject {
    fn new(name: &str, model: PathBuf, images: &Path, copies: usize) -> Subject {
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
        let fixed_batch = match detector.contract.batch {
            BatchSize::Fixed(n) => Some(n),
            BatchSize::Dynamic => None,
        };
        Subject {
            name: name.to_owned(),
            model,
            folder,
            frames: files.len() * copies,
            tensors,
            copies,
            width: detector.input.width as usize,
            height: detector.input.height as usize,
            fixed_batch,
        }
    }

    /// The batch size a bare call of `batch` frames really runs at.
    fn bare_batch(&self, batch: usize) -> usize {
        self.fixed_batch.unwrap_or(batch)
    }

    /// Bare sessions in `layout`.
    fn sessions(&self, layout: Layout) -> Vec<ort::session::Session> {
        (0..layout.sessions)
            .map(|_| {
                ort::session::Session::builder(&runtime().environment)
                    .expect("builder")
                    .with_optimization_level(ort::session::builder::GraphOptimizationLevel::All)
                    .expect("opt level")
                    .with_intra_threads(layout.threads)
                    .expect("threads")
                    .with_intra_op_spinning(layout.spin)
                    .expect("spinning")
                    .commit_from_file(self.model.join("model.onnx"))
                    .expect("bare session")
            })
            .collect()
    }

    /// The distinct frames stacked `batch` to a tensor (for a fixed-batch graph, `batch` is its
    /// own size, see [`Subject::bare_batch`], and the last tensor is padded with zeros), ready
    /// before any timing starts.
    fn batches(&self, batch: usize) -> Vec<Vec<f32>> {
        let per_frame = 3 * self.width * self.height;
        self.tensors
            .chunks(batch)
            .map(|c| {
                let mut t = c.concat();
                if self.fixed_batch.is_some() {
                    t.resize(batch * per_frame, 0.0);
                }
                t
            })
            .collect()
    }

    /// Every frame once (`copies` times the distinct ones) through bare `Session::run`, one
    /// call per tensor of `batches`, the calls shared out among `sessions` running side by side.
    fn bare_pass(&self, sessions: &mut [ort::session::Session], batches: &[Vec<f32>]) {
        let calls: Vec<&[f32]> = (0..self.copies)
            .flat_map(|_| batches.iter().map(Vec::as_slice))
            .collect();
        bare_parallel(sessions, &calls, self.width, self.height);
    }

    /// Every frame once through the pipeline, its workers and sessions in `layout`.
    fn pipeline_pass(
        &self,
        rt: &tokio::runtime::Runtime,
        batch: usize,
        layout: Layout,
        preload: bool,
    ) -> Duration {
        run_pipeline(
            rt,
            &self.model,
            self.folder.path(),
            self.frames,
            batch,
            layout.sessions,
            &layout.options(),
            preload,
        )
    }
}

/// The model of `LINESIGHT_BENCH_MODEL` on the images of `LINESIGHT_BENCH_IMAGES`, if set.
fn users_model() -> Option<Subject> {
    let model = PathBuf::from(std::env::var_os("LINESIGHT_BENCH_MODEL")?);
    let images = std::env::var_os("LINESIGHT_BENCH_IMAGES")
        .map(PathBuf::from)
        .expect("LINESIGHT_BENCH_IMAGES: the folder of images to run LINESIGHT_BENCH_MODEL on");
    let name = model
        .file_name()
        .map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned());
    Some(Subject::new(&name, model, &images, 1))
}

/// One row of the alternating comparison.
struct Row<'a> {
    label: &'a str,
    /// The pipeline's inference workers and their threads.
    pipeline: Layout,
    pipeline_batch: usize,
    /// Bare ONNX Runtime runs in each of these layouts at each of these batch sizes; the variant
    /// with the lowest median time is the baseline.
    bare: &'a [Layout],
    bare_batches: &'a [usize],
    /// The folder source holds its frames decoded in memory (`preload_mib`), so that a grab
    /// costs what a camera's raw frame does; otherwise each grab reads and decodes a file.
    preload: bool,
}

/// The throughput ratio pipeline / bare ONNX Runtime measured in alternating rounds (the bare
/// passes, then a pipeline pass, …), each pipeline pass against the bare passes of its own
/// round, so that a machine whose speed drifts slows both alike. The baseline is the row's bare
/// variant (layout × batch size) with the lowest median time. Prints the median ratio, the
/// range and the variant.
fn alternating(rt: &tokio::runtime::Runtime, subject: &Subject, row: &Row<'_>, rounds: usize) {
    let mut bare: Vec<Vec<ort::session::Session>> = row
        .bare
        .iter()
        .map(|&layout| subject.sessions(layout))
        .collect();
    let batch = row.pipeline_batch;
    // A fixed-batch graph has one bare batch size, whatever the row asks.
    let mut batch_sizes: Vec<usize> = row
        .bare_batches
        .iter()
        .map(|&b| subject.bare_batch(b))
        .collect();
    batch_sizes.dedup();
    let stacked: Vec<Vec<Vec<f32>>> = batch_sizes.iter().map(|&b| subject.batches(b)).collect();
    // Warm-up: both sides once, unmeasured.
    for sessions in &mut bare {
        subject.bare_pass(sessions, &stacked[0]);
    }
    subject.pipeline_pass(rt, batch, row.pipeline, row.preload);
    // Per bare variant (layout × batch size), its time in each round.
    let variants: Vec<(usize, usize)> = (0..bare.len())
        .flat_map(|l| (0..stacked.len()).map(move |b| (l, b)))
        .collect();
    let mut bare_times = vec![Vec::with_capacity(rounds); variants.len()];
    let mut ours = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        for (times, &(l, b)) in bare_times.iter_mut().zip(&variants) {
            settle();
            let start = Instant::now();
            subject.bare_pass(&mut bare[l], &stacked[b]);
            times.push(start.elapsed().as_secs_f64());
        }
        settle();
        ours.push(
            subject
                .pipeline_pass(rt, batch, row.pipeline, row.preload)
                .as_secs_f64(),
        );
    }
    // The best bare variant is the one with the lowest median time, and every round compares
    // with that variant: taking the fastest variant round by round would pick noise (the
    // minimum of several noisy times is biased low).
    let median_of = |times: &Vec<f64>| spread(times.clone()).0;
    let best = (0..variants.len())
        .min_by(|&a, &b| median_of(&bare_times[a]).total_cmp(&median_of(&bare_times[b])))
        .expect("a bare variant");
    let ratios = bare_times[best]
        .iter()
        .zip(&ours)
        .map(|(bare, ours)| bare / ours)
        .collect();
    let (median, low, high) = spread(ratios);
    let (layout, batch) = (row.bare[variants[best].0], batch_sizes[variants[best].1]);
    eprintln!(
        "pipeline / bare ORT throughput, {} ({} frames), {}: median {median:.3} over {rounds} alternating rounds (lowest {low:.3}, highest {high:.3}); best bare: {} session(s) of {} thread(s){}, batch {batch}",
        subject.name,
        subject.frames,
        row.label,
        layout.sessions,
        layout.threads,
        if layout.spin { ", spinning" } else { "" },
    );
}

/// Runs the pipeline over `folder` once; returns the time from start of frames to last result.
/// With `preload`, the folder is decoded into memory before the timed part, like the model.
#[allow(clippy::too_many_arguments)]
fn run_pipeline(
    rt: &tokio::runtime::Runtime,
    model: &Path,
    folder: &Path,
    expect: usize,
    batch_size: usize,
    workers: usize,
    options: &SessionOptions,
    preload: bool,
) -> Duration {
    rt.block_on(async {
        let config = CameraConfig {
            id: "bench".into(),
            source: SourceConfig::Folder {
                path: folder.to_path_buf(),
                repeat: false,
                preload_mib: preload.then_some(1024),
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
                workers,
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
    subjects.extend(users_model());
    let either = [one_session(true), one_session(false)];
    let rows = [
        Row {
            label: "batch 1, threads spinning (ONNX Runtime's default) on both sides",
            pipeline: one_session(true),
            pipeline_batch: 1,
            bare: &[one_session(true)],
            bare_batches: &[1],
            preload: false,
        },
        Row {
            label: "batch 1, threads not spinning, vs bare spinning or not (the faster)",
            pipeline: one_session(false),
            pipeline_batch: 1,
            bare: &either,
            bare_batches: &[1],
            preload: false,
        },
        Row {
            label: "dynamic batching (up to 8, autotuned, spinning) vs the best bare batch of 1/2/4/8, spinning or not",
            pipeline: one_session(true),
            pipeline_batch: 8,
            bare: &either,
            bare_batches: &[1, 2, 4, 8],
            preload: false,
        },
        // Frames side by side instead of each split over the threads: the same two threads
        // give bare ONNX Runtime more throughput on small models, so the pipeline is compared
        // with the best of the bare layouts.
        Row {
            label: "2 workers of 1 thread vs the best bare layout (1 session of 2 threads, spinning or not, or 2 sessions of 1)",
            pipeline: session_per_thread(),
            pipeline_batch: 1,
            bare: &[one_session(true), one_session(false), session_per_thread()],
            bare_batches: &[1],
            preload: false,
        },
        // One intra-op thread on both sides leaves a core to the camera thread: what the
        // pipeline costs where inference does not need every core.
        Row {
            label: "1 worker of 1 thread vs 1 bare session of 1 thread (a core left for the camera)",
            pipeline: ONE_THREAD,
            pipeline_batch: 1,
            bare: &[ONE_THREAD],
            bare_batches: &[1],
            preload: false,
        },
        // The same layouts with the frames held decoded in memory: the camera thread then does
        // what it does for a camera's raw frames (copy, crop, resize, tensor), no file decoding.
        Row {
            label: "frames in memory, batch 1, threads spinning on both sides",
            pipeline: one_session(true),
            pipeline_batch: 1,
            bare: &[one_session(true)],
            bare_batches: &[1],
            preload: true,
        },
        Row {
            label: "frames in memory, dynamic batching (up to 8) vs the best bare batch of 1/2/4/8, spinning or not",
            pipeline: one_session(true),
            pipeline_batch: 8,
            bare: &either,
            bare_batches: &[1, 2, 4, 8],
            preload: true,
        },
        Row {
            label: "frames in memory, 2 workers of 1 thread vs the best bare layout",
            pipeline: session_per_thread(),
            pipeline_batch: 1,
            bare: &[one_session(true), one_session(false), session_per_thread()],
            bare_batches: &[1],
            preload: true,
        },
    ];
    // `LINESIGHT_BENCH_ROWS=text|text…`: only the rows whose label holds one of the texts.
    let only = std::env::var("LINESIGHT_BENCH_ROWS").unwrap_or_default();
    let wanted = |row: &&Row<'_>| only.split('|').any(|text| row.label.contains(text));
    for subject in &subjects {
        for row in rows.iter().filter(wanted) {
            alternating(&rt, subject, row, rounds);
        }
    }

    let demo = &subjects[0];
    let n = demo.frames;
    let mut bare = demo.sessions(one_session(true));
    let mut bare_no_spin = demo.sessions(one_session(false));
    let batch_of = |b: usize| demo.batches(b);
    let ones = batch_of(1);
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(n as u64));
    group.sample_size(10);
    let id = format!("demo-washer/batch1/threads{}/cpu/{n}frames", threads());
    group.bench_function(BenchmarkId::new("bare_ort_session_run", &id), |b| {
        b.iter(|| demo.bare_pass(&mut bare, &ones))
    });
    group.bench_function(BenchmarkId::new("folder_pipeline", &id), |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| demo.pipeline_pass(&rt, 1, one_session(true), false))
                .sum()
        })
    });
    // Intra-op threads that do not spin between runs leave the cores to the camera thread's
    // decode and preparation; bare ONNX Runtime is measured with the same setting too.
    let id_no_spin = format!(
        "demo-washer/batch1/threads{}-nospin/cpu/{n}frames",
        threads()
    );
    group.bench_function(BenchmarkId::new("bare_ort_session_run", &id_no_spin), |b| {
        b.iter(|| demo.bare_pass(&mut bare_no_spin, &ones))
    });
    group.bench_function(BenchmarkId::new("folder_pipeline", &id_no_spin), |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| demo.pipeline_pass(&rt, 1, one_session(false), false))
                .sum()
        })
    });
    // Dynamic batching: the pipeline groups what is queued (up to 8 frames) and is compared
    // with bare ONNX Runtime at its best fixed batch size.
    for batch in [2usize, 4, 8] {
        let id = format!(
            "demo-washer/batch{batch}/threads{}/cpu/{n}frames",
            threads()
        );
        let batches = batch_of(batch);
        group.bench_function(BenchmarkId::new("bare_ort_session_run", &id), |b| {
            b.iter(|| demo.bare_pass(&mut bare, &batches))
        });
    }
    let id = format!(
        "demo-washer/dynamic-batch8/threads{}/cpu/{n}frames",
        threads()
    );
    group.bench_function(BenchmarkId::new("folder_pipeline", &id), |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| demo.pipeline_pass(&rt, 8, one_session(true), false))
                .sum()
        })
    });
    // The same threads as single-threaded sessions (bare) or workers (pipeline), side by side.
    let mut side_by_side = demo.sessions(session_per_thread());
    let id = format!("demo-washer/batch1/{}x1thread/cpu/{n}frames", threads());
    group.bench_function(BenchmarkId::new("bare_ort_session_run", &id), |b| {
        b.iter(|| demo.bare_pass(&mut side_by_side, &ones))
    });
    group.bench_function(BenchmarkId::new("folder_pipeline", &id), |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| demo.pipeline_pass(&rt, 1, session_per_thread(), false))
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
