//! Secondary-inspection tasks: list, show, claim, decide.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{Caller, INSPECTORS};
use super::extract::{Path, Query, json_rejection};
use super::inspections::InspectionView;
use super::{ApiError, ApiState};
use crate::quality::{TaskAction, TaskState};
use crate::store::Task;

/// A task with the names of who claimed and decided it.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskView {
    #[serde(flatten)]
    pub task: Task,
    pub claimed_by_username: Option<String>,
    pub decided_by_username: Option<String>,
}

async fn views(state: &ApiState, tasks: Vec<Task>) -> Result<Vec<TaskView>, ApiError> {
    let names = state.store.user_names().await?;
    let name = |id: Option<i64>| id.and_then(|id| names.get(&id).cloned());
    Ok(tasks
        .into_iter()
        .map(|task| TaskView {
            claimed_by_username: name(task.claimed_by),
            decided_by_username: name(task.decided_by),
            task,
        })
        .collect())
}

async fn view(state: &ApiState, task: Task) -> Result<TaskView, ApiError> {
    Ok(views(state, vec![task]).await?.remove(0))
}

/// Task list filter.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TaskQuery {
    /// Default: pending.
    #[param(value_type = Option<String>, example = "pending")]
    pub state: Option<TaskState>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<i64>,
}

/// Tasks in one state, oldest first: the inspectors' work queue.
#[utoipa::path(get, path = "/api/v1/tasks", tag = "tasks", params(TaskQuery),
    responses((status = 200, body = Vec<TaskView>), (status = 403)))]
pub(super) async fn tasks(
    State(state): State<ApiState>,
    caller: Caller,
    Query(q): Query<TaskQuery>,
) -> Result<Json<Vec<TaskView>>, ApiError> {
    caller.require(INSPECTORS, "list tasks")?;
    let list = state
        .store
        .tasks_in_state(
            q.state.unwrap_or(TaskState::Pending),
            ApiError::page_size(q.limit, 100, 1000)?,
        )
        .await?;
    Ok(Json(views(&state, list).await?))
}

/// A task with the inspection it is about.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskDetail {
    pub task: TaskView,
    pub inspection: InspectionView,
}

/// One task and its inspection (image, overlay, score, regions).
#[utoipa::path(get, path = "/api/v1/tasks/{id}", tag = "tasks", params(("id" = i64, Path)),
    responses((status = 200, body = TaskDetail), (status = 404)))]
pub(super) async fn task(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<Json<TaskDetail>, ApiError> {
    caller.require(INSPECTORS, "read tasks")?;
    let task = state.store.task(id).await?;
    let inspection = state.store.inspection(task.inspection_id).await?.into();
    Ok(Json(TaskDetail {
        task: view(&state, task).await?,
        inspection,
    }))
}

/// Claims the oldest pending task; 204 when the queue is empty.
#[utoipa::path(post, path = "/api/v1/tasks/claim", tag = "tasks",
    responses((status = 200, body = TaskView), (status = 204, description = "no pending task")))]
pub(super) async fn claim_next(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let user = caller.require(INSPECTORS, "claim tasks")?;
    Ok(match state.store.claim_next_task(user).await? {
        Some(task) => Json(view(&state, task).await?).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

/// Claims one task (it must be pending).
#[utoipa::path(post, path = "/api/v1/tasks/{id}/claim", tag = "tasks", params(("id" = i64, Path)),
    responses((status = 200, body = TaskView), (status = 404), (status = 409), (status = 422)))]
pub(super) async fn claim(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<Json<TaskView>, ApiError> {
    let user = caller.require(INSPECTORS, "claim tasks")?;
    let task = state.store.claim_task(id, user).await?;
    Ok(Json(view(&state, task).await?))
}

/// A decision on a claimed task.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    /// `confirm_defect`, `override_good`, `escalate` or `release`.
    #[schema(value_type = String, example = "confirm_defect")]
    pub action: TaskAction,
    pub comment: Option<String>,
}

/// What a decision did.
#[derive(Debug, Serialize, ToSchema)]
pub struct DecisionAnswer {
    pub task: TaskView,
    /// The NCR raised when a confirmed defect is of a critical class.
    pub raised_ncr: Option<i64>,
}

/// Decides a task the caller has claimed: confirm the defect, override to good (with a
/// comment), escalate to QA, or release it back to the queue.
#[utoipa::path(post, path = "/api/v1/tasks/{id}/decision", tag = "tasks", params(("id" = i64, Path)),
    request_body = Decision,
    responses((status = 200, body = DecisionAnswer), (status = 404), (status = 409), (status = 422)))]
pub(super) async fn decide(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<i64>,
    body: Result<Json<Decision>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<DecisionAnswer>, ApiError> {
    let user = caller.require(INSPECTORS, "decide tasks")?;
    let Json(decision) = body.map_err(|r| json_rejection(r, &state))?;
    if let Some(comment) = &decision.comment {
        crate::quality::check_text("comment", comment).map_err(|message| ApiError::BadRequest {
            field: "comment",
            message,
        })?;
    }
    if decision.action == TaskAction::Claim {
        return Err(ApiError::BadRequest {
            field: "action",
            message: "claim with POST /api/v1/tasks/{id}/claim".into(),
        });
    }
    let (task, raised_ncr) = state
        .store
        .act_on_task(
            id,
            user,
            decision.action,
            decision.comment.as_deref().filter(|c| !c.trim().is_empty()),
            &state.quality,
        )
        .await?;
    Ok(Json(DecisionAnswer {
        task: view(&state, task).await?,
        raised_ncr,
    }))
}
