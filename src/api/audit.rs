//! The audit trail: query, export, verify (QA approvers and administrators).

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{Caller, QA};
use super::extract::Query;
use super::{ApiError, ApiState};
use crate::quality::audit::{Anchor, AuditEntry, ChainBreak, ClockStep, Head, RecordCheck};

/// Audit query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// From this sequence number on (default 1).
    pub from_seq: Option<i64>,
    /// Only entries about this kind of record: ncr, task, inspection, lot, user, model, token…
    pub entity: Option<String>,
    /// Only entries about this record (with `entity`).
    pub entity_id: Option<String>,
    /// At most this many (default 500, at most 10000).
    pub limit: Option<i64>,
}

async fn entries(state: &ApiState, q: &AuditQuery) -> Result<Vec<AuditEntry>, ApiError> {
    if q.entity_id.is_some() && q.entity.is_none() {
        return Err(ApiError::bad("entity", "required with entity_id"));
    }
    let limit = ApiError::page_size(q.limit, 500, 10_000)?;
    Ok(state
        .store
        .audit_query(
            q.from_seq.unwrap_or(1),
            q.entity.as_deref(),
            q.entity_id.as_deref(),
            limit,
        )
        .await?)
}

/// Audit entries in sequence order.
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", params(AuditQuery),
    responses((status = 200, body = Vec<AuditEntry>), (status = 403)))]
pub(super) async fn query(
    State(state): State<ApiState>,
    caller: Caller,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    caller.require(QA, "read the audit trail")?;
    Ok(Json(entries(&state, &q).await?))
}

/// Export format and range.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// csv or json (default csv).
    pub format: Option<String>,
    /// From this sequence number on (default 1).
    pub from_seq: Option<i64>,
    pub entity: Option<String>,
    pub entity_id: Option<String>,
    /// At most this many entries (default: all of them).
    pub limit: Option<i64>,
}

/// Entries read from the store per page of an export.
const EXPORT_PAGE: i64 = 1_000;

/// Audit entries as a CSV or JSON download, with the hashes that let an auditor re-check the
/// chain outside linesight: every entry from `from_seq` up to the last one written when the
/// export began (or `limit` of them), streamed page by page, so that a trail of any length
/// comes out whole. Each export is itself audited, with the range it covers.
#[utoipa::path(get, path = "/api/v1/audit/export", tag = "audit", params(ExportQuery),
    responses((status = 200, content_type = "text/csv", body = String), (status = 403)))]
pub(super) async fn export(
    State(state): State<ApiState>,
    caller: Caller,
    Query(q): Query<ExportQuery>,
) -> Result<Response, ApiError> {
    let user = caller.require(QA, "export the audit trail")?.clone();
    let format = q.format.clone().unwrap_or_else(|| "csv".into());
    let json = match format.as_str() {
        "csv" => false,
        "json" => true,
        _ => {
            return Err(ApiError::bad(
                "format",
                format!("{format:?}: use csv or json"),
            ));
        }
    };
    if q.entity_id.is_some() && q.entity.is_none() {
        return Err(ApiError::bad("entity", "required with entity_id"));
    }
    if let Some(limit) = q.limit
        && limit < 1
    {
        return Err(ApiError::bad(
            "limit",
            format!("{limit}: must be at least 1"),
        ));
    }
    let from_seq = q.from_seq.unwrap_or(1);
    // The export's end, fixed now: entries written while it streams (its own audit entry
    // first) belong to the next one.
    let up_to = state.store.audit_head().await?.map_or(0, |h| h.seq);
    let scope = match (&q.entity, &q.entity_id) {
        (Some(e), Some(id)) => format!(" about {e} {id}"),
        (Some(e), None) => format!(" about {e} records"),
        _ => String::new(),
    };
    let limit = q.limit.map_or(String::new(), |l| format!(", at most {l}"));
    state
        .store
        .record_export(
            &user.username,
            &format!("entries from seq {from_seq} to {up_to}{scope}{limit} as {format}"),
        )
        .await?;
    struct Page {
        next: i64,
        left: i64,
        first: bool,
        done: bool,
    }
    let start = Page {
        next: from_seq,
        left: q.limit.unwrap_or(i64::MAX),
        first: true,
        done: false,
    };
    let (entity, entity_id) = (q.entity, q.entity_id);
    let pages = futures_util::stream::unfold(start, move |mut page| {
        let (state, entity, entity_id) = (state.clone(), entity.clone(), entity_id.clone());
        async move {
            if page.done {
                return None;
            }
            let read = state
                .store
                .audit_query(
                    page.next,
                    entity.as_deref(),
                    entity_id.as_deref(),
                    EXPORT_PAGE.min(page.left),
                )
                .await;
            let list: Vec<AuditEntry> = match read {
                Ok(list) => list.into_iter().filter(|e| e.seq <= up_to).collect(),
                Err(e) => {
                    // The client sees a download cut short, never a complete-looking file.
                    tracing::error!(error = %e, "Audit export failed part way.");
                    page.done = true;
                    return Some((Err(std::io::Error::other(e.to_string())), page));
                }
            };
            let last = list.len() < EXPORT_PAGE.min(page.left) as usize
                || list.last().is_none_or(|e| e.seq >= up_to);
            page.left -= list.len() as i64;
            page.done = last || page.left <= 0;
            if let Some(e) = list.last() {
                page.next = e.seq + 1;
            }
            let chunk = if json {
                json_chunk(&list, page.first, page.done)
            } else {
                csv_chunk(&list, page.first)
            };
            page.first = false;
            Some((chunk.map_err(std::io::Error::other), page))
        }
    });
    let (media, name) = if json {
        ("application/json", "audit.json")
    } else {
        ("text/csv; charset=utf-8", "audit.csv")
    };
    Ok((
        [
            (header::CONTENT_TYPE, media.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        axum::body::Body::from_stream(pages),
    )
        .into_response())
}

/// One page of the JSON export: the opening bracket with the first, the closing one with the
/// last, entries separated by commas.
fn json_chunk(list: &[AuditEntry], first: bool, last: bool) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    if first {
        out.extend_from_slice(b"[\n");
    }
    for (i, e) in list.iter().enumerate() {
        if !(first && i == 0) {
            out.extend_from_slice(b",\n");
        }
        serde_json::to_writer_pretty(&mut out, e).map_err(|e| e.to_string())?;
    }
    if last {
        out.extend_from_slice(b"\n]\n");
    }
    Ok(out)
}

/// One page of the CSV export, the header row with the first.
fn csv_chunk(list: &[AuditEntry], first: bool) -> Result<Vec<u8>, String> {
    let mut w = csv::WriterBuilder::new()
        .has_headers(first)
        .from_writer(Vec::new());
    if first && list.is_empty() {
        // An empty export still names its columns.
        w.write_record(AUDIT_COLUMNS).map_err(|e| e.to_string())?;
    }
    for e in list {
        // Free text that a spreadsheet would take for a formula is written as text.
        let text = |v: &str| spreadsheet_text(v).into_owned();
        let opt = |v: &Option<String>| v.as_deref().map(spreadsheet_text).map(|c| c.into_owned());
        w.serialize(with_cells(e, text, opt))
            .map_err(|e| e.to_string())?;
    }
    w.into_inner().map_err(|e| e.to_string())
}

/// The CSV export's columns, as [`AuditEntry`] serialises them.
const AUDIT_COLUMNS: [&str; 11] = [
    "seq",
    "at_ms",
    "actor",
    "action",
    "entity",
    "entity_id",
    "old_value",
    "new_value",
    "reason",
    "prev_hash",
    "hash",
];

/// The result of checking the hash chain.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Verification {
    /// The chain holds, holds every anchor given, and every record agrees with it.
    pub ok: bool,
    /// Entries checked.
    pub checked: u64,
    /// The first broken link, if any.
    #[serde(rename = "break")]
    pub first_break: Option<ChainBreakView>,
    /// The newest entry of an intact trail: record its `seq` and `hash` outside the store, and
    /// pass them as `expect` later.
    pub head: Option<Head>,
    /// Anchors (`expect`) found with their recorded hash.
    pub anchors_matched: usize,
    /// Entries dated more than 2 minutes before the entry before them (a clock set back; the
    /// first 20), and how many in all. They break nothing.
    pub clock_steps_back: Vec<ClockStep>,
    pub clock_steps_back_total: u64,
    /// Every inspection record and electronic signature compared with the audit entry that
    /// recorded it; `ok` is false when any was changed, added or removed outside linesight.
    pub records: RecordCheck,
}

/// A broken link of the chain.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ChainBreakView {
    pub seq: i64,
    pub problem: String,
}

impl From<ChainBreak> for ChainBreakView {
    fn from(b: ChainBreak) -> Self {
        ChainBreakView {
            seq: b.seq,
            problem: b.problem,
        }
    }
}

/// Anchors to check the trail against.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct VerifyQuery {
    /// Entries recorded outside the store, `SEQ:HASH` separated by commas (at most 100): the
    /// trail must still hold each with that hash, which shows entries removed from its end or
    /// a trail rewritten and re-hashed.
    pub expect: Option<String>,
}

const MAX_ANCHORS: usize = 100;

fn anchors(q: &VerifyQuery) -> Result<Vec<Anchor>, ApiError> {
    let Some(list) = q.expect.as_deref().filter(|l| !l.trim().is_empty()) else {
        return Ok(Vec::new());
    };
    let parts: Vec<&str> = list.split(',').collect();
    if parts.len() > MAX_ANCHORS {
        return Err(ApiError::bad(
            "expect",
            format!("{} anchors; at most {MAX_ANCHORS}", parts.len()),
        ));
    }
    parts
        .into_iter()
        .map(|p| p.parse().map_err(|e: String| ApiError::bad("expect", e)))
        .collect()
}

/// Checks the whole hash chain: every entry's hash and its link to the one before, and the
/// anchors given in `expect`; then every record (inspections, signatures, attachments, tasks,
/// NCRs, lots, accounts, bearer tokens, model activations) against its entries.
#[utoipa::path(get, path = "/api/v1/audit/verify", tag = "audit", params(VerifyQuery),
    responses((status = 200, body = Verification), (status = 400), (status = 403)))]
pub(super) async fn verify(
    State(state): State<ApiState>,
    caller: Caller,
    Query(q): Query<VerifyQuery>,
) -> Result<Json<Verification>, ApiError> {
    caller.require(QA, "verify the audit trail")?;
    let anchors = anchors(&q)?;
    // One check at a time: each reads the whole store in one snapshot, holding a database
    // connection (on PostgreSQL, one the writers share) for as long as it reads.
    static VERIFYING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);
    let _turn = VERIFYING
        .acquire()
        .await
        .expect("the semaphore is never closed");
    let check = state.store.verify_audit_against(&anchors).await?;
    let records = check.records;
    let records_ok = records.mismatches_total == 0;
    Ok(Json(match check.chain {
        Ok(v) => Verification {
            ok: records_ok,
            checked: v.checked,
            first_break: None,
            head: v.head,
            anchors_matched: v.anchors_matched,
            clock_steps_back: v.clock_steps_back,
            clock_steps_back_total: v.clock_steps_back_total,
            records,
        },
        Err(b) => Verification {
            ok: false,
            checked: 0,
            first_break: Some(b.into()),
            head: None,
            anchors_matched: 0,
            clock_steps_back: Vec::new(),
            clock_steps_back_total: 0,
            records,
        },
    }))
}

/// A cell a spreadsheet would read as a formula (`=`, `+`, `-`, `@`, tab or carriage return
/// first) gets a `'` in front, so that opening `audit.csv` runs nothing. The JSON export and
/// the stored trail keep the value as it is.
fn spreadsheet_text(value: &str) -> std::borrow::Cow<'_, str> {
    if value.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        std::borrow::Cow::Owned(format!("'{value}"))
    } else {
        std::borrow::Cow::Borrowed(value)
    }
}

/// `e` with its free-text cells passed through `text` / `opt`.
fn with_cells(
    e: &AuditEntry,
    text: impl Fn(&str) -> String,
    opt: impl Fn(&Option<String>) -> Option<String>,
) -> AuditEntry {
    AuditEntry {
        actor: text(&e.actor),
        action: text(&e.action),
        entity: text(&e.entity),
        entity_id: text(&e.entity_id),
        old_value: opt(&e.old_value),
        new_value: opt(&e.new_value),
        reason: opt(&e.reason),
        ..e.clone()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cells_a_spreadsheet_would_run_are_written_as_text() {
        assert_eq!(
            super::spreadsheet_text("=HYPERLINK(\"x\")"),
            "'=HYPERLINK(\"x\")"
        );
        assert_eq!(super::spreadsheet_text("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(super::spreadsheet_text("state=open"), "state=open");
        assert_eq!(super::spreadsheet_text(""), "");
    }
}
