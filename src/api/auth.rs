//! Who is calling, and may they.
//!
//! Three ways in, checked in this order:
//! - `Authorization: Bearer lst_…`: a token issued to a machine, a script or the MES
//!   (`linesight users token`), acting as its user;
//! - `Authorization: Basic …`: user name and password on every request (for tools that cannot
//!   keep a token; each request pays a password hash);
//! - the `linesight_session` cookie of the web UI, opened by `POST /api/v1/session`. Requests
//!   that change something must then also carry the session's CSRF token in `X-CSRF-Token`;
//!   the cookie is `SameSite=Strict` and `HttpOnly` besides.
//!
//! Every route takes a [`Caller`] and states the roles it admits with [`Caller::require`].

use axum::Json;
use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum_extra::extract::CookieJar;
use axum_extra::extract::cookie::{Cookie, SameSite};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::{Path, json_rejection};
use super::forwarded::Client;
use super::{ApiError, ApiState};
use crate::quality::Role;
use crate::store::{Credentials, StoreError, User};

/// Name of the web UI's session cookie.
pub const SESSION_COOKIE: &str = "linesight_session";
/// Header carrying the session's CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Marks a request the web UI makes by itself (a view refreshing): it does not extend the
/// session, so the idle sign-out (`api.session_idle_minutes`) still comes to a terminal left
/// on such a view.
pub const BACKGROUND_HEADER: &str = "x-linesight-background";

/// How the caller proved who they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// A bearer token (the token, to check it is still valid during a long request).
    Bearer { token: String },
    /// HTTP Basic credentials, checked at `checked_at_ms`: a password set since ends a
    /// lasting request.
    Basic { checked_at_ms: i64 },
    /// The web UI's session cookie (its secret, to end it on sign-out).
    Session { secret: String, csrf_token: String },
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: User,
    pub via: Via,
}

impl Caller {
    /// Refuses with 403 unless the caller's role is one of `allowed`.
    pub fn require(&self, allowed: &[Role], action: &'static str) -> Result<&User, ApiError> {
        if allowed.contains(&self.user.role) {
            Ok(&self.user)
        } else {
            Err(ApiError::Forbidden {
                role: self.user.role.as_str(),
                action,
            })
        }
    }
}

fn idle_ms(state: &ApiState) -> i64 {
    i64::from(state.config.session_idle_minutes) * 60_000
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Caller, ApiError> {
        let client = Client::of(parts, state);
        let extend = !parts.headers.contains_key(BACKGROUND_HEADER);
        authenticate(state, &parts.method, &parts.headers, client.address, extend).await
    }
}

/// A caller whose request never extends a web UI session: a live view that stays open (or a
/// browser reconnecting it after a proxy's idle timeout) is not the user at the terminal.
pub(super) struct PassiveCaller(pub Caller);

impl FromRequestParts<ApiState> for PassiveCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ApiState,
    ) -> Result<PassiveCaller, ApiError> {
        let client = Client::of(parts, state);
        authenticate(state, &parts.method, &parts.headers, client.address, false)
            .await
            .map(PassiveCaller)
    }
}

impl Client {
    /// The request's client: the connection's peer address, where the server knows it (it
    /// serves with each connection's peer; a request made in-process has none), or the one a
    /// trusted proxy forwarded ([`super::forwarded`]).
    fn of(parts: &Parts, state: &ApiState) -> Client {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        Client::resolve(peer, &parts.headers, &state.config.trusted_proxies)
    }
}

impl FromRequestParts<ApiState> for Client {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ApiState,
    ) -> Result<Client, Self::Rejection> {
        Ok(Client::of(parts, state))
    }
}

/// Checks a user name and password (the sign-in form, HTTP Basic) within the client's
/// allowance of failures ([`super::SignInThrottle`]); a failure counts against it.
async fn check_password(state: &ApiState, creds: &Credentials) -> Result<User, ApiError> {
    counted(
        state,
        creds.client,
        state.store.authenticate(creds, state.quality.lockout()),
    )
    .await
}

/// Runs the password check `check` within the client's allowance of failures; a wrong
/// password, or one for a locked or disabled account, counts against it.
async fn counted<T>(
    state: &ApiState,
    client: Option<IpAddr>,
    check: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, ApiError> {
    let attempt = state.sign_in_throttle.admit(client)?;
    let checked = check.await;
    if let Err(
        StoreError::InvalidCredentials | StoreError::Locked { .. } | StoreError::Disabled { .. },
    ) = &checked
    {
        attempt.failed();
    }
    Ok(checked?)
}

async fn authenticate(
    state: &ApiState,
    method: &Method,
    headers: &HeaderMap,
    client: Option<IpAddr>,
    extend_session: bool,
) -> Result<Caller, ApiError> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if let Some(token) = authorization.and_then(|v| v.strip_prefix("Bearer ")) {
        let user = state
            .store
            .token_user(token.trim())
            .await?
            .ok_or(ApiError::Unauthenticated)?;
        return Ok(Caller {
            user,
            via: Via::Bearer {
                token: token.trim().to_owned(),
            },
        });
    }
    if let Some(basic) = authorization.and_then(|v| v.strip_prefix("Basic ")) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(basic.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or(ApiError::Unauthenticated)?;
        let (username, password) = decoded.split_once(':').ok_or(ApiError::Unauthenticated)?;
        let creds = Credentials {
            username: username.into(),
            password: password.into(),
            client,
        };
        let user = check_password(state, &creds).await?;
        return Ok(Caller {
            user,
            via: Via::Basic {
                checked_at_ms: crate::quality::now_ms(),
            },
        });
    }
    let jar = CookieJar::from_headers(headers);
    let secret = jar
        .get(SESSION_COOKIE)
        .map(|c| c.value().to_owned())
        .ok_or(ApiError::Unauthenticated)?;
    let session = state
        .store
        .session(&secret, idle_ms(state), extend_session)
        .await?
        .ok_or(ApiError::Unauthenticated)?;
    let safe = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    if !safe {
        use subtle::ConstantTimeEq as _;
        let sent = headers
            .get(CSRF_HEADER)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        // Compared in constant time: the token is a secret of the session.
        if !bool::from(sent.ct_eq(session.csrf_token.as_bytes())) {
            return Err(ApiError::Csrf);
        }
    }
    Ok(Caller {
        user: session.user,
        via: Via::Session {
            secret,
            csrf_token: session.csrf_token,
        },
    })
}

impl Caller {
    /// Whether the caller's credentials still hold, for a request that lasts (the live-event
    /// stream): the session not ended or idle past its limit, the token not revoked or expired,
    /// a Basic user not locked, disabled or given a new password since. Checking does not
    /// extend a session.
    pub(super) async fn still_valid(&self, state: &ApiState) -> Result<bool, ApiError> {
        Ok(match &self.via {
            Via::Session { secret, .. } => state.store.session_alive(secret).await?,
            Via::Bearer { token } => state.store.token_user(token).await?.is_some(),
            Via::Basic { checked_at_ms } => state
                .store
                .account(&self.user.username)
                .await?
                .is_some_and(|a| {
                    a.disabled_at_ms.is_none()
                        && a.locked_until_ms
                            .is_none_or(|t| t <= crate::quality::now_ms())
                        && a.password_set_at_ms.is_none_or(|t| t <= *checked_at_ms)
                }),
        })
    }
}

pub(super) const ALL: &[Role] = &Role::ALL;
pub(super) const QA: &[Role] = &[Role::QaApprover, Role::Admin];
pub(super) const INSPECTORS: &[Role] = &[Role::Inspector, Role::QaApprover, Role::Admin];
pub(super) const ADMIN: &[Role] = &[Role::Admin];

/// Sign-in form.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    pub username: String,
    pub password: String,
}

/// The signed-in user, as the web UI needs it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionInfo {
    pub username: String,
    pub full_name: String,
    pub role: Role,
    /// Send it back in `X-CSRF-Token` with every POST, PUT, PATCH and DELETE.
    pub csrf_token: Option<String>,
    pub expires_at_ms: Option<i64>,
}

/// A browser-session cookie (gone when the browser closes, which suits shared shop-floor
/// terminals); the server ends the session itself after `api.session_idle_minutes` idle. It
/// is `Secure` when the browser reached the service over HTTPS: linesight's own TLS, or a
/// trusted proxy's (`X-Forwarded-Proto: https`).
pub(super) fn session_cookie(state: &ApiState, client: &Client, value: String) -> Cookie<'static> {
    Cookie::build((SESSION_COOKIE, value))
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(state.config.tls.is_some() || client.forwarded_https)
        .path("/")
        .build()
}

/// Signs in and opens a session (cookie `linesight_session`).
#[utoipa::path(post, path = "/api/v1/session", tag = "session", request_body = SignIn,
    responses((status = 200, body = SessionInfo), (status = 401, description = "wrong user name or password"),
        (status = 403, description = "account locked"),
        (status = 429, description = "too many failed sign-ins from this address (api.sign_in_failures_per_address); see Retry-After")))]
pub(super) async fn sign_in(
    State(state): State<ApiState>,
    client: Client,
    jar: CookieJar,
    body: Result<Json<SignIn>, axum::extract::rejection::JsonRejection>,
) -> Result<(CookieJar, Json<SessionInfo>), ApiError> {
    let Json(form) = body.map_err(|r| json_rejection(r, &state))?;
    let creds = Credentials {
        username: form.username,
        password: form.password,
        client: client.address,
    };
    let (user, secret, session) = counted(
        &state,
        client.address,
        state
            .store
            .sign_in(&creds, state.quality.lockout(), idle_ms(&state)),
    )
    .await?;
    Ok((
        jar.add(session_cookie(&state, &client, secret)),
        Json(SessionInfo {
            username: user.username,
            full_name: user.full_name,
            role: user.role,
            csrf_token: Some(session.csrf_token),
            expires_at_ms: Some(session.expires_at_ms),
        }),
    ))
}

/// The signed-in user (any way of signing in).
#[utoipa::path(get, path = "/api/v1/session", tag = "session",
    responses((status = 200, body = SessionInfo), (status = 401)))]
pub(super) async fn whoami(caller: Caller) -> Json<SessionInfo> {
    let csrf_token = match &caller.via {
        Via::Session { csrf_token, .. } => Some(csrf_token.clone()),
        _ => None,
    };
    Json(SessionInfo {
        username: caller.user.username,
        full_name: caller.user.full_name,
        role: caller.user.role,
        csrf_token,
        expires_at_ms: None,
    })
}

/// Signs out: ends the session and clears the cookie.
#[utoipa::path(delete, path = "/api/v1/session", tag = "session",
    responses((status = 204), (status = 401)))]
pub(super) async fn sign_out(
    State(state): State<ApiState>,
    caller: Caller,
    client: Client,
    jar: CookieJar,
) -> Result<Response, ApiError> {
    if let Via::Session { secret, .. } = &caller.via {
        state.store.end_session(secret, &caller.user).await?;
    }
    let gone = session_cookie(&state, &client, String::new());
    Ok((jar.remove(gone), StatusCode::NO_CONTENT).into_response())
}

/// A bearer token to issue.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// User the token acts as.
    pub username: String,
    /// What uses it ("MES bridge line 3").
    pub name: String,
    pub expires_at_ms: Option<i64>,
}

/// A token just issued: the secret is shown this once.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct IssuedToken {
    pub id: i64,
    pub token: String,
}

/// Issues a bearer token (admin, audited).
#[utoipa::path(post, path = "/api/v1/tokens", tag = "session", request_body = NewToken,
    responses((status = 201, body = IssuedToken), (status = 403)))]
pub(super) async fn issue_token(
    State(state): State<ApiState>,
    caller: Caller,
    body: Result<Json<NewToken>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<IssuedToken>), ApiError> {
    let admin = caller.require(ADMIN, "issue tokens")?;
    let Json(new) = body.map_err(|r| json_rejection(r, &state))?;
    // A token acts as its user. An administrator holding one for an inspector or a QA
    // approver could decide their tasks and dispositions in their names: through the API,
    // tokens are issued for operator accounts (machines, the MES) and for oneself only.
    if new.username != admin.username
        && let Some(user) = state.store.user(&new.username).await?
        && user.role != Role::Operator
    {
        return Err(ApiError::Forbidden {
            role: admin.role.as_str(),
            action: "issue a token for another user who is not an operator (a token acts as \
                     its user; issue tokens for operator accounts, or for yourself)",
        });
    }
    let (listed, token) = state
        .store
        .create_token(&new.username, &new.name, new.expires_at_ms, &admin.username)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(IssuedToken {
            id: listed.id,
            token,
        }),
    ))
}

/// Issued tokens, without their secrets (admin).
#[utoipa::path(get, path = "/api/v1/tokens", tag = "session",
    responses((status = 200, body = Vec<crate::store::ApiToken>), (status = 403)))]
pub(super) async fn tokens(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<Vec<crate::store::ApiToken>>, ApiError> {
    caller.require(ADMIN, "list tokens")?;
    Ok(Json(state.store.tokens().await?))
}

/// Why a token is revoked.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Revocation {
    pub reason: String,
}

/// Revokes a token for good (admin, audited with the reason).
#[utoipa::path(post, path = "/api/v1/tokens/{id}/revoke", tag = "session", request_body = Revocation,
    params(("id" = i64, Path)), responses((status = 204), (status = 403), (status = 404)))]
pub(super) async fn revoke_token(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<i64>,
    body: Result<Json<Revocation>, axum::extract::rejection::JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let admin = caller.require(ADMIN, "revoke tokens")?;
    let Json(r) = body.map_err(|r| json_rejection(r, &state))?;
    state
        .store
        .revoke_token(id, &admin.username, &r.reason)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
