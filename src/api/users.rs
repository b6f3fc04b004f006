//! Accounts: a user changes their own password; an administrator lists accounts, resets a
//! forgotten password, and disables or enables an account. Every change is audited; an
//! account is never deleted (records and signatures name it).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum_extra::extract::CookieJar;
use serde::Deserialize;
use utoipa::ToSchema;

use super::auth::{ADMIN, ALL, Caller};
use super::extract::{Path, json_rejection};
use super::forwarded::Client;
use super::{ApiError, ApiState};
use crate::store::{Credentials, StoreError, UserAccount};

/// A user's own new password, with the current one.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    /// Whose password, when the request carries no credentials: a password an administrator
    /// reset signs nobody in, and serves only here.
    pub username: Option<String>,
    pub current_password: String,
    pub new_password: String,
}

/// Changes a user's own password: the caller's, or, without credentials, that of `username`
/// (a password an administrator reset must be changed this way before it signs in). The
/// current password is checked as at sign-in: a wrong one counts towards the lockout and, sent
/// without credentials, towards the client's allowance of failed sign-ins. Every web UI session
/// of the user ends, the caller's included: sign in again with the new password.
#[utoipa::path(post, path = "/api/v1/session/password", tag = "session", request_body = PasswordChange,
    responses((status = 204), (status = 400, description = "wrong current password, or a username that is not the caller's"),
        (status = 401, description = "no credentials and no username"),
        (status = 403, description = "the account is locked or disabled"),
        (status = 422, description = "the new password breaks the password rules")))]
pub(super) async fn change_password(
    State(state): State<ApiState>,
    caller: Result<Caller, ApiError>,
    client: Client,
    jar: CookieJar,
    body: Result<Json<PasswordChange>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let (username, form, attempt) = match (caller, body) {
        (Ok(caller), body) => {
            let user = caller.require(ALL, "change their password")?;
            let Json(form) = body.map_err(|r| json_rejection(r, &state))?;
            if form.username.as_ref().is_some_and(|u| *u != user.username) {
                return Err(ApiError::bad(
                    "username",
                    "only your own password: leave username out, or sign out first",
                ));
            }
            (user.username.clone(), form, None)
        }
        // No credentials at all (not wrong ones, not a session without its CSRF token): a
        // password an administrator reset, which signs nobody in, is changed by name.
        (Err(ApiError::Unauthenticated), Ok(Json(form))) if form.username.is_some() => {
            // As a sign-in: within the client's allowance of failures.
            let attempt = state.sign_in_throttle.admit(client.address)?;
            (
                form.username.clone().unwrap_or_default(),
                form,
                Some(attempt),
            )
        }
        (Err(unauthenticated), _) => return Err(unauthenticated),
    };
    let creds = Credentials {
        username,
        password: form.current_password,
        client: client.address,
    };
    let changed = state
        .store
        .change_password(&creds, &form.new_password, state.quality.lockout())
        .await;
    let attempt_was_signed_in = attempt.is_none();
    if let (
        Some(attempt),
        Err(
            StoreError::InvalidCredentials
            | StoreError::Locked { .. }
            | StoreError::Disabled { .. },
        ),
    ) = (attempt, &changed)
    {
        attempt.failed();
    }
    changed.map_err(|e| match e {
        StoreError::InvalidCredentials => ApiError::bad(
            "current_password",
            "wrong user name or password: the password was not changed",
        ),
        e => e.into(),
    })?;
    if attempt_was_signed_in {
        // The session ended with the change: its cookie goes too.
        let gone = super::auth::session_cookie(&state, &client, String::new());
        return Ok((jar.remove(gone), StatusCode::NO_CONTENT).into_response());
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The accounts, by name, with their state (admin).
#[utoipa::path(get, path = "/api/v1/users", tag = "session",
    responses((status = 200, body = Vec<UserAccount>), (status = 403)))]
pub(super) async fn users(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<Vec<UserAccount>>, ApiError> {
    caller.require(ADMIN, "list users")?;
    Ok(Json(state.store.users().await?))
}

/// Why an account is disabled or enabled again.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountChange {
    pub reason: String,
}

/// Disables an account (admin, audited with the reason): sign-ins and signatures are refused,
/// its web UI sessions end and its bearer tokens stop working. The last enabled administrator
/// cannot be disabled.
#[utoipa::path(post, path = "/api/v1/users/{username}/disable", tag = "session", request_body = AccountChange,
    params(("username" = String, Path)),
    responses((status = 204), (status = 403), (status = 404), (status = 422)))]
pub(super) async fn disable(
    State(state): State<ApiState>,
    caller: Caller,
    Path(username): Path<String>,
    body: Result<Json<AccountChange>, axum::extract::rejection::JsonRejection>,
) -> Result<StatusCode, ApiError> {
    set_disabled(state, caller, username, body, true).await
}

/// Enables a disabled account again (admin, audited with the reason).
#[utoipa::path(post, path = "/api/v1/users/{username}/enable", tag = "session", request_body = AccountChange,
    params(("username" = String, Path)),
    responses((status = 204), (status = 403), (status = 404), (status = 422)))]
pub(super) async fn enable(
    State(state): State<ApiState>,
    caller: Caller,
    Path(username): Path<String>,
    body: Result<Json<AccountChange>, axum::extract::rejection::JsonRejection>,
) -> Result<StatusCode, ApiError> {
    set_disabled(state, caller, username, body, false).await
}

async fn set_disabled(
    state: ApiState,
    caller: Caller,
    username: String,
    body: Result<Json<AccountChange>, axum::extract::rejection::JsonRejection>,
    disabled: bool,
) -> Result<StatusCode, ApiError> {
    let admin = caller.require(
        ADMIN,
        if disabled {
            "disable accounts"
        } else {
            "enable accounts"
        },
    )?;
    let Json(change) = body.map_err(|r| json_rejection(r, &state))?;
    state
        .store
        .set_user_disabled(&username, disabled, &admin.username, &change.reason)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A new password set by an administrator.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordReset {
    pub new_password: String,
    pub reason: String,
}

/// Resets another user's forgotten password (admin, audited with the reason; the password is
/// never recorded). The user's web UI sessions end. Administrators change their own with
/// `POST /api/v1/session/password`, which asks for the current one.
#[utoipa::path(post, path = "/api/v1/users/{username}/password", tag = "session", request_body = PasswordReset,
    params(("username" = String, Path)),
    responses((status = 204), (status = 403), (status = 404), (status = 422)))]
pub(super) async fn reset_password(
    State(state): State<ApiState>,
    caller: Caller,
    Path(username): Path<String>,
    body: Result<Json<PasswordReset>, axum::extract::rejection::JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let admin = caller.require(ADMIN, "reset passwords")?;
    let Json(reset) = body.map_err(|r| json_rejection(r, &state))?;
    if username == admin.username {
        return Err(ApiError::bad(
            "username",
            "your own password is changed with POST /api/v1/session/password, which asks for the current one",
        ));
    }
    state
        .store
        .reset_password(
            &username,
            &reset.new_password,
            &admin.username,
            &reset.reason,
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
