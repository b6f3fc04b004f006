//! Non-conformance records and lots.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};

use super::auth::{ALL, QA, authorize};
use super::{ApiError, ApiState};

pub(super) async fn ncr(
    State(state): State<ApiState>,
    Path(id): Path<i64>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&state, &headers, ALL, "read NCRs").await?;
    let ncr = state.store.ncr(id).await?;
    let history = state.store.ncr_transitions(id).await?;
    Ok(Json(serde_json::json!({ "ncr": ncr, "history": history })))
}

pub(super) async fn release(
    State(state): State<ApiState>,
    Path(lot): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let user = authorize(&state, &headers, QA, "release lots").await?;
    state.store.release_lot(&lot, &user).await?;
    Ok(StatusCode::NO_CONTENT)
}
