//! Inspections and secondary-inspection tasks.

use sqlx::any::AnyRow;
use sqlx::{Any, Row as _, Transaction};

use super::images::ImageFile;
use super::{Backend, SYSTEM_ACTOR, Store, StoreError, db};
use crate::quality::audit::NewAuditEntry;
use crate::quality::rules::{OpeningReason, opening_reason, reject_rate_exceeded};
use crate::quality::task::{self, TaskContext};
use crate::quality::{NewInspection, QualityConfig, TaskAction, TaskState, Verdict, now_ms};

use super::ncrs::{NcrSource, NewNcr};
use super::users::User;

/// A stored inspection.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct InspectionRecord {
    pub id: i64,
    pub at_ms: i64,
    #[serde(flatten)]
    pub inspection: NewInspection,
}

/// What recording one inspection caused.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedInspection {
    pub inspection_id: i64,
    /// The secondary-inspection task it opened, if any.
    pub task: Option<Task>,
    /// Why no task was opened although the rules asked for one (re-inspection cap).
    pub task_refused: Option<String>,
    /// The NCR raised because the lot's reject rate crossed the alert limit.
    pub raised_ncr: Option<i64>,
}

/// A secondary-inspection task.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Task {
    pub id: i64,
    pub inspection_id: i64,
    pub part_id: String,
    pub lot: String,
    pub opening_reason: String,
    pub state: TaskState,
    pub claimed_by: Option<i64>,
    pub decided_by: Option<i64>,
    pub decision_reason: Option<String>,
    pub version: i64,
}

const TASK_COLUMNS: &str = "id, inspection_id, part_id, lot, opening_reason, state, claimed_by, decided_by, decision_reason, version";

pub(super) fn task_row(row: &AnyRow) -> Result<Task, StoreError> {
    let d = || db("decode a task");
    let state: String = row.try_get("state").map_err(d())?;
    Ok(Task {
        id: row.try_get("id").map_err(d())?,
        inspection_id: row.try_get("inspection_id").map_err(d())?,
        part_id: row.try_get("part_id").map_err(d())?,
        lot: row.try_get("lot").map_err(d())?,
        opening_reason: row.try_get("opening_reason").map_err(d())?,
        state: TaskState::parse(&state).ok_or(StoreError::Corrupt {
            column: "tasks.state",
            value: state,
        })?,
        claimed_by: row.try_get("claimed_by").map_err(d())?,
        decided_by: row.try_get("decided_by").map_err(d())?,
        decision_reason: row.try_get("decision_reason").map_err(d())?,
        version: row.try_get("version").map_err(d())?,
    })
}

/// The recorded fields of an `inspections` row (the columns of [`NewInspection`]).
pub(crate) fn inspection_row(row: &AnyRow) -> Result<NewInspection, StoreError> {
    let d = || db("decode an inspection");
    let verdict: String = row.try_get("verdict").map_err(d())?;
    Ok(NewInspection {
        part_id: row.try_get("part_id").map_err(d())?,
        lot: row.try_get("lot").map_err(d())?,
        line: row.try_get("line").map_err(d())?,
        recipe: row.try_get("recipe").map_err(d())?,
        camera: row.try_get("camera").map_err(d())?,
        model_name: row.try_get("model_name").map_err(d())?,
        model_sha256: row.try_get("model_sha256").map_err(d())?,
        threshold: row.try_get("threshold").map_err(d())?,
        score: row.try_get("score").map_err(d())?,
        verdict: Verdict::parse(&verdict).ok_or(StoreError::Corrupt {
            column: "inspections.verdict",
            value: verdict,
        })?,
        regions_json: row.try_get("regions_json").map_err(d())?,
        image_ref: row.try_get("image_ref").map_err(d())?,
        overlay_ref: row.try_get("overlay_ref").map_err(d())?,
        timings_json: row.try_get("timings_json").map_err(d())?,
        source: row.try_get("source").map_err(d())?,
        defect_class: row.try_get("defect_class").map_err(d())?,
    })
}

/// 1 when part `$1` was found defective and not cleared since, not looking at inspection
/// `$2`; else 0. Found defective: a machine reject no inspector found good, or a defect an
/// inspector confirmed. Cleared: an inspector found a later inspection of it good. Counted in
/// inspection order (a task's decision belongs to its inspection); every lookup goes through
/// the part's index (`inspections_part`, `tasks_part`).
const FOUND_DEFECTIVE: &str = "SELECT COUNT(*) FROM (SELECT 1 AS one) AS here WHERE \
     COALESCE((SELECT MAX(i.id) FROM inspections i WHERE i.part_id = $1 AND i.id <> $2 AND ( \
       (i.verdict = 'defect' AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.part_id = $1 \
         AND t.inspection_id = i.id AND t.state = 'overridden_good')) \
       OR EXISTS (SELECT 1 FROM tasks t WHERE t.part_id = $1 AND t.inspection_id = i.id \
         AND t.state = 'confirmed'))), 0) \
     > COALESCE((SELECT MAX(t.inspection_id) FROM tasks t WHERE t.part_id = $1 \
       AND t.state = 'overridden_good'), 0)";

/// [`FOUND_DEFECTIVE`] for `part_id`, not looking at inspection `except`.
async fn found_defective<'e>(
    on: impl sqlx::Executor<'e, Database = Any>,
    part_id: &str,
    except: i64,
) -> Result<bool, StoreError> {
    Ok(count(
        sqlx::query(FOUND_DEFECTIVE)
            .bind(part_id)
            .bind(except)
            .fetch_one(on)
            .await
            .map_err(db("look for earlier rejects of the part"))?,
    )? > 0)
}

fn count(row: AnyRow) -> Result<i64, StoreError> {
    row.try_get::<i64, _>(0).map_err(db("count rows"))
}

impl Store {
    /// The refusal [`Store::record_inspection`] would give `new` for its fields, before
    /// anything is written: callers that write image files first check with it, so that no
    /// file is left without its record.
    pub fn check_inspection(new: &NewInspection) -> Result<(), StoreError> {
        new.validate()
            .map_err(|m| StoreError::Invalid(format!("inspection: {m}")))
    }

    /// Whether `part_id` was found defective and not cleared since (a machine reject no
    /// inspector found good, or a defect an inspector confirmed, with no later inspection of it
    /// found good by an inspector): its next pass goes to a person.
    pub async fn part_found_defective(&self, part_id: &str) -> Result<bool, StoreError> {
        found_defective(self.reader(), part_id, -1).await
    }

    /// Stores one inspection result and, in the same transaction, applies the opening rules
    /// (reject, uncertain score, accept sampling, re-inspection cap) and the lot's reject-rate
    /// alert. `actor` is the user name behind a manual upload, or `system`.
    pub async fn record_inspection(
        &self,
        new: &NewInspection,
        cfg: &QualityConfig,
        actor: &str,
    ) -> Result<RecordedInspection, StoreError> {
        self.record_inspection_for_trigger(new, cfg, actor, None, &[])
            .await
    }

    /// [`Store::record_inspection`] for an inspection whose image files (written by
    /// [`super::images::write_images`]; `new.image_ref` and `overlay_ref` name them) are
    /// recorded in the same transaction: one commit for the upload, and no image row without
    /// its inspection.
    pub async fn record_inspection_with_images(
        &self,
        new: &NewInspection,
        files: &[ImageFile],
        cfg: &QualityConfig,
        actor: &str,
    ) -> Result<RecordedInspection, StoreError> {
        self.record_inspection_for_trigger(new, cfg, actor, None, files)
            .await
    }

    /// [`Store::record_inspection`] for a journalled trigger: the trigger is answered
    /// `inspected` in the same transaction (see [`super::triggers`]), and the image `files`
    /// (already written and synced) are recorded in it too.
    pub async fn record_inspection_for_trigger(
        &self,
        new: &NewInspection,
        cfg: &QualityConfig,
        actor: &str,
        trigger_id: Option<&str>,
        files: &[ImageFile],
    ) -> Result<RecordedInspection, StoreError> {
        Self::check_inspection(new)?;
        let now = now_ms();
        let mut tx = self.begin().await?;
        Self::record_images(&mut tx, files, now).await?;
        let id: i64 = sqlx::query(
            "INSERT INTO inspections (part_id, lot, line, recipe, camera, model_name, model_sha256, threshold, score, verdict, \
             regions_json, image_ref, overlay_ref, timings_json, source, defect_class, at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) RETURNING id",
        )
        .bind(&new.part_id)
        .bind(&new.lot)
        .bind(&new.line)
        .bind(&new.recipe)
        .bind(&new.camera)
        .bind(&new.model_name)
        .bind(&new.model_sha256)
        .bind(new.threshold)
        .bind(new.score)
        .bind(new.verdict.as_str())
        .bind(&new.regions_json)
        .bind(&new.image_ref)
        .bind(&new.overlay_ref)
        .bind(&new.timings_json)
        .bind(&new.source)
        .bind(&new.defect_class)
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(db("store an inspection"))?
        .try_get(0)
        .map_err(db("store an inspection"))?;
        let mut audit = vec![NewAuditEntry {
            actor: actor.into(),
            action: "inspection.create".into(),
            entity: "inspection".into(),
            entity_id: id.to_string(),
            old_value: None,
            new_value: Some(serde_json::to_string(new).unwrap_or_default()),
            reason: None,
        }];

        // The lot's accepted parts before this one: one counter row per lot (migration 0007),
        // not a count over the lot's inspections, which grew with the lot.
        let accepts_before = if new.verdict == Verdict::Good {
            count(
                sqlx::query(
                    "INSERT INTO lot_counts (lot, accepted) VALUES ($1, 1) \
                     ON CONFLICT (lot) DO UPDATE SET accepted = lot_counts.accepted + 1 \
                     RETURNING accepted",
                )
                .bind(&new.lot)
                .fetch_one(&mut *tx)
                .await
                .map_err(db("count accepted parts"))?,
            )? - 1
        } else {
            // A reject opens a task whatever the count; nothing to count.
            0
        };
        let mut recorded = RecordedInspection {
            inspection_id: id,
            task: None,
            task_refused: None,
            raised_ncr: None,
        };
        // Its pass goes to a person.
        let found_defective_before =
            new.verdict != Verdict::Defect && found_defective(&mut *tx, &new.part_id, id).await?;
        if let Some(reason) = opening_reason(
            cfg,
            new.verdict,
            new.score,
            new.threshold,
            accepts_before as u64,
            found_defective_before,
        ) {
            let previous = count(
                sqlx::query("SELECT COUNT(*) FROM tasks WHERE part_id = $1")
                    .bind(&new.part_id)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db("count secondary inspections"))?,
            )?;
            if task::reinspection_allowed(previous as u32, cfg.reinspection_cap) {
                let row = sqlx::query(&format!(
                    "INSERT INTO tasks (inspection_id, part_id, lot, opening_reason, state, version, created_at_ms, updated_at_ms) \
                     VALUES ($1, $2, $3, $4, 'pending', 0, $5, $5) RETURNING {TASK_COLUMNS}"
                ))
                .bind(id)
                .bind(&new.part_id)
                .bind(&new.lot)
                .bind(reason.as_str())
                .bind(now)
                .fetch_one(&mut *tx)
                .await
                .map_err(db("open a secondary inspection"))?;
                let t = task_row(&row)?;
                audit.push(NewAuditEntry {
                    actor: SYSTEM_ACTOR.into(),
                    action: "task.open".into(),
                    entity: "task".into(),
                    entity_id: t.id.to_string(),
                    old_value: None,
                    new_value: Some(crate::quality::task::opening_text(id, &new.part_id)),
                    reason: Some(reason.as_str().into()),
                });
                recorded.task = Some(t);
            } else {
                let why = if reason == OpeningReason::Retest {
                    let (why, raised) =
                        Self::retest_past_cap(&mut tx, new, cfg, id, previous, now, &mut audit)
                            .await?;
                    recorded.raised_ncr = raised;
                    why
                } else {
                    format!(
                        "part {} already had {previous} secondary inspections (cap {}): the machine verdict stands",
                        new.part_id, cfg.reinspection_cap
                    )
                };
                audit.push(NewAuditEntry {
                    actor: SYSTEM_ACTOR.into(),
                    action: "task.refused".into(),
                    entity: "inspection".into(),
                    entity_id: id.to_string(),
                    old_value: None,
                    new_value: None,
                    reason: Some(why.clone()),
                });
                recorded.task_refused = Some(why);
            }
        }

        if new.verdict == Verdict::Defect {
            let rows = sqlx::query(
                "SELECT verdict FROM inspections WHERE lot = $1 ORDER BY id DESC LIMIT $2",
            )
            .bind(&new.lot)
            .bind(i64::from(cfg.reject_rate_window))
            .fetch_all(&mut *tx)
            .await
            .map_err(db("compute the reject rate"))?;
            let total = rows.len() as u64;
            let rejects = rows
                .iter()
                .filter(|r| r.try_get::<String, _>(0).is_ok_and(|v| v == "defect"))
                .count() as u64;
            if reject_rate_exceeded(cfg, rejects, total) {
                let already = count(
                    sqlx::query(
                        "SELECT COUNT(*) FROM ncrs WHERE lot = $1 AND source = 'reject_rate' \
                         AND state NOT IN ('closed', 'cancelled')",
                    )
                    .bind(&new.lot)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db("look for open NCRs"))?,
                )?;
                if already == 0 {
                    let ncr = NewNcr {
                        lot: new.lot.clone(),
                        line: new.line.clone(),
                        title: format!("Reject rate above {:.2} %", cfg.reject_rate_alert * 100.0),
                        description: format!(
                            "{rejects} rejects in the last {total} inspections of lot {} on {}",
                            new.lot, new.line
                        ),
                    };
                    let (ncr_id, entries) =
                        Self::insert_ncr(&mut tx, &ncr, NcrSource::RejectRate, SYSTEM_ACTOR, now)
                            .await?;
                    audit.extend(entries);
                    recorded.raised_ncr = Some(ncr_id);
                }
            }
        }
        // A trigger has one answer. Already answered "inspected" (an earlier try of this very
        // record that did commit), the inspection is not recorded a second time. Answered
        // otherwise ("late" by another instance's orphan scan while the store was away), the
        // verdict is still recorded: a defect found must not be lost; the answer stands.
        if let Some(trigger) = trigger_id
            && !Self::answer_trigger_in(&mut tx, trigger, "inspected", None, Some(id), now).await?
        {
            let state: Option<String> = sqlx::query("SELECT state FROM triggers WHERE id = $1")
                .bind(trigger)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db("read a trigger"))?
                .map(|r| r.try_get(0))
                .transpose()
                .map_err(db("read a trigger"))?;
            if state.as_deref() == Some("inspected") {
                return Err(StoreError::TriggerAnswered {
                    id: trigger.to_owned(),
                });
            }
            tracing::warn!(trigger, answer = ?state, inspection = id, "Inspection recorded for a trigger answered before; its answer stands.");
        }
        self.append_audit(&mut tx, now, audit).await?;
        tx.commit().await.map_err(db("commit an inspection"))?;
        Ok(recorded)
    }

    /// In `tx`: a pass (inspection `id`) of a part found defective, which had `previous`
    /// secondary inspections, up to its cap. Re-tested again and again after a reject, the
    /// part is not accepted by its latest pass: an NCR (which holds the lot) makes QA decide.
    /// One per part and lot, whatever its state: QA's disposition of it is the part's answer,
    /// and later passes do not hold the lot again. Returns why no task was opened, and the NCR
    /// raised now; its audit entries go to `audit`.
    async fn retest_past_cap(
        tx: &mut Transaction<'static, Any>,
        new: &NewInspection,
        cfg: &QualityConfig,
        id: i64,
        previous: i64,
        now: i64,
        audit: &mut Vec<NewAuditEntry>,
    ) -> Result<(String, Option<i64>), StoreError> {
        let title = format!("Part {} re-tested after rejection", new.part_id);
        let existing: Option<(i64, String)> = sqlx::query(
            "SELECT id, state FROM ncrs WHERE lot = $1 AND source = 'retest' AND title = $2 \
             ORDER BY id LIMIT 1",
        )
        .bind(&new.lot)
        .bind(&title)
        .fetch_optional(&mut **tx)
        .await
        .map_err(db("look for the part's NCR"))?
        .map(|r| Ok::<_, sqlx::Error>((r.try_get(0)?, r.try_get(1)?)))
        .transpose()
        .map_err(db("read the part's NCR"))?;
        let (ncr, raised) = match existing {
            Some((ncr_id, state)) => (format!("its NCR {ncr_id} ({state}) decides"), None),
            None => {
                let ncr = NewNcr {
                    lot: new.lot.clone(),
                    line: new.line.clone(),
                    title,
                    description: format!(
                        "Part {} was found defective before and had {previous} secondary inspections \
                         (quality.reinspection_cap = {}); inspection {id} on {} passed it (score {:.4}, \
                         threshold {:.4}). A pass on re-test is not accepted without QA's disposition.",
                        new.part_id, cfg.reinspection_cap, new.camera, new.score, new.threshold
                    ),
                };
                let (ncr_id, entries) =
                    Self::insert_ncr(tx, &ncr, NcrSource::Retest, SYSTEM_ACTOR, now).await?;
                audit.extend(entries);
                (format!("NCR {ncr_id} raised"), Some(ncr_id))
            }
        };
        let why = format!(
            "part {} was found defective before and already had {previous} secondary inspections \
             (cap {}): this pass is not accepted; {ncr}",
            new.part_id, cfg.reinspection_cap
        );
        Ok((why, raised))
    }

    /// One inspection.
    pub async fn inspection(&self, id: i64) -> Result<InspectionRecord, StoreError> {
        let row = sqlx::query(
            "SELECT id, at_ms, part_id, lot, line, recipe, camera, model_name, model_sha256, threshold, score, verdict, \
             regions_json, image_ref, overlay_ref, timings_json, source, defect_class FROM inspections WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(self.reader())
        .await
        .map_err(db("read an inspection"))?
        .ok_or(StoreError::NotFound {
            entity: "inspection",
            id: id.to_string(),
        })?;
        let d = || db("decode an inspection");
        Ok(InspectionRecord {
            id: row.try_get("id").map_err(d())?,
            at_ms: row.try_get("at_ms").map_err(d())?,
            inspection: inspection_row(&row)?,
        })
    }

    /// The inspections among `ids` that exist, oldest first (a live view looking for ids it
    /// skipped over).
    pub async fn inspections_with_ids(
        &self,
        ids: &[i64],
    ) -> Result<Vec<InspectionRecord>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let placeholders: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT id, at_ms, part_id, lot, line, recipe, camera, model_name, model_sha256, threshold, score, verdict, \
             regions_json, image_ref, overlay_ref, timings_json, source, defect_class FROM inspections \
             WHERE id IN ({}) ORDER BY id",
            placeholders.join(", ")
        );
        let mut query = sqlx::query(&sql);
        for id in ids {
            query = query.bind(*id);
        }
        let rows = query
            .fetch_all(self.reader())
            .await
            .map_err(db("read inspections"))?;
        let d = || db("decode an inspection");
        rows.iter()
            .map(|row| {
                Ok(InspectionRecord {
                    id: row.try_get("id").map_err(d())?,
                    at_ms: row.try_get("at_ms").map_err(d())?,
                    inspection: inspection_row(row)?,
                })
            })
            .collect()
    }

    /// Number of stored inspections.
    pub async fn inspection_count(&self) -> Result<i64, StoreError> {
        count(
            sqlx::query("SELECT COUNT(*) FROM inspections")
                .fetch_one(self.reader())
                .await
                .map_err(db("count inspections"))?,
        )
    }

    /// One task.
    pub async fn task(&self, id: i64) -> Result<Task, StoreError> {
        let row = sqlx::query(&format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.reader())
            .await
            .map_err(db("read a task"))?
            .ok_or(StoreError::NotFound {
                entity: "task",
                id: id.to_string(),
            })?;
        task_row(&row)
    }

    /// Tasks in one state, oldest first (the work queue an inspector or QA sees).
    pub async fn tasks_in_state(
        &self,
        state: TaskState,
        limit: i64,
    ) -> Result<Vec<Task>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE state = $1 ORDER BY id LIMIT $2"
        ))
        .bind(state.as_str())
        .bind(limit.clamp(1, 10_000))
        .fetch_all(self.reader())
        .await
        .map_err(db("list tasks"))?;
        rows.iter().map(task_row).collect()
    }

    /// Claims the oldest pending task for `user`, or `None` when there is none. Safe across
    /// instances: on PostgreSQL a task locked by another claimer is skipped, not waited for.
    pub async fn claim_next_task(&self, user: &User) -> Result<Option<Task>, StoreError> {
        let lock = match self.backend() {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let mut tx = self.begin().await?;
        let row = sqlx::query(&format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE state = 'pending' ORDER BY id LIMIT 1{lock}"
        ))
        .fetch_optional(&mut *tx)
        .await
        .map_err(db("find a pending task"))?;
        let Some(row) = row else {
            return Ok(None);
        };
        self.claim_in(tx, task_row(&row)?, user).await.map(Some)
    }

    /// Claims one task for `user`: it must be pending (another inspector's claim is refused).
    pub async fn claim_task(&self, id: i64, user: &User) -> Result<Task, StoreError> {
        let lock = match self.backend() {
            Backend::Postgres => " FOR UPDATE",
            Backend::Sqlite => "",
        };
        let mut tx = self.begin().await?;
        let row = sqlx::query(&format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1{lock}"
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db("read a task"))?
        .ok_or(StoreError::NotFound {
            entity: "task",
            id: id.to_string(),
        })?;
        let t = task_row(&row)?;
        self.claim_in(tx, t, user).await
    }

    async fn claim_in(
        &self,
        mut tx: Transaction<'static, Any>,
        t: Task,
        user: &User,
    ) -> Result<Task, StoreError> {
        let to = task::apply(
            t.state,
            TaskAction::Claim,
            TaskContext {
                user_id: user.id,
                role: user.role,
                claimed_by: t.claimed_by,
                reason: None,
            },
        )?;
        let claimed = self
            .update_task(&mut tx, &t, to, Some(user.id), None, None)
            .await?;
        self.append_audit(
            &mut tx,
            now_ms(),
            vec![task_audit(&t, &claimed, &user.username, "task.claim", None)],
        )
        .await?;
        tx.commit().await.map_err(db("commit a claim"))?;
        Ok(claimed)
    }

    /// Releases, decides or escalates a task. Confirming a defect of a critical class
    /// (`quality.critical_defect_classes`) raises an NCR for the lot in the same transaction.
    pub async fn act_on_task(
        &self,
        id: i64,
        user: &User,
        action: TaskAction,
        reason: Option<&str>,
        cfg: &QualityConfig,
    ) -> Result<(Task, Option<i64>), StoreError> {
        if action == TaskAction::Claim {
            return Err(StoreError::Invalid(
                "claim tasks with claim_next_task".into(),
            ));
        }
        let lock = match self.backend() {
            Backend::Postgres => " FOR UPDATE",
            Backend::Sqlite => "",
        };
        let mut tx = self.begin().await?;
        let row = sqlx::query(&format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1{lock}"
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db("read a task"))?
        .ok_or(StoreError::NotFound {
            entity: "task",
            id: id.to_string(),
        })?;
        let t = task_row(&row)?;
        let to = task::apply(
            t.state,
            action,
            TaskContext {
                user_id: user.id,
                role: user.role,
                claimed_by: t.claimed_by,
                reason,
            },
        )?;
        let (claimed_by, decided_by) = match to {
            TaskState::Pending => (None, None),
            TaskState::Escalated => (t.claimed_by, None),
            _ => (t.claimed_by, Some(user.id)),
        };
        let updated = self
            .update_task(&mut tx, &t, to, claimed_by, decided_by, reason)
            .await?;
        let now = now_ms();
        let mut audit = vec![task_audit(
            &t,
            &updated,
            &user.username,
            &format!("task.{}", action.name()),
            reason,
        )];
        let mut raised = None;
        if to == TaskState::Confirmed {
            let row = sqlx::query("SELECT defect_class, line FROM inspections WHERE id = $1")
                .bind(t.inspection_id)
                .fetch_one(&mut *tx)
                .await
                .map_err(db("read the inspection of a task"))?;
            let class: Option<String> = row.try_get(0).map_err(db("read a defect class"))?;
            let line: String = row.try_get(1).map_err(db("read a line"))?;
            if let Some(class) = class
                && cfg.critical_defect_classes.contains(&class)
            {
                let ncr = NewNcr {
                    lot: t.lot.clone(),
                    line,
                    title: format!("Critical defect {class} confirmed"),
                    description: format!(
                        "Inspector {} confirmed defect class {class} on part {} (task {}, inspection {})",
                        user.full_name, t.part_id, t.id, t.inspection_id
                    ),
                };
                let (ncr_id, entries) = Self::insert_ncr(
                    &mut tx,
                    &ncr,
                    NcrSource::ConfirmedDefect,
                    &user.username,
                    now,
                )
                .await?;
                audit.extend(entries);
                raised = Some(ncr_id);
            }
        }
        self.append_audit(&mut tx, now, audit).await?;
        tx.commit().await.map_err(db("commit a task decision"))?;
        Ok((updated, raised))
    }

    async fn update_task(
        &self,
        tx: &mut Transaction<'static, Any>,
        t: &Task,
        to: TaskState,
        claimed_by: Option<i64>,
        decided_by: Option<i64>,
        reason: Option<&str>,
    ) -> Result<Task, StoreError> {
        // The version check turns a lost update into a clear conflict.
        let row = sqlx::query(&format!(
            "UPDATE tasks SET state = $1, claimed_by = $2, decided_by = $3, decision_reason = $4, \
             version = version + 1, updated_at_ms = $5 WHERE id = $6 AND version = $7 RETURNING {TASK_COLUMNS}"
        ))
        .bind(to.as_str())
        .bind(claimed_by)
        .bind(decided_by)
        .bind(reason)
        .bind(now_ms())
        .bind(t.id)
        .bind(t.version)
        .fetch_optional(&mut **tx)
        .await
        .map_err(db("update a task"))?
        .ok_or(StoreError::Conflict { id: t.id })?;
        task_row(&row)
    }
}

fn task_audit(
    before: &Task,
    after: &Task,
    actor: &str,
    action: &str,
    reason: Option<&str>,
) -> NewAuditEntry {
    NewAuditEntry {
        actor: actor.into(),
        action: action.into(),
        entity: "task".into(),
        entity_id: before.id.to_string(),
        old_value: Some(format!("state={}", before.state.as_str())),
        new_value: Some(crate::quality::task::state_text(
            after.state,
            after.claimed_by,
        )),
        reason: reason.map(str::to_owned),
    }
}
