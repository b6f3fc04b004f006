//! Who is calling, and may they.

use axum::http::{HeaderMap, header};
use base64::Engine as _;

use super::{ApiError, ApiState};
use crate::quality::Role;
use crate::store::{Credentials, User};

/// Checks HTTP Basic credentials and that the user's role is one of `allowed`.
pub(super) async fn authorize(
    state: &ApiState,
    headers: &HeaderMap,
    allowed: &[Role],
    action: &'static str,
) -> Result<User, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .ok_or(ApiError::Unauthenticated)?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or(ApiError::Unauthenticated)?;
    let (username, password) = decoded.split_once(':').ok_or(ApiError::Unauthenticated)?;
    let creds = Credentials {
        username: username.into(),
        password: password.into(),
    };
    let user = state
        .store
        .authenticate(&creds, state.quality.lockout())
        .await?;
    if allowed.contains(&user.role) {
        Ok(user)
    } else {
        Err(ApiError::Forbidden {
            role: user.role.as_str(),
            action,
        })
    }
}

pub(super) const ALL: &[Role] = &Role::ALL;
pub(super) const QA: &[Role] = &[Role::QaApprover, Role::Admin];
pub(super) const INSPECTORS: &[Role] = &[Role::Inspector, Role::QaApprover, Role::Admin];
