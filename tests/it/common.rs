//! Shared helpers: locating test data and the ONNX Runtime library.

use std::path::{Path, PathBuf};

use linesight::inspect::Inspector;
use linesight::model::{Detector, ModelPackage, OrtRuntime, SessionOptions};
use linesight::preprocess::DecodeLimits;

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The licence-restricted reference data beside the clone (`../shared/data`), or
/// `$LINESIGHT_SHARED_DATA`. `None` (the test is skipped, saying so) when it is absent, unless
/// `LINESIGHT_REQUIRE_SHARED_DATA=1` (CI), where its absence fails the test.
pub fn shared_data() -> Option<PathBuf> {
    let dir = std::env::var_os("LINESIGHT_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("../shared/data"));
    if dir.join("models/padim-magnetic-tile/model.onnx").is_file() {
        return Some(dir);
    }
    if std::env::var("LINESIGHT_REQUIRE_SHARED_DATA").as_deref() == Ok("1") {
        panic!(
            "reference data not found at {} and LINESIGHT_REQUIRE_SHARED_DATA=1",
            dir.display()
        );
    }
    eprintln!(
        "SKIPPED: reference data not found at {} (set LINESIGHT_SHARED_DATA)",
        dir.display()
    );
    None
}

pub fn runtime() -> &'static OrtRuntime {
    OrtRuntime::init(None, None)
        .unwrap_or_else(|e| panic!("{e}\n(the test script installs it: scripts/test)"))
}

pub fn inspector(model: &Path, threshold: Option<f32>) -> Inspector {
    let package = ModelPackage::open(model).expect("model package opens");
    let options = SessionOptions {
        intra_threads: 2,
        ..SessionOptions::default()
    };
    let detector = Detector::new(runtime(), package, &options, threshold).expect("detector builds");
    Inspector::new(detector, DecodeLimits::default()).expect("model has a threshold")
}

/// A model package under `dir` that loads but cannot run: the dynamic-size test graph with a
/// manifest giving an input size the graph rejects (its first call fails).
pub fn model_that_cannot_run(dir: &Path) -> PathBuf {
    let model = dir.join("wrong-size");
    std::fs::create_dir(&model).unwrap();
    let source = repo().join("testdata/models/dynamic-size");
    std::fs::copy(source.join("model.onnx"), model.join("model.onnx")).unwrap();
    let manifest = std::fs::read_to_string(source.join("model.toml"))
        .unwrap()
        .replace("width = 256", "width = 128")
        .replace("height = 256", "height = 128");
    std::fs::write(model.join("model.toml"), manifest).unwrap();
    model
}

/// The `linesight` binary built for these tests.
pub fn linesight() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_linesight"))
}

/// Sends SIGTERM to `child` (a `linesight run` or `serve` under test).
pub fn sigterm(child: &std::process::Child) {
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success(), "kill -TERM {}", child.id());
}

/// A PNG of `width`×`height` noise from `seed`: incompressible, so the file is as large as
/// its pixels.
pub fn noise_png(width: u32, height: u32, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    let img = image::RgbImage::from_fn(width, height, |_, _| {
        // xorshift noise: incompressible, so the PNG is as large as the pixels.
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        image::Rgb([x as u8, (x >> 8) as u8, (x >> 16) as u8])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}
