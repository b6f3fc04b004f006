//! `linesight cameras`: the cameras this machine sees, and the formats each offers.
//!
//! USB / V4L2 devices (feature `usb`) with their formats, and GigE Vision cameras found by
//! Aravis (feature `gige`). No camera is not an error: the command says so and exits 0, so that
//! it can be run on any machine to check what a configuration may name. RTSP cameras cannot be
//! discovered; `--probe URL` connects to one (feature `rtsp`) and reports its frame size and rate.

use std::fmt::Write as _;

use serde::Serialize;

/// Options of `linesight cameras`.
#[derive(Debug, clap::Args)]
pub struct CamerasArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Connect to this RTSP camera (`rtsp://[user:password@]host[:port]/path`), receive its
    /// stream for about two seconds and report the frame size and rate, and how long the first
    /// frame took; exit code 2 with the error when it cannot be read.
    #[arg(long, value_name = "URL")]
    pub probe: Option<String>,
}

/// What `linesight cameras --probe` reports about an RTSP camera.
#[derive(Debug, Serialize)]
pub struct ProbeReport {
    /// The URL, its password redacted.
    pub url: String,
    pub width: u32,
    pub height: u32,
    /// Frames the camera sent per second, over a second starting half a second after the first
    /// frame.
    pub frames_per_second: f64,
    /// From the start of the connection to the first decoded frame.
    pub first_frame_ms: f64,
}

/// Connects to the RTSP camera at `url` with the default settings of an `rtsp` source.
#[cfg(feature = "rtsp")]
fn probe(url: &str) -> anyhow::Result<ProbeReport> {
    use std::time::{Duration, Instant};

    use crate::source::FrameSource as _;
    use crate::source::rtsp::{RtspConfig, RtspSource};

    let config = RtspConfig::new(url);
    let problems = config.problems("--probe");
    if !problems.is_empty() {
        anyhow::bail!("{}", problems.join("\n"));
    }
    let started = Instant::now();
    let mut source = RtspSource::open(config.clone(), crate::preprocess::DecodeLimits::default())?;
    let grab = |source: &mut RtspSource| -> anyhow::Result<crate::source::Captured> {
        source
            .next_frame()?
            .ok_or_else(|| anyhow::anyhow!("the stream ended"))
    };
    let first = grab(&mut source)?;
    let first_frame_ms = started.elapsed().as_secs_f64() * 1e3;
    let (width, height) = first.image.dimensions();
    // The frames queued while connecting arrive in a burst: the rate is counted over the
    // second after it.
    std::thread::sleep(Duration::from_millis(500));
    let (from, counted) = (source.decoded(), Instant::now());
    std::thread::sleep(Duration::from_secs(1));
    let (to, seconds) = (source.decoded(), counted.elapsed().as_secs_f64());
    // A stream that failed meanwhile is reported as such, not as a slow one.
    grab(&mut source)?;
    Ok(ProbeReport {
        url: config.redacted_url(),
        width,
        height,
        frames_per_second: (to - from) as f64 / seconds,
        first_frame_ms,
    })
}

#[cfg(not(feature = "rtsp"))]
fn probe(_url: &str) -> anyhow::Result<ProbeReport> {
    anyhow::bail!(
        "--probe needs RTSP support: this linesight was built without the cargo feature `rtsp`"
    )
}

/// Everything `linesight cameras` reports.
#[derive(Debug, Serialize)]
pub struct CamerasReport {
    /// USB / V4L2 devices; none when built without the `usb` feature.
    #[cfg(feature = "usb")]
    pub usb: Vec<crate::source::usb::UsbCamera>,
    /// GigE Vision cameras; none when built without the `gige` feature.
    #[cfg(feature = "gige")]
    pub gige: Vec<crate::source::gige::GigeCamera>,
    /// Camera kinds this build cannot list.
    pub not_built: Vec<&'static str>,
}

impl CamerasReport {
    /// Looks for cameras.
    pub fn collect() -> anyhow::Result<CamerasReport> {
        let not_built = [
            ("usb", cfg!(feature = "usb")),
            ("gige", cfg!(feature = "gige")),
        ]
        .into_iter()
        .filter(|(_, built)| !built)
        .map(|(kind, _)| kind)
        .collect();
        Ok(CamerasReport {
            #[cfg(feature = "usb")]
            usb: crate::source::usb::list_cameras()?,
            #[cfg(feature = "gige")]
            gige: crate::source::gige::list_cameras(),
            not_built,
        })
    }

    fn count(&self) -> usize {
        #[allow(unused_mut)]
        let mut n = 0;
        #[cfg(feature = "usb")]
        {
            n += self.usb.len();
        }
        #[cfg(feature = "gige")]
        {
            n += self.gige.len();
        }
        n
    }

    /// The report for people.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        #[cfg(feature = "usb")]
        for c in &self.usb {
            let _ = writeln!(
                out,
                "usb  {} (device = {})  {}  {}",
                c.path, c.index, c.name, c.description
            );
            match &c.info {
                crate::source::usb::UsbCameraInfo::Formats(formats) if formats.is_empty() => {
                    let _ = writeln!(out, "       no capture formats (a metadata node?)");
                }
                crate::source::usb::UsbCameraInfo::Formats(formats) => {
                    for f in formats {
                        let _ = writeln!(out, "       {f}");
                    }
                }
                crate::source::usb::UsbCameraInfo::Error(e) => {
                    let _ = writeln!(out, "       formats unknown: {e}");
                }
            }
        }
        #[cfg(feature = "gige")]
        for c in &self.gige {
            let _ = writeln!(
                out,
                "gige {}  {} {} at {} ({})",
                c.camera_id, c.vendor, c.model, c.address, c.protocol
            );
        }
        if self.count() == 0 {
            out.push_str("no cameras found\n");
        }
        if !self.not_built.is_empty() {
            let _ = writeln!(
                out,
                "not searched (built without the cargo feature): {}",
                self.not_built.join(", ")
            );
        }
        out
    }
}

/// Runs `linesight cameras`; exit code 0 with or without cameras.
pub fn run(args: CamerasArgs) -> anyhow::Result<i32> {
    if let Some(url) = &args.probe {
        let report = probe(url)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            println!(
                "rtsp {}: {}×{}, {:.1} frames/s, first frame after {:.0} ms",
                report.url,
                report.width,
                report.height,
                report.frames_per_second,
                report.first_frame_ms
            );
        }
        return Ok(0);
    }
    let report = CamerasReport::collect()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_text());
    }
    Ok(0)
}
