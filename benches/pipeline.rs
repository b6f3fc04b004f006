//! The whole live pipeline on the folder source with the demo model, side by side with bare
//! `ort::Session::run` on the same frames, model and threads: their throughput ratio is what the
//! pipeline costs (see BENCHMARKS.md). A second group measures the worker's non-model work per
//! 1280×1024 frame (preprocess to 256×256, regions and verdict) and prints its p99.
//!
//! `cargo bench --bench pipeline` to measure; `cargo bench -- --test` runs each once (CI).

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
use common::{repo, runtime};

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

/// The frames of `folder`, sorted, as files.
fn frames(folder: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = walkdir::WalkDir::new(folder)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "png"))
        .map(|e| e.into_path())
        .collect();
    files.sort();
    files
}

/// Runs the pipeline over `folder` once; returns the time from start of frames to last result.
fn run_pipeline(
    rt: &tokio::runtime::Runtime,
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
            model: repo().join("models/demo"),
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
        assert_eq!(sink.results().len(), expect, "no frame dropped or lost");
        elapsed
    })
}

fn throughput(c: &mut Criterion) {
    let folder = repo().join("testdata/synthetic/test");
    let files = frames(&folder);
    let n = files.len();
    let package = ModelPackage::open(&repo().join("models/demo")).expect("demo model");
    let detector = Detector::new(runtime(), package, &options(), None).expect("detector");
    let (w, h) = (
        detector.input.width as usize,
        detector.input.height as usize,
    );
    // Bare ONNX Runtime gets the tensors ready-made: everything else is the pipeline's cost.
    let tensors: Vec<Vec<f32>> = files
        .iter()
        .map(|f| {
            let image =
                decode(&std::fs::read(f).expect("read"), &DecodeLimits::default()).expect("decode");
            let mut t = vec![0.0; 3 * w * h];
            prepare(&image, &detector.input, &mut t).expect("prepare");
            t
        })
        .collect();
    let bare_session = |spin: bool| {
        ort::session::Session::builder(&runtime().environment)
            .expect("builder")
            .with_optimization_level(ort::session::builder::GraphOptimizationLevel::All)
            .expect("opt level")
            .with_intra_threads(THREADS)
            .expect("threads")
            .with_intra_op_spinning(spin)
            .expect("spinning")
            .commit_from_file(repo().join("models/demo/model.onnx"))
            .expect("bare session")
    };
    let mut bare = bare_session(true);
    let mut bare_no_spin = bare_session(false);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");

    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(n as u64));
    group.sample_size(10);
    let id = format!("demo-washer/batch1/threads{THREADS}/cpu/{n}frames");
    group.bench_function(BenchmarkId::new("bare_ort_session_run", &id), |b| {
        b.iter(|| {
            for t in &tensors {
                let tensor =
                    ort::value::TensorRef::from_array_view(([1usize, 3, h, w], t.as_slice()))
                        .expect("tensor");
                let outputs = bare.run(ort::inputs!["input" => tensor]).expect("run");
                let (_, score) = outputs["pred_score"]
                    .try_extract_tensor::<f32>()
                    .expect("score");
                black_box(score[0]);
            }
        })
    });
    group.bench_function(BenchmarkId::new("folder_pipeline", &id), |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| run_pipeline(&rt, &folder, n, 1, &options()))
                .sum()
        })
    });
    // Intra-op threads that do not spin between runs leave the cores to the camera thread's
    // decode and preparation; bare ONNX Runtime is measured with the same setting too.
    let id_no_spin = format!("demo-washer/batch1/threads{THREADS}-nospin/cpu/{n}frames");
    group.bench_function(BenchmarkId::new("bare_ort_session_run", &id_no_spin), |b| {
        b.iter(|| {
            for t in &tensors {
                let tensor =
                    ort::value::TensorRef::from_array_view(([1usize, 3, h, w], t.as_slice()))
                        .expect("tensor");
                let outputs = bare_no_spin
                    .run(ort::inputs!["input" => tensor])
                    .expect("run");
                let (_, score) = outputs["pred_score"]
                    .try_extract_tensor::<f32>()
                    .expect("score");
                black_box(score[0]);
            }
        })
    });
    group.bench_function(BenchmarkId::new("folder_pipeline", &id_no_spin), |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| run_pipeline(&rt, &folder, n, 1, &options_no_spin()))
                .sum()
        })
    });
    // Dynamic batching: the pipeline groups what is queued (up to 8 frames, 2 ms wait) and is
    // compared with bare ONNX Runtime at its best fixed batch size.
    for batch in [2usize, 4, 8] {
        let id = format!("demo-washer/batch{batch}/threads{THREADS}/cpu/{n}frames");
        let stacked: Vec<Vec<f32>> = tensors.chunks(batch).map(|c| c.concat()).collect();
        group.bench_function(BenchmarkId::new("bare_ort_session_run", &id), |b| {
            b.iter(|| {
                for t in &stacked {
                    let k = t.len() / (3 * w * h);
                    let tensor =
                        ort::value::TensorRef::from_array_view(([k, 3, h, w], t.as_slice()))
                            .expect("tensor");
                    let outputs = bare.run(ort::inputs!["input" => tensor]).expect("run");
                    let (_, score) = outputs["pred_score"]
                        .try_extract_tensor::<f32>()
                        .expect("score");
                    black_box(score[0]);
                }
            })
        });
    }
    let id = format!("demo-washer/dynamic-batch8/threads{THREADS}-nospin/cpu/{n}frames");
    group.bench_function(BenchmarkId::new("folder_pipeline", &id), |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| run_pipeline(&rt, &folder, n, 8, &options_no_spin()))
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
