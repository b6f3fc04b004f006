//! USB / V4L2 cameras through nokhwa (`kind = "usb"`).
//!
//! The device is asked for one exact format (resolution, frame rate, pixel format) from the
//! configuration; a camera that cannot deliver it fails to open with the formats it offers, so a
//! wrong setting is seen at start-up instead of as silently different images. MJPEG frames are
//! decoded by linesight's own JPEG decoder (the one `inspect` uses, with its size limits); raw
//! formats (YUYV, NV12, grey, RGB, BGR) are converted by nokhwa's decoders.
//!
//! Invariants: a missing or vanished device is a [`SourceError::Device`] naming the device, so
//! the pipeline reopens it with back-off; a frame whose byte count does not match its format is
//! an error, never a panic or a short image; a frame handed out was captured after it was asked
//! for (frames left waiting in the driver's queue are dropped, see [`fresh_frame`]).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use image::RgbImage;
use serde::{Deserialize, Serialize};

use super::{Captured, SourceError};
use crate::preprocess::DecodeLimits;

/// Which camera: an index (`0` is `/dev/video0`) or a device path (`/dev/video2`, or a stable
/// link such as `/dev/v4l/by-id/usb-…-video-index0`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum UsbDevice {
    Index(u32),
    Path(PathBuf),
}

impl std::fmt::Display for UsbDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UsbDevice::Index(i) => write!(f, "/dev/video{i}"),
            UsbDevice::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Pixel format asked of the camera (V4L2 FourCC).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UsbPixelFormat {
    /// Motion JPEG: what most USB cameras deliver at high resolutions and frame rates.
    #[default]
    Mjpeg,
    /// YUV 4:2:2, uncompressed.
    Yuyv,
    /// YUV 4:2:0, semi-planar.
    Nv12,
    /// 8-bit grey.
    Gray,
    /// Packed 8-bit RGB.
    Rgb,
    /// Packed 8-bit BGR.
    Bgr,
}

impl UsbPixelFormat {
    /// The name V4L2 tools print.
    pub fn as_str(self) -> &'static str {
        match self {
            UsbPixelFormat::Mjpeg => "MJPEG",
            UsbPixelFormat::Yuyv => "YUYV",
            UsbPixelFormat::Nv12 => "NV12",
            UsbPixelFormat::Gray => "GRAY",
            UsbPixelFormat::Rgb => "RGB",
            UsbPixelFormat::Bgr => "BGR",
        }
    }
}

/// `source = { kind = "usb", ... }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsbConfig {
    /// Device index or path.
    pub device: UsbDevice,
    #[serde(default = "default_width")]
    pub width_px: u32,
    #[serde(default = "default_height")]
    pub height_px: u32,
    /// Frame rate asked of the device (the camera's `fps` paces what the pipeline takes).
    #[serde(default = "default_frame_rate")]
    pub frame_rate_fps: u32,
    #[serde(default)]
    pub pixel_format: UsbPixelFormat,
}

fn default_width() -> u32 {
    1280
}

fn default_height() -> u32 {
    720
}

fn default_frame_rate() -> u32 {
    30
}

/// Largest side accepted in the configuration (V4L2 itself allows more, no USB camera does).
pub const MAX_SIDE_PX: u32 = 16_384;

impl UsbConfig {
    /// Problems with these settings; `field` names the source in messages.
    pub fn problems(&self, field: &str) -> Vec<String> {
        let mut p = Vec::new();
        if let UsbDevice::Path(path) = &self.device
            && !path.is_absolute()
        {
            p.push(format!(
                "{field}.device = {:?}: must be an index (0 for /dev/video0) or an absolute path such as \"/dev/video0\"",
                path.display().to_string()
            ));
        }
        for (name, value) in [("width_px", self.width_px), ("height_px", self.height_px)] {
            if !(1..=MAX_SIDE_PX).contains(&value) {
                p.push(format!(
                    "{field}.{name} = {value}: must be between 1 and {MAX_SIDE_PX}"
                ));
            }
        }
        if !(1..=1000).contains(&self.frame_rate_fps) {
            p.push(format!(
                "{field}.frame_rate_fps = {}: must be between 1 and 1000",
                self.frame_rate_fps
            ));
        }
        if matches!(
            self.pixel_format,
            UsbPixelFormat::Yuyv | UsbPixelFormat::Nv12
        ) && !self.width_px.is_multiple_of(2)
        {
            p.push(format!(
                "{field}.width_px = {}: must be even for pixel_format \"{}\" (two pixels share their colour)",
                self.width_px,
                self.pixel_format.as_str().to_lowercase()
            ));
        }
        if self.pixel_format == UsbPixelFormat::Nv12 && !self.height_px.is_multiple_of(2) {
            p.push(format!(
                "{field}.height_px = {}: must be even for pixel_format \"nv12\"",
                self.height_px
            ));
        }
        p
    }

    /// `usb /dev/video0 1280x720 MJPEG 30 fps`.
    pub fn describe(&self) -> String {
        format!(
            "usb {} {}x{} {} {} fps",
            self.device,
            self.width_px,
            self.height_px,
            self.pixel_format.as_str(),
            self.frame_rate_fps
        )
    }
}

/// The V4L2 index of a device: `/dev/videoN` (or a link to it) gives N.
pub fn device_index(device: &UsbDevice) -> Result<u32, SourceError> {
    let path = match device {
        UsbDevice::Index(i) => return Ok(*i),
        UsbDevice::Path(p) => p,
    };
    let fail = |message: String| SourceError::Device {
        source_name: format!("usb {}", path.display()),
        message,
    };
    let real = std::fs::canonicalize(path).map_err(|e| fail(format!("no such device: {e}")))?;
    index_of(&real).ok_or_else(|| {
        fail(format!(
            "{} is not a V4L2 capture node (/dev/videoN)",
            real.display()
        ))
    })
}

fn index_of(path: &Path) -> Option<u32> {
    path.to_str()?.strip_prefix("/dev/video")?.parse().ok()
}

/// Converts one raw frame to RGB: MJPEG through linesight's JPEG decoder (within `limits`),
/// the raw formats through nokhwa's decoders after checking the byte count.
pub fn frame_to_rgb(
    format: UsbPixelFormat,
    width: u32,
    height: u32,
    data: &[u8],
    limits: &DecodeLimits,
) -> Result<RgbImage, String> {
    if format == UsbPixelFormat::Mjpeg {
        let image = crate::preprocess::decode(data, limits).map_err(|e| e.to_string())?;
        if image.dimensions() != (width, height) {
            return Err(format!(
                "MJPEG frame is {}x{}, the stream was opened at {width}x{height}",
                image.width(),
                image.height()
            ));
        }
        return Ok(image);
    }
    let pixels = width as usize * height as usize;
    let expected = match format {
        UsbPixelFormat::Mjpeg => unreachable!("decoded above"),
        UsbPixelFormat::Yuyv => pixels * 2,
        UsbPixelFormat::Nv12 => pixels * 3 / 2,
        UsbPixelFormat::Gray => pixels,
        UsbPixelFormat::Rgb | UsbPixelFormat::Bgr => pixels * 3,
    };
    // Drivers may pad the last line; fewer bytes than the format needs is a broken frame.
    if data.len() < expected {
        return Err(format!(
            "{} frame of {width}x{height} needs {expected} bytes, got {}",
            format.as_str(),
            data.len()
        ));
    }
    #[cfg(feature = "usb")]
    {
        use nokhwa::pixel_format::RgbFormat;
        use nokhwa::utils::Resolution;
        let buffer = nokhwa::Buffer::new(
            Resolution::new(width, height),
            &data[..expected],
            device::frame_format(format),
        );
        buffer
            .decode_image::<RgbFormat>()
            .map_err(|e| format!("cannot convert {} frame: {e}", format.as_str()))
    }
    #[cfg(not(feature = "usb"))]
    {
        Err(format!(
            "{} frames need the `usb` feature of linesight",
            format.as_str()
        ))
    }
}

/// Frames a V4L2 driver may hold ready (nokhwa's stream queues 4 buffers), with a margin.
const MAX_QUEUED_FRAMES: usize = 8;

/// A frame captured after it was asked for. A V4L2 stream keeps the frames it captured while
/// nobody was reading, and hands out the oldest first: after a quiet spell a trigger would get
/// a picture taken seconds before, of another part. Frames that `grab` returns at once (in less
/// than half a frame interval) were waiting in that queue and are dropped; the first one that
/// had to be waited for is fresh. Written here because nokhwa offers no way to set the queue
/// length or read frame timestamps.
fn fresh_frame<F, E>(
    mut grab: impl FnMut() -> Result<F, E>,
    frame_interval: std::time::Duration,
) -> Result<F, E> {
    let quick = frame_interval / 2;
    for _ in 0..MAX_QUEUED_FRAMES {
        let asked = std::time::Instant::now();
        let frame = grab()?;
        if asked.elapsed() >= quick {
            return Ok(frame);
        }
    }
    grab()
}

#[cfg(feature = "usb")]
pub use device::{UsbCamera, UsbCameraInfo, UsbFormat, UsbSource, list_cameras};

#[cfg(feature = "usb")]
mod device {
    use super::*;
    use nokhwa::Camera;
    use nokhwa::pixel_format::RgbFormat;
    use nokhwa::utils::{
        ApiBackend, CameraFormat, CameraIndex, FrameFormat, RequestedFormat, RequestedFormatType,
        Resolution,
    };

    pub(super) fn frame_format(format: UsbPixelFormat) -> FrameFormat {
        match format {
            UsbPixelFormat::Mjpeg => FrameFormat::MJPEG,
            UsbPixelFormat::Yuyv => FrameFormat::YUYV,
            UsbPixelFormat::Nv12 => FrameFormat::NV12,
            UsbPixelFormat::Gray => FrameFormat::GRAY,
            UsbPixelFormat::Rgb => FrameFormat::RAWRGB,
            UsbPixelFormat::Bgr => FrameFormat::RAWBGR,
        }
    }

    fn pixel_format(format: FrameFormat) -> UsbPixelFormat {
        match format {
            FrameFormat::MJPEG => UsbPixelFormat::Mjpeg,
            FrameFormat::YUYV => UsbPixelFormat::Yuyv,
            FrameFormat::NV12 => UsbPixelFormat::Nv12,
            FrameFormat::GRAY => UsbPixelFormat::Gray,
            FrameFormat::RAWRGB => UsbPixelFormat::Rgb,
            FrameFormat::RAWBGR => UsbPixelFormat::Bgr,
        }
    }

    /// A USB camera streaming in the configured format.
    pub struct UsbSource {
        config: UsbConfig,
        limits: DecodeLimits,
        camera: Option<Camera>,
        /// The V4L2 index the camera was opened at.
        index: u32,
    }

    impl UsbSource {
        /// Opens the device and starts streaming.
        pub fn open(config: UsbConfig, limits: DecodeLimits) -> Result<UsbSource, SourceError> {
            let mut source = UsbSource {
                config,
                limits,
                camera: None,
                index: 0,
            };
            source.start()?;
            Ok(source)
        }

        fn error(&self, message: String) -> SourceError {
            SourceError::Device {
                source_name: format!("usb {}", self.config.device),
                message,
            }
        }

        fn start(&mut self) -> Result<(), SourceError> {
            // Release the device first: V4L2 allows one streaming handle.
            self.camera = None;
            let index = device_index(&self.config.device)?;
            let node = PathBuf::from(format!("/dev/video{index}"));
            if !node.exists() {
                return Err(self.error(format!(
                    "no such device ({} does not exist)",
                    node.display()
                )));
            }
            let wanted = CameraFormat::new(
                Resolution::new(self.config.width_px, self.config.height_px),
                frame_format(self.config.pixel_format),
                self.config.frame_rate_fps,
            );
            let requested = RequestedFormat::new::<RgbFormat>(RequestedFormatType::Exact(wanted));
            let mut camera = Camera::with_backend(
                CameraIndex::Index(index),
                requested,
                ApiBackend::Video4Linux,
            )
            .map_err(|e| {
                let offered = formats_of(index)
                    .map(|f| {
                        f.iter()
                            .map(UsbFormat::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_else(|e| format!("unknown ({e})"));
                self.error(format!(
                    "cannot open as {}x{} {} at {} fps: {e}; the device offers: {offered}",
                    self.config.width_px,
                    self.config.height_px,
                    self.config.pixel_format.as_str(),
                    self.config.frame_rate_fps
                ))
            })?;
            camera
                .open_stream()
                .map_err(|e| self.error(format!("cannot start streaming: {e}")))?;
            self.camera = Some(camera);
            self.index = index;
            Ok(())
        }
    }

    impl super::super::FrameSource for UsbSource {
        fn describe(&self) -> String {
            self.config.describe()
        }

        fn next_frame(&mut self) -> Result<Option<Captured>, SourceError> {
            let camera = match self.camera.as_mut() {
                Some(c) => c,
                None => return Err(self.error("not streaming".into())),
            };
            let interval = std::time::Duration::from_secs_f64(
                1.0 / f64::from(self.config.frame_rate_fps.max(1)),
            );
            let frame = super::fresh_frame(|| camera.frame(), interval).map_err(|e| {
                SourceError::Device {
                    source_name: format!("usb {}", self.config.device),
                    message: format!("capture failed: {e}"),
                }
            })?;
            let captured_at = SystemTime::now();
            let resolution = frame.resolution();
            let format = pixel_format(frame.source_frame_format());
            let image = frame_to_rgb(
                format,
                resolution.width_x,
                resolution.height_y,
                frame.buffer(),
                &self.limits,
            )
            .map_err(|message| SourceError::BadFrame {
                source_name: format!("usb {}", self.config.device),
                message,
            })?;
            Ok(Some(Captured {
                image,
                captured_at,
                origin: format!("usb:{}", self.config.device),
            }))
        }

        fn reopen(&mut self) -> Result<(), SourceError> {
            self.start()
        }

        /// The camera is still the device opened: its node is there, the kernel still lists
        /// it (`/sys/class/video4linux`, which also tells inside a container whose `/dev` keeps
        /// the node), and a configured path (`/dev/v4l/by-id/…`) still leads to it, not to
        /// the number a camera plugged in again was given. A camera not streaming is opened.
        fn probe(&mut self) -> Result<(), SourceError> {
            if self.camera.is_none() {
                return self.start();
            }
            let opened = self.index;
            let checked = device_index(&self.config.device).and_then(|index| {
                let node = PathBuf::from(format!("/dev/video{index}"));
                let sysfs = Path::new("/sys/class/video4linux");
                if index != opened {
                    Err(self.error(format!(
                        "the camera is now {} (opened as /dev/video{opened}; plugged in again?)",
                        node.display()
                    )))
                } else if !node.exists()
                    || (sysfs.is_dir() && !sysfs.join(format!("video{index}")).exists())
                {
                    Err(self.error(format!("{} is gone (unplugged?)", node.display())))
                } else {
                    Ok(())
                }
            });
            if checked.is_err() {
                // Released now: the handle of a vanished device is of no use, and a camera
                // plugged back in is opened by the reopen.
                self.camera = None;
            }
            checked
        }
    }

    /// One format a camera offers.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize)]
    pub struct UsbFormat {
        pub pixel_format: UsbPixelFormat,
        pub width_px: u32,
        pub height_px: u32,
        pub frame_rate_fps: u32,
    }

    impl std::fmt::Display for UsbFormat {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(
                f,
                "{}x{} {} {} fps",
                self.width_px,
                self.height_px,
                self.pixel_format.as_str(),
                self.frame_rate_fps
            )
        }
    }

    /// What `linesight cameras` reports about one device.
    #[derive(Debug, Clone, Serialize)]
    pub struct UsbCamera {
        pub index: u32,
        pub path: String,
        pub name: String,
        pub description: String,
        /// The formats it offers, or why they could not be read (a device held by another
        /// process, a metadata node).
        #[serde(flatten)]
        pub info: UsbCameraInfo,
    }

    /// Formats of a device, or the error that prevented reading them.
    #[derive(Debug, Clone, Serialize)]
    #[serde(rename_all = "lowercase")]
    pub enum UsbCameraInfo {
        Formats(Vec<UsbFormat>),
        Error(String),
    }

    fn formats_of(index: u32) -> Result<Vec<UsbFormat>, nokhwa::NokhwaError> {
        let requested = RequestedFormat::new::<RgbFormat>(RequestedFormatType::None);
        let mut camera = Camera::with_backend(
            CameraIndex::Index(index),
            requested,
            ApiBackend::Video4Linux,
        )?;
        let mut formats: Vec<UsbFormat> = camera
            .compatible_camera_formats()?
            .into_iter()
            .map(|f| UsbFormat {
                pixel_format: pixel_format(f.format()),
                width_px: f.width(),
                height_px: f.height(),
                frame_rate_fps: f.frame_rate(),
            })
            .collect();
        formats.sort_by_key(|f| {
            (
                f.pixel_format.as_str(),
                std::cmp::Reverse(f.width_px * f.height_px),
                std::cmp::Reverse(f.frame_rate_fps),
            )
        });
        formats.dedup();
        Ok(formats)
    }

    /// The V4L2 devices of this machine with the formats each offers; empty without cameras.
    pub fn list_cameras() -> Result<Vec<UsbCamera>, SourceError> {
        let found = nokhwa::query(ApiBackend::Video4Linux).map_err(|e| SourceError::Device {
            source_name: "usb".into(),
            message: format!("cannot list V4L2 devices: {e}"),
        })?;
        let mut cameras = Vec::new();
        for info in found {
            let Ok(index) = info.index().as_index() else {
                continue;
            };
            cameras.push(UsbCamera {
                index,
                path: format!("/dev/video{index}"),
                name: info.human_name(),
                description: info.description().to_string(),
                info: match formats_of(index) {
                    Ok(f) => UsbCameraInfo::Formats(f),
                    Err(e) => UsbCameraInfo::Error(e.to_string()),
                },
            });
        }
        cameras.sort_by_key(|c| c.index);
        Ok(cameras)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// After a quiet spell, the frames waiting in the driver's queue come back at once and are
    /// dropped; the first frame that had to be waited for is the one returned.
    #[test]
    fn frames_waiting_in_the_driver_queue_are_dropped_for_a_fresh_one() {
        // Long enough that a pause of the test thread is not taken for a wait for a frame.
        let interval = std::time::Duration::from_millis(300);
        let mut queued = 4;
        let mut taken = 0;
        let frame = fresh_frame(
            || {
                taken += 1;
                if queued > 0 {
                    queued -= 1;
                } else {
                    std::thread::sleep(interval);
                }
                Ok::<_, ()>(taken)
            },
            interval,
        )
        .unwrap();
        assert_eq!(frame, 5, "the four queued frames are skipped");
        // A camera read as fast as it delivers loses nothing.
        let mut taken = 0;
        let frame = fresh_frame(
            || {
                taken += 1;
                std::thread::sleep(interval);
                Ok::<_, ()>(taken)
            },
            interval,
        )
        .unwrap();
        assert_eq!(frame, 1);
        // An error is returned as it is.
        assert_eq!(
            fresh_frame(|| Err::<u32, _>("unplugged"), interval),
            Err("unplugged")
        );
    }

    fn config(toml_text: &str) -> Result<UsbConfig, toml::de::Error> {
        toml::from_str(toml_text)
    }

    #[test]
    fn device_is_an_index_or_a_path_and_defaults_fill_the_rest() {
        let c = config("device = 2").unwrap();
        assert_eq!(c.device, UsbDevice::Index(2));
        assert_eq!((c.width_px, c.height_px, c.frame_rate_fps), (1280, 720, 30));
        assert_eq!(c.pixel_format, UsbPixelFormat::Mjpeg);
        assert_eq!(c.describe(), "usb /dev/video2 1280x720 MJPEG 30 fps");
        let c = config("device = \"/dev/video4\"\npixel_format = \"yuyv\"").unwrap();
        assert_eq!(c.device, UsbDevice::Path("/dev/video4".into()));
        assert_eq!(c.pixel_format, UsbPixelFormat::Yuyv);
        assert!(config("device = 0\nresolution = \"640x480\"").is_err());
        let e = config("device = 0\npixel_format = \"h264\"").unwrap_err();
        assert!(e.to_string().contains("mjpeg"), "{e}");
    }

    #[test]
    fn problems_name_each_field_and_its_limit_at_once() {
        let c = config(
            "device = \"video0\"\nwidth_px = 641\nheight_px = 0\nframe_rate_fps = 0\npixel_format = \"nv12\"",
        )
        .unwrap();
        let p = c.problems("cameras[1].source");
        assert_eq!(p.len(), 4, "{p:#?}");
        assert!(p[0].starts_with("cameras[1].source.device = \"video0\": must be"));
        assert!(p[1].starts_with("cameras[1].source.height_px = 0: must be between 1 and 16384"));
        assert!(p[2].starts_with("cameras[1].source.frame_rate_fps = 0: must be between 1"));
        assert!(p[3].starts_with("cameras[1].source.width_px = 641: must be even"));
        let c = config("device = 1\nheight_px = 481\npixel_format = \"nv12\"").unwrap();
        assert_eq!(
            c.problems("s"),
            vec!["s.height_px = 481: must be even for pixel_format \"nv12\"".to_string()]
        );
        assert!(config("device = 0").unwrap().problems("s").is_empty());
    }

    #[test]
    fn a_missing_device_path_is_a_device_error_naming_it() {
        let e = device_index(&UsbDevice::Path("/dev/v4l/by-id/none-video-index0".into()))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("usb /dev/v4l/by-id/none-video-index0: no such device"),
            "{e}"
        );
        let e = device_index(&UsbDevice::Path("/dev/null".into()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/dev/null is not a V4L2 capture node"), "{e}");
        assert_eq!(device_index(&UsbDevice::Index(3)).unwrap(), 3);
    }

    fn limits() -> DecodeLimits {
        DecodeLimits::default()
    }

    #[cfg(feature = "usb")]
    #[test]
    fn yuyv_grey_rgb_bgr_and_nv12_frames_convert_to_rgb() {
        // YUYV: two pixels (Y0 U Y1 V); neutral chroma (128) gives grey at the luma level
        // (BT.601 limited range: Y 16 is black, 235 white).
        let yuyv = [16, 128, 235, 128, 126, 128, 126, 128];
        let img = frame_to_rgb(UsbPixelFormat::Yuyv, 2, 2, &yuyv, &limits()).unwrap();
        assert_eq!(img.dimensions(), (2, 2));
        let px = |x, y| img.get_pixel(x, y).0;
        assert!(px(0, 0).iter().all(|&c| c <= 2), "{:?}", px(0, 0));
        assert!(px(1, 0).iter().all(|&c| c >= 253), "{:?}", px(1, 0));
        assert_eq!(px(0, 1)[0], px(0, 1)[1]);
        assert_eq!(px(0, 1)[1], px(0, 1)[2]);

        let gray = [0u8, 50, 100, 250];
        let img = frame_to_rgb(UsbPixelFormat::Gray, 2, 2, &gray, &limits()).unwrap();
        assert_eq!(img.get_pixel(1, 1).0, [250, 250, 250]);
        assert_eq!(img.get_pixel(1, 0).0, [50, 50, 50]);

        let rgb = [1u8, 2, 3, 4, 5, 6];
        let img = frame_to_rgb(UsbPixelFormat::Rgb, 2, 1, &rgb, &limits()).unwrap();
        assert_eq!(img.get_pixel(1, 0).0, [4, 5, 6]);
        let img = frame_to_rgb(UsbPixelFormat::Bgr, 2, 1, &rgb, &limits()).unwrap();
        assert_eq!(img.get_pixel(0, 0).0, [3, 2, 1]);

        // NV12 2x2: four luma bytes, then one interleaved U V pair for the block.
        let nv12 = [235u8, 235, 235, 235, 128, 128];
        let img = frame_to_rgb(UsbPixelFormat::Nv12, 2, 2, &nv12, &limits()).unwrap();
        assert!(
            img.pixels().all(|p| p.0.iter().all(|&c| c >= 250)),
            "{img:?}"
        );
    }

    #[test]
    fn short_frames_are_errors_not_panics() {
        for (format, bytes) in [
            (UsbPixelFormat::Yuyv, 7usize),
            (UsbPixelFormat::Nv12, 5),
            (UsbPixelFormat::Gray, 3),
            (UsbPixelFormat::Rgb, 11),
        ] {
            let e = frame_to_rgb(format, 2, 2, &vec![0; bytes], &limits()).unwrap_err();
            assert!(e.contains(&format!("got {bytes}")), "{e}");
        }
        let e = frame_to_rgb(
            UsbPixelFormat::Mjpeg,
            2,
            2,
            &[0xFF, 0xD8, 0xFF, 0],
            &limits(),
        )
        .unwrap_err();
        assert!(!e.is_empty());
    }

    #[test]
    fn mjpeg_frames_decode_and_must_match_the_stream_size() {
        let mut jpeg = Vec::new();
        let img = RgbImage::from_pixel(16, 8, image::Rgb([200, 30, 30]));
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95)
            .encode_image(&img)
            .unwrap();
        let out = frame_to_rgb(UsbPixelFormat::Mjpeg, 16, 8, &jpeg, &limits()).unwrap();
        let p = out.get_pixel(8, 4).0;
        assert!(p[0].abs_diff(200) < 8 && p[1].abs_diff(30) < 8, "{p:?}");
        let e = frame_to_rgb(UsbPixelFormat::Mjpeg, 640, 480, &jpeg, &limits()).unwrap_err();
        assert!(e.contains("16x8"), "{e}");
    }
}
