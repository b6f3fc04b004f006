//! Manual uploads, inspection records and stored images.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::auth::{ALL, authorize};
use super::{ApiError, ApiState};
use crate::inspect::Inspector;
use crate::postprocess::{OverlayOptions, SourceGeometry, render_overlay};
use crate::quality::NewInspection;
use crate::store::image_path;

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

pub(super) async fn upload(
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

pub(super) async fn inspection(
    State(state): State<ApiState>,
    Path(id): Path<i64>,
    headers: HeaderMap,
) -> Result<Json<crate::store::InspectionRecord>, ApiError> {
    authorize(&state, &headers, ALL, "read inspections").await?;
    Ok(Json(state.store.inspection(id).await?))
}

pub(super) async fn image(
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
