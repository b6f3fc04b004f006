//! Models in service: what each slot serves, and activation of a new package (admin).

use std::path::PathBuf;

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{ADMIN, ALL, Caller};
use super::{ApiError, ApiState};
use crate::model::registry::{ActivationError, ActivationRequest, activate as activate_model};
use crate::store::ModelActivation;

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
    let Json(form) = body.map_err(|r| ApiError::BadRequest {
        field: "body",
        message: r.body_text(),
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
