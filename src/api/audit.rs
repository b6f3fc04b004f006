//! The audit trail: query, export, verify (QA approvers and administrators).

use axum::Json;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{Caller, QA};
use super::{ApiError, ApiState};
use crate::quality::audit::{AuditEntry, ChainBreak};

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

fn bad(field: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::BadRequest {
        field,
        message: message.into(),
    }
}

async fn entries(state: &ApiState, q: &AuditQuery) -> Result<Vec<AuditEntry>, ApiError> {
    if q.entity_id.is_some() && q.entity.is_none() {
        return Err(bad("entity", "required with entity_id"));
    }
    let limit = q.limit.unwrap_or(500);
    if !(1..=10_000).contains(&limit) {
        return Err(bad(
            "limit",
            format!("{limit}: must be between 1 and 10000"),
        ));
    }
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
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    caller.require(QA, "read the audit trail")?;
    let Query(q) = query.map_err(|e| bad("query", e.body_text()))?;
    Ok(Json(entries(&state, &q).await?))
}

/// Export format and range.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// csv or json (default csv).
    pub format: Option<String>,
    pub from_seq: Option<i64>,
    pub entity: Option<String>,
    pub entity_id: Option<String>,
    pub limit: Option<i64>,
}

/// Audit entries as a CSV or JSON download, with the hashes that let an auditor re-check the
/// chain outside linesight. Each export is itself audited.
#[utoipa::path(get, path = "/api/v1/audit/export", tag = "audit", params(ExportQuery),
    responses((status = 200, content_type = "text/csv", body = String), (status = 403)))]
pub(super) async fn export(
    State(state): State<ApiState>,
    caller: Caller,
    query: Result<Query<ExportQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let user = caller.require(QA, "export the audit trail")?.clone();
    let Query(q) = query.map_err(|e| bad("query", e.body_text()))?;
    let format = q.format.clone().unwrap_or_else(|| "csv".into());
    if !matches!(format.as_str(), "csv" | "json") {
        return Err(bad("format", format!("{format:?}: use csv or json")));
    }
    let list = entries(
        &state,
        &AuditQuery {
            from_seq: q.from_seq,
            entity: q.entity,
            entity_id: q.entity_id,
            limit: Some(q.limit.unwrap_or(10_000)),
        },
    )
    .await?;
    state
        .store
        .record_export(&user.username, list.len(), &format)
        .await?;
    let (media, name, body) = if format == "json" {
        let body =
            serde_json::to_vec_pretty(&list).map_err(|e| ApiError::Internal(e.to_string()))?;
        ("application/json", "audit.json", body)
    } else {
        let mut w = csv::Writer::from_writer(Vec::new());
        for e in &list {
            // Free text that a spreadsheet would take for a formula is written as text.
            let text = |v: &str| spreadsheet_text(v).into_owned();
            let opt =
                |v: &Option<String>| v.as_deref().map(spreadsheet_text).map(|c| c.into_owned());
            let shown = with_cells(e, text, opt);
            w.serialize(&shown)
                .map_err(|e| ApiError::Internal(e.to_string()))?;
        }
        let body = w
            .into_inner()
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        ("text/csv; charset=utf-8", "audit.csv", body)
    };
    Ok((
        [
            (header::CONTENT_TYPE, media.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        body,
    )
        .into_response())
}

/// The result of checking the hash chain.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Verification {
    pub ok: bool,
    /// Entries checked.
    pub checked: u64,
    /// The first broken link, if any.
    #[serde(rename = "break")]
    pub first_break: Option<ChainBreakView>,
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

/// Checks the whole hash chain: every entry's hash and its link to the one before.
#[utoipa::path(get, path = "/api/v1/audit/verify", tag = "audit",
    responses((status = 200, body = Verification), (status = 403)))]
pub(super) async fn verify(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<Verification>, ApiError> {
    caller.require(QA, "verify the audit trail")?;
    Ok(Json(match state.store.verify_audit().await? {
        Ok(checked) => Verification {
            ok: true,
            checked,
            first_break: None,
        },
        Err(b) => Verification {
            ok: false,
            checked: 0,
            first_break: Some(b.into()),
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
