//! The outbox table: appending inside a write transaction (with the size bound), reading in
//! delivery order, deleting what a peer confirmed, and the status report.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::any::AnyRow;
use sqlx::{Any, Row as _, Transaction};

use super::sampling::{self, SamplingReason, day_of, manifest_line};
use super::{OutboxConfig, SCHEMA_VERSION};
use crate::quality::audit::AuditEntry;
use crate::quality::{NewInspection, Verdict};
use crate::store::{Backend, Store, StoreError};

fn db(op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Db { op, source }
}

/// Where a row goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sink {
    Mqtt,
    S3,
}

impl Sink {
    pub fn as_str(self) -> &'static str {
        match self {
            Sink::Mqtt => "mqtt",
            Sink::S3 => "s3",
        }
    }

    /// What its rows are, for people: `events` or `samples`.
    pub fn rows_are(self) -> &'static str {
        match self {
            Sink::Mqtt => "events",
            Sink::S3 => "samples",
        }
    }

    /// The configuration section that delivers it.
    pub fn section(self) -> &'static str {
        match self {
            Sink::Mqtt => "[outbox.mqtt]",
            Sink::S3 => "[outbox.upload]",
        }
    }
}

/// Where a sampled inspection stands (`sample_manifest.uploaded`).
pub(crate) mod sample_state {
    /// Its upload is queued; retention holds its image until then.
    pub const WAITING: i64 = 0;
    /// Image and metadata are in the bucket and listed in the day's manifest.
    pub const UPLOADED: i64 = 1;
    /// Only its metadata went up: the image was gone or unreadable at upload time.
    pub const METADATA_ONLY: i64 = 2;
    /// Its upload was dropped by `linesight outbox discard`; nothing of it is in the bucket.
    pub const DISCARDED: i64 = 3;
}

/// One undelivered row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// Delivery order.
    pub id: i64,
    /// Stable id for de-duplication downstream.
    pub event_id: String,
    pub kind: String,
    pub ordering_key: String,
    /// The JSON document (envelope with `schema`, `event_id`, `kind`, `key`, `at_ms`, `data`).
    pub payload: String,
    pub bytes: i64,
    pub created_at_ms: i64,
}

/// Pending rows of one sink.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SinkStatus {
    pub pending: i64,
    pub bytes: i64,
    pub oldest_at_ms: Option<i64>,
    pub delivered_total: i64,
    /// Rows dropped undelivered by `linesight outbox discard`.
    pub discarded_total: i64,
}

/// What [`Store::outbox_discard`] dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Discarded {
    pub rows: i64,
    pub bytes: i64,
    pub oldest_at_ms: Option<i64>,
    pub newest_at_ms: Option<i64>,
}

/// What `linesight outbox status` shows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OutboxStatus {
    pub mqtt: SinkStatus,
    pub s3: SinkStatus,
    /// Bytes counted against `outbox.max_bytes`.
    pub pending_bytes: i64,
    pub events_dropped_total: i64,
    pub samples_refused_total: i64,
    /// Set while the outbox is full: when it filled up.
    pub full_since_ms: Option<i64>,
}

struct NewRow<'a> {
    event_id: String,
    sink: Sink,
    kind: &'a str,
    key: &'a str,
    data: serde_json::Value,
    /// Bytes held elsewhere on behalf of this row (a sample's image).
    extra_bytes: i64,
    at_ms: i64,
}

async fn counter(tx: &mut Transaction<'static, Any>, name: &str) -> Result<i64, StoreError> {
    sqlx::query("SELECT value FROM outbox_counters WHERE name = $1")
        .bind(name)
        .fetch_one(&mut **tx)
        .await
        .and_then(|r| r.try_get::<i64, _>(0))
        .map_err(db("read an outbox counter"))
}

async fn add_counter(
    tx: &mut Transaction<'static, Any>,
    name: &str,
    delta: i64,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE outbox_counters SET value = value + $1 WHERE name = $2")
        .bind(delta)
        .bind(name)
        .execute(&mut **tx)
        .await
        .map_err(db("update an outbox counter"))?;
    Ok(())
}

async fn raise_full_alarm(tx: &mut Transaction<'static, Any>, now: i64) -> Result<(), StoreError> {
    sqlx::query("UPDATE outbox_counters SET value = $1 WHERE name = 'full_since_ms' AND value = 0")
        .bind(now)
        .execute(&mut **tx)
        .await
        .map_err(db("raise the outbox alarm"))?;
    Ok(())
}

/// Appends a row unless the size bound refuses it; `Ok(false)` when refused (counted).
async fn append(
    cfg: &OutboxConfig,
    tx: &mut Transaction<'static, Any>,
    row: NewRow<'_>,
) -> Result<bool, StoreError> {
    let payload = serde_json::json!({
        "schema": SCHEMA_VERSION,
        "event_id": row.event_id,
        "kind": row.kind,
        "key": row.key,
        "at_ms": row.at_ms,
        "data": row.data,
    })
    .to_string();
    let bytes = payload.len() as i64 + row.extra_bytes;
    let pending = counter(tx, "pending_bytes").await?;
    let (limit, refused_counter) = match row.sink {
        Sink::S3 => (cfg.sample_limit_bytes(), "samples_refused"),
        Sink::Mqtt => (cfg.max_bytes, "events_dropped"),
    };
    if (pending + bytes) as u64 > limit {
        add_counter(tx, refused_counter, 1).await?;
        raise_full_alarm(tx, row.at_ms).await?;
        tracing::warn!(
            sink = row.sink.as_str(),
            kind = row.kind,
            event_id = %row.event_id,
            pending_bytes = pending,
            limit_bytes = limit,
            "Outbox full: {} not stored (outbox.max_bytes, outbox.sample_share_percent).",
            match row.sink {
                Sink::S3 => "sample refused",
                Sink::Mqtt => "event dropped",
            }
        );
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO outbox (event_id, sink, kind, ordering_key, payload, bytes, created_at_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&row.event_id)
    .bind(row.sink.as_str())
    .bind(row.kind)
    .bind(row.key)
    .bind(&payload)
    .bind(bytes)
    .bind(row.at_ms)
    .execute(&mut **tx)
    .await
    .map_err(db("append to the outbox"))?;
    add_counter(tx, "pending_bytes", bytes).await?;
    Ok(true)
}

/// A fresh id for events that do not come from the audit trail.
fn fresh_event_id(kind: &str, key: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut h = Sha256::new();
    h.update(kind.as_bytes());
    h.update([0]);
    h.update(key.as_bytes());
    h.update(nanos.to_le_bytes());
    h.update(std::process::id().to_le_bytes());
    h.update(N.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    hex::encode(&h.finalize()[..16])
}

/// Appends one event (a model change, for instance) in its own transaction; returns its id,
/// or `None` when the outbox is full (the drop is counted and raises the alarm).
pub async fn append_event(
    store: &Store,
    kind: &str,
    key: &str,
    data: serde_json::Value,
) -> Result<Option<String>, StoreError> {
    let Some(cfg) = store.outbox_config() else {
        return Err(StoreError::Invalid(
            "the outbox is off: configure [outbox.mqtt] or [outbox.upload]".into(),
        ));
    };
    let event_id = fresh_event_id(kind, key);
    let mut tx = store.begin().await?;
    let stored = append(
        cfg,
        &mut tx,
        NewRow {
            event_id: event_id.clone(),
            sink: Sink::Mqtt,
            kind,
            key,
            data,
            extra_bytes: 0,
            at_ms: crate::quality::now_ms(),
        },
    )
    .await?;
    tx.commit().await.map_err(db("commit an outbox event"))?;
    Ok(stored.then_some(event_id))
}

/// The outbox side of one audit entry, inside its transaction: the event for MQTT, and
/// sample decisions for the upload.
pub(crate) async fn on_audit(
    cfg: &OutboxConfig,
    tx: &mut Transaction<'static, Any>,
    e: &AuditEntry,
) -> Result<(), StoreError> {
    let inspection: Option<NewInspection> = (e.action == "inspection.create")
        .then_some(e.new_value.as_deref())
        .flatten()
        .and_then(|v| serde_json::from_str(v).ok());
    if cfg.mqtt.is_some() && e.entity != "user" {
        let key = match &inspection {
            Some(i) => format!("camera:{}/{}", i.line, i.camera),
            None => format!("{}:{}", e.entity, e.entity_id),
        };
        let new_value = e.new_value.as_deref().map(|v| {
            serde_json::from_str::<serde_json::Value>(v)
                .ok()
                .filter(serde_json::Value::is_object)
                .unwrap_or_else(|| v.into())
        });
        let data = serde_json::json!({
            "audit_seq": e.seq,
            "audit_hash": e.hash,
            "actor": e.actor,
            "action": e.action,
            "entity": e.entity,
            "entity_id": e.entity_id,
            "old_value": e.old_value,
            "new_value": new_value,
            "reason": e.reason,
        });
        // The audit hash is unique (it chains every entry before it) and never changes.
        let id = e.hash[..32].to_owned();
        if inspection
            .as_ref()
            .is_some_and(|i| i.verdict == Verdict::Defect)
        {
            append(
                cfg,
                tx,
                NewRow {
                    event_id: format!("{id}-reject"),
                    sink: Sink::Mqtt,
                    kind: "inspection.reject",
                    key: &key,
                    data: data.clone(),
                    extra_bytes: 0,
                    at_ms: e.at_ms,
                },
            )
            .await?;
        }
        append(
            cfg,
            tx,
            NewRow {
                event_id: id,
                sink: Sink::Mqtt,
                kind: &e.action,
                key: &key,
                data,
                extra_bytes: 0,
                at_ms: e.at_ms,
            },
        )
        .await?;
    }
    let Some(up) = &cfg.upload else {
        return Ok(());
    };
    if let Some(i) = &inspection {
        let id: i64 = e.entity_id.parse().unwrap_or_default();
        if let Some(reason) =
            sampling::sampling_reason(&up.sampling, id, i.verdict, i.score, i.threshold)
        {
            let class = i
                .defect_class
                .clone()
                .unwrap_or_else(|| i.verdict.as_str().to_owned());
            if quota_allows(
                tx,
                up.sampling.daily_quota_per_class,
                &day_of(e.at_ms),
                &class,
            )
            .await?
            {
                sample(cfg, tx, id, i, None, reason, e.at_ms).await?;
            }
        }
    } else if e.entity == "task"
        && let Some(human) = e.new_value.as_deref().and_then(human_decision)
    {
        on_human_decision(cfg, tx, &e.entity_id, human, e.at_ms).await?;
    }
    Ok(())
}

/// The inspector's label in a task's new state (`state=confirmed; …`), if it is a decision.
fn human_decision(new_value: &str) -> Option<Verdict> {
    let state = new_value.strip_prefix("state=")?;
    let state = state.split(';').next().unwrap_or_default();
    match state {
        "confirmed" => Some(Verdict::Defect),
        "overridden_good" => Some(Verdict::Good),
        _ => None,
    }
}

/// Counts one sample against the day's quota of its class; false when the quota is used up.
async fn quota_allows(
    tx: &mut Transaction<'static, Any>,
    quota: u32,
    day: &str,
    class: &str,
) -> Result<bool, StoreError> {
    let taken: i64 = sqlx::query("SELECT taken FROM sample_quota WHERE day = $1 AND class = $2")
        .bind(day)
        .bind(class)
        .fetch_optional(&mut **tx)
        .await
        .map_err(db("read a sample quota"))?
        .map(|r| r.try_get::<i64, _>(0))
        .transpose()
        .map_err(db("read a sample quota"))?
        .unwrap_or(0);
    if quota > 0 && taken >= i64::from(quota) {
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO sample_quota (day, class, taken) VALUES ($1, $2, 1) \
         ON CONFLICT (day, class) DO UPDATE SET taken = sample_quota.taken + 1",
    )
    .bind(day)
    .bind(class)
    .execute(&mut **tx)
    .await
    .map_err(db("count a sample"))?;
    Ok(true)
}

async fn image_bytes(
    tx: &mut Transaction<'static, Any>,
    image_ref: Option<&str>,
) -> Result<i64, StoreError> {
    let Some(hash) = image_ref else {
        return Ok(0);
    };
    Ok(
        sqlx::query("SELECT bytes FROM images WHERE hash = $1 AND deleted_at_ms IS NULL")
            .bind(hash)
            .fetch_optional(&mut **tx)
            .await
            .map_err(db("read an image size"))?
            .and_then(|r| r.try_get::<i64, _>(0).ok())
            .unwrap_or(0),
    )
}

/// Records a sample (manifest line and metadata) and queues its upload.
async fn sample(
    cfg: &OutboxConfig,
    tx: &mut Transaction<'static, Any>,
    inspection_id: i64,
    i: &NewInspection,
    human: Option<Verdict>,
    reason: SamplingReason,
    at_ms: i64,
) -> Result<(), StoreError> {
    let Some(up) = &cfg.upload else {
        return Ok(());
    };
    let day = day_of(at_ms);
    let key_base = up.key_base(&i.line, &i.camera, &day, inspection_id);
    let line = manifest_line(
        &up.source_ref(&format!("{key_base}.png")),
        &up.label_attribute,
        i.verdict,
        human,
        at_ms,
    );
    let metadata = sample_metadata(inspection_id, i, human, reason, at_ms);
    let extra = image_bytes(tx, i.image_ref.as_deref()).await?;
    let stored = append(
        cfg,
        tx,
        NewRow {
            event_id: format!(
                "sample-{inspection_id}-{}",
                fresh_event_id("sample", &key_base)
            ),
            sink: Sink::S3,
            kind: "sample.upload",
            key: &format!("sample:{inspection_id}"),
            data: serde_json::json!({
                "inspection_id": inspection_id,
                "image_ref": i.image_ref,
                "key_base": key_base,
            }),
            extra_bytes: extra,
            at_ms,
        },
    )
    .await?;
    if stored {
        sqlx::query(
            "INSERT INTO sample_manifest (inspection_id, day, line, metadata, uploaded) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (inspection_id) DO NOTHING",
        )
        .bind(inspection_id)
        .bind(&day)
        .bind(&line)
        .bind(metadata.to_string())
        .bind(sample_state::WAITING)
        .execute(&mut **tx)
        .await
        .map_err(db("record a sample"))?;
    }
    Ok(())
}

fn sample_metadata(
    inspection_id: i64,
    i: &NewInspection,
    human: Option<Verdict>,
    reason: SamplingReason,
    at_ms: i64,
) -> serde_json::Value {
    serde_json::json!({
        "schema": SCHEMA_VERSION,
        "inspection_id": inspection_id,
        "at_ms": at_ms,
        "sampling_reason": reason,
        "machine_verdict": i.verdict.as_str(),
        "human_verdict": human.map(Verdict::as_str),
        "inspection": i,
    })
}

/// An inspector decided a task: relabel its sample, or take one when the decision overrides
/// the machine and `all_overridden` is set.
async fn on_human_decision(
    cfg: &OutboxConfig,
    tx: &mut Transaction<'static, Any>,
    task_id: &str,
    human: Verdict,
    at_ms: i64,
) -> Result<(), StoreError> {
    let Some(up) = &cfg.upload else {
        return Ok(());
    };
    let task_id: i64 = task_id.parse().unwrap_or_default();
    let Some(row) = sqlx::query("SELECT inspection_id FROM tasks WHERE id = $1")
        .bind(task_id)
        .fetch_optional(&mut **tx)
        .await
        .map_err(db("read a task's inspection"))?
    else {
        return Ok(());
    };
    let inspection_id: i64 = row.try_get(0).map_err(db("read a task's inspection"))?;
    let existing = sqlx::query(
        "SELECT line, metadata, uploaded, day FROM sample_manifest WHERE inspection_id = $1",
    )
    .bind(inspection_id)
    .fetch_optional(&mut **tx)
    .await
    .map_err(db("read a sample"))?;
    let irow = sqlx::query(
        "SELECT part_id, lot, line, recipe, camera, model_name, model_sha256, threshold, score, verdict, \
         regions_json, image_ref, overlay_ref, timings_json, source, defect_class, at_ms \
         FROM inspections WHERE id = $1",
    )
    .bind(inspection_id)
    .fetch_one(&mut **tx)
    .await
    .map_err(db("read a sampled inspection"))?;
    let (i, inspected_at) = inspection_of(&irow)?;
    match existing {
        Some(row) => {
            let uploaded: i64 = row.try_get(2).map_err(db("read a sample"))?;
            let day: String = row.try_get(3).map_err(db("read a sample"))?;
            let key_base = up.key_base(&i.line, &i.camera, &day, inspection_id);
            let line = manifest_line(
                &up.source_ref(&format!("{key_base}.png")),
                &up.label_attribute,
                i.verdict,
                Some(human),
                inspected_at,
            );
            let old: serde_json::Value = row
                .try_get::<String, _>(1)
                .ok()
                .and_then(|m| serde_json::from_str(&m).ok())
                .unwrap_or_default();
            let mut metadata = old;
            metadata["human_verdict"] = human.as_str().into();
            sqlx::query(
                "UPDATE sample_manifest SET line = $1, metadata = $2 WHERE inspection_id = $3",
            )
            .bind(&line)
            .bind(metadata.to_string())
            .bind(inspection_id)
            .execute(&mut **tx)
            .await
            .map_err(db("relabel a sample"))?;
            if matches!(
                uploaded,
                sample_state::UPLOADED | sample_state::METADATA_ONLY
            ) {
                // Already in the bucket: write its metadata and the day's manifest again.
                append(
                    cfg,
                    tx,
                    NewRow {
                        event_id: fresh_event_id("sample.relabel", &key_base),
                        sink: Sink::S3,
                        kind: "sample.relabel",
                        key: &format!("sample:{inspection_id}"),
                        data: serde_json::json!({
                            "inspection_id": inspection_id,
                            "key_base": key_base,
                        }),
                        extra_bytes: 0,
                        at_ms,
                    },
                )
                .await?;
            }
        }
        None if up.sampling.all_overridden && human != i.verdict => {
            sample(
                cfg,
                tx,
                inspection_id,
                &i,
                Some(human),
                SamplingReason::HumanOverride,
                inspected_at,
            )
            .await?;
        }
        None => {}
    }
    Ok(())
}

fn inspection_of(row: &AnyRow) -> Result<(NewInspection, i64), StoreError> {
    Ok((
        crate::store::inspection_row(row)?,
        row.try_get("at_ms")
            .map_err(db("decode a sampled inspection"))?,
    ))
}

fn outbox_row(row: &AnyRow) -> Result<OutboxRow, StoreError> {
    let d = || db("decode an outbox row");
    Ok(OutboxRow {
        id: row.try_get("id").map_err(d())?,
        event_id: row.try_get("event_id").map_err(d())?,
        kind: row.try_get("kind").map_err(d())?,
        ordering_key: row.try_get("ordering_key").map_err(d())?,
        payload: row.try_get("payload").map_err(d())?,
        bytes: row.try_get("bytes").map_err(d())?,
        created_at_ms: row.try_get("created_at_ms").map_err(d())?,
    })
}

impl Store {
    /// Undelivered rows of `sink` with `id > after`, in delivery order.
    pub async fn outbox_pending(
        &self,
        sink: Sink,
        after: i64,
        limit: i64,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        // From the writer pool: a row appended a moment ago must be visible at once.
        let rows = sqlx::query(
            "SELECT id, event_id, kind, ordering_key, payload, bytes, created_at_ms FROM outbox \
             WHERE sink = $1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(sink.as_str())
        .bind(after)
        .bind(limit.clamp(1, 10_000))
        .fetch_all(self.raw_pool())
        .await
        .map_err(db("read the outbox"))?;
        rows.iter().map(outbox_row).collect()
    }

    /// Deletes rows a peer confirmed; returns how many were still there (a row confirmed twice
    /// is deleted once).
    pub async fn outbox_ack(&self, sink: Sink, ids: &[i64]) -> Result<u64, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut tx = self.begin_plain().await?;
        let deleted = ack_in(&mut tx, sink, ids).await?;
        tx.commit().await.map_err(db("commit an outbox delivery"))?;
        Ok(deleted)
    }

    pub(crate) async fn begin_plain(&self) -> Result<Transaction<'static, Any>, StoreError> {
        match self.backend() {
            // Deliveries only touch the outbox tables, so on PostgreSQL they need not wait for
            // the audit lock; SQLite has one writer anyway.
            Backend::Postgres => self.raw_pool().begin().await,
            Backend::Sqlite => self.raw_pool().begin_with("BEGIN IMMEDIATE").await,
        }
        .map_err(db("begin a transaction"))
    }

    /// Pending counts, bytes, oldest rows, counters and the full alarm.
    pub async fn outbox_status(&self) -> Result<OutboxStatus, StoreError> {
        status_on(self.raw_pool()).await
    }

    /// [`Store::outbox_status`] read on a read connection, for the metrics: a scrape never
    /// waits behind the writer.
    pub(crate) async fn outbox_status_for_metrics(&self) -> Result<OutboxStatus, StoreError> {
        status_on(self.reader()).await
    }

    /// How many undelivered rows of `sink` were created before `before_ms`, and their bytes.
    pub async fn outbox_waiting(
        &self,
        sink: Sink,
        before_ms: i64,
    ) -> Result<(i64, i64), StoreError> {
        let r = sqlx::query(
            "SELECT COUNT(*), CAST(COALESCE(SUM(bytes), 0) AS BIGINT) FROM outbox \
             WHERE sink = $1 AND created_at_ms < $2",
        )
        .bind(sink.as_str())
        .bind(before_ms)
        .fetch_one(self.raw_pool())
        .await
        .map_err(db("count waiting outbox rows"))?;
        Ok((
            r.try_get(0).map_err(db("count waiting outbox rows"))?,
            r.try_get(1).map_err(db("count waiting outbox rows"))?,
        ))
    }

    /// Drops the undelivered rows of `sink` created before `before_ms`, for a peer that is gone
    /// for good (a sink no longer configured, a bucket retired). One audited transaction: the
    /// audit entry (`outbox.discard`, by `actor`, with `reason`) names the sink and what was
    /// dropped, and is itself published when events are. Nothing to drop records nothing.
    pub async fn outbox_discard(
        &self,
        sink: Sink,
        before_ms: i64,
        actor: &str,
        reason: &str,
    ) -> Result<Discarded, StoreError> {
        if reason.trim().is_empty() {
            return Err(StoreError::Invalid(
                "reason: say why these rows are dropped undelivered".into(),
            ));
        }
        let mut tx = self.begin().await?;
        if sink == Sink::S3 {
            // These samples will never go up: retention stops holding their images, and a
            // later relabel of them queues nothing. Their upload rows are keyed `sample:<id>`.
            sqlx::query(
                "UPDATE sample_manifest SET uploaded = $1 WHERE uploaded = $2 AND inspection_id IN \
                 (SELECT CAST(substr(ordering_key, 8) AS BIGINT) FROM outbox \
                  WHERE sink = 's3' AND kind = 'sample.upload' AND created_at_ms < $3)",
            )
            .bind(sample_state::DISCARDED)
            .bind(sample_state::WAITING)
            .bind(before_ms)
            .execute(&mut *tx)
            .await
            .map_err(db("mark discarded samples"))?;
        }
        let dropped = sqlx::query(
            "DELETE FROM outbox WHERE sink = $1 AND created_at_ms < $2 RETURNING bytes, created_at_ms",
        )
        .bind(sink.as_str())
        .bind(before_ms)
        .fetch_all(&mut *tx)
        .await
        .map_err(db("discard outbox rows"))?;
        let mut d = Discarded::default();
        for r in &dropped {
            let bytes: i64 = r.try_get(0).map_err(db("read discarded outbox rows"))?;
            let at: i64 = r.try_get(1).map_err(db("read discarded outbox rows"))?;
            d.rows += 1;
            d.bytes += bytes;
            d.oldest_at_ms = Some(d.oldest_at_ms.map_or(at, |o| o.min(at)));
            d.newest_at_ms = Some(d.newest_at_ms.map_or(at, |n| n.max(at)));
        }
        if d.rows == 0 {
            return Ok(d);
        }
        add_counter(&mut tx, "pending_bytes", -d.bytes).await?;
        let counter = match sink {
            Sink::Mqtt => "discarded_mqtt",
            Sink::S3 => "discarded_s3",
        };
        add_counter(&mut tx, counter, d.rows).await?;
        let now = crate::quality::now_ms();
        let new_value = serde_json::json!({
            "sink": sink.as_str(),
            "rows": d.rows,
            "bytes": d.bytes,
            "created_before_ms": before_ms,
            "oldest_at_ms": d.oldest_at_ms,
            "newest_at_ms": d.newest_at_ms,
        });
        self.append_audit(
            &mut tx,
            now,
            vec![crate::quality::audit::NewAuditEntry {
                actor: actor.to_owned(),
                action: "outbox.discard".into(),
                entity: "outbox".into(),
                entity_id: sink.as_str().into(),
                old_value: None,
                new_value: Some(new_value.to_string()),
                reason: Some(reason.to_owned()),
            }],
        )
        .await?;
        tx.commit().await.map_err(db("commit an outbox discard"))?;
        tracing::warn!(
            sink = sink.as_str(),
            rows = d.rows,
            bytes = d.bytes,
            actor,
            reason,
            "Outbox rows dropped undelivered."
        );
        Ok(d)
    }
}

async fn status_on(pool: &sqlx::AnyPool) -> Result<OutboxStatus, StoreError> {
    let mut s = OutboxStatus::default();
    let rows = sqlx::query(
        "SELECT sink, COUNT(*), CAST(COALESCE(SUM(bytes), 0) AS BIGINT), MIN(created_at_ms) FROM outbox GROUP BY sink",
    )
    .fetch_all(pool)
    .await
    .map_err(db("summarise the outbox"))?;
    for r in rows {
        let d = || db("summarise the outbox");
        let sink: String = r.try_get(0).map_err(d())?;
        let st = SinkStatus {
            pending: r.try_get(1).map_err(d())?,
            bytes: r.try_get(2).map_err(d())?,
            oldest_at_ms: r.try_get(3).map_err(d())?,
            ..SinkStatus::default()
        };
        match sink.as_str() {
            "mqtt" => s.mqtt = st,
            _ => s.s3 = st,
        }
    }
    let counters = sqlx::query("SELECT name, value FROM outbox_counters")
        .fetch_all(pool)
        .await
        .map_err(db("read the outbox counters"))?;
    for r in counters {
        let name: String = r.try_get(0).map_err(db("read the outbox counters"))?;
        let value: i64 = r.try_get(1).map_err(db("read the outbox counters"))?;
        match name.as_str() {
            "pending_bytes" => s.pending_bytes = value,
            "events_dropped" => s.events_dropped_total = value,
            "samples_refused" => s.samples_refused_total = value,
            "full_since_ms" => s.full_since_ms = (value != 0).then_some(value),
            "delivered_mqtt" => s.mqtt.delivered_total = value,
            "delivered_s3" => s.s3.delivered_total = value,
            "discarded_mqtt" => s.mqtt.discarded_total = value,
            "discarded_s3" => s.s3.discarded_total = value,
            _ => {}
        }
    }
    Ok(s)
}

/// Deletes confirmed rows inside `tx`, keeping the byte count and clearing the alarm once the
/// outbox has drained below 90 % of the sample share.
pub(crate) async fn ack_in(
    tx: &mut Transaction<'static, Any>,
    sink: Sink,
    ids: &[i64],
) -> Result<u64, StoreError> {
    let mut deleted = 0u64;
    let mut freed = 0i64;
    for id in ids {
        let row = sqlx::query("DELETE FROM outbox WHERE id = $1 AND sink = $2 RETURNING bytes")
            .bind(id)
            .bind(sink.as_str())
            .fetch_optional(&mut **tx)
            .await
            .map_err(db("delete a delivered outbox row"))?;
        if let Some(r) = row {
            freed += r.try_get::<i64, _>(0).map_err(db("read outbox bytes"))?;
            deleted += 1;
        }
    }
    add_counter(tx, "pending_bytes", -freed).await?;
    let delivered = match sink {
        Sink::Mqtt => "delivered_mqtt",
        Sink::S3 => "delivered_s3",
    };
    add_counter(tx, delivered, deleted as i64).await?;
    Ok(deleted)
}

/// Clears the full alarm once pending bytes are below `clear_below`.
pub(crate) async fn maybe_clear_alarm(store: &Store, clear_below: u64) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE outbox_counters SET value = 0 WHERE name = 'full_since_ms' AND value <> 0 \
         AND (SELECT value FROM outbox_counters WHERE name = 'pending_bytes') < $1",
    )
    .bind(clear_below as i64)
    .execute(store.raw_pool())
    .await
    .map_err(db("clear the outbox alarm"))?;
    Ok(())
}
