//! `Path` and `Query` extractors whose rejections are problem+json like every other error of
//! the API ([`ApiError::BadRequest`] naming the part of the request at fault), instead of
//! axum's plain-text 400. Handlers import these in place of axum's.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::ApiError;

/// A path parameter (`/ncrs/{id}`): a malformed one answers 400 with `field: "path"` and
/// axum's description, which names the parameter and the value.
#[derive(Debug, Clone, Copy)]
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| Path(v))
            .map_err(|r| ApiError::BadRequest {
                field: "path",
                message: r.body_text(),
            })
    }
}

/// Query parameters: a malformed or unknown one answers 400 with `field: "query"` and the
/// deserialiser's description, which names the parameter.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(v)| Query(v))
            .map_err(|r| ApiError::BadRequest {
                field: "query",
                message: r.body_text(),
            })
    }
}

/// A JSON body's rejection as problem+json: 413 past [`super::ApiConfig::json_body_limit`], else 400 with
/// `field: "body"` and the deserialiser's description, which names the field at fault.
/// (Handlers take `Result<Json<_>, JsonRejection>` and call this after their role check, so
/// that a caller without the role hears 403 whatever the body.)
pub fn json_rejection(
    r: axum::extract::rejection::JsonRejection,
    state: &super::ApiState,
) -> ApiError {
    if r.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::JsonTooLarge(state.config.json_body_limit())
    } else if body_stalled(&r) {
        ApiError::BodyTimeout(state.config.body_timeout_ms)
    } else {
        ApiError::BadRequest {
            field: "body",
            message: r.body_text(),
        }
    }
}

/// Whether `e` comes from a request body that sent nothing for `api.body_timeout_ms` (the
/// server times bodies out: [`super::server`]).
pub(crate) fn body_stalled(e: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(e), |e| e.source())
        .any(|e| e.is::<tower_http::timeout::TimeoutError>())
}
