//! The HTTP API under `/api/v1`, the web UI under `/ui/`, and `/healthz`, `/readyz`, `/metrics`.
//!
//! Invariants:
//! - Every error leaves through [`ApiError`]: one exhaustive match picks the status, the body is
//!   RFC 9457 `application/problem+json`; details of 5xx errors are logged, never sent.
//! - Every `/api/v1` route but sign-in takes a [`Caller`] (bearer token, HTTP Basic or the web
//!   UI's session cookie with its CSRF token) and states the roles it admits before it touches
//!   anything; `tests/it/api.rs` holds the role × route matrix.
//! - Decoding and inference run on blocking threads, one pooled `Inspector` at a time each,
//!   under a time limit; the request body and the image dimensions are bounded.
//! - An upload is answered only after its image, overlay and inspection record are durable.
//! - The OpenAPI document (`/api/v1/openapi.json`) is generated from the routes themselves:
//!   a route cannot exist without being documented.

mod audit;
mod auth;
mod error;
mod events;
mod extract;
mod forwarded;
mod inspections;
mod lots;
mod models;
mod ncrs;
pub mod server;
mod tasks;
mod throttle;
mod ui;
mod users;

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::pipeline::{PipelineStatus, Triggers};
use crate::quality::QualityConfig;
use crate::store::Store;

pub use auth::{BACKGROUND_HEADER, CSRF_HEADER, Caller, SESSION_COOKIE, SessionInfo, Via};
pub use error::ApiError;
pub(crate) use extract::body_stalled;
pub use forwarded::{Client, ProxyNetwork};
pub use inspections::{
    ApiMetrics, BODIES_PER_INSPECTOR, InspectionView, InspectorPool, UploadAnswer, UploadParams,
};
pub use models::{SlotConfig, model_report_turn};
pub use tasks::{Decision, TaskQuery};
pub use throttle::SignInThrottle;

/// `[api.tls]`: serve HTTPS with these PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// `[api]` settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Longest a decode plus inference may take before the request fails with 503.
    pub inference_timeout_ms: u64,
    /// Longest an upload or an NCR attachment may take to send its body once it is admitted;
    /// past it the request gets 408 and its slot goes to the next one, so a client that
    /// stalls halfway (a dropped Wi-Fi link, a stopped program) holds no slot for long.
    pub body_timeout_ms: u64,
    /// Longest a client may take to send a request's headers, counted from the connection's
    /// start or, on a kept-alive connection, from the previous response (so also how long an
    /// idle connection stays open); over HTTPS, also the TLS handshake's limit. Past it the
    /// connection is closed: clients that trickle headers (slowloris) or sit idle hold no
    /// connection for long. Applies to `pipeline.listen` as well.
    pub header_timeout_ms: u64,
    /// Connections served at once; more wait in the kernel's backlog until one closes (a
    /// bound on the file descriptors and memory clients can hold). Applies to
    /// `pipeline.listen` as well.
    pub max_connections: usize,
    /// Inspectors (one ONNX Runtime session each) serving uploads.
    pub inspectors: usize,
    /// Address the API listens on (`linesight serve`, and `linesight run` beside its cameras),
    /// such as "0.0.0.0:8080"; none: `run` serves no API and `serve` refuses to start.
    pub listen: Option<String>,
    /// Model package that inspects manual uploads; none: the first camera's model, else the
    /// bundled demo model.
    pub model: Option<PathBuf>,
    /// A web UI session ends after this many minutes without a request (Part 11 session
    /// control: an unattended terminal signs itself out).
    pub session_idle_minutes: u32,
    /// Failed sign-ins (the form or HTTP Basic) one client address may make in
    /// `sign_in_window_minutes`; past them its sign-ins are refused (429) until the window
    /// ends, before any password is checked. Counted per process, by the client's address
    /// (behind a reverse proxy, see `trusted_proxies`).
    pub sign_in_failures_per_address: u32,
    pub sign_in_window_minutes: u32,
    /// Serve HTTPS instead of HTTP.
    pub tls: Option<TlsConfig>,
    /// Reverse proxies in front of the service (addresses or networks such as "10.0.0.0/8"):
    /// from them, and only from them, `X-Forwarded-For` names the client (for the sign-in
    /// allowance and the audit trail) and `X-Forwarded-Proto: https` makes the session
    /// cookie `Secure`. Empty (the default): those headers are ignored.
    pub trusted_proxies: Vec<ProxyNetwork>,
    /// Serve the web UI from this folder instead of the copy built into the binary (a
    /// customised UI, or UI development without rebuilding).
    pub ui_dir: Option<PathBuf>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            max_body_bytes: 32 << 20,
            inference_timeout_ms: 30_000,
            body_timeout_ms: 60_000,
            header_timeout_ms: 30_000,
            max_connections: 512,
            inspectors: 2,
            listen: None,
            model: None,
            session_idle_minutes: 30,
            sign_in_failures_per_address: 30,
            sign_in_window_minutes: 15,
            tls: None,
            trusted_proxies: Vec::new(),
            ui_dir: None,
        }
    }
}

impl ApiConfig {
    /// The limit of every body but an upload's or an attachment's: [`MAX_JSON_BODY_BYTES`],
    /// or `max_body_bytes` when that is set lower.
    pub fn json_body_limit(&self) -> usize {
        MAX_JSON_BODY_BYTES.min(self.max_body_bytes)
    }

    /// The failed sign-in counter these settings ask for.
    pub fn sign_in_throttle(&self) -> Arc<SignInThrottle> {
        Arc::new(SignInThrottle::new(
            self.sign_in_failures_per_address,
            std::time::Duration::from_secs(u64::from(self.sign_in_window_minutes) * 60),
        ))
    }

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
        if !(100..=3_600_000).contains(&self.body_timeout_ms) {
            p.push(format!(
                "api.body_timeout_ms = {}: must be between 100 and 3600000",
                self.body_timeout_ms
            ));
        }
        if !(100..=600_000).contains(&self.header_timeout_ms) {
            p.push(format!(
                "api.header_timeout_ms = {}: must be between 100 and 600000",
                self.header_timeout_ms
            ));
        }
        if !(1..=65_536).contains(&self.max_connections) {
            p.push(format!(
                "api.max_connections = {}: must be between 1 and 65536",
                self.max_connections
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
        if !(1..=720).contains(&self.session_idle_minutes) {
            p.push(format!(
                "api.session_idle_minutes = {}: must be between 1 and 720",
                self.session_idle_minutes
            ));
        }
        if !(1..=100_000).contains(&self.sign_in_failures_per_address) {
            p.push(format!(
                "api.sign_in_failures_per_address = {}: must be between 1 and 100000",
                self.sign_in_failures_per_address
            ));
        }
        if !(1..=1_440).contains(&self.sign_in_window_minutes) {
            p.push(format!(
                "api.sign_in_window_minutes = {}: must be between 1 and 1440",
                self.sign_in_window_minutes
            ));
        }
        if let Some(tls) = &self.tls {
            for (key, path) in [("api.tls.cert", &tls.cert), ("api.tls.key", &tls.key)] {
                p.extend(crate::config::file_problem(key, path));
            }
        }
        if let Some(dir) = &self.ui_dir
            && !dir.join("index.html").is_file()
        {
            p.push(format!(
                "api.ui_dir = {}: no index.html in that folder",
                dir.display()
            ));
        }
        p
    }
}

/// The live pipeline, when the API runs beside the cameras (`linesight run`).
#[derive(Clone)]
pub struct PipelineHandle {
    pub triggers: Triggers,
    pub status: PipelineStatus,
}

/// What the routes need.
#[derive(Clone)]
pub struct ApiState {
    pub store: Store,
    pub quality: QualityConfig,
    pub config: ApiConfig,
    /// Where images and overlays are kept.
    pub image_dir: PathBuf,
    /// Where NCR attachments are kept (never pruned with the images).
    pub attachment_dir: PathBuf,
    pub inspectors: Arc<InspectorPool>,
    /// Production line recorded with uploads.
    pub line: String,
    pub pipeline: Option<PipelineHandle>,
    pub metrics: Arc<ApiMetrics>,
    /// The model slots configured here (cameras and their recipes).
    pub slots: Vec<SlotConfig>,
    /// The package that inspects manual uploads.
    pub upload_model: PathBuf,
    /// Validates model packages activated through the API.
    pub validator: crate::model::registry::Validator,
    /// Turns true when the service stops: live streams (SSE) end so that shutdown is not held.
    pub stopping: tokio::sync::watch::Receiver<bool>,
    /// Failed sign-ins per client address ([`ApiConfig::sign_in_failures_per_address`]).
    pub sign_in_throttle: Arc<SignInThrottle>,
}

/// The OpenAPI document's frame; the paths come from the routes.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "linesight",
        description = "Visual quality inspection on production lines: manual inspections, secondary-inspection tasks, non-conformance records with electronic signatures, lots, audit trail and models."
    ),
    modifiers(&SecuritySchemes),
    security(("bearer" = []), ("basic" = []), ("session" = [])),
    tags(
        (name = "inspections", description = "Inspections, images and live results"),
        (name = "tasks", description = "Secondary-inspection tasks"),
        (name = "ncrs", description = "Non-conformance records, dispositions and e-signatures"),
        (name = "lots", description = "Lot holds and release"),
        (name = "audit", description = "Audit trail"),
        (name = "models", description = "Model packages and activations"),
        (name = "session", description = "Sign-in, sessions and tokens"),
        (name = "triggers", description = "Triggers of the live pipeline"),
    )
)]
struct ApiDoc;

struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "basic",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Basic).build()),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(SESSION_COOKIE))),
        );
    }
}

/// The largest body of any route but an upload or an attachment (JSON: sign-in, decisions,
/// NCRs, activations…). Their longest field is a free text of
/// [`crate::quality::MAX_TEXT_BYTES`]; escaped as JSON at worst six bytes a byte, with a few
/// labels beside it, it fits. Bodies are read before the caller is known (a sign-in is one),
/// so a limit as large as an image's would let clients without an account hold
/// `api.max_connections` × `api.max_body_bytes` in memory.
pub const MAX_JSON_BODY_BYTES: usize = 64 << 10;

/// The `/api/v1` routes with their OpenAPI description. Bodies are limited to
/// [`ApiConfig::json_body_limit`], but for uploads and attachments, which take `upload_limit`.
fn v1(upload_limit: usize) -> OpenApiRouter<ApiState> {
    let files = OpenApiRouter::new()
        .routes(routes!(inspections::upload, inspections::list))
        .routes(routes!(ncrs::attach))
        .layer(DefaultBodyLimit::max(upload_limit));
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(auth::sign_in, auth::whoami, auth::sign_out))
        .routes(routes!(auth::issue_token, auth::tokens))
        .routes(routes!(auth::revoke_token))
        .routes(routes!(users::change_password))
        .routes(routes!(users::users))
        .routes(routes!(users::disable))
        .routes(routes!(users::enable))
        .routes(routes!(users::reset_password))
        .routes(routes!(inspections::inspection))
        .routes(routes!(inspections::image))
        .routes(routes!(inspections::camera_summary))
        .routes(routes!(events::events))
        .routes(routes!(inspections::trigger))
        .routes(routes!(tasks::tasks))
        .routes(routes!(tasks::task))
        .routes(routes!(tasks::claim_next))
        .routes(routes!(tasks::claim))
        .routes(routes!(tasks::decide))
        .routes(routes!(ncrs::list, ncrs::create))
        .routes(routes!(ncrs::ncr))
        .routes(routes!(ncrs::transition))
        .routes(routes!(ncrs::sign))
        .routes(routes!(ncrs::attachment))
        .routes(routes!(lots::lots))
        .routes(routes!(lots::lot))
        .routes(routes!(lots::hold))
        .routes(routes!(lots::release))
        .routes(routes!(audit::query))
        .routes(routes!(audit::export))
        .routes(routes!(audit::verify))
        .routes(routes!(models::list))
        .routes(routes!(models::activate))
        .routes(routes!(models::recipes))
        .routes(routes!(models::contract))
        .merge(files)
}

/// The OpenAPI 3.1 document of the API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    v1(ApiConfig::default().max_body_bytes).into_openapi()
}

/// The API router, with the web UI.
pub fn app(state: ApiState) -> Router {
    let json_limit = state.config.json_body_limit();
    let (v1, doc) = v1(state.config.max_body_bytes).split_for_parts();
    let doc = Arc::new(doc.to_pretty_json().unwrap_or_default());
    Router::new()
        .merge(v1)
        .route(
            "/api/v1/openapi.json",
            get(move || {
                let doc = doc.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], (*doc).clone()) }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .merge(ui::routes())
        .layer(DefaultBodyLimit::max(json_limit))
        .with_state(state)
}

/// Ready when the quality store answers, the upload model is loaded and, beside cameras, every
/// camera is up. The answer lists each check.
async fn ready(State(state): State<ApiState>) -> Response {
    let mut checks = serde_json::Map::new();
    let store_ok = match state.store.inspection_count().await {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(error = %e, "Readiness: the quality store does not answer.");
            false
        }
    };
    checks.insert("store".into(), store_ok.into());
    let model_ok = state.inspectors.size() > 0;
    checks.insert("upload_model".into(), model_ok.into());
    let mut cameras_ok = true;
    if let Some(p) = &state.pipeline {
        for (camera, health) in p.status.health() {
            let up = matches!(
                health,
                crate::pipeline::CameraHealth::Running | crate::pipeline::CameraHealth::Finished
            );
            cameras_ok &= up;
            checks.insert(format!("camera:{camera}"), up.into());
        }
    }
    let ready = store_ok && model_ok && cameras_ok;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(serde_json::json!({ "ready": ready, "checks": checks })),
    )
        .into_response()
}

/// Prometheus metrics: the API's own, the outbox's, and the pipeline's when it runs beside the
/// cameras.
async fn metrics(State(state): State<ApiState>) -> Response {
    let mut text = state.metrics.render();
    text.push_str(&crate::outbox::metrics_text(&state.store).await);
    if let Some(p) = &state.pipeline {
        text.push_str(&p.status.metrics_text());
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
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
            body_timeout_ms: 3_600_001,
            header_timeout_ms: 99,
            max_connections: 0,
            inspectors: 0,
            listen: Some("port 80".into()),
            model: None,
            session_idle_minutes: 0,
            sign_in_failures_per_address: 0,
            sign_in_window_minutes: 1_441,
            tls: Some(TlsConfig {
                cert: "/nonexistent/cert.pem".into(),
                key: "/nonexistent/key.pem".into(),
            }),
            trusted_proxies: Vec::new(),
            ui_dir: Some("/nonexistent".into()),
        };
        let p = bad.problems().join("\n");
        for key in [
            "api.max_body_bytes = 10",
            "api.body_timeout_ms = 3600001",
            "api.header_timeout_ms = 99",
            "api.max_connections = 0",
            "api.inference_timeout_ms = 5",
            "api.inspectors = 0",
            "api.sign_in_failures_per_address = 0",
            "api.sign_in_window_minutes = 1441",
            "api.listen = \"port 80\"",
            "api.session_idle_minutes = 0",
            "api.tls.cert = /nonexistent/cert.pem",
            "api.tls.key = /nonexistent/key.pem",
            "api.ui_dir = /nonexistent",
        ] {
            assert!(p.contains(key), "{key} missing from {p}");
        }
    }
}
