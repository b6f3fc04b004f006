//! [`ApiError`]: every failure of a route, answered as RFC 9457 `application/problem+json`.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::inspect::InspectError;
use crate::quality::TransitionError;
use crate::store::StoreError;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{field}: {message}")]
    BadRequest {
        field: &'static str,
        message: String,
    },
    #[error("authentication required: sign in, or send a bearer token or HTTP Basic credentials")]
    Unauthenticated,
    #[error("missing or wrong X-CSRF-Token header: send the token given at sign-in")]
    Csrf,
    #[error("role {role} may not {action}")]
    Forbidden {
        role: &'static str,
        action: &'static str,
    },
    #[error("{0} does not exist")]
    NotFound(String),
    /// It existed and was removed on purpose (image retention); the records keep its reference.
    #[error("{0}")]
    Gone(String),
    #[error("refused, the current model keeps serving: {0}")]
    Refused(String),
    #[error("request body larger than api.max_body_bytes = {0}")]
    TooLarge(usize),
    #[error(
        "JSON body larger than {0} bytes (64 KiB, the most any request of this API needs, or api.max_body_bytes if lower; images and attachments go in their own bodies, up to api.max_body_bytes)"
    )]
    JsonTooLarge(usize),
    #[error("no cameras run in this service: triggers go to `linesight run` with api.listen set")]
    NoPipeline,
    #[error("unsupported media type {0:?}: send image/jpeg or image/png")]
    UnsupportedMedia(String),
    #[error(
        "the request body did not arrive within api.body_timeout_ms = {0} ms: send it again, on a faster link or with the setting raised"
    )]
    BodyTimeout(u64),
    #[error("inspection took longer than api.inference_timeout_ms = {0}")]
    Timeout(u64),
    #[error(
        "all {inspectors} inspectors stayed busy for api.inference_timeout_ms = {ms}: try again later"
    )]
    Busy { inspectors: usize, ms: u64 },
    /// The work was not started because the same kind of work kept it waiting too long; the
    /// client may retry.
    #[error("{0}")]
    Unavailable(String),
    #[error(
        "too many failed sign-ins from this address: api.sign_in_failures_per_address = {limit} \
         in api.sign_in_window_minutes = {window_minutes}; try again in {retry_after_s} s"
    )]
    TooManyFailures {
        limit: u32,
        window_minutes: u64,
        retry_after_s: u64,
    },
    #[error(transparent)]
    Inspect(#[from] InspectError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// A 400 naming the field of the request at fault.
    pub fn bad(field: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::BadRequest {
            field,
            message: message.into(),
        }
    }

    /// The page size a listing asked for as `limit`: `default` when none, refused outside
    /// 1..=`max` (a negative limit would read as "no limit" to SQLite).
    pub fn page_size(limit: Option<i64>, default: i64, max: i64) -> Result<i64, ApiError> {
        let limit = limit.unwrap_or(default);
        if (1..=max).contains(&limit) {
            Ok(limit)
        } else {
            Err(ApiError::bad(
                "limit",
                format!("{limit}: must be between 1 and {max}"),
            ))
        }
    }

    /// Whether the failure is the service's (5xx), not the caller's.
    pub fn is_server_error(&self) -> bool {
        self.status().is_server_error()
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthenticated => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } | ApiError::Csrf => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Gone(_) => StatusCode::GONE,
            ApiError::UnsupportedMedia(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooLarge(_) | ApiError::JsonTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Refused(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::NoPipeline => StatusCode::CONFLICT,
            ApiError::TooManyFailures { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Timeout(_) | ApiError::Busy { .. } | ApiError::Unavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Inspect(e) => match e {
                InspectError::Decode(_) | InspectError::Preprocess(_) => {
                    StatusCode::UNPROCESSABLE_ENTITY
                }
                InspectError::Model(_) | InspectError::NonFiniteScore { .. } => {
                    StatusCode::INTERNAL_SERVER_ERROR
                }
            },
            ApiError::Store(e) => match e {
                StoreError::Transition(
                    TransitionError::Forbidden { .. }
                    | TransitionError::OwnProposal { .. }
                    | TransitionError::ProposerCancels { .. },
                ) => StatusCode::FORBIDDEN,
                StoreError::Invalid(_) | StoreError::Transition(_) | StoreError::Signature(_) => {
                    StatusCode::UNPROCESSABLE_ENTITY
                }
                StoreError::NotFound { .. } => StatusCode::NOT_FOUND,
                StoreError::InvalidCredentials => StatusCode::UNAUTHORIZED,
                StoreError::Locked { .. }
                | StoreError::Disabled { .. }
                | StoreError::PasswordChangeDue { .. } => StatusCode::FORBIDDEN,
                StoreError::UserExists(_)
                | StoreError::LotHasOpenNcr { .. }
                | StoreError::Stale { .. }
                | StoreError::ReinspectionCapReached { .. }
                | StoreError::Conflict { .. }
                | StoreError::TriggerAnswered { .. } => StatusCode::CONFLICT,
                StoreError::Connect { .. }
                | StoreError::Migrate(_)
                | StoreError::Db { .. }
                | StoreError::Corrupt { .. }
                | StoreError::Damaged { .. } => StatusCode::INTERNAL_SERVER_ERROR,
                StoreError::Io { source, .. }
                    if source.kind() == std::io::ErrorKind::StorageFull =>
                {
                    StatusCode::INSUFFICIENT_STORAGE
                }
                StoreError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
                // Retried by the upload; still gone after that, the client may try again.
                StoreError::ImageGone { .. } | StoreError::Busy(_) => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
            },
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut body = serde_json::json!({
            "type": "about:blank",
            "title": status.canonical_reason().unwrap_or("error"),
            "status": status.as_u16(),
        });
        if status.is_server_error()
            && !matches!(
                self,
                ApiError::Timeout(_) | ApiError::Busy { .. } | ApiError::Unavailable(_)
            )
        {
            tracing::error!(error = %self, "request failed");
        } else {
            body["detail"] = self.to_string().into();
        }
        if let ApiError::BadRequest { field, .. } = &self {
            body["field"] = (*field).into();
        }
        // What the web UI (and a client program) acts on: the sign-in turns into choosing a
        // new password.
        if let ApiError::Store(StoreError::PasswordChangeDue { .. }) = &self {
            body["code"] = "password_change_due".into();
        }
        // The store's refusals start with the field they are about ("reason: a cancellation
        // needs a reason"): the answer names it as a BadRequest does.
        if let ApiError::Store(StoreError::Invalid(message)) = &self
            && let Some((field, _)) = message.split_once(": ")
            && !field.is_empty()
            && field
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        {
            body["field"] = field.into();
        }
        let mut response = (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body.to_string(),
        )
            .into_response();
        // A Bearer challenge: a Basic one would make browsers pop up their own password
        // dialog over the web UI's sign-in form. Basic credentials are still accepted.
        if let ApiError::TooManyFailures { retry_after_s, .. } = &self {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                header::HeaderValue::from(*retry_after_s),
            );
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"linesight\""),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(res: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn server_errors_hide_their_detail_client_errors_name_the_field() {
        let res = ApiError::Internal("secret path /x".into()).into_response();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let p = body(res).await;
        assert!(p.get("detail").is_none());
        assert!(!p.to_string().contains("secret"));
        let res = ApiError::BadRequest {
            field: "threshold",
            message: "NaN is not a finite number".into(),
        }
        .into_response();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        let p = body(res).await;
        assert_eq!(p["field"], "threshold");
        assert_eq!(p["detail"], "threshold: NaN is not a finite number");
        let res = ApiError::Store(StoreError::Invalid(
            "reason: cancelling an NCR needs a reason".into(),
        ))
        .into_response();
        assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(body(res).await["field"], "reason");
        let res = ApiError::Store(StoreError::Invalid("NCR 7 is closed: nothing to do".into()))
            .into_response();
        assert!(body(res).await.get("field").is_none(), "no field to name");
    }
}
