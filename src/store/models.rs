//! Model activations: the append-only record of which model package each slot must serve.
//!
//! A row is written, with its audit entry in the same transaction, for every activation and
//! every refusal. The newest `active` row of a slot is what every service instance sharing the
//! database follows ([`crate::model::registry::follow`]).

use sqlx::Row as _;
use sqlx::any::AnyRow;

use super::{SYSTEM_ACTOR, Store, StoreError, db};
use crate::quality::audit::NewAuditEntry;
use crate::quality::now_ms;

/// Whether an activation put the package into service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ActivationState {
    Active,
    Refused,
}

impl ActivationState {
    fn as_str(self) -> &'static str {
        match self {
            ActivationState::Active => "active",
            ActivationState::Refused => "refused",
        }
    }

    /// The action of the audit entry that records it.
    pub(super) fn action(self) -> &'static str {
        match self {
            ActivationState::Active => "model.activate",
            ActivationState::Refused => "model.refuse",
        }
    }

    fn parse(s: &str) -> Option<ActivationState> {
        match s {
            "active" => Some(ActivationState::Active),
            "refused" => Some(ActivationState::Refused),
            _ => None,
        }
    }
}

/// An activation to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewModelActivation {
    /// A camera's default model or a recipe name.
    pub slot: String,
    /// The package directory, as the services will open it.
    pub package_path: String,
    /// The package's SHA-256 (empty when the package could not even be read).
    pub sha256: String,
    pub state: ActivationState,
    /// Why it was refused.
    pub reason: Option<String>,
    /// Who asked (`cli:<user>`, an API user, …).
    pub actor: String,
}

/// A recorded activation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct ModelActivation {
    pub id: i64,
    pub slot: String,
    pub package_path: String,
    pub sha256: String,
    pub state: ActivationState,
    pub reason: Option<String>,
    pub actor: String,
    pub at_ms: i64,
}

/// The model a `model.activate` or `model.refuse` entry names; `audit verify` compares each
/// activation with it.
pub(super) fn activation_text(sha256: &str, package_path: &str) -> String {
    format!("{sha256} {package_path}")
}

pub(super) const COLUMNS: &str = "id, slot, package_path, sha256, state, reason, actor, at_ms";

pub(super) fn activation_row(row: &AnyRow) -> Result<ModelActivation, StoreError> {
    let e = || db("decode a model activation");
    let state: String = row.try_get("state").map_err(e())?;
    Ok(ModelActivation {
        id: row.try_get("id").map_err(e())?,
        slot: row.try_get("slot").map_err(e())?,
        package_path: row.try_get("package_path").map_err(e())?,
        sha256: row.try_get("sha256").map_err(e())?,
        state: ActivationState::parse(&state).ok_or(StoreError::Corrupt {
            column: "model_activations.state",
            value: state,
        })?,
        reason: row.try_get("reason").map_err(e())?,
        actor: row.try_get("actor").map_err(e())?,
        at_ms: row.try_get("at_ms").map_err(e())?,
    })
}

impl Store {
    /// Records an activation or a refusal and its audit entry (`model.activate` or
    /// `model.refuse`, old value: the slot's model until now) in one transaction.
    pub async fn record_model_activation(
        &self,
        new: NewModelActivation,
    ) -> Result<ModelActivation, StoreError> {
        if new.slot.trim().is_empty() || new.slot.len() > 200 {
            return Err(StoreError::Invalid(format!(
                "model slot {:?}: must not be empty and at most 200 bytes",
                new.slot
            )));
        }
        let now = now_ms();
        let mut tx = self.begin().await?;
        let previous = sqlx::query(
            "SELECT sha256, package_path FROM model_activations \
             WHERE slot = $1 AND state = 'active' ORDER BY id DESC LIMIT 1",
        )
        .bind(&new.slot)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db("read the active model"))?
        .map(|row| {
            let sha: String = row.try_get(0).unwrap_or_default();
            let path: String = row.try_get(1).unwrap_or_default();
            format!("{sha} {path}")
        });
        let id: i64 = sqlx::query(
            "INSERT INTO model_activations (slot, package_path, sha256, state, reason, actor, at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        )
        .bind(&new.slot)
        .bind(&new.package_path)
        .bind(&new.sha256)
        .bind(new.state.as_str())
        .bind(new.reason.clone())
        .bind(&new.actor)
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(db("record a model activation"))?
        .try_get(0)
        .map_err(db("record a model activation"))?;
        let action = new.state.action();
        self.append_audit(
            &mut tx,
            now,
            vec![NewAuditEntry {
                actor: new.actor.clone(),
                action: action.into(),
                entity: "model_slot".into(),
                entity_id: new.slot.clone(),
                old_value: previous,
                new_value: Some(activation_text(&new.sha256, &new.package_path)),
                reason: new.reason.clone(),
            }],
        )
        .await?;
        tx.commit().await.map_err(db("commit a model activation"))?;
        Ok(ModelActivation {
            id,
            slot: new.slot,
            package_path: new.package_path,
            sha256: new.sha256,
            state: new.state,
            reason: new.reason,
            actor: new.actor,
            at_ms: now,
        })
    }

    /// Audits (`model.load_failed`) that this service instance could not validate or load an
    /// activated model, so that a replica silently left on the old model shows in the trail.
    /// `instance` names the host or pod; the slot's activation itself is left as it is.
    pub async fn record_model_load_failure(
        &self,
        slot: &str,
        activation_id: Option<i64>,
        sha256: &str,
        instance: &str,
        error: &str,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        let activation = activation_id.map_or_else(
            || "an activation".to_owned(),
            |id| format!("activation {id}"),
        );
        self.append_audit(
            &mut tx,
            now,
            vec![NewAuditEntry {
                actor: SYSTEM_ACTOR.into(),
                action: "model.load_failed".into(),
                entity: "model_slot".into(),
                entity_id: slot.to_owned(),
                old_value: None,
                new_value: Some(sha256.to_owned()),
                reason: Some(format!(
                    "{activation} could not be served on {instance}; the previous model keeps serving: {error}"
                )),
            }],
        )
        .await?;
        tx.commit()
            .await
            .map_err(db("commit a model load failure"))?;
        Ok(())
    }

    /// The newest `active` activation of every slot, ordered by slot.
    pub async fn active_models(&self) -> Result<Vec<ModelActivation>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM model_activations WHERE id IN \
             (SELECT MAX(id) FROM model_activations WHERE state = 'active' GROUP BY slot) \
             ORDER BY slot"
        ))
        .fetch_all(self.reader())
        .await
        .map_err(db("read the active models"))?;
        rows.iter().map(activation_row).collect()
    }

    /// Every activation and refusal of `slot`, oldest first.
    pub async fn model_activations(&self, slot: &str) -> Result<Vec<ModelActivation>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM model_activations WHERE slot = $1 ORDER BY id"
        ))
        .bind(slot)
        .fetch_all(self.reader())
        .await
        .map_err(db("read model activations"))?;
        rows.iter().map(activation_row).collect()
    }
}
