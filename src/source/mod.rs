//! Frame sources: where images come from before the pipeline inspects them.
//!
//! One trait, [`FrameSource`], with blocking calls (cameras and disks block); the pipeline runs
//! each source on a blocking thread and paces it. Sources chosen by configuration
//! ([`SourceConfig`]):
//! - [`folder::FolderSource`] replays a folder of images, once or in a loop;
//! - [`synthetic::SyntheticSource`] generates washers, some defective, so that the demo and the
//!   tests need no camera.
//!
//! - [`usb::UsbSource`] streams a USB / V4L2 camera through nokhwa (cargo feature `usb`, on by
//!   default);
//! - [`gige::GigeSource`] streams a GigE Vision camera through Aravis, free-running or triggered
//!   by software or by a digital input line (cargo feature `gige`);
//! - [`rtsp::RtspSource`] receives an RTSP network camera's stream through GStreamer (cargo
//!   feature `rtsp`).
//!
//! The `usb`, `gige` and `rtsp` kinds always parse; in a build without their feature,
//! validation says which feature is missing.
//!
//! Invariants: a source never panics on bad input; a failed grab returns [`SourceError`] and the
//! pipeline calls [`FrameSource::reopen`] with back-off; `Ok(None)` means the source is finished
//! for good (a folder replayed once).

pub mod folder;
pub mod gige;
pub mod rtsp;
pub mod synthetic;
pub mod usb;

use std::path::PathBuf;
use std::time::SystemTime;

use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::preprocess::DecodeLimits;

pub use folder::FolderSource;
pub use gige::GigeConfig;
pub use rtsp::RtspConfig;
pub use synthetic::SyntheticSource;
pub use usb::UsbConfig;

/// One image as a source delivered it.
#[derive(Debug, Clone)]
pub struct Captured {
    pub image: RgbImage,
    /// Wall-clock time of capture.
    pub captured_at: SystemTime,
    /// Where the frame came from: a file path, `synthetic:<seed>:<index>:<kind>`, a device name.
    pub origin: String,
}

/// Errors of sources.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot list folder {path}: {source}")]
    ListFolder {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("folder {path} holds no images (jpg, jpeg, png, bmp, tif, tiff)")]
    EmptyFolder { path: PathBuf },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot decode {path}: {source}")]
    Decode {
        path: PathBuf,
        #[source]
        source: crate::preprocess::DecodeError,
    },
    #[error(
        "folder {path}: its {files} images take more than preload_mib = {limit_mib} MiB once decoded; raise preload_mib, or leave it out to read each image from disk"
    )]
    PreloadBudget {
        path: PathBuf,
        files: usize,
        limit_mib: u64,
    },
    #[error("{source_name}: {message}")]
    Device {
        source_name: String,
        message: String,
    },
    /// The device delivered a frame that cannot be used (an incomplete GigE buffer, a corrupt
    /// MJPEG frame): that frame fails, the device is not lost.
    #[error("{source_name}: {message}")]
    BadFrame {
        source_name: String,
        message: String,
    },
}

impl SourceError {
    /// Whether only this frame failed (a file or frame that does not decode): the pipeline
    /// answers it with an error and goes on with the next one, without reopening the source.
    pub fn is_bad_frame(&self) -> bool {
        matches!(
            self,
            SourceError::Decode { .. } | SourceError::BadFrame { .. }
        )
    }
}

/// Something that yields frames. Calls block; the pipeline keeps them off the async runtime.
pub trait FrameSource: Send {
    /// A short description for logs and health (`folder /data/parts`, `synthetic seed 1`).
    fn describe(&self) -> String;
    /// The next frame; `Ok(None)` when the source is finished for good.
    fn next_frame(&mut self) -> Result<Option<Captured>, SourceError>;
    /// Closes and reopens the device after a failure.
    fn reopen(&mut self) -> Result<(), SourceError>;
    /// Makes sure the device is open and still there, without taking a frame: the pipeline
    /// probes a triggered camera at start and then every `pipeline.probe_interval_ms` while it
    /// waits for triggers, so that health tells a camera that is missing or went away before
    /// the next part comes. Opens a source that is not open; a failed check leaves the source
    /// to be reopened. A trigger that comes during a check waits for it, so a check looks at
    /// the device rather than capturing; it shows the device is there, not that it delivers
    /// frames (RTSP's does show frames arriving). Sources with no device to lose have nothing
    /// to do.
    fn probe(&mut self) -> Result<(), SourceError> {
        Ok(())
    }
}

/// `source = { kind = "...", ... }` in a `[[cameras]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum SourceConfig {
    /// Replay the images of a folder (recursively, sorted by path).
    Folder {
        path: PathBuf,
        /// Start again at the first image after the last one.
        #[serde(default, rename = "loop")]
        repeat: bool,
        /// Decode the images once at open and replay them from memory, up to this many MiB of
        /// pixels (none: read and decode each file at its turn).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        preload_mib: Option<u32>,
    },
    /// Generated washers.
    Synthetic {
        #[serde(default = "default_seed")]
        seed: u64,
        /// Share of defective parts, 0 to 1.
        #[serde(default = "default_defect_rate")]
        defect_rate: f64,
        /// Stop after this many frames (none: run forever).
        #[serde(default)]
        frames: Option<u64>,
    },
    /// A USB / V4L2 camera.
    Usb(UsbConfig),
    /// A GigE Vision camera.
    Gige(GigeConfig),
    /// An RTSP network camera.
    Rtsp(RtspConfig),
}

/// The largest preload budget of a folder source: 64 GiB of decoded images.
pub const MAX_PRELOAD_MIB: u32 = 65_536;

fn default_seed() -> u64 {
    1
}

fn default_defect_rate() -> f64 {
    0.3
}

impl SourceConfig {
    /// Whether every frame the source delivers is a part: a camera exposing on a pulse of its
    /// digital input (a GigE camera with `trigger = "line"`). Such frames are treated like
    /// triggered ones: never dropped, never skipped.
    pub fn each_frame_is_a_part(&self) -> bool {
        matches!(self, SourceConfig::Gige(g) if g.trigger == gige::GigeTrigger::Line)
    }

    /// Problems with this source's settings; `field` names it in messages.
    pub fn problems(&self, field: &str) -> Vec<String> {
        match self {
            SourceConfig::Folder { preload_mib, .. } => match preload_mib {
                Some(mib) if !(1..=MAX_PRELOAD_MIB).contains(mib) => vec![format!(
                    "{field}.preload_mib = {mib}: must be between 1 and {MAX_PRELOAD_MIB} (MiB of decoded images held in memory)"
                )],
                _ => Vec::new(),
            },
            SourceConfig::Synthetic { defect_rate, .. } => {
                if (0.0..=1.0).contains(defect_rate) {
                    Vec::new()
                } else {
                    vec![format!(
                        "{field}.defect_rate = {defect_rate}: must be between 0 and 1"
                    )]
                }
            }
            SourceConfig::Usb(c) => {
                let mut p = c.problems(field);
                if !cfg!(feature = "usb") {
                    p.push(format!(
                        "{field}.kind = \"usb\": this linesight was built without USB camera support (cargo feature `usb`)"
                    ));
                }
                p
            }
            SourceConfig::Gige(c) => {
                let mut p = c.problems(field);
                if !cfg!(feature = "gige") {
                    p.push(format!(
                        "{field}.kind = \"gige\": this linesight was built without GigE Vision support (cargo feature `gige`, needs libaravis-dev)"
                    ));
                }
                p
            }
            SourceConfig::Rtsp(c) => {
                let mut p = c.problems(field);
                if !cfg!(feature = "rtsp") {
                    p.push(format!(
                        "{field}.kind = \"rtsp\": this linesight was built without RTSP support (cargo feature `rtsp`, needs libgstreamer1.0-dev and libgstreamer-plugins-base1.0-dev)"
                    ));
                }
                p
            }
        }
    }

    /// A short description for logs and health, before the source is open.
    pub fn describe(&self) -> String {
        match self {
            SourceConfig::Folder { path, .. } => format!("folder {}", path.display()),
            SourceConfig::Synthetic { seed, .. } => format!("synthetic seed {seed}"),
            SourceConfig::Usb(c) => c.describe(),
            SourceConfig::Gige(c) => c.describe(),
            SourceConfig::Rtsp(c) => c.describe(),
        }
    }

    /// Opens the source.
    pub fn open(&self, limits: DecodeLimits) -> Result<Box<dyn FrameSource>, SourceError> {
        Ok(match self {
            SourceConfig::Folder {
                path,
                repeat,
                preload_mib,
            } => {
                let folder = FolderSource::open(path.clone(), *repeat, limits)?;
                match preload_mib {
                    Some(mib) => Box::new(folder.preload(*mib)?),
                    None => Box::new(folder),
                }
            }
            SourceConfig::Synthetic {
                seed,
                defect_rate,
                frames,
            } => Box::new(SyntheticSource::new(*seed, *defect_rate, *frames)),
            #[cfg(feature = "usb")]
            SourceConfig::Usb(c) => Box::new(usb::UsbSource::open(c.clone(), limits)?),
            #[cfg(feature = "gige")]
            SourceConfig::Gige(c) => Box::new(gige::GigeSource::open(c.clone())?),
            #[cfg(feature = "rtsp")]
            SourceConfig::Rtsp(c) => Box::new(rtsp::RtspSource::open(c.clone(), limits)?),
            #[cfg(not(all(feature = "usb", feature = "gige", feature = "rtsp")))]
            other => {
                return Err(SourceError::Device {
                    source_name: other.describe(),
                    message: "this linesight was built without support for this kind of camera"
                        .into(),
                });
            }
        })
    }
}

/// A source opened on first use and reopened from its configuration after a failure, so that
/// a camera missing at start-up is retried with back-off like one lost later.
pub struct LazySource {
    config: SourceConfig,
    limits: DecodeLimits,
    inner: Option<Box<dyn FrameSource>>,
}

impl LazySource {
    pub fn new(config: SourceConfig, limits: DecodeLimits) -> LazySource {
        LazySource {
            config,
            limits,
            inner: None,
        }
    }
}

impl FrameSource for LazySource {
    fn describe(&self) -> String {
        match &self.inner {
            Some(s) => s.describe(),
            None => format!("{} (not open yet)", self.config.describe()),
        }
    }

    fn next_frame(&mut self) -> Result<Option<Captured>, SourceError> {
        if self.inner.is_none() {
            self.inner = Some(self.config.open(self.limits)?);
        }
        self.inner.as_mut().expect("opened just above").next_frame()
    }

    fn reopen(&mut self) -> Result<(), SourceError> {
        match self.inner.as_mut() {
            Some(s) => s.reopen(),
            None => {
                self.inner = Some(self.config.open(self.limits)?);
                Ok(())
            }
        }
    }

    fn probe(&mut self) -> Result<(), SourceError> {
        if self.inner.is_none() {
            self.inner = Some(self.config.open(self.limits)?);
        }
        // Opening is not always answering: an RTSP camera's stream, say, fails after.
        self.inner.as_mut().expect("opened just above").probe()
    }
}
