//! `linesight bench`: how fast is this model here, and how much does linesight add on top of
//! ONNX Runtime itself?
//!
//! Three measurements in one process, one after the other, on the same images, model, threads,
//! providers and batch size:
//! 1. linesight's inspection path (decode → preprocess → inference → postprocess), batch after
//!    batch, with the time of every stage;
//! 2. the same model run bare through `Session::run` on tensors prepared beforehand;
//! 3. the resident memory before the model, after loading it, and after the runs.
//!
//! Ratios compare (1) with (2) measured seconds apart, never against figures from another machine
//! or day. The inspection path here is sequential; the live pipeline overlaps the stages.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use image::{ImageEncoder, RgbImage};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::{collect_images, open_detector, parse_threshold};
use crate::config::Settings;
use crate::inspect::{Inspector, StageTimings};
use crate::model::{ExecutionProvider, OrtRuntime, SessionOptions, open_session};
use crate::preprocess::prepare;
use crate::telemetry::nearest_rank;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Model package directory.
    #[arg(long, short)]
    pub model: PathBuf,
    /// Execution providers in order of preference.
    #[arg(
        long = "provider",
        value_enum,
        value_delimiter = ',',
        default_value = "cpu"
    )]
    pub providers: Vec<ExecutionProvider>,
    /// ONNX Runtime intra-op threads (0 = one per core).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Images per inference call.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub batch: u16,
    /// Seconds measured for each of linesight and bare ONNX Runtime.
    #[arg(long, default_value_t = 10.0, value_parser = parse_seconds)]
    pub duration: f64,
    /// Seconds of warm-up before each measurement.
    #[arg(long, default_value_t = 2.0, value_parser = parse_seconds)]
    pub warmup: f64,
    /// Images to use (files or folders); default: 16 synthetic 1280×1024 JPEG frames.
    #[arg(long)]
    pub images: Vec<PathBuf>,
    /// Threshold for models whose graph carries none.
    #[arg(long, value_parser = parse_threshold)]
    pub threshold: Option<f32>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if (0.0..=3600.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{s} must be between 0 and 3600 seconds"))
    }
}

/// Latency distribution of one measured run, per batch.
#[derive(Debug, Clone, Serialize)]
pub struct RunStats {
    pub images: usize,
    pub batches: usize,
    pub seconds: f64,
    pub images_per_second: f64,
    pub batch_latency_ms: Percentiles,
}

/// p50 / p90 / p99 / max, nearest rank.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    pub fn of(values: &[f64]) -> Percentiles {
        if values.is_empty() {
            return Percentiles::default();
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let rank = |q| nearest_rank(&v, q).unwrap_or_default();
        Percentiles {
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
            max: v[v.len() - 1],
            mean: v.iter().sum::<f64>() / v.len() as f64,
        }
    }
}

/// Per-image time of each stage of the inspection path.
#[derive(Debug, Clone, Serialize)]
pub struct StageStats {
    pub decode_ms: Percentiles,
    pub preprocess_ms: Percentiles,
    pub inference_ms: Percentiles,
    pub postprocess_ms: Percentiles,
    /// Preprocess + postprocess: what linesight adds per already-decoded frame.
    pub non_model_ms: Percentiles,
}

/// Resident set size at three moments, MiB.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct MemoryStats {
    pub before_model_mib: f64,
    pub after_model_mib: f64,
    pub after_runs_mib: f64,
}

/// Everything `bench` reports.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub model_sha256: String,
    pub providers: Vec<ExecutionProvider>,
    pub threads: usize,
    pub batch: usize,
    pub images: String,
    pub image_count: usize,
    pub linesight: RunStats,
    pub stages: StageStats,
    pub bare_ort: RunStats,
    /// linesight's inference-stage throughput / bare `Session::run` throughput.
    pub ratio_inference_stage: f64,
    /// linesight's sequential end-to-end throughput (decode included) / bare throughput.
    pub ratio_end_to_end_sequential: f64,
    pub memory: MemoryStats,
    pub onnxruntime: String,
}

/// Resident set size of this process in MiB (Linux `/proc/self/status`; 0 elsewhere).
fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Deterministic textured 1280×1024 frames, JPEG q90 like a typical camera stream.
fn synthetic_frames(count: usize) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    (0..count)
        .map(|i| {
            let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ (i as u64 + 1);
            let frame = RgbImage::from_fn(1280, 1024, |x, y| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let noise = (state & 0x0f) as u8;
                let base = ((x / 16 + y / 16 + i as u32 * 7) % 200) as u8;
                image::Rgb([base + noise, base / 2 + noise, 230 - base / 2 + noise])
            });
            let mut jpeg = Vec::new();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90).write_image(
                &frame,
                1280,
                1024,
                image::ExtendedColorType::Rgb8,
            )?;
            Ok((format!("synthetic-{i:02}.jpg"), jpeg))
        })
        .collect()
}

fn progress(seconds: f64, message: &str, quiet: bool) -> ProgressBar {
    if quiet || seconds <= 0.0 {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new((seconds * 1000.0) as u64).with_style(
        ProgressStyle::with_template("{msg:<28} [{bar:30}] {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(message.to_string());
    bar
}

/// Calls `step` until `seconds` have passed (at least once), ticking the bar.
fn for_duration(
    seconds: f64,
    bar: &ProgressBar,
    mut step: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    let limit = Duration::from_secs_f64(seconds);
    loop {
        step()?;
        let elapsed = start.elapsed();
        bar.set_position(elapsed.as_millis() as u64);
        if elapsed >= limit {
            bar.finish_and_clear();
            return Ok(elapsed.as_secs_f64());
        }
    }
}

pub fn run(settings: &Settings, ort_lib: Option<&Path>, args: BenchArgs) -> anyhow::Result<i32> {
    let quiet = args.json;
    let before_model = rss_mib();
    let (images, source) = if args.images.is_empty() {
        (
            synthetic_frames(16)?,
            "16 synthetic 1280x1024 JPEG frames".to_string(),
        )
    } else {
        let entries = collect_images(&args.images)?;
        let images = entries
            .iter()
            .map(|e| {
                std::fs::read(&e.path)
                    .map(|b| (e.path.display().to_string(), b))
                    .with_context(|| format!("cannot read {}", e.path.display()))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let described = args
            .images
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        (images, format!("{} images from {described}", entries.len()))
    };
    let options = SessionOptions {
        intra_threads: args.threads,
        execution_providers: args.providers.clone(),
        ..settings.inference.clone()
    };
    let detector = open_detector(settings, ort_lib, &args.model, &options, args.threshold)?;
    let mut inspector = Inspector::new(detector, settings.decode)?;
    let after_model = rss_mib();
    let batch = usize::from(args.batch);

    // 1. linesight's inspection path.
    let mut cursor = 0usize;
    let mut next_batch = || {
        let items: Vec<(String, &[u8])> = (0..batch)
            .map(|k| {
                let (name, bytes) = &images[(cursor + k) % images.len()];
                (name.clone(), bytes.as_slice())
            })
            .collect();
        cursor = (cursor + batch) % images.len();
        items
    };
    let warm = progress(args.warmup, "Warm-up (linesight)", quiet);
    for_duration(args.warmup, &warm, || {
        let (results, _) = inspector.inspect_batch(&next_batch());
        results
            .into_iter()
            .find_map(Result::err)
            .map_or(Ok(()), |e| Err(e.into()))
    })?;
    let mut latencies = Vec::new();
    let mut timings: Vec<StageTimings> = Vec::new();
    let bar = progress(args.duration, "Measuring linesight", quiet);
    let seconds = for_duration(args.duration, &bar, || {
        let items = next_batch();
        let start = Instant::now();
        let (results, _) = inspector.inspect_batch(&items);
        latencies.push(start.elapsed().as_secs_f64() * 1e3);
        for r in results {
            timings.push(r?.timings);
        }
        Ok(())
    })?;
    let linesight = run_stats(&latencies, batch, seconds);
    let stage =
        |f: fn(&StageTimings) -> f64| Percentiles::of(&timings.iter().map(f).collect::<Vec<_>>());
    let stages = StageStats {
        decode_ms: stage(|t| t.decode_ms),
        preprocess_ms: stage(|t| t.preprocess_ms),
        inference_ms: stage(|t| t.inference_ms),
        postprocess_ms: stage(|t| t.postprocess_ms),
        non_model_ms: stage(|t| t.preprocess_ms + t.postprocess_ms),
    };

    // 2. Bare ONNX Runtime on tensors prepared beforehand, same session settings.
    let runtime = OrtRuntime::get().context("ONNX Runtime is loaded")?;
    let detector = &inspector.detector;
    let (mut session, _) = open_session(runtime, &detector.package.onnx_path, &options)?;
    let per_image = detector.image_len();
    let mut tensors = vec![0.0f32; per_image * images.len()];
    for ((_, bytes), slot) in images.iter().zip(tensors.chunks_exact_mut(per_image)) {
        let decoded = inspector.decode(bytes)?;
        prepare(&decoded, &detector.input, slot)?;
    }
    let fixed = match detector.contract.batch {
        crate::model::BatchSize::Fixed(n) => Some(n),
        crate::model::BatchSize::Dynamic => None,
    };
    let rows = fixed.unwrap_or(batch);
    let (h, w) = (
        detector.input.height as usize,
        detector.input.width as usize,
    );
    let input_name = detector.contract.input.clone();
    let outputs: Vec<String> = [
        &detector.contract.score_output,
        &detector.contract.map_output,
    ]
    .into_iter()
    .flatten()
    .cloned()
    .collect();
    let mut batch_buffer = vec![0.0f32; rows * per_image];
    let mut bare_cursor = 0usize;
    let mut bare_step = |latencies: Option<&mut Vec<f64>>| -> anyhow::Result<()> {
        for k in 0..batch.min(rows) {
            let i = (bare_cursor + k) % images.len();
            batch_buffer[k * per_image..(k + 1) * per_image]
                .copy_from_slice(&tensors[i * per_image..(i + 1) * per_image]);
        }
        bare_cursor = (bare_cursor + batch) % images.len();
        let start = Instant::now();
        let tensor =
            ort::value::TensorRef::from_array_view(([rows, 3, h, w], batch_buffer.as_slice()))?;
        let result = session.run(ort::inputs![input_name.as_str() => tensor])?;
        // Read what linesight reads, so both sides pay for the same output access.
        for name in &outputs {
            let (_, values) = result[name.as_str()].try_extract_tensor::<f32>()?;
            std::hint::black_box(values.first());
        }
        if let Some(l) = latencies {
            l.push(start.elapsed().as_secs_f64() * 1e3);
        }
        Ok(())
    };
    let warm = progress(args.warmup, "Warm-up (bare ONNX Runtime)", quiet);
    for_duration(args.warmup, &warm, || bare_step(None))?;
    let mut bare_latencies = Vec::new();
    let bar = progress(args.duration, "Measuring bare ONNX Runtime", quiet);
    let bare_seconds = for_duration(args.duration, &bar, || bare_step(Some(&mut bare_latencies)))?;
    let bare_ort = run_stats(&bare_latencies, batch, bare_seconds);

    let inference_total_s: f64 = timings.iter().map(|t| t.inference_ms).sum::<f64>() / 1e3;
    let inference_throughput = timings.len() as f64 / inference_total_s.max(f64::MIN_POSITIVE);
    let report = BenchReport {
        model: inspector.identity().name.clone(),
        model_sha256: inspector.identity().sha256.clone(),
        providers: inspector.detector.providers.clone(),
        threads: args.threads,
        batch,
        images: source,
        image_count: images.len(),
        ratio_inference_stage: inference_throughput / bare_ort.images_per_second,
        ratio_end_to_end_sequential: linesight.images_per_second / bare_ort.images_per_second,
        linesight,
        stages,
        bare_ort,
        memory: MemoryStats {
            before_model_mib: before_model,
            after_model_mib: after_model,
            after_runs_mib: rss_mib(),
        },
        onnxruntime: runtime.library.display().to_string(),
    };
    let text = if args.json {
        serde_json::to_string_pretty(&report)? + "\n"
    } else {
        render(&report)
    };
    std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes())?;
    Ok(0)
}

fn run_stats(latencies_ms: &[f64], batch: usize, seconds: f64) -> RunStats {
    let images = latencies_ms.len() * batch;
    RunStats {
        images,
        batches: latencies_ms.len(),
        seconds,
        images_per_second: images as f64 / seconds.max(f64::MIN_POSITIVE),
        batch_latency_ms: Percentiles::of(latencies_ms),
    }
}

fn render(r: &BenchReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let providers: Vec<&str> = r.providers.iter().map(|p| p.ort_name()).collect();
    let _ = writeln!(
        s,
        "linesight bench: {} (sha256 {}), batch {}, {} intra-op threads, {}",
        r.model,
        &r.model_sha256[..12.min(r.model_sha256.len())],
        r.batch,
        r.threads,
        providers.join(" > ")
    );
    let _ = writeln!(s, "images: {}", r.images);
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{:<34} {:>8} {:>10} {:>8} {:>8} {:>8} {:>8}",
        "run (latency per batch)", "images", "images/s", "p50 ms", "p90 ms", "p99 ms", "max ms"
    );
    for (name, run) in [
        ("linesight (decode..postprocess)", &r.linesight),
        ("bare ONNX Runtime Session::run", &r.bare_ort),
    ] {
        let p = run.batch_latency_ms;
        let _ = writeln!(
            s,
            "{:<34} {:>8} {:>10.1} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
            name, run.images, run.images_per_second, p.p50, p.p90, p.p99, p.max
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{:<34} {:>8} {:>8} {:>8} {:>8}",
        "stage (per image)", "mean ms", "p50 ms", "p99 ms", "max ms"
    );
    for (name, p) in [
        ("decode", r.stages.decode_ms),
        ("preprocess", r.stages.preprocess_ms),
        ("inference", r.stages.inference_ms),
        ("postprocess", r.stages.postprocess_ms),
        ("non-model (preprocess+postprocess)", r.stages.non_model_ms),
    ] {
        let _ = writeln!(
            s,
            "{:<34} {:>8.3} {:>8.3} {:>8.3} {:>8.3}",
            name, p.mean, p.p50, p.p99, p.max
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "ratio linesight / bare ORT, inference stage:          {:.3}",
        r.ratio_inference_stage
    );
    let _ = writeln!(
        s,
        "ratio linesight / bare ORT, end to end (sequential):  {:.3}",
        r.ratio_end_to_end_sequential
    );
    let _ = writeln!(
        s,
        "memory (RSS): {:.0} MiB before the model, {:.0} MiB after loading it, {:.0} MiB after the runs",
        r.memory.before_model_mib, r.memory.after_model_mib, r.memory.after_runs_mib
    );
    let _ = writeln!(s, "onnxruntime: {}", r.onnxruntime);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = Percentiles::of(&v);
        assert_eq!((p.p50, p.p90, p.p99, p.max), (50.0, 90.0, 99.0, 100.0));
        assert_eq!(p.mean, 50.5);
        let one = Percentiles::of(&[7.0]);
        assert_eq!((one.p50, one.p99, one.max), (7.0, 7.0, 7.0));
        assert_eq!(Percentiles::of(&[]).max, 0.0);
    }

    #[test]
    fn durations_are_bounded() {
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("4000").is_err());
        assert_eq!(parse_seconds("0.5"), Ok(0.5));
    }
}
