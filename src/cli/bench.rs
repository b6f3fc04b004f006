//! `linesight bench`: how fast is this model here, and how much does linesight add on top of
//! ONNX Runtime itself?
//!
//! Three measurements in one process, on the same images, model, threads, providers and batch
//! size:
//! 1. linesight's inspection path (decode → preprocess → inference → postprocess), batch after
//!    batch, with the time of every stage;
//! 2. the same model run bare through `Session::run` on tensors prepared beforehand;
//! 3. the resident memory before the model, after loading it, and after linesight's warm-up.
//!
//! (1) and (2) run in alternating rounds of half a second, each after a short pause
//! ([`SETTLE`]), and each ratio is the median over the rounds of (1) against the round of (2)
//! right after it: never against figures from another machine, day or minute. The inspection
//! path here is sequential; the live pipeline overlaps the stages.

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
    /// Images to use (files or folders, several after one `--images` or the flag repeated);
    /// default: 16 synthetic 1280×1024 JPEG frames.
    #[arg(long, num_args = 1..)]
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
    /// Decode + preprocess: the input side, like for like with the Python baseline's figure.
    pub decode_and_preprocess_ms: Percentiles,
}

/// What a warm-up ran, before and apart from the measured rounds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct WarmUpStats {
    pub seconds: f64,
    /// Batches run: at least one, whatever `--warmup` says.
    pub batches: usize,
    /// The first batch, in which ONNX Runtime allocates the session's working memory.
    pub first_batch_ms: f64,
}

/// The warm-up of each client.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct WarmUps {
    pub linesight: WarmUpStats,
    pub bare_ort: WarmUpStats,
}

/// Resident set size at three moments, MiB.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct MemoryStats {
    pub before_model_mib: f64,
    pub after_model_mib: f64,
    /// After linesight's warm-up (its buffers at their working size), before the bare session
    /// used for the comparison is made.
    pub after_warmup_mib: f64,
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
    /// Measured rounds of each client; they alternate (linesight, bare, linesight, …).
    pub rounds: usize,
    /// linesight's inference-stage throughput / bare `Session::run` throughput: the median
    /// over the rounds of the ratio to the bare round that followed.
    pub ratio_inference_stage: f64,
    /// linesight's sequential end-to-end throughput (decode included) / bare throughput, the
    /// median over the rounds likewise.
    pub ratio_end_to_end_sequential: f64,
    pub warm_up: WarmUps,
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

/// Length of one measured round; each client runs about this long before the other takes over.
const ROUND_SECONDS: f64 = 0.5;

/// Pause before each measured round, not timed. Each client has its own session, and ONNX
/// Runtime's intra-op threads keep spinning for a while after a run (what `intra_op_spinning`
/// buys); without the pause, the first run of a round shared the cores with the other
/// session's spinning threads. On a PatchCore export (80 ms a run, 2 threads, 2 cores) about
/// one run in six took 25 % longer on both sides, which a single-session client (the Python
/// baseline, a deployed worker) never pays: p90 106 ms without a pause, 91 ms after 20 ms,
/// 85 ms after 50 ms (p50 81 ms).
pub const SETTLE: Duration = Duration::from_millis(50);

/// One linesight round and the bare round after it.
struct RoundPair {
    end_to_end: f64,
    inference_stage: f64,
    linesight_seconds: f64,
    bare_seconds: f64,
}

/// Calls `step` until `seconds` have passed (at least once); returns the seconds taken.
fn for_round(seconds: f64, mut step: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    let start = Instant::now();
    let limit = Duration::from_secs_f64(seconds);
    loop {
        step()?;
        if start.elapsed() >= limit {
            return Ok(start.elapsed().as_secs_f64());
        }
    }
}

/// linesight's inspection path over the images, batch after batch.
struct Ours<'a> {
    inspector: Inspector,
    images: &'a [(String, Vec<u8>)],
    batch: usize,
    cursor: usize,
    timings: Vec<StageTimings>,
    latencies: Vec<f64>,
}

impl Ours<'_> {
    /// One batch; recorded (stage times, latency) when `record`.
    fn step(&mut self, record: bool) -> anyhow::Result<()> {
        let items: Vec<(String, &[u8])> = (0..self.batch)
            .map(|k| {
                let (name, bytes) = &self.images[(self.cursor + k) % self.images.len()];
                (name.clone(), bytes.as_slice())
            })
            .collect();
        self.cursor = (self.cursor + self.batch) % self.images.len();
        let start = Instant::now();
        let (results, _) = self.inspector.inspect_batch(&items);
        let elapsed = start.elapsed().as_secs_f64() * 1e3;
        for (r, (name, _)) in results.into_iter().zip(&items) {
            let timing = r.with_context(|| format!("cannot inspect {name}"))?.timings;
            if record {
                self.timings.push(timing);
            }
        }
        if record {
            self.latencies.push(elapsed);
        }
        Ok(())
    }
}

/// The model run bare through `Session::run`, on tensors prepared beforehand, with the
/// session settings linesight uses.
///
/// A step does the graph calls linesight's step makes for the same `batch` images: one call of
/// `batch` rows for a dynamic batch; for a graph fixed at `n` rows, `ceil(batch / n)` calls of
/// `n` rows, the last one padded with zeros (as [`crate::model::Detector::run`] does).
struct Bare {
    session: ort::session::Session,
    tensors: Vec<f32>,
    per_image: usize,
    batch: usize,
    /// Rows of one graph call.
    rows: usize,
    height: usize,
    width: usize,
    input_name: String,
    outputs: Vec<String>,
    /// Every call of one step, back to back; the rows past `batch` stay zero (padding).
    buffer: Vec<f32>,
    cursor: usize,
}

/// Rows of one graph call and calls per step of `batch` images.
fn graph_calls(batch: usize, fixed: Option<usize>) -> (usize, usize) {
    match fixed {
        Some(rows) => (rows, batch.div_ceil(rows)),
        None => (batch, 1),
    }
}

/// Copies `batch` prepared images, from image `cursor` on and wrapping round, into the first
/// rows of `buffer`; returns the cursor of the next step.
fn fill_rows(
    tensors: &[f32],
    per_image: usize,
    cursor: usize,
    batch: usize,
    buffer: &mut [f32],
) -> usize {
    let images = tensors.len() / per_image;
    for (k, row) in buffer.chunks_exact_mut(per_image).take(batch).enumerate() {
        let i = (cursor + k) % images;
        row.copy_from_slice(&tensors[i * per_image..(i + 1) * per_image]);
    }
    (cursor + batch) % images
}

impl Bare {
    fn new(
        runtime: &OrtRuntime,
        inspector: &Inspector,
        images: &[(String, Vec<u8>)],
        options: &SessionOptions,
        batch: usize,
    ) -> anyhow::Result<Bare> {
        let detector = &inspector.detector;
        let (session, _) = open_session(runtime, &detector.package.onnx_path, options)?;
        let per_image = detector.image_len();
        let mut tensors = vec![0.0f32; per_image * images.len()];
        for ((name, bytes), slot) in images.iter().zip(tensors.chunks_exact_mut(per_image)) {
            let decoded = inspector
                .decode(bytes)
                .with_context(|| format!("cannot decode {name}"))?;
            prepare(&decoded, &detector.input, slot)
                .with_context(|| format!("cannot prepare {name}"))?;
        }
        let (rows, calls) = graph_calls(
            batch,
            match detector.contract.batch {
                crate::model::BatchSize::Fixed(n) => Some(n),
                crate::model::BatchSize::Dynamic => None,
            },
        );
        Ok(Bare {
            session,
            tensors,
            per_image,
            batch,
            rows,
            height: detector.input.height as usize,
            width: detector.input.width as usize,
            input_name: detector.contract.input.clone(),
            outputs: [
                &detector.contract.score_output,
                &detector.contract.map_output,
            ]
            .into_iter()
            .flatten()
            .cloned()
            .collect(),
            buffer: vec![0.0f32; calls * rows * per_image],
            cursor: 0,
        })
    }

    /// One batch of `batch` images (all its graph calls); its latency goes to `latencies` when
    /// given.
    fn step(&mut self, latencies: Option<&mut Vec<f64>>) -> anyhow::Result<()> {
        self.cursor = fill_rows(
            &self.tensors,
            self.per_image,
            self.cursor,
            self.batch,
            &mut self.buffer,
        );
        let start = Instant::now();
        for call in self.buffer.chunks_exact(self.rows * self.per_image) {
            let tensor = ort::value::TensorRef::from_array_view((
                [self.rows, 3, self.height, self.width],
                call,
            ))?;
            let result = self
                .session
                .run(ort::inputs![self.input_name.as_str() => tensor])?;
            // Read what linesight reads, so both sides pay for the same output access.
            for name in &self.outputs {
                let (_, values) = result[name.as_str()].try_extract_tensor::<f32>()?;
                std::hint::black_box(values.first());
            }
        }
        if let Some(l) = latencies {
            l.push(start.elapsed().as_secs_f64() * 1e3);
        }
        Ok(())
    }
}

/// Warms a client up: calls `step` until `seconds` have passed (at least once), ticking the bar.
fn warm_up(
    seconds: f64,
    bar: &ProgressBar,
    mut step: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<WarmUpStats> {
    let start = Instant::now();
    let mut batches = 0;
    let mut first_batch_ms = 0.0;
    let seconds = for_round(seconds, || {
        let batch_start = Instant::now();
        step()?;
        if batches == 0 {
            first_batch_ms = batch_start.elapsed().as_secs_f64() * 1e3;
        }
        batches += 1;
        bar.set_position(start.elapsed().as_millis() as u64);
        Ok(())
    })?;
    bar.finish_and_clear();
    Ok(WarmUpStats {
        seconds,
        batches,
        first_batch_ms,
    })
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
    let inspector = Inspector::new(detector, settings.decode)?;
    let after_model = rss_mib();
    let batch = usize::from(args.batch);

    // Both clients are made ready first: the measured rounds then alternate between them.
    let mut ours = Ours {
        inspector,
        images: &images,
        batch,
        cursor: 0,
        timings: Vec::new(),
        latencies: Vec::new(),
    };
    let warm = progress(args.warmup, "Warm-up (linesight)", quiet);
    let linesight_warm_up = warm_up(args.warmup, &warm, || ours.step(false))?;
    // linesight's working set, before the bare session below adds its own.
    let after_warmup = rss_mib();

    let runtime = OrtRuntime::get().context("ONNX Runtime is loaded")?;
    let mut bare = Bare::new(runtime, &ours.inspector, &images, &options, batch)?;
    let mut bare_latencies = Vec::new();
    let warm = progress(args.warmup, "Warm-up (bare ONNX Runtime)", quiet);
    let bare_warm_up = warm_up(args.warmup, &warm, || bare.step(None))?;

    // Alternating rounds: a machine whose speed drifts (other work, clock changes, a shared
    // virtual machine) slows both clients alike, and each ratio compares neighbouring rounds.
    let rounds = ((args.duration / ROUND_SECONDS).ceil() as usize).max(1);
    let slice = args.duration / rounds as f64;
    // Both clients' time and the pause before each of their rounds.
    let bar = progress(
        2.0 * (args.duration + rounds as f64 * SETTLE.as_secs_f64()),
        "Measuring (alternating)",
        quiet,
    );
    let started = Instant::now();
    let mut pairs = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let images_before = ours.timings.len();
        std::thread::sleep(SETTLE);
        let linesight_s = for_round(slice, || ours.step(true))?;
        let round = &ours.timings[images_before..];
        let inference_s = round.iter().map(|t| t.inference_ms).sum::<f64>() / 1e3;
        let linesight_images = round.len();
        let bare_before = bare_latencies.len();
        std::thread::sleep(SETTLE);
        let bare_s = for_round(slice, || bare.step(Some(&mut bare_latencies)))?;
        let bare_ips = ((bare_latencies.len() - bare_before) * batch) as f64 / bare_s;
        pairs.push(RoundPair {
            end_to_end: linesight_images as f64 / linesight_s / bare_ips,
            inference_stage: linesight_images as f64
                / inference_s.max(f64::MIN_POSITIVE)
                / bare_ips,
            linesight_seconds: linesight_s,
            bare_seconds: bare_s,
        });
        bar.set_position(started.elapsed().as_millis() as u64);
    }
    bar.finish_and_clear();
    let Ours {
        inspector,
        timings,
        latencies,
        ..
    } = ours;
    let linesight = run_stats(
        &latencies,
        batch,
        pairs.iter().map(|p| p.linesight_seconds).sum(),
    );
    let bare_ort = run_stats(
        &bare_latencies,
        batch,
        pairs.iter().map(|p| p.bare_seconds).sum(),
    );
    let stage =
        |f: fn(&StageTimings) -> f64| Percentiles::of(&timings.iter().map(f).collect::<Vec<_>>());
    let stages = StageStats {
        decode_ms: stage(|t| t.decode_ms),
        preprocess_ms: stage(|t| t.preprocess_ms),
        inference_ms: stage(|t| t.inference_ms),
        postprocess_ms: stage(|t| t.postprocess_ms),
        non_model_ms: stage(|t| t.preprocess_ms + t.postprocess_ms),
        decode_and_preprocess_ms: stage(|t| t.decode_ms + t.preprocess_ms),
    };
    let median = |f: fn(&RoundPair) -> f64| {
        let mut v: Vec<f64> = pairs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    };
    let report = BenchReport {
        model: inspector.identity().name.clone(),
        model_sha256: inspector.identity().sha256.clone(),
        providers: inspector.detector.providers.clone(),
        threads: args.threads,
        batch,
        images: source,
        image_count: images.len(),
        rounds,
        ratio_inference_stage: median(|p| p.inference_stage),
        ratio_end_to_end_sequential: median(|p| p.end_to_end),
        warm_up: WarmUps {
            linesight: linesight_warm_up,
            bare_ort: bare_warm_up,
        },
        linesight,
        stages,
        bare_ort,
        memory: MemoryStats {
            before_model_mib: before_model,
            after_model_mib: after_model,
            after_warmup_mib: after_warmup,
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
        ("decode+preprocess", r.stages.decode_and_preprocess_ms),
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
        "ratio linesight / bare ORT, inference stage:          {:.3}   (median of {} alternating rounds)",
        r.ratio_inference_stage, r.rounds
    );
    let _ = writeln!(
        s,
        "ratio linesight / bare ORT, end to end (sequential):  {:.3}   (median of {} alternating rounds)",
        r.ratio_end_to_end_sequential, r.rounds
    );
    let warm = |w: &WarmUpStats| {
        format!(
            "{} batch{} in {:.2} s (first {:.2} ms)",
            w.batches,
            if w.batches == 1 { "" } else { "es" },
            w.seconds,
            w.first_batch_ms
        )
    };
    let _ = writeln!(
        s,
        "warm-up (not measured): linesight {}, bare ORT {}",
        warm(&r.warm_up.linesight),
        warm(&r.warm_up.bare_ort)
    );
    let _ = writeln!(
        s,
        "memory (RSS): {:.0} MiB before the model, {:.0} MiB after loading it, {:.0} MiB after the warm-up",
        r.memory.before_model_mib, r.memory.after_model_mib, r.memory.after_warmup_mib
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

    fn repo() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    fn inspector(model: &str) -> Inspector {
        let runtime = OrtRuntime::init(None, None).expect("scripts/test installs ONNX Runtime");
        let package = crate::model::ModelPackage::open(&repo().join(model)).unwrap();
        let options = SessionOptions {
            intra_threads: 1,
            ..SessionOptions::default()
        };
        let detector = crate::model::Detector::new(runtime, package, &options, None).unwrap();
        Inspector::new(detector, crate::preprocess::DecodeLimits::default()).unwrap()
    }

    fn good_images(count: usize) -> Vec<(String, Vec<u8>)> {
        (0..count)
            .map(|i| {
                let path = repo().join(format!("testdata/synthetic/test/good/{i:03}.png"));
                (path.display().to_string(), std::fs::read(&path).unwrap())
            })
            .collect()
    }

    #[test]
    fn bare_runs_a_batch_above_the_fixed_size_in_padded_calls_of_that_size() {
        // testdata/models/fixed-batch takes exactly 2 rows per call; a batch of 3 is two calls,
        // the second padded, as linesight's Detector::run makes them.
        let inspector = inspector("testdata/models/fixed-batch");
        let images = good_images(5);
        let options = SessionOptions {
            intra_threads: 1,
            ..SessionOptions::default()
        };
        let runtime = OrtRuntime::get().unwrap();
        let mut bare = Bare::new(runtime, &inspector, &images, &options, 3).unwrap();
        let n = bare.per_image;
        let tensors = bare.tensors.clone();
        let image = |i: usize| tensors[i * n..(i + 1) * n].to_vec();
        let zeros = vec![0.0f32; n];
        let mut latencies = Vec::new();

        bare.step(Some(&mut latencies)).unwrap();
        let rows: Vec<Vec<f32>> = bare.buffer.chunks(n).map(<[f32]>::to_vec).collect();
        assert_eq!(rows, [image(0), image(1), image(2), zeros.clone()]);
        // The next step starts at the first image this one did not run, wrapping round.
        bare.step(Some(&mut latencies)).unwrap();
        let rows: Vec<Vec<f32>> = bare.buffer.chunks(n).map(<[f32]>::to_vec).collect();
        assert_eq!(rows, [image(3), image(4), image(0), zeros]);
        assert_eq!(latencies.len(), 2);
        assert_eq!(run_stats(&latencies, 3, 1.0).images, 6);
    }

    #[test]
    fn a_bad_image_is_named_in_the_error() {
        let mut images = good_images(2);
        images.push((
            "parts/b_corrupt.png".into(),
            b"\x89PNG\r\n\x1a\nnot really".to_vec(),
        ));
        let mut ours = Ours {
            inspector: inspector("models/demo"),
            images: &images,
            batch: 3,
            cursor: 0,
            timings: Vec::new(),
            latencies: Vec::new(),
        };
        let err = format!("{:#}", ours.step(false).unwrap_err());
        assert!(err.contains("parts/b_corrupt.png"), "{err}");
        let runtime = OrtRuntime::get().unwrap();
        let options = SessionOptions::default();
        let err = Bare::new(runtime, &ours.inspector, &images, &options, 1)
            .err()
            .unwrap();
        let err = format!("{err:#}");
        assert!(err.contains("parts/b_corrupt.png"), "{err}");
    }

    #[test]
    fn graph_calls_follow_the_fixed_batch() {
        assert_eq!(graph_calls(5, Some(2)), (2, 3));
        assert_eq!(graph_calls(4, Some(2)), (2, 2));
        assert_eq!(graph_calls(1, Some(2)), (2, 1), "one padded call");
        assert_eq!(graph_calls(4, None), (4, 1));
    }

    #[derive(Debug, clap::Parser)]
    struct Command {
        #[command(flatten)]
        bench: BenchArgs,
    }

    #[test]
    fn images_take_several_paths_after_one_flag_and_repeated_flags() {
        use clap::Parser as _;
        let images = |args: &[&str]| {
            Command::try_parse_from(["bench", "--model", "m"].iter().chain(args))
                .map(|c| c.bench.images)
        };
        let paths = |names: &[&str]| names.iter().map(PathBuf::from).collect::<Vec<_>>();
        assert_eq!(
            images(&["--images", "a", "b", "--duration", "1"]).unwrap(),
            paths(&["a", "b"]),
            "as scripts/bench passes them"
        );
        assert_eq!(
            images(&["--images", "a", "b", "--images", "c"]).unwrap(),
            paths(&["a", "b", "c"])
        );
        assert!(images(&[]).unwrap().is_empty(), "synthetic frames");
    }

    #[test]
    fn durations_are_bounded() {
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("4000").is_err());
        assert_eq!(parse_seconds("0.5"), Ok(0.5));
    }
}
