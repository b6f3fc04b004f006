//! What the benchmarks share: the repository root and the ONNX Runtime they run on.

use std::path::Path;

use linesight::model::OrtRuntime;

/// The repository root (models, test images).
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// ONNX Runtime, loaded once (the library `scripts/setup` installs); a missing library stops
/// the benchmark with the message that says how to install it.
pub fn runtime() -> &'static OrtRuntime {
    match OrtRuntime::init(None, None) {
        Ok(rt) => rt,
        Err(e) => panic!("{e}"),
    }
}
