//! Models: packages on disk, their I/O contract, and ONNX Runtime sessions.
//!
//! - [`runtime`] finds and loads the ONNX Runtime library (never panics when it is missing).
//! - [`package`] opens a model directory (`model.onnx`, external weights, `model.toml`) and
//!   computes its SHA-256 identity.
//! - [`graph`] reads opsets and external-data locations from the ONNX file.
//! - [`manifest`] parses `model.toml`.
//! - [`contract`] detects which tensors carry the image, score and anomaly map.
//! - [`session`] runs a model: [`Detector`].
//! - [`registry`] the validated model each slot serves, activations and hot swaps.
//! - [`report`] what linesight sees in a package, for people.

pub mod contract;
pub mod graph;
pub mod manifest;
pub mod package;
pub mod registry;
pub mod report;
pub mod runtime;
pub mod session;

pub use contract::{BatchSize, ContractKind, ModelContract};
pub use manifest::Manifest;
pub use package::ModelPackage;
pub use runtime::OrtRuntime;
pub use session::{
    Detector, ExecutionProvider, ModelError, RawOutput, SessionOptions, Thresholds, open_session,
};
