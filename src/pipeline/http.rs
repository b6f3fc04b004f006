//! The pipeline's small HTTP endpoint (`pipeline.listen`): `POST /api/v1/triggers`,
//! `GET /metrics`, `GET /api/v1/health`, `GET /healthz`, `GET /readyz`. It has no sign-in: bind
//! it to loopback or a trusted machine network (a PLC bridge on the same device). The full API
//! (`api.listen`) serves triggers, metrics and probes with authentication.
//!
//! Errors are RFC 9457 problem+json bodies; the status follows the error exhaustively.

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use super::{PipelineStatus, Trigger, TriggerError, Triggers};

/// What the routes need.
#[derive(Clone)]
pub struct HttpState {
    pub triggers: Triggers,
    pub status: PipelineStatus,
    /// The quality store results are recorded in, if any: its outbox is in the metrics.
    pub store: Option<crate::store::Store>,
}

fn problem(status: StatusCode, title: &str, detail: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        serde_json::json!({ "type": "about:blank", "title": title, "status": status.as_u16(), "detail": detail })
            .to_string(),
    )
        .into_response()
}

impl IntoResponse for TriggerError {
    fn into_response(self) -> Response {
        let status = match &self {
            TriggerError::UnknownCamera { .. } => StatusCode::NOT_FOUND,
            TriggerError::NotTriggered { .. } => StatusCode::CONFLICT,
            TriggerError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            TriggerError::Invalid(_) => StatusCode::BAD_REQUEST,
            TriggerError::Journal(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        let detail = match &self {
            // The store's own words may name hosts, roles or the pool's state: they go to the
            // log, the caller hears what to do.
            TriggerError::Journal(_) => {
                tracing::error!(error = %self, "Trigger refused: it could not be made durable.");
                "the trigger could not be journalled in the quality store (the service's log \
                 says why) and was not accepted: send it again"
                    .to_owned()
            }
            _ => self.to_string(),
        };
        problem(status, "trigger refused", detail)
    }
}

async fn fire(
    State(state): State<HttpState>,
    body: Result<Json<Trigger>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(trigger) = match body {
        Ok(body) => body,
        Err(rejection) if crate::api::body_stalled(&rejection) => {
            return problem(
                StatusCode::REQUEST_TIMEOUT,
                "trigger not received",
                "the request body stopped arriving for api.body_timeout_ms: send the trigger \
                 again (with its id, a repeat that got through is answered as a duplicate)"
                    .into(),
            );
        }
        Err(rejection) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "invalid trigger",
                rejection.body_text(),
            );
        }
    };
    if let Err((_, message)) = trigger.check_labels() {
        return problem(StatusCode::BAD_REQUEST, "invalid trigger", message);
    }
    match state.triggers.fire(trigger).await {
        Ok(accepted) => (StatusCode::ACCEPTED, Json(accepted)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn metrics(State(state): State<HttpState>) -> Response {
    let mut text = state.status.metrics_text();
    if let Some(store) = &state.store {
        text.push_str(&crate::outbox::metrics_text(store).await);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn health(State(state): State<HttpState>) -> Response {
    Json(state.status.health()).into_response()
}

/// Ready when every camera is running (or has replayed its folder to the end); the answer
/// names each camera's state.
async fn ready(State(state): State<HttpState>) -> Response {
    let health = state.status.health();
    let ready = health.values().all(|h| {
        matches!(
            h,
            super::CameraHealth::Running | super::CameraHealth::Finished
        )
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(serde_json::json!({ "ready": ready, "cameras": health })),
    )
        .into_response()
}

/// The router; serve it with `axum::serve`.
pub fn app(state: HttpState) -> Router {
    Router::new()
        .route("/api/v1/triggers", post(fire))
        .route("/metrics", get(metrics))
        .route("/api/v1/health", get(health))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .layer(DefaultBodyLimit::max(16 * 1024))
        .with_state(state)
}
