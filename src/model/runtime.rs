//! Finding and loading the ONNX Runtime shared library.
//!
//! linesight links ONNX Runtime dynamically (`ort`'s `load-dynamic`), so one binary runs on the
//! CPU build or the CUDA/TensorRT build of the library. The library is looked for, in order:
//! `--ort-lib`, `ORT_DYLIB_PATH`, the config (`runtime.ort_library`), next to the executable, and
//! linesight's cache (where `scripts/install-onnxruntime` puts it). The first that loads wins; if
//! none does, the error lists every place tried and the one command that fixes it. `ort`'s own
//! implicit loading panics when the library is missing, so nothing may touch `ort` before
//! [`OrtRuntime::init`] has succeeded.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The ONNX Runtime version linesight is built and tested against.
pub const ORT_VERSION: &str = "1.31.1";

/// The command that installs the library into the cache.
pub const INSTALL_HINT: &str = "scripts/install-onnxruntime";

/// Where a candidate library path came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LibrarySource {
    CommandLine,
    Environment,
    Config,
    NextToExecutable,
    Cache,
}

impl std::fmt::Display for LibrarySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LibrarySource::CommandLine => "--ort-lib",
            LibrarySource::Environment => "ORT_DYLIB_PATH",
            LibrarySource::Config => "config runtime.ort_library",
            LibrarySource::NextToExecutable => "next to the executable",
            LibrarySource::Cache => "linesight cache",
        })
    }
}

/// One place the loader looked, and why it was not used.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub source: LibrarySource,
    pub path: PathBuf,
    pub outcome: String,
}

/// Errors of the runtime loader.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{}", not_found_message(.attempts))]
    NotFound { attempts: Vec<Attempt> },
    #[error("ONNX Runtime loaded from {path} but its environment could not be created: {source}")]
    Environment {
        path: PathBuf,
        #[source]
        source: ort::Error,
    },
}

fn not_found_message(attempts: &[Attempt]) -> String {
    let mut msg = String::from("ONNX Runtime could not be loaded. Tried, in order:\n");
    for a in attempts {
        msg.push_str(&format!(
            "  - {} ({}): {}\n",
            a.path.display(),
            a.source,
            a.outcome
        ));
    }
    msg.push_str(&format!(
        "Fix: run `{INSTALL_HINT}` (installs onnxruntime {ORT_VERSION} from PyPI into {}), \
         or pass --ort-lib /path/to/libonnxruntime.so",
        cache_dir().join("onnxruntime").join(ORT_VERSION).display()
    ));
    msg
}

/// linesight's cache directory: `$LINESIGHT_CACHE_DIR`, else `$XDG_CACHE_HOME/linesight`, else
/// `~/.cache/linesight`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LINESIGHT_CACHE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("linesight");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    PathBuf::from(home).join(".cache").join("linesight")
}

/// The candidate library paths, in the documented order.
pub fn candidates(cli: Option<&Path>, config: Option<&Path>) -> Vec<(LibrarySource, PathBuf)> {
    let mut out = Vec::new();
    if let Some(p) = cli {
        out.push((LibrarySource::CommandLine, p.to_path_buf()));
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        out.push((LibrarySource::Environment, PathBuf::from(p)));
    }
    if let Some(p) = config {
        out.push((LibrarySource::Config, p.to_path_buf()));
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    {
        out.push((
            LibrarySource::NextToExecutable,
            dir.join(format!("libonnxruntime.so.{ORT_VERSION}")),
        ));
        out.push((
            LibrarySource::NextToExecutable,
            dir.join("libonnxruntime.so"),
        ));
    }
    let cache = cache_dir();
    for flavour in ["onnxruntime-gpu", "onnxruntime"] {
        out.push((
            LibrarySource::Cache,
            cache
                .join(flavour)
                .join(ORT_VERSION)
                .join(format!("libonnxruntime.so.{ORT_VERSION}")),
        ));
    }
    out
}

/// A loaded ONNX Runtime with its environment. There is one per process.
#[derive(Debug)]
pub struct OrtRuntime {
    pub library: PathBuf,
    pub source: LibrarySource,
    pub environment: ort::environment::Environment,
}

static RUNTIME: OnceLock<OrtRuntime> = OnceLock::new();

impl OrtRuntime {
    /// Loads ONNX Runtime from the first candidate that works (see the module docs), once per
    /// process; later calls return the runtime already loaded.
    pub fn init(
        cli: Option<&Path>,
        config: Option<&Path>,
    ) -> Result<&'static OrtRuntime, RuntimeError> {
        if let Some(rt) = RUNTIME.get() {
            return Ok(rt);
        }
        let mut attempts = Vec::new();
        for (source, path) in candidates(cli, config) {
            if !path.exists() {
                attempts.push(Attempt {
                    source,
                    path,
                    outcome: "no such file".into(),
                });
                continue;
            }
            match ort::init_from(&path) {
                Ok(builder) => {
                    let environment = builder.with_name("linesight").build().map_err(|source| {
                        RuntimeError::Environment {
                            path: path.clone(),
                            source,
                        }
                    })?;
                    tracing::debug!(library = %path.display(), %source, "Loaded ONNX Runtime");
                    let rt = OrtRuntime {
                        library: path,
                        source,
                        environment,
                    };
                    return Ok(RUNTIME.get_or_init(|| rt));
                }
                Err(e) => attempts.push(Attempt {
                    source,
                    path,
                    outcome: e.to_string(),
                }),
            }
        }
        Err(RuntimeError::NotFound { attempts })
    }

    /// The runtime if it has been loaded.
    pub fn get() -> Option<&'static OrtRuntime> {
        RUNTIME.get()
    }

    /// The library's build string (`GetBuildInfoString`: version, git commit, build flags).
    pub fn build_info(&self) -> &'static str {
        ort::info()
    }

    /// Execution providers compiled into the loaded library (`GetAvailableProviders`), e.g.
    /// `CPUExecutionProvider`, `CUDAExecutionProvider`, `TensorrtExecutionProvider`.
    pub fn available_providers(&self) -> Vec<String> {
        available_providers()
    }
}

fn available_providers() -> Vec<String> {
    let api = ort::api();
    let mut providers: *mut *mut std::ffi::c_char = std::ptr::null_mut();
    let mut count: std::ffi::c_int = 0;
    // SAFETY: ORT fills an array of `count` NUL-terminated strings that we release below with
    // the matching `ReleaseAvailableProviders`.
    unsafe {
        let status = (api.GetAvailableProviders)(&mut providers, &mut count);
        if !status.0.is_null() {
            (api.ReleaseStatus)(status.0);
            return Vec::new();
        }
        if providers.is_null() {
            return Vec::new();
        }
        let names = (0..count as isize)
            .map(|i| {
                std::ffi::CStr::from_ptr(*providers.offset(i))
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        let _ = (api.ReleaseAvailableProviders)(providers, count);
        names
    }
}
