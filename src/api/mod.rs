//! The HTTP API under `/api/v1`, plus `/healthz` and `/readyz`.
//!
//! Invariants:
//! - Every error leaves through [`ApiError`]: one exhaustive match picks the status, the body is
//!   RFC 9457 `application/problem+json`; details of 5xx errors are logged, never sent.
//! - Every `/api/v1` route checks the caller's role (HTTP Basic credentials checked against the
//!   user store, with its lockout) before it touches anything.
//! - Decoding and inference run on blocking threads, one pooled `Inspector` at a time each,
//!   under a time limit; the request body and the image dimensions are bounded.
//! - An upload is answered only after its image, overlay and inspection record are durable.

mod auth;
mod error;
mod inspections;
mod ncrs;
mod tasks;

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use crate::quality::QualityConfig;
use crate::store::Store;

pub use error::ApiError;
pub use inspections::{InspectorPool, UploadAnswer, UploadParams};
pub use tasks::{Decision, TaskQuery};

/// `[api]` settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Longest a decode plus inference may take before the request fails with 503.
    pub inference_timeout_ms: u64,
    /// Inspectors (one ONNX Runtime session each) serving uploads.
    pub inspectors: usize,
    /// Address the API listens on (`linesight serve`, and `linesight run` beside its cameras),
    /// such as "0.0.0.0:8080"; none: `run` serves no API and `serve` refuses to start.
    pub listen: Option<String>,
    /// Model package that inspects manual uploads; none: the first camera's model, else the
    /// bundled demo model.
    pub model: Option<PathBuf>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            max_body_bytes: 32 << 20,
            inference_timeout_ms: 30_000,
            inspectors: 2,
            listen: None,
            model: None,
        }
    }
}

impl ApiConfig {
    /// Problems with the values, each naming its key.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !(1024..=(1 << 30)).contains(&self.max_body_bytes) {
            p.push(format!(
                "api.max_body_bytes = {}: must be between 1024 and 1073741824",
                self.max_body_bytes
            ));
        }
        if !(100..=600_000).contains(&self.inference_timeout_ms) {
            p.push(format!(
                "api.inference_timeout_ms = {}: must be between 100 and 600000",
                self.inference_timeout_ms
            ));
        }
        if let Some(listen) = &self.listen
            && listen.parse::<std::net::SocketAddr>().is_err()
        {
            p.push(format!(
                "api.listen = {listen:?}: must be an address and port such as \"0.0.0.0:8080\""
            ));
        }
        if !(1..=64).contains(&self.inspectors) {
            p.push(format!(
                "api.inspectors = {}: must be between 1 and 64",
                self.inspectors
            ));
        }
        p
    }
}

/// What the routes need.
#[derive(Clone)]
pub struct ApiState {
    pub store: Store,
    pub quality: QualityConfig,
    pub config: ApiConfig,
    /// Where images and overlays are kept.
    pub image_dir: PathBuf,
    pub inspectors: Arc<InspectorPool>,
    /// Production line recorded with uploads.
    pub line: String,
}

/// The API router.
pub fn app(state: ApiState) -> Router {
    let limit = state.config.max_body_bytes;
    let v1 = Router::new()
        .route("/inspections", post(inspections::upload))
        .route("/inspections/{id}", get(inspections::inspection))
        .route("/images/{hash}", get(inspections::image))
        .route("/tasks", get(tasks::tasks))
        .route("/tasks/claim", post(tasks::claim))
        .route("/tasks/{id}/decision", post(tasks::decide))
        .route("/ncrs/{id}", get(ncrs::ncr))
        .route("/lots/{lot}/release", post(ncrs::release));
    Router::new()
        .nest("/api/v1", v1)
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn ready(State(state): State<ApiState>) -> Result<&'static str, ApiError> {
    state.store.inspection_count().await?;
    Ok("ready")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_every_bad_value_is_named() {
        assert!(ApiConfig::default().problems().is_empty());
        let bad = ApiConfig {
            max_body_bytes: 10,
            inference_timeout_ms: 5,
            inspectors: 0,
            listen: Some("port 80".into()),
            model: None,
        };
        let p = bad.problems().join("\n");
        for key in [
            "api.max_body_bytes = 10",
            "api.inference_timeout_ms = 5",
            "api.inspectors = 0",
            "api.listen = \"port 80\"",
        ] {
            assert!(p.contains(key), "{key} missing from {p}");
        }
    }
}
