//! Benchmarks of the per-image path: preprocessing stages alone, and one inference through
//! linesight's [`Detector`] side by side with a bare `ort::Session::run` on the same model,
//! threads and provider (their ratio is linesight's overhead; see BENCHMARKS.md).
//!
//! `cargo bench --bench inference` to measure; `cargo bench -- --test` runs each once (CI).

use std::hint::black_box;
use std::path::Path;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use image::{ImageEncoder, RgbImage};
use linesight::inspect::PreparedImage;
use linesight::model::{Detector, ModelPackage, OrtRuntime, SessionOptions};
use linesight::postprocess::{
    AnomalyMap, OverlayOptions, SourceGeometry, extract_regions, render_overlay,
};
use linesight::preprocess::resize::PillowBilinear;
use linesight::preprocess::{
    ChannelOrder, DecodeLimits, InputSpec, Normalisation, ResizeMode, decode,
    resize_bilinear_pillow, resize_torchvision_antialias, resize_torchvision_uint8, write_chw,
};

const CAMERA: (u32, u32) = (1280, 1024);
const MODEL_SIZE: u32 = 256;

/// A deterministic camera-sized frame with texture (JPEG of flat colour would flatter decode).
fn camera_frame() -> RgbImage {
    let (w, h) = CAMERA;
    let mut state = 0x2545_f491_4f6c_dd1du64;
    RgbImage::from_fn(w, h, |x, y| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let noise = (state & 0x1f) as u8;
        let base = ((x / 8 + y / 8) % 200) as u8;
        image::Rgb([base + noise, base / 2 + noise, 255 - base - noise])
    })
}

fn jpeg(image: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .write_image(
            image,
            image.width(),
            image.height(),
            image::ExtendedColorType::Rgb8,
        )
        .expect("encode");
    out
}

fn preprocess(c: &mut Criterion) {
    let frame = camera_frame();
    let encoded = jpeg(&frame);
    let small = resize_bilinear_pillow(&frame, MODEL_SIZE, MODEL_SIZE);
    let mut tensor = vec![0.0f32; 3 * (MODEL_SIZE * MODEL_SIZE) as usize];
    let id = format!("{}x{}", CAMERA.0, CAMERA.1);

    let mut group = c.benchmark_group("preprocess");
    group.throughput(Throughput::Elements(1));
    group.bench_function(BenchmarkId::new("decode_jpeg_libjpeg_turbo", &id), |b| {
        b.iter(|| decode(black_box(&encoded), &DecodeLimits::default()).expect("decode"))
    });
    group.bench_function(
        BenchmarkId::new("resize_pillow_bilinear_to_256", &id),
        |b| b.iter(|| resize_bilinear_pillow(black_box(&frame), MODEL_SIZE, MODEL_SIZE)),
    );
    // What a pipeline worker pays per frame: weights built once, only the convolution timed.
    let cached = PillowBilinear::new(CAMERA.0, CAMERA.1, MODEL_SIZE, MODEL_SIZE);
    group.bench_function(
        BenchmarkId::new("resize_pillow_bilinear_cached_to_256", &id),
        |b| b.iter(|| cached.resize(black_box(&frame)).expect("input size")),
    );
    group.bench_function(
        BenchmarkId::new("resize_torchvision_uint8_to_256", &id),
        |b| b.iter(|| resize_torchvision_uint8(black_box(&frame), MODEL_SIZE, MODEL_SIZE)),
    );
    group.bench_function(
        BenchmarkId::new("resize_torchvision_float_to_256", &id),
        |b| b.iter(|| resize_torchvision_antialias(black_box(&frame), MODEL_SIZE, MODEL_SIZE)),
    );
    group.bench_function(BenchmarkId::new("to_chw_f32", "256x256"), |b| {
        b.iter(|| {
            write_chw(
                black_box(&small),
                ChannelOrder::Rgb,
                &Normalisation::None,
                &mut tensor,
            )
        })
    });
    // A demo-sized frame (the synthetic washers are 224×176) brought to the model's 256×256:
    // what a camera thread pays per frame before inference, and the resize alone.
    let part = RgbImage::from_fn(224, 176, |x, y| {
        image::Rgb([(x % 251) as u8, (y % 241) as u8, ((x * 3 + y) % 239) as u8])
    });
    let spec = InputSpec {
        width: MODEL_SIZE,
        height: MODEL_SIZE,
        resize: ResizeMode::PillowBilinear,
        channel_order: ChannelOrder::Rgb,
        normalisation: Normalisation::None,
        roi: None,
    };
    let upscale = PillowBilinear::new(224, 176, MODEL_SIZE, MODEL_SIZE);
    group.bench_function(
        BenchmarkId::new("resize_pillow_bilinear_cached_to_256", "224x176"),
        |b| b.iter(|| upscale.resize(black_box(&part)).expect("input size")),
    );
    group.bench_function(BenchmarkId::new("prepared_image", "224x176"), |b| {
        b.iter(|| PreparedImage::new(String::new(), black_box(&part), &spec).expect("prepare"))
    });
    group.finish();
}

fn inference(c: &mut Criterion) {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/demo");
    let runtime = match OrtRuntime::init(None, None) {
        Ok(rt) => rt,
        Err(e) => panic!("{e}"),
    };
    let threads = 2;
    let options = SessionOptions {
        intra_threads: threads,
        ..SessionOptions::default()
    };
    let package = ModelPackage::open(&model).expect("demo model package");
    let name = package.name();
    let mut detector = Detector::new(runtime, package, &options, None).expect("detector");
    let (w, h) = (
        detector.input.width as usize,
        detector.input.height as usize,
    );
    let input: Vec<f32> = (0..3 * w * h).map(|i| (i % 251) as f32 / 255.0).collect();

    let mut bare = ort::session::Session::builder(&runtime.environment)
        .expect("builder")
        .with_optimization_level(ort::session::builder::GraphOptimizationLevel::All)
        .expect("opt level")
        .with_intra_threads(threads)
        .expect("threads")
        .commit_from_file(model.join("model.onnx"))
        .expect("bare session");

    let mut group = c.benchmark_group("inference");
    group.throughput(Throughput::Elements(1));
    let id = format!("{name}/batch1/threads{threads}/cpu");
    group.bench_function(BenchmarkId::new("bare_ort_session_run", &id), |b| {
        b.iter(|| {
            let tensor =
                ort::value::TensorRef::from_array_view(([1usize, 3, h, w], input.as_slice()))
                    .expect("tensor");
            let outputs = bare.run(ort::inputs!["input" => tensor]).expect("run");
            let (_, score) = outputs["pred_score"]
                .try_extract_tensor::<f32>()
                .expect("score");
            black_box(score[0])
        })
    });
    group.bench_function(BenchmarkId::new("linesight_detector_run", &id), |b| {
        b.iter(|| black_box(detector.run(black_box(&input)).expect("run")))
    });
    group.finish();
}

/// An anomaly map with a few hot blobs, like a defective part's.
fn defect_map() -> AnomalyMap {
    let (w, h) = (MODEL_SIZE, MODEL_SIZE);
    let blobs = [(40.0, 60.0, 9.0), (180.0, 120.0, 14.0), (90.0, 200.0, 5.0)];
    let values = (0..w * h)
        .map(|i| {
            let (x, y) = ((i % w) as f32, (i / w) as f32);
            blobs
                .iter()
                .map(|(cx, cy, r)| (-((x - cx).powi(2) + (y - cy).powi(2)) / (2.0 * r * r)).exp())
                .fold(0.2f32, f32::max)
        })
        .collect();
    AnomalyMap {
        width: w,
        height: h,
        values,
    }
}

fn postprocess(c: &mut Criterion) {
    let frame = camera_frame();
    let map = defect_map();
    let geometry = SourceGeometry {
        width: CAMERA.0,
        height: CAMERA.1,
        roi: None,
    };
    let regions = extract_regions(&map, 0.5, geometry, 0);
    let id = format!("{}x{}", CAMERA.0, CAMERA.1);
    let mut group = c.benchmark_group("postprocess");
    group.throughput(Throughput::Elements(1));
    group.bench_function(BenchmarkId::new("extract_regions_256_map", &id), |b| {
        b.iter(|| extract_regions(black_box(&map), 0.5, geometry, 0))
    });
    group.bench_function(BenchmarkId::new("render_overlay", &id), |b| {
        b.iter(|| {
            render_overlay(
                black_box(&frame),
                &map,
                geometry,
                &regions,
                &OverlayOptions::default(),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, preprocess, inference, postprocess);
criterion_main!(benches);
