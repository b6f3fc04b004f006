//! RTSP network cameras through GStreamer (`kind = "rtsp"`, cargo feature `rtsp`).
//!
//! The stream is received by `rtspsrc` (TCP-interleaved by default, or UDP), decoded by
//! `decodebin` with whatever decoder the machine has for its codec (H.264 and H.265 through
//! `gstreamer1.0-libav`, or a hardware decoder), converted to RGB and handed to an `appsink`.
//! Only the stream's first video track is set up. Each decoded frame replaces the one before it
//! in a one-frame slot, stamped with its arrival time; a grab takes the newest frame that arrived
//! since the previous grab and within `max_frame_age_ms`, waiting for one when there is none. A
//! slow pipeline therefore never inspects stale frames, a stream that stalls never hands its last
//! frame to the next trigger, and the same frame is never inspected twice.
//!
//! An RTSP camera streams at its own rate: there is no exposure on demand. A pipeline trigger is
//! served with the newest frame, which the camera exposed before the trigger by its encoding,
//! network and `latency_ms` delay (typically 50–300 ms). Where a part must be imaged at the
//! moment of its trigger, use a GigE Vision camera with a software or line trigger.
//!
//! Invariants: a stream that cannot be opened, ends, errors or sends no frame within
//! `frame_timeout_ms` is a [`SourceError::Device`] naming the camera (its URL without the
//! password), so the pipeline reopens it with back-off; a frame over the decode limits is refused
//! with its size, never inspected.

use serde::{Deserialize, Serialize};

/// How the RTP packets travel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RtspTransport {
    /// Interleaved in the RTSP connection: no packet loss, passes firewalls and NAT.
    #[default]
    Tcp,
    /// RTP over UDP: lower latency on a clean network, frames with lost packets are decoded
    /// with artefacts.
    Udp,
}

impl RtspTransport {
    fn as_str(self) -> &'static str {
        match self {
            RtspTransport::Tcp => "tcp",
            RtspTransport::Udp => "udp",
        }
    }
}

/// `source = { kind = "rtsp", ... }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RtspConfig {
    /// `rtsp://[user:password@]host[:port]/path` (or `rtsps://`). The password is redacted
    /// wherever linesight shows the URL.
    pub url: String,
    #[serde(default)]
    pub transport: RtspTransport,
    /// The jitter buffer's depth (`rtspsrc` `latency`): how long packets are held to reorder
    /// them. Lower means fresher frames on a clean network.
    #[serde(default = "default_latency_ms")]
    pub latency_ms: u32,
    /// Longest wait for a frame before the camera counts as failed and is reopened; the first
    /// frame after an open may take this long too (connection, first key frame).
    #[serde(default = "default_frame_timeout_ms")]
    pub frame_timeout_ms: u64,
    /// The oldest frame a grab takes: an older one (the stream stalled, or the grab came long
    /// after the last frame) is passed over and the grab waits for a new one. About two frame
    /// intervals of the camera's stream.
    #[serde(default = "default_max_frame_age_ms")]
    pub max_frame_age_ms: u64,
}

fn default_latency_ms() -> u32 {
    200
}

fn default_frame_timeout_ms() -> u64 {
    5_000
}

fn default_max_frame_age_ms() -> u64 {
    1_000
}

/// The largest `latency_ms`.
pub const MAX_LATENCY_MS: u32 = 10_000;

impl RtspConfig {
    /// `url` with every other setting at its default.
    pub fn new(url: &str) -> RtspConfig {
        RtspConfig {
            url: url.to_owned(),
            transport: RtspTransport::default(),
            latency_ms: default_latency_ms(),
            frame_timeout_ms: default_frame_timeout_ms(),
            max_frame_age_ms: default_max_frame_age_ms(),
        }
    }

    /// Problems with these settings; `field` names the source in messages.
    pub fn problems(&self, field: &str) -> Vec<String> {
        let mut p = Vec::new();
        let host = self
            .url
            .strip_prefix("rtsp://")
            .or_else(|| self.url.strip_prefix("rtsps://"))
            .map(|rest| {
                let authority = rest.split('/').next().unwrap_or_default();
                authority.rsplit('@').next().unwrap_or_default().to_owned()
            });
        match host {
            None => p.push(format!(
                "{field}.url = {:?}: must start with rtsp:// or rtsps://",
                self.redacted_url()
            )),
            Some(h) if h.is_empty() || h.chars().any(char::is_whitespace) => p.push(format!(
                "{field}.url = {:?}: must name the camera's host (rtsp://host[:port]/path)",
                self.redacted_url()
            )),
            Some(_) => {}
        }
        if self.latency_ms > MAX_LATENCY_MS {
            p.push(format!(
                "{field}.latency_ms = {}: must be at most {MAX_LATENCY_MS}",
                self.latency_ms
            ));
        }
        if !(1..=600_000).contains(&self.frame_timeout_ms) {
            p.push(format!(
                "{field}.frame_timeout_ms = {}: must be between 1 and 600000",
                self.frame_timeout_ms
            ));
        }
        if !(1..=600_000).contains(&self.max_frame_age_ms) {
            p.push(format!(
                "{field}.max_frame_age_ms = {}: must be between 1 and 600000",
                self.max_frame_age_ms
            ));
        }
        p
    }

    /// The URL with its password replaced by `***`.
    pub fn redacted_url(&self) -> String {
        crate::store::redact(&self.url)
    }

    /// `rtsp rtsp://admin:***@10.0.0.7/stream1 tcp`.
    pub fn describe(&self) -> String {
        format!("rtsp {} {}", self.redacted_url(), self.transport.as_str())
    }

    /// The same settings with the URL's password redacted (`config show`).
    pub fn redacted(&self) -> RtspConfig {
        RtspConfig {
            url: self.redacted_url(),
            ..self.clone()
        }
    }
}

#[cfg(feature = "rtsp")]
pub use device::RtspSource;

#[cfg(feature = "rtsp")]
mod device {
    use std::sync::{Arc, Condvar, Mutex};
    use std::time::{Duration, Instant, SystemTime};

    use gstreamer as gst;
    use gstreamer::prelude::*;
    use gstreamer_app as gst_app;
    use gstreamer_video as gst_video;
    use gstreamer_video::prelude::*;
    use image::RgbImage;

    use super::RtspConfig;
    use crate::preprocess::DecodeLimits;
    use crate::source::{Captured, FrameSource, SourceError};

    /// How often a waiting grab looks at the stream's error messages.
    const POLL: Duration = Duration::from_millis(100);

    /// The newest decoded frame, handed from GStreamer's streaming thread to the grab.
    #[derive(Default)]
    struct Slot {
        /// The frame, its arrival (wall clock and monotonic) and its number.
        newest: Option<(gst::Sample, SystemTime, Instant, u64)>,
        /// Frames decoded since the stream was opened.
        decoded: u64,
        /// When the newest frame arrived, grabbed or not.
        last_arrival: Option<Instant>,
    }

    type Shared = Arc<(Mutex<Slot>, Condvar)>;

    struct Open {
        pipeline: gst::Pipeline,
        bus: gst::Bus,
        slot: Shared,
        started: Instant,
    }

    impl Drop for Open {
        fn drop(&mut self) {
            // Stops the streaming threads and closes the connection.
            let _ = self.pipeline.set_state(gst::State::Null);
        }
    }

    /// An RTSP camera's stream.
    pub struct RtspSource {
        config: RtspConfig,
        limits: DecodeLimits,
        open: Option<Open>,
        /// Frames decoded but never grabbed (the pipeline was slower than the stream, or they
        /// were older than `max_frame_age_ms` when a grab came).
        skipped: u64,
        last_grabbed: u64,
    }

    impl RtspSource {
        /// Starts receiving the stream. Connection errors show at the first grab or probe,
        /// within `frame_timeout_ms` (the connection is made by GStreamer's own threads).
        pub fn open(config: RtspConfig, limits: DecodeLimits) -> Result<RtspSource, SourceError> {
            let mut source = RtspSource {
                config,
                limits,
                open: None,
                skipped: 0,
                last_grabbed: 0,
            };
            source.start()?;
            Ok(source)
        }

        /// Frames the camera sent that no grab took, since the source was created.
        pub fn skipped(&self) -> u64 {
            self.skipped
        }

        /// Frames decoded since the stream was last opened.
        pub fn decoded(&self) -> u64 {
            self.open.as_ref().map_or(0, |open| {
                open.slot
                    .0
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .decoded
            })
        }

        fn error(&self, message: impl Into<String>) -> SourceError {
            SourceError::Device {
                source_name: format!("rtsp {}", self.config.redacted_url()),
                message: message.into(),
            }
        }

        fn element(&self, factory: &str, package: &str) -> Result<gst::Element, SourceError> {
            gst::ElementFactory::make(factory).build().map_err(|_| {
                self.error(format!(
                    "GStreamer element {factory} is missing: install {package}"
                ))
            })
        }

        fn start(&mut self) -> Result<(), SourceError> {
            self.open = None;
            self.last_grabbed = 0;
            gst::init().map_err(|e| self.error(format!("cannot initialise GStreamer: {e}")))?;
            let c = &self.config;
            let src = self.element("rtspsrc", "gstreamer1.0-plugins-good")?;
            src.set_property("location", &c.url);
            src.set_property("latency", c.latency_ms);
            // A camera that hangs with its connection open (no FIN, no RST) fails within the
            // frame timeout too, in every RTSP request, not after GStreamer's default 20 s.
            src.set_property("tcp-timeout", c.frame_timeout_ms.saturating_mul(1_000));
            src.set_property_from_str("protocols", c.transport.as_str());
            let decode = self.element("decodebin", "gstreamer1.0-plugins-base")?;
            let convert = self.element("videoconvert", "gstreamer1.0-plugins-base")?;
            let caps = gst_video::VideoCapsBuilder::new()
                .format(gst_video::VideoFormat::Rgb)
                .build();
            let sink = gst_app::AppSink::builder()
                .caps(&caps)
                .sync(false)
                .max_buffers(1)
                .drop(true)
                .build();
            let pipeline = gst::Pipeline::new();
            pipeline
                .add_many([&src, &decode, &convert, sink.upcast_ref()])
                .and_then(|()| gst::Element::link_many([&convert, sink.upcast_ref()]))
                .map_err(|e| self.error(format!("cannot build the GStreamer pipeline: {e}")))?;

            // The first video track of the camera's description only: other video tracks and
            // audio are not set up at all. The choice is kept, as rtspsrc asks again when it
            // retries its set-up.
            let chosen: Arc<Mutex<Option<u32>>> = Arc::default();
            src.connect("select-stream", false, move |values| {
                let num = values.get(1).and_then(|v| v.get::<u32>().ok())?;
                let caps = values.get(2).and_then(|v| v.get::<gst::Caps>().ok());
                let mut chosen = chosen.lock().unwrap_or_else(|e| e.into_inner());
                let take = match *chosen {
                    Some(track) => track == num,
                    None if is_media(caps.as_ref(), "video") => {
                        *chosen = Some(num);
                        true
                    }
                    None => false,
                };
                Some(take.to_value())
            });
            let decode_sink = decode.static_pad("sink").expect("decodebin has a sink pad");
            src.connect_pad_added(move |element, pad| {
                if !decode_sink.is_linked() && is_media(caps_of(pad).as_ref(), "video") {
                    link_or_fail(element, pad, &decode_sink);
                }
            });
            let convert_sink = convert
                .static_pad("sink")
                .expect("videoconvert has a sink pad");
            decode.connect_pad_added(move |element, pad| {
                let video = caps_of(pad)
                    .and_then(|c| c.structure(0).map(|s| s.name().starts_with("video/")))
                    .unwrap_or(false);
                if video && !convert_sink.is_linked() {
                    link_or_fail(element, pad, &convert_sink);
                }
            });

            let slot: Shared = Arc::default();
            let filled = slot.clone();
            sink.set_callbacks(
                gst_app::AppSinkCallbacks::builder()
                    .new_sample(move |sink| {
                        let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                        let (lock, ready) = &*filled;
                        let mut slot = lock.lock().unwrap_or_else(|e| e.into_inner());
                        slot.decoded += 1;
                        let now = Instant::now();
                        slot.last_arrival = Some(now);
                        slot.newest = Some((sample, SystemTime::now(), now, slot.decoded));
                        ready.notify_all();
                        Ok(gst::FlowSuccess::Ok)
                    })
                    .build(),
            );
            let bus = pipeline.bus().expect("a pipeline has a bus");
            let open = Open {
                pipeline,
                bus,
                slot,
                started: Instant::now(),
            };
            open.pipeline
                .set_state(gst::State::Playing)
                .map_err(|_| self.stream_error(&open.bus, "cannot start the stream"))?;
            self.open = Some(open);
            Ok(())
        }

        /// The error the stream posted, with a hint where one helps; `fallback` when none.
        fn stream_error(&self, bus: &gst::Bus, fallback: &str) -> SourceError {
            match bus.pop_filtered(&[gst::MessageType::Error]) {
                Some(message) => match message.view() {
                    gst::MessageView::Error(e) => self.error(describe_error(e)),
                    _ => self.error(fallback),
                },
                None => self.error(fallback),
            }
        }

        /// The error or end of stream the camera posted, if any.
        fn stream_ended(&self, open: &Open) -> Option<SourceError> {
            let message = open
                .bus
                .pop_filtered(&[gst::MessageType::Error, gst::MessageType::Eos])?;
            Some(match message.view() {
                gst::MessageView::Error(e) => self.error(describe_error(e)),
                _ => self.error("the camera ended the stream"),
            })
        }

        /// The newest frame that arrived since the previous grab and within `max_frame_age_ms`,
        /// waiting up to `frame_timeout_ms` for one.
        fn grab(&mut self) -> Result<Captured, SourceError> {
            let Some(open) = self.open.as_ref() else {
                return Err(self.error("not connected"));
            };
            let deadline = Instant::now() + Duration::from_millis(self.config.frame_timeout_ms);
            let max_age = Duration::from_millis(self.config.max_frame_age_ms);
            let (lock, ready) = &*open.slot;
            loop {
                if let Some(e) = self.stream_ended(open) {
                    return Err(e);
                }
                let mut slot = lock.lock().unwrap_or_else(|e| e.into_inner());
                if let Some((sample, arrived, at, index)) = slot.newest.take() {
                    drop(slot);
                    let fresh = at.elapsed() <= max_age;
                    self.skipped += index.saturating_sub(self.last_grabbed + u64::from(fresh));
                    self.last_grabbed = index;
                    if fresh {
                        return self.convert(&sample, arrived, index);
                    }
                    continue;
                }
                let now = Instant::now();
                if now >= deadline {
                    return Err(self.error(format!(
                        "no frame within frame_timeout_ms = {} ms",
                        self.config.frame_timeout_ms
                    )));
                }
                let wait = (deadline - now).min(POLL);
                drop(
                    ready
                        .wait_timeout(slot, wait)
                        .unwrap_or_else(|e| e.into_inner()),
                );
            }
        }

        /// The stream posted no error and a frame arrived within `frame_timeout_ms` (counted
        /// from the opening for the first frame, waited for up to then): a camera that stopped
        /// or hangs fails here while no grab asks it for frames.
        fn check(&self) -> Result<(), SourceError> {
            let Some(open) = self.open.as_ref() else {
                return Err(self.error("not connected"));
            };
            let timeout = Duration::from_millis(self.config.frame_timeout_ms);
            let (lock, ready) = &*open.slot;
            loop {
                if let Some(e) = self.stream_ended(open) {
                    return Err(e);
                }
                let slot = lock.lock().unwrap_or_else(|e| e.into_inner());
                let waited = match slot.last_arrival {
                    Some(at) if at.elapsed() <= timeout => return Ok(()),
                    Some(at) => {
                        return Err(self.error(format!(
                            "no frame for {} ms (frame_timeout_ms = {})",
                            at.elapsed().as_millis(),
                            self.config.frame_timeout_ms
                        )));
                    }
                    None if open.started.elapsed() > timeout => {
                        return Err(self.error(format!(
                            "no frame within frame_timeout_ms = {} ms",
                            self.config.frame_timeout_ms
                        )));
                    }
                    None => open.started.elapsed(),
                };
                // Opened moments ago: wait for its first frame (or its error).
                drop(
                    ready
                        .wait_timeout(slot, timeout.saturating_sub(waited).min(POLL))
                        .unwrap_or_else(|e| e.into_inner()),
                );
            }
        }

        fn convert(
            &self,
            sample: &gst::Sample,
            arrived: SystemTime,
            index: u64,
        ) -> Result<Captured, SourceError> {
            let (Some(buffer), Some(caps)) = (sample.buffer(), sample.caps()) else {
                return Err(self.error("a decoded frame without its buffer or format"));
            };
            let info = gst_video::VideoInfo::from_caps(caps)
                .map_err(|e| self.error(format!("unreadable frame format {caps}: {e}")))?;
            let (width, height) = (info.width(), info.height());
            let l = &self.limits;
            if width > l.max_width || height > l.max_height {
                return Err(self.error(format!(
                    "the stream's frames are {width}×{height}, over the decode limits \
                     (decode.max_width = {}, decode.max_height = {})",
                    l.max_width, l.max_height
                )));
            }
            let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, &info)
                .map_err(|e| self.error(format!("cannot map a decoded frame: {e}")))?;
            let stride = frame.plane_stride()[0] as usize;
            let data = frame
                .plane_data(0)
                .map_err(|e| self.error(format!("cannot read a decoded frame: {e}")))?;
            let row = width as usize * 3;
            let mut pixels = Vec::with_capacity(row * height as usize);
            for y in 0..height as usize {
                let line = data
                    .get(y * stride..y * stride + row)
                    .ok_or_else(|| self.error("a decoded frame shorter than its format"))?;
                pixels.extend_from_slice(line);
            }
            let image = RgbImage::from_raw(width, height, pixels)
                .ok_or_else(|| self.error("a decoded frame shorter than its format"))?;
            let pts = buffer
                .pts()
                .map_or_else(|| "-".to_string(), |t| t.nseconds().to_string());
            Ok(Captured {
                image,
                captured_at: arrived,
                origin: format!("rtsp:{}#{index}@{pts}", self.config.redacted_url()),
            })
        }
    }

    /// A new pad's caps: the fixed ones, else what it can produce.
    fn caps_of(pad: &gst::Pad) -> Option<gst::Caps> {
        pad.current_caps().or_else(|| Some(pad.query_caps(None)))
    }

    /// Links `pad` to `sink`; a failure is posted as the stream's error, so the next grab
    /// reports it instead of waiting for the frame timeout.
    fn link_or_fail(element: &gst::Element, pad: &gst::Pad, sink: &gst::Pad) {
        if let Err(e) = pad.link(sink) {
            gst::element_error!(
                element,
                gst::CoreError::Negotiation,
                (
                    "cannot link the stream's {} to {}: {e:?}",
                    pad.name(),
                    sink.name()
                )
            );
        }
    }

    /// Whether `caps` describe a stream of `media` (`application/x-rtp, media=video`).
    fn is_media(caps: Option<&gst::Caps>, media: &str) -> bool {
        caps.and_then(|c| c.structure(0))
            .and_then(|s| s.get::<&str>("media").ok())
            == Some(media)
    }

    /// An error message from the stream, with what to do where that is known.
    fn describe_error(e: &gst::message::Error) -> String {
        let error = e.error();
        let mut text = error.to_string();
        if let Some(debug) = e.debug() {
            // The last line says what failed ("Could not connect to server. (Connection
            // refused)"); the ones before it name GStreamer's source files.
            if let Some(last) = debug.lines().rev().find(|l| !l.trim().is_empty()) {
                text = format!("{text} ({})", last.trim());
            }
        }
        if error.matches(gst::ResourceError::NotAuthorized) {
            text.push_str("; check the user and password in the url");
        } else if error.matches(gst::CoreError::MissingPlugin)
            || error.matches(gst::StreamError::CodecNotFound)
        {
            text.push_str(
                "; no GStreamer decoder for this stream's codec: install gstreamer1.0-libav \
                 (H.264, H.265) or the plugins that decode it",
            );
        }
        text
    }

    impl FrameSource for RtspSource {
        fn describe(&self) -> String {
            self.config.describe()
        }

        fn next_frame(&mut self) -> Result<Option<Captured>, SourceError> {
            let grabbed = self.grab();
            if grabbed.is_err() {
                // A failed stream stops at once (decoding, its RTSP session) rather than during
                // the pipeline's back-off; `reopen` builds a new one.
                self.open = None;
            }
            grabbed.map(Some)
        }

        fn reopen(&mut self) -> Result<(), SourceError> {
            self.start()
        }

        fn probe(&mut self) -> Result<(), SourceError> {
            if self.open.is_none() {
                self.start()?;
            }
            let checked = self.check();
            if checked.is_err() {
                // As after a failed grab: the stream stops now; the reopen builds a new one.
                self.open = None;
            }
            checked
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> RtspConfig {
        RtspConfig {
            url: url.into(),
            transport: RtspTransport::Tcp,
            latency_ms: 200,
            frame_timeout_ms: 5_000,
            max_frame_age_ms: 1_000,
        }
    }

    #[test]
    fn defaults_parse_and_the_password_is_never_shown() {
        let c: RtspConfig =
            toml::from_str("url = \"rtsp://admin:s3cret@10.0.0.7:554/Streaming/101\"").unwrap();
        assert_eq!(c.transport, RtspTransport::Tcp);
        assert_eq!(c.latency_ms, 200);
        assert_eq!(c.frame_timeout_ms, 5_000);
        assert_eq!(c.max_frame_age_ms, 1_000);
        assert_eq!(
            c.describe(),
            "rtsp rtsp://admin:***@10.0.0.7:554/Streaming/101 tcp"
        );
        assert!(!format!("{:?}", c.redacted()).contains("s3cret"));
        assert!(c.problems("cameras[0].source").is_empty());
        let udp: RtspConfig =
            toml::from_str("url = \"rtsps://cam/x\"\ntransport = \"udp\"").unwrap();
        assert_eq!(udp.transport, RtspTransport::Udp);
        assert!(
            toml::from_str::<RtspConfig>("url = \"rtsp://cam/x\"\nport = 554")
                .unwrap_err()
                .to_string()
                .contains("port")
        );
    }

    #[test]
    fn problems_name_each_field_and_its_limit() {
        let bad = RtspConfig {
            latency_ms: 60_000,
            frame_timeout_ms: 0,
            max_frame_age_ms: 0,
            ..config("http://admin:s3cret@cam/x")
        };
        let p = bad.problems("cameras[1].source");
        assert_eq!(p.len(), 4, "{p:?}");
        assert!(p[0].starts_with(
            "cameras[1].source.url = \"http://admin:***@cam/x\": must start with rtsp://"
        ));
        assert!(p[1].contains("latency_ms = 60000: must be at most 10000"));
        assert!(p[2].contains("frame_timeout_ms = 0: must be between 1 and 600000"));
        assert!(p[3].contains("max_frame_age_ms = 0: must be between 1 and 600000"));
        let no_host = config("rtsp://user:pw@/stream").problems("s");
        assert_eq!(no_host.len(), 1);
        assert!(
            no_host[0].contains("must name the camera's host"),
            "{no_host:?}"
        );
        assert!(!no_host[0].contains("pw"));
    }
}
