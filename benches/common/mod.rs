//! What the benchmarks share: the repository root and the ONNX Runtime they run on.

use std::path::{Path, PathBuf};

use linesight::model::OrtRuntime;

/// The repository root (models, test images).
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// ONNX Runtime, loaded once (the library `scripts/setup` installs); a missing library stops
/// the benchmark with the message that says how to install it.
pub fn runtime() -> &'static OrtRuntime {
    // The allocator settings the `linesight` binary starts with.
    static MEMORY: std::sync::Once = std::sync::Once::new();
    MEMORY.call_once(|| {
        linesight::memory::keep_frame_buffers();
    });
    match OrtRuntime::init(None, None) {
        Ok(rt) => rt,
        Err(e) => panic!("{e}"),
    }
}

/// The reference PaDiM export beside the repository, when there (licence-restricted: never
/// shipped); `LINESIGHT_SHARED_DATA` points elsewhere.
pub fn shared_data() -> Option<PathBuf> {
    let dir = std::env::var_os("LINESIGHT_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("../shared/data"));
    dir.join("models/padim-magnetic-tile/model.onnx")
        .is_file()
        .then_some(dir)
}

/// Median, lowest and highest of `ratios`.
pub fn spread(mut ratios: Vec<f64>) -> (f64, f64, f64) {
    ratios.sort_by(f64::total_cmp);
    let n = ratios.len();
    let median = if n % 2 == 1 {
        ratios[n / 2]
    } else {
        (ratios[n / 2 - 1] + ratios[n / 2]) / 2.0
    };
    (median, ratios[0], ratios[n - 1])
}

/// Waits before a timed pass, so that it does not share the cores with the threads the other
/// side's sessions leave spinning (see `linesight::cli::bench::SETTLE`): in a deployment the
/// two never run in one process.
pub fn settle() {
    std::thread::sleep(linesight::cli::bench::SETTLE);
}

/// Alternating rounds per ratio: 10 (`LINESIGHT_BENCH_ROUNDS` sets another number), or 1 under
/// `cargo bench -- --test` (CI).
pub fn rounds() -> usize {
    if std::env::args().any(|a| a == "--test") {
        1
    } else {
        env_count("LINESIGHT_BENCH_ROUNDS", 10)
    }
}

/// ONNX Runtime threads in all, on either side of a comparison: 2, the build machine's cores
/// (`LINESIGHT_BENCH_THREADS` sets another number, for a machine with more cores).
pub fn threads() -> usize {
    env_count("LINESIGHT_BENCH_THREADS", 2)
}

/// A positive count from the environment variable `name`, `default` when unset; anything else
/// stops the bench naming the variable.
fn env_count(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Err(_) => default,
        Ok(v) => match v.parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => panic!("{name} = {v:?}: must be a whole number of at least 1"),
        },
    }
}

/// One bare `Session::run` on `rows` ready-made images (`data`: rows × 3 × `h` × `w` floats),
/// reading the score out as linesight does.
pub fn bare_run(
    session: &mut ort::session::Session,
    rows: usize,
    data: &[f32],
    w: usize,
    h: usize,
) {
    let tensor = ort::value::TensorRef::from_array_view(([rows, 3, h, w], data)).expect("tensor");
    let outputs = session.run(ort::inputs!["input" => tensor]).expect("run");
    let (_, score) = outputs["pred_score"]
        .try_extract_tensor::<f32>()
        .expect("score");
    std::hint::black_box(score[0]);
}

/// Bare ONNX Runtime on ready-made tensors (each `rows × 3 × h × w` floats): every tensor through
/// one `Session::run`, the calls shared out among `sessions` on their own threads (one session
/// runs on the calling thread).
pub fn bare_parallel(
    sessions: &mut [ort::session::Session],
    tensors: &[&[f32]],
    w: usize,
    h: usize,
) {
    let rows = |t: &[f32]| t.len() / (3 * w * h);
    if let [session] = sessions {
        for t in tensors {
            bare_run(session, rows(t), t, w, h);
        }
        return;
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for session in sessions.iter_mut() {
            let next = &next;
            scope.spawn(move || {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(t) = tensors.get(i) else { return };
                    bare_run(session, rows(t), t, w, h);
                }
            });
        }
    });
}
