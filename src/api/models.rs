//! Models in service: what each slot serves, and activation of a new package (admin).

use std::path::PathBuf;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{ADMIN, ALL, Caller};
use super::extract::{Query, json_rejection};
use super::{ApiError, ApiState};
use crate::model::registry::{ActivationError, ActivationRequest, activate as activate_model};
use crate::model::report::ModelReport;
use crate::store::ModelActivation;
use utoipa::IntoParams;

/// A model slot configured here: a camera's default model, or one of its recipes.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct SlotConfig {
    /// `<camera>` or `<camera>/<recipe>`: what `models activate --slot` names.
    pub slot: String,
    pub camera: String,
    pub recipe: Option<String>,
    /// The package in the configuration (an activation, if any, takes its place).
    #[schema(value_type = String)]
    pub model: PathBuf,
    pub threshold: Option<f32>,
}

/// A slot with the model activated for it.
#[derive(Debug, Serialize, ToSchema)]
pub struct SlotView {
    #[serde(flatten)]
    pub config: SlotConfig,
    /// The latest activation in the quality store, if any.
    pub active: Option<ModelActivation>,
}

/// Recipes and cameras configured here, each with the model it serves.
#[utoipa::path(get, path = "/api/v1/recipes", tag = "models",
    responses((status = 200, body = Vec<SlotView>)))]
pub(super) async fn recipes(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<Vec<SlotView>>, ApiError> {
    caller.require(ALL, "list recipes")?;
    let active = state.store.active_models().await?;
    Ok(Json(
        state
            .slots
            .iter()
            .map(|config| SlotView {
                active: active.iter().find(|a| a.slot == config.slot).cloned(),
                config: config.clone(),
            })
            .collect(),
    ))
}

/// Which model's contract to show.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ContractQuery {
    /// A slot (see `/api/v1/recipes`); none: the model that inspects manual uploads.
    pub slot: Option<String>,
}

/// What linesight sees in the model a slot serves: identity (SHA-256), files, ONNX opsets,
/// the detected contract (input, score and map tensors, batch), preprocessing, thresholds.
#[utoipa::path(get, path = "/api/v1/models/contract", tag = "models", params(ContractQuery),
    responses((status = 200, body = Object), (status = 404, description = "no such slot here"),
        (status = 503, description = "another report kept this one waiting past api.inference_timeout_ms")))]
pub(super) async fn contract(
    State(state): State<ApiState>,
    caller: Caller,
    Query(q): Query<ContractQuery>,
) -> Result<Json<ModelReport>, ApiError> {
    caller.require(ALL, "read model contracts")?;
    let dir = match &q.slot {
        None => state.upload_model.clone(),
        Some(slot) => {
            let config = state
                .slots
                .iter()
                .find(|c| &c.slot == slot)
                .ok_or_else(|| ApiError::NotFound(format!("model slot {slot:?}")))?;
            let active = state.store.active_models().await?;
            active
                .into_iter()
                .find(|a| &a.slot == slot)
                .map(|a| PathBuf::from(a.package_path))
                .unwrap_or_else(|| config.model.clone())
        }
    };
    // A report opens an ONNX Runtime session on the package and hashes its files: one at a
    // time per process, so that many readers at once cannot take the memory and cores the
    // inspections need. A reader that waits longer than an inspection may is told to retry.
    let wait = Duration::from_millis(state.config.inference_timeout_ms);
    let turn = tokio::time::timeout(wait, REPORTS.acquire())
        .await
        .map_err(|_| {
            ApiError::Unavailable(format!(
                "another model report was being built for api.inference_timeout_ms = {} ms; try again",
                state.config.inference_timeout_ms
            ))
        })?
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let v = state.validator.clone();
    let report = tokio::task::spawn_blocking(move || {
        // The turn ends with the build, also when the client has gone away meanwhile.
        let _turn = turn;
        ModelReport::build(v.runtime, &dir, &v.options)
            .map_err(|e| format!("cannot open {}: {e:#}", dir.display()))
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
    .map_err(ApiError::Internal)?;
    Ok(Json(report))
}

/// Model reports being built ([`contract`]): one at a time.
static REPORTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// The turn of model reports (tests hold it to see a report wait for it).
pub fn model_report_turn() -> &'static tokio::sync::Semaphore {
    &REPORTS
}

/// The model each slot (a camera's default model or a recipe) serves, as recorded.
#[utoipa::path(get, path = "/api/v1/models", tag = "models",
    responses((status = 200, body = Vec<ModelActivation>)))]
pub(super) async fn list(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<Vec<ModelActivation>>, ApiError> {
    caller.require(ALL, "list models")?;
    Ok(Json(state.store.active_models().await?))
}

/// A model package to put in service.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActivationForm {
    /// A camera's default model or a recipe name.
    pub slot: String,
    /// Package directory, at a path every service instance can read.
    #[schema(value_type = String)]
    pub package: PathBuf,
    /// Extra golden images (`good/` and `defect/` folders) that must get their verdict.
    #[schema(value_type = Option<String>)]
    pub golden: Option<PathBuf>,
}

/// The outcome of an activation.
#[derive(Debug, Serialize, ToSchema)]
pub struct ActivationAnswer {
    pub activation: ModelActivation,
    /// Time of the warm-up inference.
    pub warmup_ms: f64,
    /// Golden images checked (all matched).
    pub golden_checked: usize,
}

/// Validates a package (contract, warm-up inference, golden images) and makes it the model of
/// a slot; every running service follows. A package that fails validation is refused (422)
/// and the current model keeps serving. Audited either way.
#[utoipa::path(post, path = "/api/v1/models/activate", tag = "models", request_body = ActivationForm,
    responses((status = 200, body = ActivationAnswer), (status = 403),
        (status = 422, description = "refused: the current model keeps serving")))]
pub(super) async fn activate(
    State(state): State<ApiState>,
    caller: Caller,
    body: Result<Json<ActivationForm>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<ActivationAnswer>, ApiError> {
    let admin = caller.require(ADMIN, "activate models")?;
    let Json(form) = body.map_err(|r| json_rejection(r, &state))?;
    let known: Vec<String> = state.slots.iter().map(|s| s.slot.clone()).collect();
    crate::model::registry::check_slot(&known, &form.slot).map_err(|message| {
        ApiError::BadRequest {
            field: "slot",
            message,
        }
    })?;
    let request = ActivationRequest {
        slot: form.slot,
        package: form.package,
        golden: form.golden,
        actor: admin.username.clone(),
    };
    match activate_model(&state.store, &state.validator, request).await {
        Ok((activation, validated)) => Ok(Json(ActivationAnswer {
            activation,
            warmup_ms: validated.warmup_ms,
            golden_checked: validated.golden_checked,
        })),
        Err(ActivationError::Refused { reason, .. }) => Err(ApiError::Refused(reason)),
        Err(ActivationError::Store(e)) => Err(e.into()),
        Err(e @ ActivationError::Task(_)) => Err(ApiError::Internal(e.to_string())),
    }
}
