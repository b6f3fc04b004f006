//! Non-conformance records: list, raise, move through the workflow, sign, attach files.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest as _, Multipart, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{ALL, Caller};
use super::extract::{Path, Query, json_rejection};
use super::forwarded::Client;
use super::{ApiError, ApiState};
use crate::quality::{
    Disposition, MAX_LABEL_BYTES, MAX_TEXT_BYTES, Meaning, NcrAction, Signature, check_text,
};
use crate::store::{
    Attachment, Credentials, NcrRecord, NcrTransition, NewNcr, StoreError, image_path,
    read_verified,
};

/// NCR list filter.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct NcrQuery {
    pub lot: Option<String>,
    /// Only NCRs that are not closed or cancelled.
    pub open: Option<bool>,
    /// At most this many (default 100).
    /// At most this many (default 100, at most 1000).
    pub limit: Option<i64>,
}

/// NCRs, newest first.
#[utoipa::path(get, path = "/api/v1/ncrs", tag = "ncrs", params(NcrQuery),
    responses((status = 200, body = Vec<NcrRecord>)))]
pub(super) async fn list(
    State(state): State<ApiState>,
    caller: Caller,
    Query(q): Query<NcrQuery>,
) -> Result<Json<Vec<NcrRecord>>, ApiError> {
    caller.require(ALL, "read NCRs")?;
    Ok(Json(
        state
            .store
            .list_ncrs(
                q.lot.as_deref(),
                q.open.unwrap_or(false),
                ApiError::page_size(q.limit, 100, 1000)?,
            )
            .await?,
    ))
}

/// An NCR to raise by hand.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NcrForm {
    pub lot: String,
    pub title: String,
    pub description: String,
    /// Default: this service's line.
    pub line: Option<String>,
}

/// Raises an NCR (anyone signed in may).
#[utoipa::path(post, path = "/api/v1/ncrs", tag = "ncrs", request_body = NcrForm,
    responses((status = 201, body = NcrRecord), (status = 400), (status = 422)))]
pub(super) async fn create(
    State(state): State<ApiState>,
    caller: Caller,
    body: Result<Json<NcrForm>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<NcrRecord>), ApiError> {
    let user = caller.require(ALL, "raise NCRs")?;
    let Json(form) = body.map_err(|r| json_rejection(r, &state))?;
    for (field, value, max) in [
        ("lot", &form.lot, MAX_LABEL_BYTES),
        ("title", &form.title, MAX_LABEL_BYTES),
        ("description", &form.description, MAX_TEXT_BYTES),
        (
            "line",
            form.line.as_ref().unwrap_or(&state.line),
            MAX_LABEL_BYTES,
        ),
    ] {
        if value.trim().is_empty() || value.len() > max {
            return Err(ApiError::bad(
                field,
                format!("required, at most {max} bytes"),
            ));
        }
    }
    let new = NewNcr {
        lot: form.lot,
        line: form.line.unwrap_or_else(|| state.line.clone()),
        title: form.title,
        description: form.description,
    };
    Ok((
        StatusCode::CREATED,
        Json(state.store.create_ncr(&new, user).await?),
    ))
}

/// An NCR with its history, signatures and attachments.
#[derive(Debug, Serialize, ToSchema)]
pub struct NcrDetail {
    pub ncr: NcrRecord,
    pub history: Vec<NcrTransition>,
    pub signatures: Vec<Signature>,
    pub attachments: Vec<AttachmentView>,
}

/// An attachment with the URL to fetch it.
#[derive(Debug, Serialize, ToSchema)]
pub struct AttachmentView {
    #[serde(flatten)]
    pub attachment: Attachment,
    pub url: String,
}

impl From<Attachment> for AttachmentView {
    fn from(a: Attachment) -> Self {
        AttachmentView {
            url: format!("/api/v1/ncrs/{}/attachments/{}", a.ncr_id, a.id),
            attachment: a,
        }
    }
}

/// One NCR, its history (every transition, who, when, why), signatures and attachments.
#[utoipa::path(get, path = "/api/v1/ncrs/{id}", tag = "ncrs", params(("id" = i64, Path)),
    responses((status = 200, body = NcrDetail), (status = 404)))]
pub(super) async fn ncr(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<Json<NcrDetail>, ApiError> {
    caller.require(ALL, "read NCRs")?;
    Ok(Json(NcrDetail {
        ncr: state.store.ncr(id).await?,
        history: state.store.ncr_transitions(id).await?,
        signatures: state.store.ncr_signatures(id).await?,
        attachments: state
            .store
            .attachments(id)
            .await?
            .into_iter()
            .map(AttachmentView::from)
            .collect(),
    }))
}

/// A move of an NCR through its workflow.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransitionForm {
    /// contain, investigate, propose, reject_disposition, approve, close, cancel or reopen.
    pub action: String,
    /// Required with `propose`: use_as_is, rework, scrap or return_to_vendor.
    #[schema(value_type = Option<String>, example = "scrap")]
    pub disposition: Option<Disposition>,
    /// Required with cancel, reopen and reject_disposition.
    pub reason: Option<String>,
    /// Required with `approve`: a signature with meaning "approved" made on the NCR as it is.
    pub signature_id: Option<i64>,
}

fn action(form: &TransitionForm) -> Result<NcrAction, ApiError> {
    Ok(match form.action.as_str() {
        "contain" => NcrAction::Contain,
        "investigate" => NcrAction::Investigate,
        "propose" => NcrAction::Propose(form.disposition.ok_or_else(|| {
            ApiError::bad(
                "disposition",
                "required with propose: use_as_is, rework, scrap or return_to_vendor",
            )
        })?),
        "reject_disposition" => NcrAction::RejectDisposition,
        "approve" => NcrAction::Approve,
        "close" => NcrAction::Close,
        "cancel" => NcrAction::Cancel,
        "reopen" => NcrAction::Reopen,
        other => {
            return Err(ApiError::bad(
                "action",
                format!(
                    "{other:?}: use contain, investigate, propose, reject_disposition, approve, close, cancel or reopen"
                ),
            ));
        }
    })
}

/// Moves an NCR. Who may do what is the workflow's rule (approval: a QA approver with an
/// electronic signature); a refused move answers 403 or 422 and changes nothing.
#[utoipa::path(post, path = "/api/v1/ncrs/{id}/transitions", tag = "ncrs", params(("id" = i64, Path)),
    request_body = TransitionForm,
    responses((status = 200, body = NcrRecord), (status = 403), (status = 404), (status = 422)))]
pub(super) async fn transition(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<i64>,
    body: Result<Json<TransitionForm>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<NcrRecord>, ApiError> {
    let user = caller.require(ALL, "move NCRs")?;
    let Json(form) = body.map_err(|r| json_rejection(r, &state))?;
    let act = action(&form)?;
    if let Some(reason) = &form.reason {
        check_text("reason", reason).map_err(|m| ApiError::bad("reason", m))?;
    }
    Ok(Json(
        state
            .store
            .transition_ncr(
                id,
                user,
                act,
                form.reason.as_deref().filter(|r| !r.trim().is_empty()),
                form.signature_id,
            )
            .await?,
    ))
}

/// An electronic signature: the signer's password entered again, and what it means.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignForm {
    pub password: String,
    /// approved, reviewed or rejected.
    #[schema(value_type = String, example = "approved")]
    pub meaning: Meaning,
    /// The NCR version the signer was shown (`version` of the NCR as read): the signature is
    /// refused (409) when the NCR has changed since, so that it binds what the signer saw.
    pub version: i64,
}

/// Signs an NCR as it is now (21 CFR 11.200: the signed-in user enters the password again).
/// A wrong password counts towards the lockout. The signature binds the signer's printed
/// name, the date and time and the meaning to the NCR's content hash.
#[utoipa::path(post, path = "/api/v1/ncrs/{id}/signatures", tag = "ncrs", params(("id" = i64, Path)),
    request_body = SignForm,
    responses((status = 201, body = Signature),
        (status = 400, description = "wrong password (`field`: password): nothing was signed"),
        (status = 403, description = "account locked"), (status = 404),
        (status = 409, description = "the NCR changed since the signer read it")))]
pub(super) async fn sign(
    State(state): State<ApiState>,
    caller: Caller,
    client: Client,
    Path(id): Path<i64>,
    body: Result<Json<SignForm>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Signature>), ApiError> {
    let user = caller.require(ALL, "sign NCRs")?;
    let Json(form) = body.map_err(|r| json_rejection(r, &state))?;
    let creds = Credentials {
        username: user.username.clone(),
        password: form.password,
        client: client.address,
    };
    let signature = state
        .store
        .sign_ncr_seen(
            id,
            &creds,
            form.meaning,
            state.quality.lockout(),
            Some(form.version),
        )
        .await
        .map_err(|e| match e {
            // Not a sign-in failure of the request (the caller is signed in): the password
            // re-entered for the signature is wrong.
            crate::store::StoreError::InvalidCredentials => {
                ApiError::bad("password", "wrong password: the signature was not made")
            }
            e => e.into(),
        })?;
    Ok((StatusCode::CREATED, Json(signature)))
}

/// A file to attach (`multipart/form-data`).
#[derive(ToSchema)]
#[allow(dead_code)] // Describes the form for the OpenAPI document only.
struct AttachmentForm {
    #[schema(format = Binary, content_media_type = "application/octet-stream")]
    file: String,
}

/// Attaches a file to an open NCR (audited). Send `multipart/form-data` with a `file`.
#[utoipa::path(post, path = "/api/v1/ncrs/{id}/attachments", tag = "ncrs", params(("id" = i64, Path)),
    request_body(content((AttachmentForm = "multipart/form-data"))),
    responses((status = 201, body = AttachmentView), (status = 400), (status = 404), (status = 408, description = "the body did not arrive within api.body_timeout_ms"), (status = 413), (status = 422), (status = 503)))]
pub(super) async fn attach(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<i64>,
    request: Request,
) -> Result<(StatusCode, Json<AttachmentView>), ApiError> {
    let user = caller.require(ALL, "attach files to NCRs")?.clone();
    // Held until the answer: the file stays in memory until it is written.
    let _admitted = state
        .inspectors
        .admit(std::time::Duration::from_millis(
            state.config.inference_timeout_ms,
        ))
        .await?;
    let read = async {
        let mut form = Multipart::from_request(request, &state)
            .await
            .map_err(|e| ApiError::bad("body", e.body_text()))?;
        let too_large = |e: axum::extract::multipart::MultipartError| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::TooLarge(state.config.max_body_bytes)
            } else if super::extract::body_stalled(&e) {
                ApiError::BodyTimeout(state.config.body_timeout_ms)
            } else {
                ApiError::bad("file", e.body_text())
            }
        };
        let mut file: Option<(String, String, Bytes)> = None;
        while let Some(field) = form.next_field().await.map_err(too_large)? {
            if field.name() != Some("file") {
                return Err(ApiError::bad(
                    "body",
                    format!("unknown form field {:?}: send a `file`", field.name()),
                ));
            }
            let name = field.file_name().unwrap_or("attachment").to_owned();
            let media = field
                .content_type()
                .unwrap_or("application/octet-stream")
                .to_owned();
            file = Some((name, media, field.bytes().await.map_err(too_large)?));
        }
        Ok(file)
    };
    let file = super::InspectorPool::read_body(state.config.body_timeout_ms, read).await?;
    let (name, media, bytes) = file.ok_or_else(|| ApiError::bad("file", "the form has no file"))?;
    let attachment = state
        .store
        .add_attachment(&state.attachment_dir, id, &name, &media, &bytes, &user)
        .await?;
    Ok((StatusCode::CREATED, Json(attachment.into())))
}

/// Downloads an attachment.
#[utoipa::path(get, path = "/api/v1/ncrs/{id}/attachments/{attachment_id}", tag = "ncrs",
    params(("id" = i64, Path), ("attachment_id" = i64, Path)),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>), (status = 404),
        (status = 500, description = "its file no longer holds what its SHA-256 names (altered or damaged on disk): not served")))]
pub(super) async fn attachment(
    State(state): State<ApiState>,
    caller: Caller,
    Path((id, attachment_id)): Path<(i64, i64)>,
) -> Result<Response, ApiError> {
    caller.require(ALL, "read NCRs")?;
    let a = state.store.attachment(id, attachment_id).await?;
    if image_path(&state.attachment_dir, &a.sha256).is_none() {
        return Err(ApiError::Store(StoreError::Corrupt {
            column: "ncr_attachments.sha256",
            value: a.sha256.clone(),
        }));
    }
    // Checked against its recorded SHA-256: a file altered on disk is not served.
    let bytes = read_verified(&state.attachment_dir, &a.sha256)
        .await?
        .ok_or_else(|| ApiError::Internal(format!("attachment {} has no file", a.id)))?;
    // Sent as a download, never rendered inline: an uploaded HTML file must not run here.
    let ascii: String = a
        .name
        .chars()
        .map(|c| {
            if (c.is_ascii_graphic() || c == ' ') && c != '"' && c != '\\' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let disposition = format!("attachment; filename=\"{ascii}\"");
    Ok((
        [
            (
                header::CONTENT_TYPE,
                served_media_type(&a.media_type).into(),
            ),
            (header::CONTENT_DISPOSITION, disposition),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".into()),
            // Should a browser render it all the same, it runs no script of this origin.
            (header::CONTENT_SECURITY_POLICY, "sandbox".into()),
        ],
        bytes,
    )
        .into_response())
}

/// The content type an attachment is served with: the uploader's, when it is one that cannot
/// carry script (pictures, PDF, plain text, spreadsheets and documents); anything else (HTML,
/// SVG, XML…) as plain bytes.
fn served_media_type(uploaded: &str) -> &str {
    const SAFE: [&str; 12] = [
        "image/png",
        "image/jpeg",
        "image/bmp",
        "image/tiff",
        "image/webp",
        "application/pdf",
        "text/plain",
        "text/csv",
        "application/zip",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "application/octet-stream",
    ];
    let essence = uploaded
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    SAFE.into_iter()
        .find(|s| *s == essence)
        .unwrap_or("application/octet-stream")
}

#[cfg(test)]
mod tests {
    #[test]
    fn attachments_that_could_carry_script_are_served_as_bytes() {
        for (uploaded, served) in [
            ("image/png", "image/png"),
            ("Application/PDF", "application/pdf"),
            ("text/plain; charset=utf-8", "text/plain"),
            ("text/html", "application/octet-stream"),
            ("image/svg+xml", "application/octet-stream"),
            ("application/xhtml+xml", "application/octet-stream"),
            ("", "application/octet-stream"),
        ] {
            assert_eq!(super::served_media_type(uploaded), served, "{uploaded}");
        }
    }
}
