//! # linesight
//!
//! Edge service for visual quality inspection on production lines: frames from line cameras go
//! through an ONNX anomaly-detection model (anomalib exports) and come out as a score, a verdict,
//! defect regions and a heat-map overlay.
//!
//! Frames flow one way: **source → preprocess → inference → postprocess → decision → actions**.
//!
//! ## Layout
//! - [`config`] — layered settings: embedded defaults → TOML file → `LINESIGHT__SECTION__KEY`.
//! - [`telemetry`] — tracing setup (text or JSON logs).
//! - [`source`] — `FrameSource`: folder replay, synthetic washers, USB / V4L2 (nokhwa) and GigE
//!   Vision (Aravis) cameras.
//! - [`preprocess`] — decode, ROI crop, resize (Pillow-exact), tensor layout. Pure, no I/O.
//! - [`model`] — model packages (manifest + ONNX graph), contract detection, ONNX Runtime sessions,
//!   the registry of models in service (validated activation, hot swap).
//! - [`postprocess`] — score → verdict, defect regions, heat-map overlay. Pure, no I/O.
//! - [`memory`] — process-wide allocator settings for per-frame buffers, applied at start-up.
//! - [`inspect`] — one image in, one [`inspect::Inspection`] out: the stages above glued together.
//! - [`pipeline`] — the only wiring of the live service: camera tasks, bounded queues, batching
//!   workers, triggers, metrics, shutdown.
//! - [`api`] — HTTP API under `/api/v1`: uploads, inspections, images, secondary-inspection tasks.
//! - [`actions`] — where results go: JSON-lines results folder, stdout, memory.
//! - [`quality`] — quality domain: NCR and secondary-inspection workflows, e-signatures, audit
//!   chain. Pure, and independent of the pipeline.
//! - [`store`] — sqlx repositories and migrations for the quality records (SQLite or PostgreSQL).
//! - [`outbox`] — durable delivery from the store: events over MQTT, training samples to S3.
//! - [`evaluate`] — MVTec-layout datasets, image/pixel metrics, report and plots.
//! - [`cli`] — the `linesight` commands (`inspect`, `evaluate`, `bench`, `models`, `run`,
//!   `audit`, `users`, `images`, `config`, `cameras`).

pub mod actions;
pub mod api;
pub mod cli;
pub mod config;
pub mod evaluate;
pub mod inspect;
pub mod memory;
pub mod model;
pub mod outbox;
pub mod pipeline;
pub mod postprocess;
pub mod preprocess;
pub mod quality;
pub mod source;
pub mod store;
pub mod telemetry;

/// The message a caught panic carried (`panic!` with a literal or a formatted string), for the
/// error it becomes; `None` for any other payload.
pub(crate) fn panic_text(payload: &(dyn std::any::Any + Send)) -> Option<&str> {
    payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
}
