//! Lots: where each stands, holds and release.

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::auth::{ALL, Caller, INSPECTORS, QA};
use super::extract::{Path, Query, json_rejection};
use super::{ApiError, ApiState};
use crate::store::LotStatus;

/// Lot list filter.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LotQuery {
    /// Only lots on hold.
    pub held: Option<bool>,
    /// At most this many (default 200, at most 1000).
    pub limit: Option<i64>,
}

/// Lots that were held or released, most recent first.
#[utoipa::path(get, path = "/api/v1/lots", tag = "lots", params(LotQuery),
    responses((status = 200, body = Vec<LotStatus>)))]
pub(super) async fn lots(
    State(state): State<ApiState>,
    caller: Caller,
    Query(q): Query<LotQuery>,
) -> Result<Json<Vec<LotStatus>>, ApiError> {
    caller.require(ALL, "read lots")?;
    Ok(Json(
        state
            .store
            .lots(
                q.held.unwrap_or(false),
                ApiError::page_size(q.limit, 200, 1000)?,
            )
            .await?,
    ))
}

/// Where a lot stands: hold, release and the NCRs still open against it.
#[utoipa::path(get, path = "/api/v1/lots/{lot}", tag = "lots", params(("lot" = String, Path)),
    responses((status = 200, body = LotStatus)))]
pub(super) async fn lot(
    State(state): State<ApiState>,
    caller: Caller,
    Path(lot): Path<String>,
) -> Result<Json<LotStatus>, ApiError> {
    caller.require(ALL, "read lots")?;
    Ok(Json(state.store.lot(&lot).await?))
}

/// Why a lot is held.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HoldForm {
    pub reason: String,
}

/// Puts a lot on hold: it may not ship until QA releases it (audited with the reason).
#[utoipa::path(post, path = "/api/v1/lots/{lot}/hold", tag = "lots", params(("lot" = String, Path)),
    request_body = HoldForm, responses((status = 200, body = LotStatus), (status = 403), (status = 422)))]
pub(super) async fn hold(
    State(state): State<ApiState>,
    caller: Caller,
    Path(lot): Path<String>,
    body: Result<Json<HoldForm>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<LotStatus>, ApiError> {
    let user = caller.require(INSPECTORS, "hold lots")?;
    let Json(form) = body.map_err(|r| json_rejection(r, &state))?;
    crate::quality::check_text("reason", &form.reason).map_err(|message| ApiError::BadRequest {
        field: "reason",
        message,
    })?;
    Ok(Json(state.store.hold_lot(&lot, user, &form.reason).await?))
}

/// Releases a lot for shipment (QA); refused with 409 while an NCR against it is open.
#[utoipa::path(post, path = "/api/v1/lots/{lot}/release", tag = "lots", params(("lot" = String, Path)),
    responses((status = 200, body = LotStatus), (status = 403), (status = 409)))]
pub(super) async fn release(
    State(state): State<ApiState>,
    caller: Caller,
    Path(lot): Path<String>,
) -> Result<Json<LotStatus>, ApiError> {
    let user = caller.require(QA, "release lots")?;
    state.store.release_lot(&lot, user).await?;
    Ok(Json(state.store.lot(&lot).await?))
}
