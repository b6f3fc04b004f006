//! The HTTP API under `/api/v1`, plus `/healthz` and `/readyz`.
//!
//! Invariants:
//! - Every error leaves through [`ApiError`]: one exhaustive match picks the status, the body is
//!   RFC 9457 `application/problem+json`; details of 5xx errors are logged, never sent.
//! - Every `/api/v1` route checks the caller's role (HTTP Basic credentials checked against the
//!   user store, with its lockout) before it touches anything.
//! - Decoding and inference run on blocking threads, one pooled [`Inspector`] at a time each,
//!   under a time limit; the request body and the image dimensions are bounded.
//! - An upload is answered only after its image, overlay and inspection record are durable.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::inspect::{InspectError, Inspector};
use crate::postprocess::{OverlayOptions, SourceGeometry, render_overlay};
use crate::quality::{NewInspection, QualityConfig, Role, TaskAction, TaskState};
use crate::store::{Credentials, Store, StoreError, User, image_path};

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
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            max_body_bytes: 32 << 20,
            inference_timeout_ms: 30_000,
            inspectors: 2,
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
        if !(1..=64).contains(&self.inspectors) {
            p.push(format!(
                "api.inspectors = {}: must be between 1 and 64",
                self.inspectors
            ));
        }
        p
    }
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{field}: {message}")]
    BadRequest {
        field: &'static str,
        message: String,
    },
    #[error("authentication required (HTTP Basic)")]
    Unauthenticated,
    #[error("role {role} may not {action}")]
    Forbidden {
        role: &'static str,
        action: &'static str,
    },
    #[error("{0} does not exist")]
    NotFound(String),
    #[error("unsupported media type {0:?}: send image/jpeg or image/png")]
    UnsupportedMedia(String),
    #[error("inspection took longer than api.inference_timeout_ms = {0}")]
    Timeout(u64),
    #[error(transparent)]
    Inspect(#[from] InspectError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthenticated => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::UnsupportedMedia(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Timeout(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Inspect(e) => match e {
                InspectError::Decode(_) | InspectError::Preprocess(_) => {
                    StatusCode::UNPROCESSABLE_ENTITY
                }
                InspectError::Model(_) | InspectError::NonFiniteScore { .. } => {
                    StatusCode::INTERNAL_SERVER_ERROR
                }
            },
            ApiError::Store(e) => match e {
                StoreError::Invalid(_) | StoreError::Transition(_) | StoreError::Signature(_) => {
                    StatusCode::UNPROCESSABLE_ENTITY
                }
                StoreError::NotFound { .. } => StatusCode::NOT_FOUND,
                StoreError::InvalidCredentials => StatusCode::UNAUTHORIZED,
                StoreError::Locked { .. } => StatusCode::FORBIDDEN,
                StoreError::UserExists(_)
                | StoreError::LotHasOpenNcr { .. }
                | StoreError::ReinspectionCapReached { .. }
                | StoreError::Conflict { .. } => StatusCode::CONFLICT,
                StoreError::Connect { .. }
                | StoreError::Migrate(_)
                | StoreError::Db { .. }
                | StoreError::Corrupt { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut body = serde_json::json!({
            "type": "about:blank",
            "title": status.canonical_reason().unwrap_or("error"),
            "status": status.as_u16(),
        });
        if status.is_server_error() && !matches!(self, ApiError::Timeout(_)) {
            tracing::error!(error = %self, "request failed");
        } else {
            body["detail"] = self.to_string().into();
        }
        if let ApiError::BadRequest { field, .. } = &self {
            body["field"] = (*field).into();
        }
        let mut response = (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body.to_string(),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Basic realm=\"linesight\""),
            );
        }
        response
    }
}

/// Inspectors lent to one upload at a time.
pub struct InspectorPool {
    idle: Mutex<Vec<Inspector>>,
    permits: Arc<tokio::sync::Semaphore>,
}

impl InspectorPool {
    /// A pool of `inspectors` (at least one).
    pub fn new(inspectors: Vec<Inspector>) -> InspectorPool {
        let n = inspectors.len();
        InspectorPool {
            idle: Mutex::new(inspectors),
            permits: Arc::new(tokio::sync::Semaphore::new(n)),
        }
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
        .route("/inspections", post(upload))
        .route("/inspections/{id}", get(inspection))
        .route("/images/{hash}", get(image))
        .route("/tasks", get(tasks))
        .route("/tasks/claim", post(claim))
        .route("/tasks/{id}/decision", post(decide))
        .route("/ncrs/{id}", get(ncr))
        .route("/lots/{lot}/release", post(release));
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

/// Checks HTTP Basic credentials and that the user's role is one of `allowed`.
async fn authorize(
    state: &ApiState,
    headers: &HeaderMap,
    allowed: &[Role],
    action: &'static str,
) -> Result<User, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .ok_or(ApiError::Unauthenticated)?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or(ApiError::Unauthenticated)?;
    let (username, password) = decoded.split_once(':').ok_or(ApiError::Unauthenticated)?;
    let creds = Credentials {
        username: username.into(),
        password: password.into(),
    };
    let user = state
        .store
        .authenticate(&creds, state.quality.lockout())
        .await?;
    if allowed.contains(&user.role) {
        Ok(user)
    } else {
        Err(ApiError::Forbidden {
            role: user.role.as_str(),
            action,
        })
    }
}

const ALL: &[Role] = &Role::ALL;
const QA: &[Role] = &[Role::QaApprover, Role::Admin];
const INSPECTORS: &[Role] = &[Role::Inspector, Role::QaApprover, Role::Admin];

/// Upload parameters (query string).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadParams {
    pub part_id: String,
    pub lot: String,
    pub recipe: Option<String>,
    pub camera: Option<String>,
    /// Overrides the model's threshold for this image.
    pub threshold: Option<f32>,
    pub defect_class: Option<String>,
}

/// The answer to an upload.
#[derive(Debug, Serialize, Deserialize)]
pub struct UploadAnswer {
    pub id: i64,
    pub score: f64,
    pub verdict: String,
    pub threshold: f64,
    pub regions: serde_json::Value,
    pub model_name: String,
    pub model_sha256: String,
    pub image: String,
    pub overlay: Option<String>,
    pub task: Option<i64>,
    pub raised_ncr: Option<i64>,
}

fn png(image: &image::RgbImage) -> Result<Vec<u8>, ApiError> {
    let mut out = std::io::Cursor::new(Vec::new());
    image
        .write_to(&mut out, image::ImageFormat::Png)
        .map_err(|e| ApiError::Internal(format!("cannot encode overlay: {e}")))?;
    Ok(out.into_inner())
}

async fn upload(
    State(state): State<ApiState>,
    Query(params): Query<UploadParams>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<UploadAnswer>), ApiError> {
    let user = authorize(&state, &headers, ALL, "upload images").await?;
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if !matches!(media.as_str(), "image/jpeg" | "image/png") {
        return Err(ApiError::UnsupportedMedia(media));
    }
    if let Some(t) = params.threshold
        && !(t.is_finite())
    {
        return Err(ApiError::BadRequest {
            field: "threshold",
            message: format!("{t} is not a finite number"),
        });
    }
    let pool = state.inspectors.clone();
    let permit = pool
        .permits
        .clone()
        .acquire_owned()
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut inspector = pool
        .idle
        .lock()
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .pop()
        .ok_or_else(|| ApiError::Internal("inspector pool is empty".into()))?;
    let bytes = body.clone();
    let pool_back = pool.clone();
    let threshold = params.threshold;
    let job = tokio::task::spawn_blocking(move || {
        let saved = inspector.thresholds;
        if let Some(t) = threshold {
            inspector.thresholds.image = t;
        }
        let (mut results, mut images) = inspector.inspect_batch(&[("upload".into(), &bytes[..])]);
        inspector.thresholds = saved;
        let result = results.pop().expect("one result per image");
        let overlay = match (&result, images.pop().flatten()) {
            (Ok(found), Some(decoded)) => found.map.as_ref().map(|map| {
                let geometry = SourceGeometry {
                    width: decoded.width(),
                    height: decoded.height(),
                    roi: inspector.detector.input.roi,
                };
                render_overlay(
                    &decoded,
                    map,
                    geometry,
                    &found.regions,
                    &OverlayOptions::default(),
                )
            }),
            _ => None,
        };
        // The inspector goes back (and the permit is released) when the work ends, even when
        // the request has already timed out, so a slow image never shrinks the pool.
        if let Ok(mut idle) = pool_back.idle.lock() {
            idle.push(inspector);
        }
        drop(permit);
        (result, overlay)
    });
    let timeout = Duration::from_millis(state.config.inference_timeout_ms);
    let (result, overlay) = match tokio::time::timeout(timeout, job).await {
        Ok(joined) => joined.map_err(|e| ApiError::Internal(e.to_string()))?,
        Err(_) => return Err(ApiError::Timeout(state.config.inference_timeout_ms)),
    };
    let found = result?;
    let overlay_png = overlay.as_ref().map(png).transpose()?;
    let now = crate::quality::now_ms();
    let image_ref = state.store.put_image(&state.image_dir, &body, now).await?;
    let overlay_ref = match overlay_png {
        Some(bytes) => Some(state.store.put_image(&state.image_dir, &bytes, now).await?),
        None => None,
    };
    let regions_json =
        serde_json::to_string(&found.regions).map_err(|e| ApiError::Internal(e.to_string()))?;
    let new = NewInspection {
        part_id: params.part_id,
        lot: params.lot,
        line: state.line.clone(),
        recipe: params.recipe.unwrap_or_default(),
        camera: params.camera.unwrap_or_else(|| "upload".into()),
        model_name: found.model.name.clone(),
        model_sha256: found.model.sha256.clone(),
        threshold: f64::from(found.threshold),
        score: f64::from(found.score),
        verdict: found.verdict,
        regions_json: regions_json.clone(),
        image_ref: Some(image_ref.clone()),
        overlay_ref: overlay_ref.clone(),
        timings_json: serde_json::to_string(&found.timings).unwrap_or_default(),
        source: "manual".into(),
        defect_class: params.defect_class,
    };
    let recorded = state
        .store
        .record_inspection(&new, &state.quality, &user.username)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(UploadAnswer {
            id: recorded.inspection_id,
            score: new.score,
            verdict: new.verdict.as_str().into(),
            threshold: new.threshold,
            regions: serde_json::from_str(&regions_json).unwrap_or_default(),
            model_name: new.model_name,
            model_sha256: new.model_sha256,
            image: format!("/api/v1/images/{image_ref}"),
            overlay: overlay_ref.map(|h| format!("/api/v1/images/{h}")),
            task: recorded.task.map(|t| t.id),
            raised_ncr: recorded.raised_ncr,
        }),
    ))
}

async fn inspection(
    State(state): State<ApiState>,
    Path(id): Path<i64>,
    headers: HeaderMap,
) -> Result<Json<crate::store::InspectionRecord>, ApiError> {
    authorize(&state, &headers, ALL, "read inspections").await?;
    Ok(Json(state.store.inspection(id).await?))
}

async fn image(
    State(state): State<ApiState>,
    Path(hash): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, ALL, "read images").await?;
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::BadRequest {
            field: "hash",
            message: "must be 64 hexadecimal digits".into(),
        });
    }
    let path = image_path(&state.image_dir, &hash);
    let bytes = tokio::fs::read(&path)
        .await
        .map_err(|_| ApiError::NotFound(format!("image {hash}")))?;
    let media = match image::guess_format(&bytes) {
        Ok(image::ImageFormat::Png) => "image/png",
        Ok(image::ImageFormat::Jpeg) => "image/jpeg",
        _ => "application/octet-stream",
    };
    Ok(([(header::CONTENT_TYPE, media)], bytes).into_response())
}

/// Task list filter.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskQuery {
    pub state: Option<TaskState>,
    pub limit: Option<i64>,
}

async fn tasks(
    State(state): State<ApiState>,
    Query(q): Query<TaskQuery>,
    headers: HeaderMap,
) -> Result<Json<Vec<crate::store::Task>>, ApiError> {
    authorize(&state, &headers, INSPECTORS, "list tasks").await?;
    let list = state
        .store
        .tasks_in_state(
            q.state.unwrap_or(TaskState::Pending),
            q.limit.unwrap_or(100),
        )
        .await?;
    Ok(Json(list))
}

async fn claim(State(state): State<ApiState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let user = authorize(&state, &headers, INSPECTORS, "claim tasks").await?;
    Ok(match state.store.claim_next_task(&user).await? {
        Some(task) => Json(task).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

/// A decision on a claimed task.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    /// `confirm_defect`, `override_good`, `escalate` or `release`.
    pub action: TaskAction,
    pub comment: Option<String>,
}

async fn decide(
    State(state): State<ApiState>,
    Path(id): Path<i64>,
    headers: HeaderMap,
    body: Result<Json<Decision>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let user = authorize(&state, &headers, INSPECTORS, "decide tasks").await?;
    let Json(decision) = body.map_err(|r| ApiError::BadRequest {
        field: "action",
        message: r.body_text(),
    })?;
    let (task, ncr) = state
        .store
        .act_on_task(
            id,
            &user,
            decision.action,
            decision.comment.as_deref(),
            &state.quality,
        )
        .await?;
    Ok(Json(serde_json::json!({ "task": task, "raised_ncr": ncr })))
}

async fn ncr(
    State(state): State<ApiState>,
    Path(id): Path<i64>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&state, &headers, ALL, "read NCRs").await?;
    let ncr = state.store.ncr(id).await?;
    let history = state.store.ncr_transitions(id).await?;
    Ok(Json(serde_json::json!({ "ncr": ncr, "history": history })))
}

async fn release(
    State(state): State<ApiState>,
    Path(lot): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let user = authorize(&state, &headers, QA, "release lots").await?;
    state.store.release_lot(&lot, &user).await?;
    Ok(StatusCode::NO_CONTENT)
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
        };
        let p = bad.problems().join("\n");
        for key in [
            "api.max_body_bytes = 10",
            "api.inference_timeout_ms = 5",
            "api.inspectors = 0",
        ] {
            assert!(p.contains(key), "{key} missing from {p}");
        }
    }

    async fn body(res: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn server_errors_hide_their_detail_client_errors_name_the_field() {
        let res = ApiError::Internal("secret path /x".into()).into_response();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let p = body(res).await;
        assert!(p.get("detail").is_none());
        assert!(!p.to_string().contains("secret"));
        let res = ApiError::BadRequest {
            field: "threshold",
            message: "NaN is not a finite number".into(),
        }
        .into_response();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        let p = body(res).await;
        assert_eq!(p["field"], "threshold");
        assert_eq!(p["detail"], "threshold: NaN is not a finite number");
    }
}
