//! Manual uploads under load: 8 HTTP clients upload images concurrently
//! to the real API (TCP on 127.0.0.1, bearer token, SQLite store with its fsyncs, images and
//! overlays written and synced: every upload is a different image, see [`unique_uploads`]),
//! side by side with bare `ort::Session::run` of the same model on the same
//! images with the same sessions and threads. Their throughput ratio is what the API costs;
//! the upload latencies' p50 and p99 are printed (see BENCHMARKS.md). The bundled demo model
//! on the synthetic washers always; the reference PaDiM export on magnetic tiles too when
//! `../shared/data` (or `LINESIGHT_SHARED_DATA`) is there.
//!
//! The ratio is measured in alternating rounds (bare pass, upload pass, …) and printed as the
//! median; the criterion group times each side in its own block.
//!
//! `cargo bench --bench api` to measure; `cargo bench -- --test` runs each once (CI).
//! `LINESIGHT_BENCH_THREADS=N` serves the uploads with N inspectors against N bare sessions
//! (default 2), `LINESIGHT_BENCH_ROUNDS=N` sets the number of alternating rounds (default 10).

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use linesight::api::{ApiConfig, ApiState, InspectorPool, app};
use linesight::inspect::Inspector;
use linesight::model::registry::Validator;
use linesight::model::{Detector, ModelPackage, SessionOptions};
use linesight::preprocess::{DecodeLimits, decode, prepare};
use linesight::quality::{QualityConfig, Role};
use linesight::store::{NewUser, Store, StoreConfig};

#[path = "common/mod.rs"]
mod common;
use common::{bare_parallel, repo, rounds, runtime, settle, shared_data, spread, threads};

/// Concurrent HTTP clients.
const CLIENTS: usize = 8;
/// Inspectors (ONNX Runtime sessions) serving uploads, one intra-op thread each: one per ONNX
/// Runtime thread of [`threads`] (the two cores of the reference machine unless set).
fn inspectors() -> usize {
    threads()
}

fn options() -> SessionOptions {
    SessionOptions {
        intra_threads: 1,
        intra_op_spinning: false,
        ..SessionOptions::default()
    }
}

/// Up to `limit` images of `folder` (PNG or JPEG), sorted, with their media type.
fn images(folder: &Path, limit: usize) -> Vec<(&'static str, Vec<u8>)> {
    let mut files: Vec<PathBuf> = walkdir::WalkDir::new(folder)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| {
            e.path()
                .extension()
                .is_some_and(|x| x == "png" || x == "jpg")
        })
        .map(|e| e.into_path())
        .collect();
    files.sort();
    // Every defect class and the good parts, not only the first folder.
    let step = files.len().div_ceil(limit).max(1);
    files
        .into_iter()
        .step_by(step)
        .map(|f| {
            let media = if f.extension().is_some_and(|x| x == "png") {
                "image/png"
            } else {
                "image/jpeg"
            };
            (media, std::fs::read(&f).expect("read"))
        })
        .collect()
}

/// `count` uploads made from `images` in turn, every one different in its bytes and pixels: the
/// `n`-th (from `first`) carries `n` in the red channel of its first four pixels, re-encoded
/// in its own format (PNG lossless, JPEG at quality 95). A plant's uploads are all different
/// photographs, so each one's image and overlay are new files, written and synced; uploading
/// the same bytes again would find both already stored and skip that work.
fn unique_uploads(
    images: &[(&'static str, Vec<u8>)],
    first: usize,
    count: usize,
) -> Vec<(&'static str, Vec<u8>)> {
    (first..first + count)
        .map(|n| {
            let (media, bytes) = &images[n % images.len()];
            let mut pixels = image::load_from_memory(bytes).expect("decode");
            if let image::DynamicImage::ImageLuma8(grey) = &mut pixels {
                // A greyscale camera's JPEG stays greyscale.
                for (i, byte) in (n as u32).to_le_bytes().into_iter().enumerate() {
                    let x = (i as u32).min(grey.width() - 1);
                    grey.get_pixel_mut(x, 0).0[0] = byte;
                }
            } else {
                let mut rgb = pixels.to_rgb8();
                for (i, byte) in (n as u32).to_le_bytes().into_iter().enumerate() {
                    let x = (i as u32).min(rgb.width() - 1);
                    rgb.get_pixel_mut(x, 0).0[0] = byte;
                }
                pixels = rgb.into();
            }
            let mut out = std::io::Cursor::new(Vec::new());
            if *media == "image/png" {
                pixels
                    .write_to(&mut out, image::ImageFormat::Png)
                    .expect("encode PNG");
            } else {
                image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95)
                    .encode_image(&pixels)
                    .expect("encode JPEG");
            }
            (*media, out.into_inner())
        })
        .collect()
}

/// Numbers the uploads of a bench run, so that no two of its uploads are the same image.
#[derive(Default)]
struct Numbering(std::sync::atomic::AtomicUsize);

impl Numbering {
    /// The first of `count` numbers not handed out before.
    fn next(&self, count: usize) -> usize {
        self.0
            .fetch_add(count, std::sync::atomic::Ordering::Relaxed)
    }
}

struct Server {
    port: u16,
    token: String,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::watch::Sender<bool>,
}

async fn start_server(model: &Path) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&StoreConfig {
        url: Some(format!("sqlite://{}", dir.path().join("q.db").display())),
        ..StoreConfig::default()
    })
    .await
    .expect("store");
    store
        .add_user(
            NewUser {
                username: "bench".into(),
                full_name: "Load benchmark".into(),
                role: Role::Operator,
                password: "bench-password-1".into(),
            },
            "bench",
        )
        .await
        .expect("user");
    let (_, token) = store
        .create_token("bench", "load benchmark", None, "bench")
        .await
        .expect("token");
    let inspectors = (0..inspectors())
        .map(|_| {
            let package = ModelPackage::open(model).expect("model");
            let detector = Detector::new(runtime(), package, &options(), None).expect("detector");
            Inspector::new(detector, DecodeLimits::default()).expect("inspector")
        })
        .collect();
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let state = ApiState {
        store,
        quality: QualityConfig::default(),
        config: ApiConfig::default(),
        image_dir: dir.path().join("images"),
        attachment_dir: dir.path().join("attachments"),
        inspectors: Arc::new(InspectorPool::new(inspectors)),
        line: "bench".into(),
        pipeline: None,
        metrics: Arc::default(),
        slots: Vec::new(),
        upload_model: model.to_path_buf(),
        validator: Validator {
            runtime: runtime(),
            options: options(),
            limits: DecodeLimits::default(),
        },
        stopping,
        sign_in_throttle: ApiConfig::default().sign_in_throttle(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    // The server `linesight serve` runs, with its default header timeout.
    let options = linesight::api::server::ServerOptions::from_config(
        &ApiConfig::default(),
        None,
        std::time::Duration::ZERO,
    );
    tokio::spawn(linesight::api::server::serve(
        listener,
        app(state),
        options,
        std::future::pending(),
    ));
    Server {
        port,
        token,
        _dir: dir,
        _stop: stop,
    }
}

/// Uploads every image once, spread over [`CLIENTS`] concurrent clients; the wall time and
/// each request's latency.
async fn upload_all(
    client: &reqwest::Client,
    server: &Server,
    images: &Arc<Vec<(&'static str, Vec<u8>)>>,
) -> (Duration, Vec<f64>) {
    let start = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (client, images, next) = (client.clone(), images.clone(), next.clone());
            let url = format!("http://127.0.0.1:{}/api/v1/inspections", server.port);
            let auth = format!("Bearer {}", server.token);
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some((media, bytes)) = images.get(i) else {
                        return latencies;
                    };
                    let sent = Instant::now();
                    let res = client
                        .post(&url)
                        .query(&[("part_id", format!("B{c}-{i}")), ("lot", "LOAD".into())])
                        .header("authorization", &auth)
                        .header("content-type", *media)
                        .body(bytes.clone())
                        .send()
                        .await
                        .expect("upload");
                    assert_eq!(res.status(), 201, "{:?}", res.text().await);
                    black_box(res.bytes().await.expect("answer"));
                    latencies.push(sent.elapsed().as_secs_f64() * 1e3);
                }
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.expect("client"));
    }
    (start.elapsed(), latencies)
}

/// Bare ONNX Runtime: [`inspectors`] sessions on their own threads run the ready-made tensors
/// of every image once between them.
fn bare_all(sessions: &mut [ort::session::Session], tensors: &[Vec<f32>], w: usize, h: usize) {
    let calls: Vec<&[f32]> = tensors.iter().map(Vec::as_slice).collect();
    bare_parallel(sessions, &calls, w, h);
}

/// The throughput ratio uploads / bare ONNX Runtime measured in alternating rounds (a bare pass
/// over the images, then an upload pass over them, …), each upload pass against the bare pass
/// just before it, so that a machine whose speed drifts slows both alike; at least 100 images
/// per pass. Prints the median and the range.
#[allow(clippy::too_many_arguments)]
fn alternating(
    rt: &tokio::runtime::Runtime,
    name: &str,
    client: &reqwest::Client,
    server: &Server,
    images: &[(&'static str, Vec<u8>)],
    uploads: &Numbering,
    sessions: &mut [ort::session::Session],
    tensors: &[Vec<f32>],
    (w, h): (usize, usize),
) {
    let copies = 100usize.div_ceil(images.len());
    let per_pass = copies * images.len();
    let many_tensors: Vec<Vec<f32>> = (0..copies).flat_map(|_| tensors.iter().cloned()).collect();
    let rounds = rounds();
    let mut ratios = Vec::with_capacity(rounds);
    let mut latencies = Vec::new();
    for _ in 0..rounds {
        // Made before the round, outside both timings.
        let many = Arc::new(unique_uploads(images, uploads.next(per_pass), per_pass));
        settle();
        let start = Instant::now();
        bare_all(sessions, &many_tensors, w, h);
        let bare = start.elapsed();
        settle();
        let (took, mut l) = rt.block_on(upload_all(client, server, &many));
        latencies.append(&mut l);
        ratios.push(bare.as_secs_f64() / took.as_secs_f64());
    }
    let (median, low, high) = spread(ratios);
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q).round() as usize];
    eprintln!(
        "{name}: uploads / bare ORT throughput with {CLIENTS} clients, {per_pass} different images per pass: median {median:.3} over {rounds} alternating rounds (lowest {:.3}, highest {:.3}); upload latency p50 {:.1} ms, p99 {:.1} ms",
        low,
        high,
        at(0.5),
        at(0.99),
    );
}

fn load(c: &mut Criterion) {
    let mut cases = vec![(
        "demo-washer",
        repo().join("models/demo"),
        images(&repo().join("testdata/synthetic/test"), 25),
    )];
    if let Some(shared) = shared_data() {
        cases.push((
            "padim-magnetic-tile",
            shared.join("models/padim-magnetic-tile"),
            images(&shared.join("mini/test"), 30),
        ));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("api_load");
    group.sample_size(10);
    for (name, model, images) in cases {
        load_one(&mut group, &rt, name, &model, Arc::new(images));
    }
    group.finish();
}

fn load_one(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &tokio::runtime::Runtime,
    name: &str,
    model: &Path,
    images: Arc<Vec<(&'static str, Vec<u8>)>>,
) {
    let n = images.len();
    let package = ModelPackage::open(model).expect("model");
    let detector = Detector::new(runtime(), package, &options(), None).expect("detector");
    let (w, h) = (
        detector.input.width as usize,
        detector.input.height as usize,
    );
    let tensors: Vec<Vec<f32>> = images
        .iter()
        .map(|(_, bytes)| {
            let image = decode(bytes, &DecodeLimits::default()).expect("decode");
            let mut t = vec![0.0; 3 * w * h];
            prepare(&image, &detector.input, &mut t).expect("prepare");
            t
        })
        .collect();
    let mut sessions: Vec<ort::session::Session> = (0..inspectors())
        .map(|_| {
            ort::session::Session::builder(&runtime().environment)
                .expect("builder")
                .with_optimization_level(ort::session::builder::GraphOptimizationLevel::All)
                .expect("opt level")
                .with_intra_threads(1)
                .expect("threads")
                .with_intra_op_spinning(false)
                .expect("spinning")
                .commit_from_file(model.join("model.onnx"))
                .expect("bare session")
        })
        .collect();
    let server = rt.block_on(start_server(model));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CLIENTS)
        .build()
        .expect("client");
    // Warm-up: sessions, connections, the store's first writes.
    rt.block_on(upload_all(&client, &server, &images));
    let uploads = Numbering::default();
    alternating(
        rt,
        name,
        &client,
        &server,
        &images,
        &uploads,
        &mut sessions,
        &tensors,
        (w, h),
    );

    group.throughput(Throughput::Elements(n as u64));
    let id = format!("{name}/{}sessions-x1thread/cpu/{n}images", inspectors());
    group.bench_function(BenchmarkId::new("bare_ort_session_run", &id), |b| {
        b.iter(|| bare_all(&mut sessions, &tensors, w, h))
    });
    let mut latencies = Vec::new();
    group.bench_function(
        BenchmarkId::new(format!("http_upload_{CLIENTS}_clients"), &id),
        |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        let fresh = Arc::new(unique_uploads(&images, uploads.next(n), n));
                        let (took, mut l) = rt.block_on(upload_all(&client, &server, &fresh));
                        latencies.append(&mut l);
                        took
                    })
                    .sum()
            })
        },
    );
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q).round() as usize];
    if !latencies.is_empty() {
        eprintln!(
            "{name}: upload latency with {CLIENTS} clients: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} uploads)",
            at(0.5),
            at(0.99),
            at(1.0),
            latencies.len()
        );
    }
}

criterion_group!(benches, load);
criterion_main!(benches);
