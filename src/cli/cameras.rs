//! `linesight cameras`: the cameras this machine sees, and the formats each offers.
//!
//! USB / V4L2 devices (feature `usb`) with their formats, and GigE Vision cameras found by
//! Aravis (feature `gige`). No camera is not an error: the command says so and exits 0, so that
//! it can be run on any machine to check what a configuration may name.

use std::fmt::Write as _;

use serde::Serialize;

/// Options of `linesight cameras`.
#[derive(Debug, clap::Args)]
pub struct CamerasArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
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
    let report = CamerasReport::collect()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_text());
    }
    Ok(0)
}
