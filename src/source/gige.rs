//! GigE Vision cameras through Aravis 0.8 (`kind = "gige"`, cargo feature `gige`).
//!
//! The camera streams into a small pool of Aravis buffers; each grab copies one out, converts it
//! to RGB and gives the buffer back. Three ways to make a frame (`trigger`):
//! - `free-run`: the camera streams at its frame rate; a grab takes the newest frame and
//!   recycles older ones, so a slow pipeline never inspects stale images;
//! - `software`: each grab fires `TriggerSoftware` and waits for that exposure, so a pipeline
//!   trigger (HTTP, MQTT) is one exposure at the moment it is served;
//! - `line`: `TriggerMode=On`, `TriggerSource=<trigger_line>`; the camera exposes on its digital
//!   input and a grab waits, with no time limit, for the next pulse (checking every second
//!   that the camera still answers, so a camera that vanishes is still reported and reopened). Run such a camera in
//!   free-run mode with `fps = 0`: every frame is then one trigger event. A pulse carries no
//!   part id or lot; the result's `origin` carries the camera's frame id and timestamp
//!   (`gige:<camera>#<frame id>@<camera timestamp ns>`) so that a line controller can match it.
//!
//! Invariants: a camera that is absent, vanishes or stops delivering within `frame_timeout_ms`
//! (free-run, software) is a [`SourceError::Device`] naming the camera, so the pipeline reopens
//! it with back-off; incomplete frames (lost packets) are never inspected: in free-run they are
//! skipped (the next frame comes), with a software or line trigger each is an exposure of a part,
//! so it is a [`SourceError::BadFrame`] naming its frame id, which the pipeline answers as that
//! part's error without reopening the camera.

use serde::{Deserialize, Serialize};

/// Pixel format asked of the camera, by its GenICam name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum GigePixelFormat {
    #[default]
    Mono8,
    /// 16-bit grey; the 8 most significant bits are kept.
    Mono16,
    RGB8,
    BGR8,
    BayerRG8,
    BayerGR8,
    BayerGB8,
    BayerBG8,
}

impl GigePixelFormat {
    /// The GenICam `PixelFormat` entry.
    pub fn as_str(self) -> &'static str {
        match self {
            GigePixelFormat::Mono8 => "Mono8",
            GigePixelFormat::Mono16 => "Mono16",
            GigePixelFormat::RGB8 => "RGB8",
            GigePixelFormat::BGR8 => "BGR8",
            GigePixelFormat::BayerRG8 => "BayerRG8",
            GigePixelFormat::BayerGR8 => "BayerGR8",
            GigePixelFormat::BayerGB8 => "BayerGB8",
            GigePixelFormat::BayerBG8 => "BayerBG8",
        }
    }

    #[cfg(feature = "gige")]
    fn bytes_per_pixel(self) -> usize {
        match self {
            GigePixelFormat::Mono16 => 2,
            GigePixelFormat::RGB8 | GigePixelFormat::BGR8 => 3,
            _ => 1,
        }
    }
}

/// What makes the camera expose.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GigeTrigger {
    /// Stream continuously (`TriggerMode=Off`).
    #[default]
    FreeRun,
    /// One exposure per grab (`TriggerSource=Software`).
    Software,
    /// One exposure per pulse on the digital input `trigger_line`.
    Line,
}

/// `source = { kind = "gige", ... }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GigeConfig {
    /// Aravis camera id as `arv-tool-0.8` or `linesight cameras` print it
    /// (`<vendor>-<model>-<serial>`), or the camera's IP address; none: the first camera found.
    #[serde(default)]
    pub camera_id: Option<String>,
    #[serde(default)]
    pub pixel_format: GigePixelFormat,
    /// Exposure time; none: the camera's current setting.
    #[serde(default)]
    pub exposure_us: Option<f64>,
    /// Acquisition frame rate in free-run; none: the camera's current setting.
    #[serde(default)]
    pub frame_rate_fps: Option<f64>,
    #[serde(default)]
    pub trigger: GigeTrigger,
    /// Digital input for `trigger = "line"` (GenICam `TriggerSource` entry).
    #[serde(default = "default_trigger_line")]
    pub trigger_line: String,
    /// Longest wait for a frame in free-run and software trigger before the camera counts as
    /// failed (line triggers wait as long as the line is quiet).
    #[serde(default = "default_frame_timeout_ms")]
    pub frame_timeout_ms: u64,
}

fn default_trigger_line() -> String {
    "Line1".into()
}

fn default_frame_timeout_ms() -> u64 {
    2_000
}

impl GigeConfig {
    /// Problems with these settings; `field` names the source in messages.
    pub fn problems(&self, field: &str) -> Vec<String> {
        let mut p = Vec::new();
        if self
            .camera_id
            .as_deref()
            .is_some_and(|id| id.trim().is_empty())
        {
            p.push(format!(
                "{field}.camera_id = \"\": must name a camera (or be left out for the first one found)"
            ));
        }
        if let Some(e) = self.exposure_us
            && !(e.is_finite() && e > 0.0 && e <= 10_000_000.0)
        {
            p.push(format!(
                "{field}.exposure_us = {e}: must be more than 0 and at most 10000000 (10 s)"
            ));
        }
        if let Some(r) = self.frame_rate_fps
            && !(r.is_finite() && r > 0.0 && r <= 10_000.0)
        {
            p.push(format!(
                "{field}.frame_rate_fps = {r}: must be more than 0 and at most 10000"
            ));
        }
        if self.trigger_line.is_empty()
            || !self
                .trigger_line
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            p.push(format!(
                "{field}.trigger_line = {:?}: must be a GenICam TriggerSource entry such as \"Line1\"",
                self.trigger_line
            ));
        }
        if !(1..=600_000).contains(&self.frame_timeout_ms) {
            p.push(format!(
                "{field}.frame_timeout_ms = {}: must be between 1 and 600000",
                self.frame_timeout_ms
            ));
        }
        p
    }

    /// `gige Aravis-Fake-GV01 Mono8 software trigger`.
    pub fn describe(&self) -> String {
        format!(
            "gige {} {} {}",
            self.camera_id.as_deref().unwrap_or("(first camera)"),
            self.pixel_format.as_str(),
            match self.trigger {
                GigeTrigger::FreeRun => "free-run".to_string(),
                GigeTrigger::Software => "software trigger".to_string(),
                GigeTrigger::Line => format!("trigger on {}", self.trigger_line),
            }
        )
    }
}

#[cfg(feature = "gige")]
pub use device::{GigeCamera, GigeSource, frame_to_rgb, list_cameras};

#[cfg(feature = "gige")]
mod device {
    use std::sync::Mutex;
    use std::time::{Duration, Instant, SystemTime};

    use aravis::prelude::*;
    use aravis::{AcquisitionMode, Buffer, BufferStatus, Camera, PixelFormat, Stream};
    use image::RgbImage;
    use serde::Serialize;

    use super::{GigeConfig, GigePixelFormat, GigeTrigger};
    use crate::source::{Captured, FrameSource, SourceError};

    /// Aravis's device list is global state; one caller at a time.
    static DEVICE_LIST: Mutex<()> = Mutex::new(());

    /// Buffers in the stream pool: enough to ride out a slow grab without losing frames.
    const BUFFERS: usize = 4;

    /// Converts one frame of `width` × `height` pixels to RGB; `data` may hold line padding at
    /// the end, not fewer bytes than the format needs.
    pub fn frame_to_rgb(
        format: GigePixelFormat,
        width: u32,
        height: u32,
        data: &[u8],
    ) -> Result<RgbImage, String> {
        let (w, h) = (width as usize, height as usize);
        let expected = w * h * format.bytes_per_pixel();
        if w == 0 || h == 0 || data.len() < expected {
            return Err(format!(
                "{} frame of {width}x{height} needs {expected} bytes, got {}",
                format.as_str(),
                data.len()
            ));
        }
        let data = &data[..expected];
        let rgb: Vec<u8> = match format {
            GigePixelFormat::Mono8 => data.iter().flat_map(|&v| [v, v, v]).collect(),
            GigePixelFormat::Mono16 => data
                .chunks_exact(2)
                .flat_map(|v| {
                    let v = (u16::from_le_bytes([v[0], v[1]]) >> 8) as u8;
                    [v, v, v]
                })
                .collect(),
            GigePixelFormat::RGB8 => data.to_vec(),
            GigePixelFormat::BGR8 => data
                .chunks_exact(3)
                .flat_map(|p| [p[2], p[1], p[0]])
                .collect(),
            GigePixelFormat::BayerRG8
            | GigePixelFormat::BayerGR8
            | GigePixelFormat::BayerGB8
            | GigePixelFormat::BayerBG8 => {
                let cfa = match format {
                    GigePixelFormat::BayerRG8 => bayer::CFA::RGGB,
                    GigePixelFormat::BayerGR8 => bayer::CFA::GRBG,
                    GigePixelFormat::BayerGB8 => bayer::CFA::GBRG,
                    _ => bayer::CFA::BGGR,
                };
                if w < 2 || h < 2 {
                    return Err(format!(
                        "{} frame of {width}x{height}: a Bayer frame is at least 2x2",
                        format.as_str()
                    ));
                }
                let mut out = vec![0u8; w * h * 3];
                let mut raster = bayer::RasterMut::new(w, h, bayer::RasterDepth::Depth8, &mut out);
                bayer::run_demosaic(
                    &mut &data[..],
                    bayer::BayerDepth::Depth8,
                    cfa,
                    bayer::Demosaic::Linear,
                    &mut raster,
                )
                .map_err(|e| format!("cannot demosaic {} frame: {e}", format.as_str()))?;
                out
            }
        };
        RgbImage::from_raw(width, height, rgb)
            .ok_or_else(|| format!("{} frame of {width}x{height}: wrong size", format.as_str()))
    }

    fn pixel_format_of(raw: PixelFormat) -> Option<GigePixelFormat> {
        Some(match raw {
            PixelFormat::MONO_8 => GigePixelFormat::Mono8,
            PixelFormat::MONO_16 => GigePixelFormat::Mono16,
            PixelFormat::RGB_8_PACKED => GigePixelFormat::RGB8,
            PixelFormat::BGR_8_PACKED => GigePixelFormat::BGR8,
            PixelFormat::BAYER_RG_8 => GigePixelFormat::BayerRG8,
            PixelFormat::BAYER_GR_8 => GigePixelFormat::BayerGR8,
            PixelFormat::BAYER_GB_8 => GigePixelFormat::BayerGB8,
            PixelFormat::BAYER_BG_8 => GigePixelFormat::BayerBG8,
            _ => return None,
        })
    }

    /// The Aravis objects of an open camera.
    struct Open {
        camera: Camera,
        stream: Stream,
        /// The id Aravis resolved (the configured one, or the first camera's).
        id: String,
    }

    // SAFETY: GObject reference counting is atomic, and `ArvCamera` / `ArvStream` have no
    // thread affinity (no main loop: the stream's signals are off and its receiving thread is
    // Aravis's own). `GigeSource` is used by one thread at a time (`FrameSource` takes
    // `&mut self`), which is the only requirement Aravis states for these objects; the bindings
    // simply do not mark glib wrappers `Send`.
    unsafe impl Send for Open {}

    impl Drop for Open {
        fn drop(&mut self) {
            // Stop the camera streaming to a socket nobody reads; failure here is moot.
            let _ = self.camera.stop_acquisition();
        }
    }

    /// A GigE Vision camera.
    pub struct GigeSource {
        config: GigeConfig,
        open: Option<Open>,
    }

    impl GigeSource {
        /// Connects to the camera, applies the configuration and starts acquisition.
        pub fn open(config: GigeConfig) -> Result<GigeSource, SourceError> {
            let mut source = GigeSource { config, open: None };
            source.start()?;
            Ok(source)
        }

        fn name(&self) -> String {
            format!(
                "gige {}",
                self.open
                    .as_ref()
                    .map(|o| o.id.as_str())
                    .or(self.config.camera_id.as_deref())
                    .unwrap_or("(first camera)")
            )
        }

        fn error(&self, message: impl Into<String>) -> SourceError {
            SourceError::Device {
                source_name: self.name(),
                message: message.into(),
            }
        }

        fn bad_frame(&self, message: impl Into<String>) -> SourceError {
            SourceError::BadFrame {
                source_name: self.name(),
                message: message.into(),
            }
        }

        fn start(&mut self) -> Result<(), SourceError> {
            self.open = None;
            let c = &self.config;
            let camera = {
                let _list = DEVICE_LIST.lock().unwrap_or_else(|e| e.into_inner());
                Camera::new(c.camera_id.as_deref())
            }
            .map_err(|e| self.error(format!("cannot connect: {e}")))?;
            let setting = |what: &str, r: Result<(), aravis::glib::Error>| {
                r.map_err(|e| self.error(format!("cannot set {what}: {e}")))
            };
            setting(
                &format!("PixelFormat to {}", c.pixel_format.as_str()),
                camera.set_pixel_format_from_string(c.pixel_format.as_str()),
            )?;
            if let Some(us) = c.exposure_us {
                setting(
                    &format!("exposure to {us} µs"),
                    camera.set_exposure_time(us),
                )?;
            }
            match c.trigger {
                GigeTrigger::FreeRun => {
                    setting("TriggerMode to Off", camera.clear_triggers())?;
                    if let Some(fps) = c.frame_rate_fps {
                        setting(
                            &format!("frame rate to {fps} fps"),
                            camera.set_frame_rate(fps),
                        )?;
                    }
                }
                GigeTrigger::Software => {
                    camera
                        .is_software_trigger_supported()
                        .map_err(|e| self.error(format!("no software trigger: {e}")))?;
                    setting("TriggerSource to Software", camera.set_trigger("Software"))?;
                }
                GigeTrigger::Line => setting(
                    &format!("TriggerSource to {}", c.trigger_line),
                    camera.set_trigger(&c.trigger_line),
                )?,
            }
            setting(
                "AcquisitionMode to Continuous",
                camera.set_acquisition_mode(AcquisitionMode::Continuous),
            )?;
            let payload = camera
                .payload()
                .map_err(|e| self.error(format!("cannot read the payload size: {e}")))?;
            let stream = camera
                .create_stream()
                .map_err(|e| self.error(format!("cannot open a stream: {e}")))?;
            for _ in 0..BUFFERS {
                stream.push_buffer(Buffer::new_allocate(payload as usize));
            }
            // The configured id names the camera in results; without one, Aravis's id of the
            // camera it picked (`<vendor>-<model>-<serial>`, as `linesight cameras` prints).
            let id = match &c.camera_id {
                Some(id) => id.clone(),
                None => [
                    camera.vendor_name(),
                    camera.model_name(),
                    camera.device_serial_number(),
                ]
                .into_iter()
                .map(|part| part.map(|s| s.to_string()).unwrap_or_default())
                .collect::<Vec<_>>()
                .join("-"),
            };
            setting("acquisition on", camera.start_acquisition())?;
            self.open = Some(Open { camera, stream, id });
            Ok(())
        }

        /// One uncached read of the bootstrap register at address 0 (the protocol version,
        /// present on every GigE Vision and USB3 Vision device): it fails once the camera is
        /// gone (within Aravis's control timeout and retries).
        fn answers(open: &Open) -> Result<(), String> {
            match open.camera.device() {
                Some(device) => match device.read_register(0) {
                    Ok((true, _)) => Ok(()),
                    Ok((false, _)) => Err("no answer".to_owned()),
                    Err(e) => Err(e.to_string()),
                },
                None => Ok(()),
            }
        }

        /// Gives back every frame already waiting, so the next one is fresh.
        fn recycle_waiting(open: &Open) {
            while let Some(b) = open.stream.try_pop_buffer() {
                open.stream.push_buffer(b);
            }
        }

        /// The next complete frame within `timeout` (none: no limit).
        fn wait_frame(&self, timeout: Option<Duration>) -> Result<Captured, SourceError> {
            let Some(open) = self.open.as_ref() else {
                return Err(self.error("not connected"));
            };
            let deadline = timeout.map(|t| Instant::now() + t);
            loop {
                let slice = match deadline {
                    Some(d) => d.saturating_duration_since(Instant::now()),
                    // Wake up now and then to check that the camera still answers: a quiet
                    // line and a camera that vanished look the same from the stream.
                    None => Duration::from_secs(1),
                };
                let popped = open.stream.timeout_pop_buffer(slice.as_micros() as u64);
                let Some(buffer) = popped else {
                    match deadline {
                        Some(d) if Instant::now() >= d => {
                            return Err(self.error(format!(
                                "no frame within frame_timeout_ms = {}",
                                self.config.frame_timeout_ms
                            )));
                        }
                        Some(_) => continue,
                        None => {
                            // A quiet line and a camera that vanished look the same from the
                            // stream: the camera is asked, so the pipeline reports and reopens
                            // one that is gone.
                            if let Err(e) = Self::answers(open) {
                                return Err(self.error(format!(
                                    "stopped answering while waiting for a trigger on {}: {e}",
                                    self.config.trigger_line
                                )));
                            }
                            continue;
                        }
                    }
                };
                let converted = self.convert(open, &buffer);
                open.stream.push_buffer(buffer);
                match converted {
                    Ok(Some(c)) => return Ok(c),
                    Ok(None) => continue,
                    Err(e) => return Err(e),
                }
            }
        }

        /// The buffer as a frame; `None` for an incomplete one in free-run (skipped, in the
        /// log), a bad frame with a trigger (that exposure was a part).
        fn convert(&self, open: &Open, buffer: &Buffer) -> Result<Option<Captured>, SourceError> {
            let status = buffer.status();
            if status != BufferStatus::Success {
                if self.config.trigger == GigeTrigger::FreeRun {
                    tracing::warn!(camera = %open.id, ?status, frame_id = buffer.frame_id(), "Incomplete GigE frame skipped.");
                    return Ok(None);
                }
                return Err(self.bad_frame(format!(
                    "frame {} arrived incomplete ({status:?}): packets lost on the network",
                    buffer.frame_id()
                )));
            }
            let raw = buffer.image_pixel_format();
            let format = pixel_format_of(raw).ok_or_else(|| {
                self.error(format!(
                    "the camera sends pixel format 0x{:08x}, which linesight cannot convert",
                    raw.raw()
                ))
            })?;
            let (width, height) = (buffer.image_width(), buffer.image_height());
            let image = frame_to_rgb(
                format,
                width.max(0) as u32,
                height.max(0) as u32,
                &buffer.image_data(),
            )
            .map_err(|e| self.bad_frame(e))?;
            // The host's reception time; the camera's own clock goes into the origin.
            let received_ns = buffer.system_timestamp();
            let captured_at = if received_ns > 0 {
                SystemTime::UNIX_EPOCH + Duration::from_nanos(received_ns)
            } else {
                SystemTime::now()
            };
            Ok(Some(Captured {
                image,
                captured_at,
                origin: format!(
                    "gige:{}#{}@{}",
                    open.id,
                    buffer.frame_id(),
                    buffer.timestamp()
                ),
            }))
        }
    }

    impl FrameSource for GigeSource {
        fn describe(&self) -> String {
            self.config.describe()
        }

        fn next_frame(&mut self) -> Result<Option<Captured>, SourceError> {
            let timeout = Duration::from_millis(self.config.frame_timeout_ms);
            let Some(open) = self.open.as_ref() else {
                return Err(self.error("not connected"));
            };
            match self.config.trigger {
                GigeTrigger::FreeRun => {
                    // Newest frame: drop what queued up while the pipeline was busy.
                    Self::recycle_waiting(open);
                    self.wait_frame(Some(timeout)).map(Some)
                }
                GigeTrigger::Software => {
                    Self::recycle_waiting(open);
                    open.camera
                        .software_trigger()
                        .map_err(|e| self.error(format!("TriggerSoftware failed: {e}")))?;
                    self.wait_frame(Some(timeout)).map(Some)
                }
                // Frames queued while busy are real parts: keep them, oldest first.
                GigeTrigger::Line => self.wait_frame(None).map(Some),
            }
        }

        fn reopen(&mut self) -> Result<(), SourceError> {
            self.start()
        }

        /// The camera answers a register read; one not connected is connected.
        fn probe(&mut self) -> Result<(), SourceError> {
            let Some(open) = self.open.as_ref() else {
                return self.start();
            };
            Self::answers(open).map_err(|e| {
                let e = self.error(format!("stopped answering: {e}"));
                // Its stream is of no use any more; the reopen connects afresh.
                self.open = None;
                e
            })
        }
    }

    /// What `linesight cameras` reports about one GigE Vision (or USB3 Vision) camera.
    #[derive(Debug, Clone, Serialize)]
    pub struct GigeCamera {
        pub camera_id: String,
        pub vendor: String,
        pub model: String,
        pub protocol: String,
        pub address: String,
    }

    /// The cameras Aravis finds on the networks of this machine.
    pub fn list_cameras() -> Vec<GigeCamera> {
        let _list = DEVICE_LIST.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the lock above serialises every use of Aravis's global device list here.
        let devices = unsafe { aravis::get_device_list() };
        devices
            .into_iter()
            .map(|d| GigeCamera {
                camera_id: d.id.to_string_lossy().into_owned(),
                vendor: d.vendor.to_string_lossy().into_owned(),
                model: d.model.to_string_lossy().into_owned(),
                protocol: d.protocol.to_string_lossy().into_owned(),
                address: d.address.to_string_lossy().into_owned(),
            })
            .collect()
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn mono_rgb_bgr_frames_convert() {
            let img = frame_to_rgb(GigePixelFormat::Mono8, 2, 1, &[7, 200]).unwrap();
            assert_eq!(img.get_pixel(1, 0).0, [200, 200, 200]);
            let mono16 = [0x00, 0x12, 0xff, 0xff];
            let img = frame_to_rgb(GigePixelFormat::Mono16, 2, 1, &mono16).unwrap();
            assert_eq!(img.get_pixel(0, 0).0, [0x12; 3]);
            assert_eq!(img.get_pixel(1, 0).0, [0xff; 3]);
            let px = [1, 2, 3, 4, 5, 6];
            let img = frame_to_rgb(GigePixelFormat::RGB8, 2, 1, &px).unwrap();
            assert_eq!(img.get_pixel(1, 0).0, [4, 5, 6]);
            let img = frame_to_rgb(GigePixelFormat::BGR8, 2, 1, &px).unwrap();
            assert_eq!(img.get_pixel(1, 0).0, [6, 5, 4]);
        }

        #[test]
        fn bayer_frames_demosaic_to_the_colour_they_encode() {
            // A uniform orange scene (R 200, G 100, B 50) through each filter layout.
            for (format, layout) in [
                (GigePixelFormat::BayerRG8, ["R", "G", "G", "B"]),
                (GigePixelFormat::BayerGR8, ["G", "R", "B", "G"]),
                (GigePixelFormat::BayerGB8, ["G", "B", "R", "G"]),
                (GigePixelFormat::BayerBG8, ["B", "G", "G", "R"]),
            ] {
                let value = |c: &str| match c {
                    "R" => 200u8,
                    "G" => 100,
                    _ => 50,
                };
                let (w, h) = (8usize, 6usize);
                let data: Vec<u8> = (0..h)
                    .flat_map(|y| (0..w).map(move |x| (x, y)))
                    .map(|(x, y)| value(layout[(y % 2) * 2 + x % 2]))
                    .collect();
                let img = frame_to_rgb(format, w as u32, h as u32, &data).unwrap();
                for p in img.pixels() {
                    assert_eq!(p.0, [200, 100, 50], "{format:?}");
                }
            }
        }

        #[test]
        fn short_frames_are_errors_not_panics() {
            let e = frame_to_rgb(GigePixelFormat::RGB8, 4, 4, &[0; 47]).unwrap_err();
            assert_eq!(e, "RGB8 frame of 4x4 needs 48 bytes, got 47");
            let e = frame_to_rgb(GigePixelFormat::BayerRG8, 1, 4, &[0; 4]).unwrap_err();
            assert!(e.contains("at least 2x2"), "{e}");
            assert!(frame_to_rgb(GigePixelFormat::Mono8, 0, 4, &[]).is_err());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_problems_name_each_field() {
        let c: GigeConfig = toml::from_str("camera_id = \"Aravis-Fake-GV01\"").unwrap();
        assert_eq!(c.pixel_format, GigePixelFormat::Mono8);
        assert_eq!(c.trigger, GigeTrigger::FreeRun);
        assert_eq!(c.trigger_line, "Line1");
        assert_eq!(c.frame_timeout_ms, 2_000);
        assert!(c.problems("s").is_empty());
        assert_eq!(c.describe(), "gige Aravis-Fake-GV01 Mono8 free-run");
        let c: GigeConfig = toml::from_str(
            "camera_id = \" \"\npixel_format = \"BayerRG8\"\nexposure_us = -1.0\nframe_rate_fps = 0.0\ntrigger = \"line\"\ntrigger_line = \"Line 1\"\nframe_timeout_ms = 0",
        )
        .unwrap();
        let p = c.problems("cameras[0].source");
        assert_eq!(p.len(), 5, "{p:#?}");
        assert!(p[0].starts_with("cameras[0].source.camera_id = \"\": must name"));
        assert!(p[1].starts_with("cameras[0].source.exposure_us = -1: must be more than 0"));
        assert!(p[2].starts_with("cameras[0].source.frame_rate_fps = 0: must be more than 0"));
        assert!(p[3].starts_with("cameras[0].source.trigger_line = \"Line 1\": must be"));
        assert!(p[4].starts_with("cameras[0].source.frame_timeout_ms = 0: must be between 1"));
        let e = toml::from_str::<GigeConfig>("pixel_format = \"YUV422\"").unwrap_err();
        assert!(e.to_string().contains("Mono8"), "{e}");
        let e = toml::from_str::<GigeConfig>("trigger = \"hardware\"").unwrap_err();
        assert!(e.to_string().contains("software"), "{e}");
    }
}
