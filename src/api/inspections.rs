//! Manual uploads, inspection records and listings, stored images, camera summaries, and
//! triggers of the live pipeline.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest as _, Multipart, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{ALL, Caller};
use super::extract::{Path, Query, json_rejection};
use super::{ApiError, ApiState};
use crate::inspect::Inspector;
use crate::pipeline::metrics::Histogram;
use crate::pipeline::{Trigger, TriggerAccepted};
use crate::postprocess::{DefectRegion, OverlayOptions, SourceGeometry, render_overlay_in_place};
use crate::quality::{NewInspection, Verdict};
use crate::store::{
    CameraSummary, InspectionFilter, InspectionRecord, Store, image_path, read_verified,
};

/// Inspectors lent to one upload at a time.
pub struct InspectorPool {
    idle: Mutex<Vec<Inspector>>,
    permits: Arc<tokio::sync::Semaphore>,
    /// Uploads drawing their overlay after giving their inspector back, one per inspector:
    /// each holds its decoded image (up to `decode.max_alloc_bytes`), so the images in memory
    /// stay at most two per inspector however many uploads come at once.
    overlays: Arc<tokio::sync::Semaphore>,
    /// Request bodies that may be read (uploads, NCR attachments): [`BODIES_PER_INSPECTOR`]
    /// per inspector. A request waits for one before it reads its body, so that the bodies in
    /// memory (each up to `api.max_body_bytes`) stay bounded however many clients send at once.
    bodies: Arc<tokio::sync::Semaphore>,
    size: usize,
}

/// Request bodies (uploads, NCR attachments) held in memory per inspector: the one being
/// inspected, and enough waiting for their turn that the inspectors never wait for a client's
/// bytes.
pub const BODIES_PER_INSPECTOR: usize = 4;

impl InspectorPool {
    /// A pool of `inspectors` (at least one).
    pub fn new(inspectors: Vec<Inspector>) -> InspectorPool {
        let n = inspectors.len();
        InspectorPool {
            idle: Mutex::new(inspectors),
            permits: Arc::new(tokio::sync::Semaphore::new(n)),
            overlays: Arc::new(tokio::sync::Semaphore::new(n.max(1))),
            bodies: Arc::new(tokio::sync::Semaphore::new(n.max(1) * BODIES_PER_INSPECTOR)),
            size: n,
        }
    }

    /// The overlay slots (tests hold them to see uploads wait for one).
    pub fn overlay_slots(&self) -> Arc<tokio::sync::Semaphore> {
        self.overlays.clone()
    }

    /// The slots of request bodies (tests hold them to see uploads wait for one).
    pub fn body_slots(&self) -> Arc<tokio::sync::Semaphore> {
        self.bodies.clone()
    }

    /// Admits a request's body, waiting up to `wait` for a slot: 503 when none comes free,
    /// before the body is read.
    pub async fn admit(
        &self,
        wait: Duration,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        tokio::time::timeout(wait, self.bodies.clone().acquire_owned())
            .await
            .map_err(|_| {
                ApiError::Unavailable(format!(
                    "{} request bodies (uploads, NCR attachments: {BODIES_PER_INSPECTOR} per inspector) were in memory for api.inference_timeout_ms = {} ms: try again later",
                    self.size.max(1) * BODIES_PER_INSPECTOR,
                    wait.as_millis()
                ))
            })?
            .map_err(|e| ApiError::Internal(e.to_string()))
    }

    /// Reads an admitted request's body through `read` within `api.body_timeout_ms` (`ms`):
    /// a client that stalls halfway gets 408, and its body slot goes to the next request then.
    pub(super) async fn read_body<T>(
        ms: u64,
        read: impl Future<Output = Result<T, ApiError>>,
    ) -> Result<T, ApiError> {
        tokio::time::timeout(Duration::from_millis(ms), read)
            .await
            .unwrap_or(Err(ApiError::BodyTimeout(ms)))
    }

    /// How many inspectors the pool holds.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Lends an inspector, waiting up to `wait` for one to be free: [`ApiError::Busy`] when
    /// none is, so that a service whose inspectors are all stuck answers 503 rather than
    /// piling up requests without end (their bodies are bounded by [`Self::admit`]).
    pub async fn lend(self: &Arc<Self>, wait: Duration) -> Result<Lent, ApiError> {
        let permit = tokio::time::timeout(wait, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| ApiError::Busy {
                inspectors: self.size,
                ms: wait.as_millis() as u64,
            })?
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let inspector = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop()
            .ok_or_else(|| ApiError::Internal("inspector pool is empty".into()))?;
        Ok(Lent {
            inspector: Some(inspector),
            pool: self.clone(),
            _permit: permit,
        })
    }

    /// Inspectors free now.
    pub fn idle(&self) -> usize {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }
}

/// An inspector lent to one upload by [`InspectorPool::lend`]. Dropped, it goes back to the
/// pool and frees its permit, whatever happened: an inspection that panics still gives it
/// back, so the pool never shrinks.
pub struct Lent {
    inspector: Option<Inspector>,
    pool: Arc<InspectorPool>,
    // Released after the inspector is back (fields drop after `Drop::drop`).
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl std::ops::Deref for Lent {
    type Target = Inspector;
    fn deref(&self) -> &Inspector {
        self.inspector.as_ref().expect("an inspector until dropped")
    }
}

impl std::ops::DerefMut for Lent {
    fn deref_mut(&mut self) -> &mut Inspector {
        self.inspector.as_mut().expect("an inspector until dropped")
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        if let Some(inspector) = self.inspector.take() {
            self.pool
                .idle
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(inspector);
        }
    }
}

/// The API's own metrics.
#[derive(Debug)]
pub struct ApiMetrics {
    /// Uploads answered, by outcome: created, client error, server error.
    pub uploads: [AtomicU64; 3],
    /// Seconds from the request to the answer of an upload that was inspected.
    pub upload_seconds: Histogram,
    /// The service's image keeping (`quality.image_prune_interval_minutes`), shown with the
    /// API's metrics.
    pub image_keeping: Arc<crate::store::ImageKeepingMetrics>,
}

impl Default for ApiMetrics {
    fn default() -> Self {
        ApiMetrics {
            uploads: Default::default(),
            upload_seconds: Histogram::new(&[
                0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
            ]),
            image_keeping: Arc::default(),
        }
    }
}

impl ApiMetrics {
    /// Prometheus text.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP linesight_api_uploads_total Manual uploads answered, by outcome."
        );
        let _ = writeln!(out, "# TYPE linesight_api_uploads_total counter");
        for (outcome, n) in ["created", "client_error", "server_error"]
            .iter()
            .zip(&self.uploads)
        {
            let _ = writeln!(
                out,
                "linesight_api_uploads_total{{outcome=\"{outcome}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP linesight_api_upload_seconds Time to answer an inspected upload."
        );
        let _ = writeln!(out, "# TYPE linesight_api_upload_seconds histogram");
        self.upload_seconds
            .render(&mut out, "linesight_api_upload_seconds", "");
        out.push_str(&self.image_keeping.render());
        out
    }

    fn count(&self, result: &Result<impl Sized, ApiError>) {
        let slot = match result {
            Ok(_) => 0,
            Err(e) if e.is_server_error() => 2,
            Err(_) => 1,
        };
        self.uploads[slot].fetch_add(1, Ordering::Relaxed);
    }
}

/// Upload parameters: query string of a raw upload, or form fields of a multipart one.
#[derive(Debug, Default, Deserialize, IntoParams, ToSchema)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UploadParams {
    pub part_id: Option<String>,
    pub lot: Option<String>,
    pub recipe: Option<String>,
    pub camera: Option<String>,
    /// Overrides the model's threshold for this image.
    pub threshold: Option<f32>,
    pub defect_class: Option<String>,
}

/// A multipart upload (`multipart/form-data`).
#[derive(ToSchema)]
#[allow(dead_code)] // Describes the form for the OpenAPI document only.
struct UploadForm {
    /// The image (JPEG or PNG).
    #[schema(format = Binary, content_media_type = "application/octet-stream")]
    image: String,
    part_id: String,
    lot: String,
    recipe: Option<String>,
    camera: Option<String>,
    threshold: Option<f32>,
    defect_class: Option<String>,
}

/// The answer to an upload.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UploadAnswer {
    pub id: i64,
    pub score: f64,
    pub verdict: String,
    pub threshold: f64,
    pub regions: Vec<DefectRegion>,
    pub model_name: String,
    pub model_sha256: String,
    /// URL of the stored image.
    pub image: String,
    /// URL of the heat-map overlay.
    pub overlay: Option<String>,
    /// The secondary-inspection task the upload opened (a reject, an uncertain score, an
    /// acceptance sample, or a pass of a part found defective before).
    pub task: Option<i64>,
    /// The NCR the upload raised (the lot's reject rate crossed its limit, or a part found
    /// defective passed past its re-inspection cap).
    pub raised_ncr: Option<i64>,
    /// Why no task was opened although the rules asked for one (re-inspection cap).
    pub task_refused: Option<String>,
}

/// An inspection as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InspectionView {
    pub id: i64,
    pub at_ms: i64,
    pub part_id: String,
    pub lot: String,
    pub line: String,
    pub recipe: String,
    pub camera: String,
    pub model_name: String,
    pub model_sha256: String,
    pub threshold: f64,
    pub score: f64,
    pub verdict: Verdict,
    pub regions: Vec<DefectRegion>,
    /// URL of the stored image (none when not kept or pruned by retention).
    pub image: Option<String>,
    pub overlay: Option<String>,
    /// Milliseconds per stage.
    #[schema(value_type = Object)]
    pub timings: serde_json::Value,
    /// `automatic` (a camera) or `manual` (an upload).
    pub source: String,
    pub defect_class: Option<String>,
}

impl From<InspectionRecord> for InspectionView {
    fn from(r: InspectionRecord) -> Self {
        let i = r.inspection;
        let url = |h: Option<String>| h.map(|h| format!("/api/v1/images/{h}"));
        InspectionView {
            id: r.id,
            at_ms: r.at_ms,
            regions: serde_json::from_str(&i.regions_json).unwrap_or_default(),
            timings: serde_json::from_str(&i.timings_json).unwrap_or_default(),
            image: url(i.image_ref),
            overlay: url(i.overlay_ref),
            part_id: i.part_id,
            lot: i.lot,
            line: i.line,
            recipe: i.recipe,
            camera: i.camera,
            model_name: i.model_name,
            model_sha256: i.model_sha256,
            threshold: i.threshold,
            score: i.score,
            verdict: i.verdict,
            source: i.source,
            defect_class: i.defect_class,
        }
    }
}

/// PNG with fast compression: an overlay is looked at, not archived, and the upload waits.
fn png(image: &image::RgbImage) -> Result<Vec<u8>, ApiError> {
    use image::ImageEncoder as _;
    use image::codecs::png::{CompressionType, FilterType, PngEncoder};
    let mut out = Vec::new();
    PngEncoder::new_with_quality(&mut out, CompressionType::Fast, FilterType::Sub)
        .write_image(
            image.as_raw(),
            image.width(),
            image.height(),
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|e| ApiError::Internal(format!("cannot encode overlay: {e}")))?;
    Ok(out)
}

fn multipart_error(field: &'static str, e: axum::extract::multipart::MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        // The limit is the router's; the rejection does not carry it.
        ApiError::TooLarge(0)
    } else if super::extract::body_stalled(&e) {
        // Nor does it carry the time limit: the caller fills both in.
        ApiError::BodyTimeout(0)
    } else {
        ApiError::bad(field, e.body_text())
    }
}

/// Reads a multipart upload: the `image` file and the text fields.
async fn read_form(mut form: Multipart) -> Result<(UploadParams, Bytes, String), ApiError> {
    let mut params = UploadParams::default();
    let mut image = None;
    while let Some(field) = form
        .next_field()
        .await
        .map_err(|e| multipart_error("body", e))?
    {
        let name = field.name().unwrap_or_default().to_owned();
        if name == "image" {
            let media = field.content_type().unwrap_or_default().to_owned();
            let bytes = field
                .bytes()
                .await
                .map_err(|e| multipart_error("image", e))?;
            image = Some((bytes, media));
            continue;
        }
        let text = field.text().await.map_err(|e| multipart_error("body", e))?;
        let text = Some(text).filter(|t| !t.is_empty());
        match name.as_str() {
            "part_id" => params.part_id = text,
            "lot" => params.lot = text,
            "recipe" => params.recipe = text,
            "camera" => params.camera = text,
            "defect_class" => params.defect_class = text,
            "threshold" => {
                params.threshold = text
                    .map(|t| t.trim().parse::<f32>())
                    .transpose()
                    .map_err(|e| ApiError::bad("threshold", format!("not a number: {e}")))?;
            }
            _ => {
                return Err(ApiError::bad(
                    "body",
                    format!(
                        "unknown form field {name:?}: use image, part_id, lot, recipe, camera, threshold, defect_class"
                    ),
                ));
            }
        }
    }
    let (bytes, media) =
        image.ok_or_else(|| ApiError::bad("image", "the form has no image file"))?;
    // Browsers label files by extension; trust the bytes, which the decoder checks anyway.
    let media = match image::guess_format(&bytes) {
        Ok(image::ImageFormat::Png) => "image/png".into(),
        Ok(image::ImageFormat::Jpeg) => "image/jpeg".into(),
        _ => media,
    };
    Ok((params, bytes, media))
}

/// Inspects an uploaded image, stores it with its overlay and records the inspection. A
/// rejected part opens a secondary-inspection task. Send `multipart/form-data` with an
/// `image` file and the fields, or a raw `image/jpeg` / `image/png` body with the fields in
/// the query string.
#[utoipa::path(post, path = "/api/v1/inspections", tag = "inspections", params(UploadParams),
    request_body(content(
        (UploadForm = "multipart/form-data"),
        (Vec<u8> = "image/jpeg"),
        (Vec<u8> = "image/png"))),
    responses((status = 201, body = UploadAnswer),
        (status = 400, description = "a field is missing or invalid (named in `field`)"),
        (status = 408, description = "the body did not arrive within api.body_timeout_ms"),
        (status = 413, description = "body larger than api.max_body_bytes"),
        (status = 415, description = "not JPEG or PNG"),
        (status = 422, description = "the image cannot be decoded or is too large"),
        (status = 500, description = "the service failed (detail in its log, not in the answer)"),
        (status = 503, description = "no inspector was free, or the inspection did not end, within api.inference_timeout_ms; or four request bodies per inspector were already in memory that long"),
        (status = 507, description = "the disk that keeps the images is full")))]
pub(super) async fn upload(
    State(state): State<ApiState>,
    caller: Caller,
    query: Result<axum::extract::Query<UploadParams>, axum::extract::rejection::QueryRejection>,
    request: Request,
) -> Result<(StatusCode, Json<UploadAnswer>), ApiError> {
    let started = Instant::now();
    let result = upload_inner(&state, caller, query, request).await;
    state.metrics.count(&result);
    if result.is_ok() {
        state
            .metrics
            .upload_seconds
            .observe(started.elapsed().as_secs_f64());
    }
    result
}

async fn upload_inner(
    state: &ApiState,
    caller: Caller,
    query: Result<axum::extract::Query<UploadParams>, axum::extract::rejection::QueryRejection>,
    request: Request,
) -> Result<(StatusCode, Json<UploadAnswer>), ApiError> {
    let user = caller.require(ALL, "upload images")?.clone();
    // Here, not by the extractor: a refused upload counts in the upload metrics too.
    let axum::extract::Query(query) = query.map_err(|e| ApiError::bad("query", e.body_text()))?;
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let timeout = Duration::from_millis(state.config.inference_timeout_ms);
    // Held until the answer (the body stays in memory until its files are written), and by
    // the inspection, which holds the body too, should the answer be a timeout.
    let admitted = Arc::new(state.inspectors.admit(timeout).await?);
    let read = async {
        if content_type.starts_with("multipart/form-data") {
            let form = Multipart::from_request(request, state)
                .await
                .map_err(|e| ApiError::bad("body", e.body_text()))?;
            read_form(form).await.map_err(|e| match e {
                ApiError::TooLarge(_) => ApiError::TooLarge(state.config.max_body_bytes),
                ApiError::BodyTimeout(_) => ApiError::BodyTimeout(state.config.body_timeout_ms),
                e => e,
            })
        } else {
            let body = Bytes::from_request(request, state)
                .await
                .map_err(|e| match e.status() {
                    StatusCode::PAYLOAD_TOO_LARGE => {
                        ApiError::TooLarge(state.config.max_body_bytes)
                    }
                    _ if super::extract::body_stalled(&e) => {
                        ApiError::BodyTimeout(state.config.body_timeout_ms)
                    }
                    _ => ApiError::bad("body", e.body_text()),
                })?;
            Ok((query, body, content_type))
        }
    };
    let (params, body, media) =
        InspectorPool::read_body(state.config.body_timeout_ms, read).await?;
    if !matches!(media.as_str(), "image/jpeg" | "image/png") {
        return Err(ApiError::UnsupportedMedia(media));
    }
    // The bytes decide, not the label: a BMP or TIFF sent as image/png is refused here like
    // one sent as what it is (bytes of no known format go on to the decoder's own error).
    if let Ok(format) = image::guess_format(&body)
        && !matches!(format, image::ImageFormat::Png | image::ImageFormat::Jpeg)
    {
        return Err(ApiError::UnsupportedMedia(format!(
            "{media} whose bytes are {}",
            format.to_mime_type()
        )));
    }
    let part_id = params
        .part_id
        .filter(|p| !p.trim().is_empty())
        .ok_or_else(|| ApiError::bad("part_id", "required: the id of the inspected part"))?;
    let lot = params
        .lot
        .filter(|l| !l.trim().is_empty())
        .ok_or_else(|| ApiError::bad("lot", "required: the lot the part belongs to"))?;
    // Checked before the model runs: what the record would refuse is refused now, with its
    // field named.
    for (field, value) in [
        ("part_id", Some(&part_id)),
        ("lot", Some(&lot)),
        ("recipe", params.recipe.as_ref()),
        ("camera", params.camera.as_ref()),
        ("defect_class", params.defect_class.as_ref()),
    ] {
        if let Some(value) = value {
            crate::quality::check_label(field, value).map_err(|m| ApiError::bad(field, m))?;
        }
    }
    if let Some(t) = params.threshold
        && !(t.is_finite())
    {
        return Err(ApiError::bad(
            "threshold",
            format!("{t} is not a finite number"),
        ));
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let mut inspector = state.inspectors.lend(timeout).await?;
    if let Some(t) = params.threshold {
        inspector
            .detector
            .check_threshold("threshold", t)
            .map_err(|e| ApiError::bad("threshold", e.to_string()))?;
    }
    let bytes = body.clone();
    let threshold = params.threshold;
    let (overlays, runtime) = (
        state.inspectors.overlays.clone(),
        tokio::runtime::Handle::current(),
    );
    let held = admitted.clone();
    let job = tokio::task::spawn_blocking(move || {
        let _admitted = held;
        let saved = inspector.thresholds;
        if let Some(t) = threshold {
            inspector.thresholds.image = t;
        }
        let inspected = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            inspector.inspect_batch(&[("upload".into(), &bytes[..])])
        }));
        // The model's own threshold is back before the inspector is, panic or not.
        inspector.thresholds = saved;
        let roi = inspector.detector.input.roi;
        // The inspector goes back (and the permit is released) as soon as the model has run,
        // before the overlay is drawn, so the next upload's inference overlaps this drawing;
        // also when the request has already timed out, so a slow image never shrinks the pool.
        // It waits for an overlay slot first: the decoded images held for drawing stay bounded.
        let _drawing = runtime.block_on(overlays.acquire_owned());
        drop(inspector);
        let (mut results, mut images) = match inspected {
            Ok(inspected) => inspected,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        let result = results.pop().expect("one result per image");
        // Drawn onto the decoded image itself: nothing needs its plain pixels afterwards.
        let overlay = match (&result, images.pop().flatten()) {
            (Ok(found), Some(mut decoded)) => found.map.as_ref().map(|map| {
                let geometry = SourceGeometry {
                    width: decoded.width(),
                    height: decoded.height(),
                    roi,
                };
                render_overlay_in_place(
                    &mut decoded,
                    map,
                    geometry,
                    &found.regions,
                    &OverlayOptions::default(),
                );
                decoded
            }),
            _ => None,
        };
        // The overlay is encoded here too, off the async runtime.
        let overlay = overlay.as_ref().map(png);
        (result, overlay)
    });
    // One deadline for the wait for an inspector and the inspection.
    let (result, overlay) = match tokio::time::timeout_at(deadline, job).await {
        Ok(Ok(done)) => done,
        Ok(Err(e)) if e.is_panic() => {
            return Err(ApiError::Internal(format!(
                "the inspection of an upload panicked: {}",
                crate::panic_text(e.into_panic().as_ref()).unwrap_or("no message")
            )));
        }
        Ok(Err(e)) => return Err(ApiError::Internal(e.to_string())),
        Err(_) => return Err(ApiError::Timeout(state.config.inference_timeout_ms)),
    };
    let found = result?;
    let overlay_png = overlay.transpose()?;
    let regions_json =
        serde_json::to_string(&found.regions).map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut new = NewInspection {
        part_id,
        lot,
        line: state.line.clone(),
        recipe: params.recipe.unwrap_or_default(),
        camera: params.camera.unwrap_or_else(|| "upload".into()),
        model_name: found.model.name.clone(),
        model_sha256: found.model.sha256.clone(),
        threshold: f64::from(found.threshold),
        score: f64::from(found.score),
        verdict: found.verdict,
        regions_json,
        image_ref: None,
        overlay_ref: None,
        timings_json: serde_json::to_string(&found.timings).unwrap_or_default(),
        source: "manual".into(),
        defect_class: params.defect_class,
    };
    // A record the store would refuse is refused before its files are written: no file
    // without its record (the image quota counts recorded files).
    Store::check_inspection(&new)?;
    // The files are written and synced first, then recorded with the inspection in one
    // transaction.
    let mut images = vec![body];
    images.extend(overlay_png.map(Bytes::from));
    let recorded = crate::store::write_and_record_images(&state.image_dir, images, |files| {
        new.image_ref = files.first().map(|f| f.hash.clone());
        new.overlay_ref = files.get(1).map(|f| f.hash.clone());
        let (new, store) = (new.clone(), &state.store);
        let (quality, actor) = (&state.quality, &user.username);
        async move {
            store
                .record_inspection_with_images(&new, &files, quality, actor)
                .await
        }
    })
    .await?;
    let image_ref = new.image_ref.clone().unwrap_or_default();
    let overlay_ref = new.overlay_ref.clone();
    Ok((
        StatusCode::CREATED,
        Json(UploadAnswer {
            id: recorded.inspection_id,
            score: new.score,
            verdict: new.verdict.as_str().into(),
            threshold: new.threshold,
            regions: found.regions.clone(),
            model_name: new.model_name,
            model_sha256: new.model_sha256,
            image: format!("/api/v1/images/{image_ref}"),
            overlay: overlay_ref.map(|h| format!("/api/v1/images/{h}")),
            task: recorded.task.map(|t| t.id),
            raised_ncr: recorded.raised_ncr,
            task_refused: recorded.task_refused,
        }),
    ))
}

/// Inspection listing filter; `cursor` is the `next_cursor` of the previous page.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// From this time on (Unix ms, inclusive).
    pub from_ms: Option<i64>,
    /// Before this time (Unix ms, exclusive).
    pub to_ms: Option<i64>,
    #[param(value_type = Option<String>, example = "defect")]
    pub verdict: Option<Verdict>,
    pub lot: Option<String>,
    pub camera: Option<String>,
    pub recipe: Option<String>,
    /// At most this many (1 to 1000, default 50).
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

/// A page of inspections.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InspectionPage {
    pub items: Vec<InspectionView>,
    /// Pass as `cursor` for the next page; none on the last page.
    pub next_cursor: Option<String>,
}

/// Inspections, newest first, filtered and paged by cursor.
#[utoipa::path(get, path = "/api/v1/inspections", tag = "inspections", params(ListQuery),
    responses((status = 200, body = InspectionPage), (status = 400)))]
pub(super) async fn list(
    State(state): State<ApiState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<InspectionPage>, ApiError> {
    caller.require(ALL, "read inspections")?;
    let limit = ApiError::page_size(q.limit, 50, 1000)?;
    let before_id = q
        .cursor
        .as_deref()
        .map(|c| {
            c.parse::<i64>()
                .map_err(|_| ApiError::bad("cursor", "not a cursor given by this API"))
        })
        .transpose()?;
    let filter = InspectionFilter {
        from_ms: q.from_ms,
        to_ms: q.to_ms,
        verdict: q.verdict,
        lot: q.lot,
        camera: q.camera,
        recipe: q.recipe,
        before_id,
        after_id: None,
        limit,
    };
    let items: Vec<InspectionView> = state
        .store
        .list_inspections(&filter)
        .await?
        .into_iter()
        .map(InspectionView::from)
        .collect();
    let next_cursor = (items.len() as i64 == limit)
        .then(|| items.last().map(|i| i.id.to_string()))
        .flatten();
    Ok(Json(InspectionPage { items, next_cursor }))
}

/// One inspection.
#[utoipa::path(get, path = "/api/v1/inspections/{id}", tag = "inspections",
    params(("id" = i64, Path)), responses((status = 200, body = InspectionView), (status = 404)))]
pub(super) async fn inspection(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<Json<InspectionView>, ApiError> {
    caller.require(ALL, "read inspections")?;
    Ok(Json(state.store.inspection(id).await?.into()))
}

/// A stored image or overlay, by its SHA-256.
#[utoipa::path(get, path = "/api/v1/images/{hash}", tag = "inspections",
    params(("hash" = String, Path, description = "SHA-256, 64 hexadecimal digits")),
    responses((status = 200, content_type = "image/png", body = Vec<u8>), (status = 404),
        (status = 410, description = "removed by image retention; the records keep its reference"),
        (status = 500, description = "its file no longer holds what its SHA-256 names (altered or damaged on disk): not served")))]
pub(super) async fn image(
    State(state): State<ApiState>,
    caller: Caller,
    Path(hash): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(ALL, "read images")?;
    let hash = hash.to_ascii_lowercase();
    let Some(path) = image_path(&state.image_dir, &hash) else {
        return Err(ApiError::bad("hash", "must be 64 hexadecimal digits"));
    };
    // Checked against its name: a file altered or damaged on disk is not served as evidence.
    let bytes = match read_verified(&state.image_dir, &hash).await? {
        Some(bytes) => bytes,
        // Say why it is not there: never stored, or removed by image retention (the
        // inspection records keep the reference). A record still live without its file is
        // looked up again once writers have committed: retention removes the file before its
        // record's commit.
        None => {
            let deleted = match state.store.image_deleted_at(&hash).await? {
                Some(None) => state.store.image_deleted_at_settled(&hash).await?,
                other => other,
            };
            match deleted {
                Some(Some(at)) => {
                    return Err(ApiError::Gone(format!(
                        "image {hash} was removed by image retention at {} \
                         (quality.image_retention_days, quality.image_quota_bytes); the records \
                         that name it are kept",
                        crate::quality::format_ms(at)
                    )));
                }
                Some(None) => match read_verified(&state.image_dir, &hash).await? {
                    // Recorded again, and written, while retention was removing it.
                    Some(bytes) => bytes,
                    None => {
                        tracing::error!(image = %hash, path = %path.display(), "An image recorded as stored has no file.");
                        return Err(ApiError::NotFound(format!("the file of image {hash}")));
                    }
                },
                None => return Err(ApiError::NotFound(format!("image {hash}"))),
            }
        }
    };
    let media = match image::guess_format(&bytes) {
        Ok(image::ImageFormat::Png) => "image/png",
        Ok(image::ImageFormat::Jpeg) => "image/jpeg",
        _ => "application/octet-stream",
    };
    // Content-addressed: the bytes behind a hash never change.
    Ok((
        [
            (header::CONTENT_TYPE, media),
            (
                header::CACHE_CONTROL,
                "private, max-age=31536000, immutable",
            ),
        ],
        bytes,
    )
        .into_response())
}

/// Summary window.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SummaryQuery {
    /// Count inspections from this time on (Unix ms); default: the last hour.
    pub since_ms: Option<i64>,
}

/// Inspections and reject rate per camera.
#[utoipa::path(get, path = "/api/v1/cameras/summary", tag = "inspections", params(SummaryQuery),
    responses((status = 200, body = Vec<CameraSummary>)))]
pub(super) async fn camera_summary(
    State(state): State<ApiState>,
    caller: Caller,
    Query(q): Query<SummaryQuery>,
) -> Result<Json<Vec<CameraSummary>>, ApiError> {
    caller.require(ALL, "read inspections")?;
    let since = q
        .since_ms
        .unwrap_or_else(|| crate::quality::now_ms() - 3_600_000);
    Ok(Json(state.store.camera_summary(since).await?))
}

/// Fires a trigger on a camera of the live pipeline (when the API runs beside the cameras).
/// The trigger is journalled before it is acknowledged and answered exactly once.
#[utoipa::path(post, path = "/api/v1/triggers", tag = "triggers", request_body = Trigger,
    responses((status = 202, body = TriggerAccepted),
        (status = 404, description = "no such camera"),
        (status = 409, description = "the camera is not triggered, or no cameras run here"),
        (status = 503, description = "shutting down, or the journal cannot be written")))]
pub(super) async fn trigger(
    State(state): State<ApiState>,
    caller: Caller,
    body: Result<Json<Trigger>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    caller.require(ALL, "fire triggers")?;
    let Json(trigger) = body.map_err(|r| json_rejection(r, &state))?;
    let Some(pipeline) = &state.pipeline else {
        return Err(ApiError::NoPipeline);
    };
    trigger
        .check_labels()
        .map_err(|(field, message)| ApiError::bad(field, message))?;
    Ok(match pipeline.triggers.fire(trigger).await {
        Ok(accepted) => (StatusCode::ACCEPTED, Json(accepted)).into_response(),
        Err(e) => e.into_response(),
    })
}
