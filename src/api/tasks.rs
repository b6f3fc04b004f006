//! Secondary-inspection tasks: list, claim, decide.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::auth::{INSPECTORS, authorize};
use super::{ApiError, ApiState};
use crate::quality::{TaskAction, TaskState};

/// Task list filter.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskQuery {
    pub state: Option<TaskState>,
    pub limit: Option<i64>,
}

pub(super) async fn tasks(
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

pub(super) async fn claim(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
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

pub(super) async fn decide(
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
