//! The trigger journal: a trigger is written here before the caller is told it was accepted,
//! and answered exactly once.
//!
//! Invariants:
//! - a trigger id is accepted once: firing the same id again (an MQTT redelivery, a client
//!   retrying after a timeout) is answered with the first one's state and inspects nothing;
//! - an answer moves a trigger out of `pending` once; a second answer changes nothing;
//! - the answer of an inspected trigger commits with its inspection record
//!   ([`Store::record_inspection_for_trigger`]), so a crash never leaves one without the other;
//! - a trigger still pending long after it came (`pipeline.orphan_trigger_after_ms`) was
//!   accepted by an instance that stopped before answering it ([`Store::pending_triggers`]):
//!   any instance sharing the store answers it "late", so a crashed replica's triggers are
//!   answered by the others, or by itself when it restarts.

use sqlx::any::AnyRow;
use sqlx::{Any, Row as _, Transaction};

use super::{Store, StoreError, db};

/// A trigger as the journal keeps it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct JournalledTrigger {
    pub id: String,
    pub camera: String,
    pub part_id: Option<String>,
    pub lot: Option<String>,
    pub recipe: Option<String>,
    pub received_at_ms: i64,
    /// `pending`, `inspected`, `late`, `busy` or `error`.
    pub state: String,
    pub reason: Option<String>,
    pub inspection_id: Option<i64>,
    pub answered_at_ms: Option<i64>,
}

/// What journalling a trigger found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Journalled {
    /// New: it is pending now and must be served.
    New,
    /// The id was already journalled: it must not be served again.
    Duplicate(Box<JournalledTrigger>),
}

/// How a trigger was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriggerAnswer {
    Late,
    Busy,
    Error,
}

impl TriggerAnswer {
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerAnswer::Late => "late",
            TriggerAnswer::Busy => "busy",
            TriggerAnswer::Error => "error",
        }
    }
}

const COLUMNS: &str = "id, camera, part_id, lot, recipe, received_at_ms, state, reason, inspection_id, answered_at_ms";

fn trigger_row(row: &AnyRow) -> Result<JournalledTrigger, StoreError> {
    let d = || db("decode a trigger");
    Ok(JournalledTrigger {
        id: row.try_get("id").map_err(d())?,
        camera: row.try_get("camera").map_err(d())?,
        part_id: row.try_get("part_id").map_err(d())?,
        lot: row.try_get("lot").map_err(d())?,
        recipe: row.try_get("recipe").map_err(d())?,
        received_at_ms: row.try_get("received_at_ms").map_err(d())?,
        state: row.try_get("state").map_err(d())?,
        reason: row.try_get("reason").map_err(d())?,
        inspection_id: row.try_get("inspection_id").map_err(d())?,
        answered_at_ms: row.try_get("answered_at_ms").map_err(d())?,
    })
}

/// Longest trigger id, part id, lot or recipe accepted (they come from other systems): what
/// an inspection record may hold.
pub const MAX_TRIGGER_FIELD_BYTES: usize = crate::quality::MAX_LABEL_BYTES;

impl Store {
    /// Writes a new trigger as pending (durable when this returns), or finds that its id was
    /// journalled before.
    pub async fn journal_trigger(
        &self,
        id: &str,
        camera: &str,
        part_id: Option<&str>,
        lot: Option<&str>,
        recipe: Option<&str>,
        received_at_ms: i64,
    ) -> Result<Journalled, StoreError> {
        for (field, value) in [
            ("id", Some(id)),
            ("camera", Some(camera)),
            ("part_id", part_id),
            ("lot", lot),
            ("recipe", recipe),
        ] {
            if let Some(v) = value {
                crate::quality::check_label(field, v)
                    .map_err(|m| StoreError::Invalid(format!("trigger {m}")))?;
            }
        }
        let mut tx = self.begin().await?;
        if let Some(row) = sqlx::query(&format!("SELECT {COLUMNS} FROM triggers WHERE id = $1"))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db("look up a trigger"))?
        {
            return Ok(Journalled::Duplicate(Box::new(trigger_row(&row)?)));
        }
        sqlx::query(
            "INSERT INTO triggers (id, camera, part_id, lot, recipe, received_at_ms, state) \
             VALUES ($1, $2, $3, $4, $5, $6, 'pending')",
        )
        .bind(id)
        .bind(camera)
        .bind(part_id)
        .bind(lot)
        .bind(recipe)
        .bind(received_at_ms)
        .execute(&mut *tx)
        .await
        .map_err(db("journal a trigger"))?;
        tx.commit().await.map_err(db("journal a trigger"))?;
        Ok(Journalled::New)
    }

    /// Answers a pending trigger without an inspection (late, busy, error). Returns whether it
    /// was pending.
    pub async fn answer_trigger(
        &self,
        id: &str,
        answer: TriggerAnswer,
        reason: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let changed =
            Self::answer_trigger_in(&mut tx, id, answer.as_str(), Some(reason), None, now_ms)
                .await?;
        tx.commit().await.map_err(db("answer a trigger"))?;
        Ok(changed)
    }

    pub(crate) async fn answer_trigger_in(
        tx: &mut Transaction<'static, Any>,
        id: &str,
        state: &str,
        reason: Option<&str>,
        inspection_id: Option<i64>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE triggers SET state = $1, reason = $2, inspection_id = $3, answered_at_ms = $4 \
             WHERE id = $5 AND state = 'pending'",
        )
        .bind(state)
        .bind(reason)
        .bind(inspection_id)
        .bind(now_ms)
        .bind(id)
        .execute(&mut **tx)
        .await
        .map_err(db("answer a trigger"))?;
        Ok(done.rows_affected() == 1)
    }

    /// One trigger from the journal.
    pub async fn trigger(&self, id: &str) -> Result<Option<JournalledTrigger>, StoreError> {
        sqlx::query(&format!("SELECT {COLUMNS} FROM triggers WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.reader())
            .await
            .map_err(db("read a trigger"))?
            .as_ref()
            .map(trigger_row)
            .transpose()
    }

    /// Triggers not answered yet that came before `received_before_ms`, oldest first.
    pub async fn pending_triggers(
        &self,
        received_before_ms: i64,
    ) -> Result<Vec<JournalledTrigger>, StoreError> {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM triggers WHERE state = 'pending' AND received_at_ms < $1 \
             ORDER BY received_at_ms, id LIMIT 1000"
        ))
        .bind(received_before_ms)
        .fetch_all(self.reader())
        .await
        .map_err(db("read pending triggers"))?
        .iter()
        .map(trigger_row)
        .collect()
    }
}
