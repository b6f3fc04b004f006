//! What the HTTP API keeps besides the quality records: sign-in sessions, bearer tokens, lot
//! holds, NCR attachments, and the queries behind its listings.
//!
//! Session and token secrets are random 256-bit values handed to the client once; the database
//! keeps only their SHA-256, so a copy of it lets nobody act as a user. (A fast hash is right
//! here: the secrets are random, not passwords, and are checked on every request.)

use std::path::Path;

use password_hash::rand_core::{OsRng, RngCore as _};
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use sqlx::Row as _;
use sqlx::any::AnyRow;

use super::images::write_content_addressed;
use super::inspections::inspection_row;
use super::users::User;
use super::{InspectionRecord, Store, StoreError, db};
use crate::postprocess::Verdict;
use crate::quality::audit::NewAuditEntry;
use crate::quality::{NcrState, Role, now_ms};

/// A random secret, hex-encoded.
fn secret() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// The longest lot name a hold took before holds were limited like every record's lot
/// ([`crate::quality::MAX_LABEL_BYTES`]): such a lot must still be releasable.
pub(super) const MAX_HELD_LOT_BYTES: usize = 256;

/// Refuses a lot named in a request that is blank or longer than `max` bytes.
pub(super) fn check_lot(lot: &str, max: usize) -> Result<(), StoreError> {
    if lot.trim().is_empty() {
        return Err(StoreError::Invalid("lot: blank: name the lot".into()));
    }
    if lot.len() > max {
        return Err(StoreError::Invalid(format!(
            "lot: {} bytes long, at most {max}",
            lot.len()
        )));
    }
    Ok(())
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// The text of a `token.create` entry before its credential; `audit verify` compares each
/// token with it.
pub(super) fn token_text(id: i64, name: &str, expires_at_ms: Option<i64>) -> String {
    format!(
        "token {id} ({name}); expires {}",
        expires_at_ms.map_or("never".into(), crate::quality::format_ms)
    )
}

/// Bearer tokens start with this, so that a leaked one is easy to recognise and search for.
pub const TOKEN_PREFIX: &str = "lst_";

/// The furthest a token's expiry may be set: ten years. A token that should outlive that is
/// made without an expiry (and revoked when it is no longer used).
pub const MAX_TOKEN_DAYS: i64 = 3650;
const DAY_MS: i64 = 86_400_000;

/// A signed-in browser session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub user: User,
    /// Sent back by the UI in `X-CSRF-Token` with every state-changing request.
    pub csrf_token: String,
    pub expires_at_ms: i64,
}

/// A bearer token as listed (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ApiToken {
    pub id: i64,
    pub name: String,
    pub username: String,
    pub created_by: String,
    pub created_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub revoked_at_ms: Option<i64>,
    pub last_used_ms: Option<i64>,
}

/// Filter of the inspection listing, newest first; `before_id` is the paging cursor.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InspectionFilter {
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    pub verdict: Option<Verdict>,
    pub lot: Option<String>,
    pub camera: Option<String>,
    pub recipe: Option<String>,
    /// Only inspections with a smaller id (the previous page's last one).
    pub before_id: Option<i64>,
    /// Only inspections with a larger id (live views catching up).
    pub after_id: Option<i64>,
    pub limit: i64,
}

/// Counts per camera over a time window.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CameraSummary {
    pub camera: String,
    pub total: i64,
    pub defects: i64,
    /// `defects / total`.
    pub reject_rate: f64,
    pub last_at_ms: i64,
}

/// Where a lot stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct LotStatus {
    pub lot: String,
    /// Put on hold by a person and not released since.
    pub held: bool,
    pub hold_reason: Option<String>,
    pub held_by: Option<String>,
    pub held_at_ms: Option<i64>,
    pub released_at_ms: Option<i64>,
    pub released_by: Option<String>,
    /// NCRs against the lot that are not closed or cancelled: the lot cannot ship while any is.
    pub open_ncrs: Vec<i64>,
}

/// A file attached to an NCR (photos, measurement reports, supplier letters).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Attachment {
    pub id: i64,
    pub ncr_id: i64,
    pub name: String,
    pub media_type: String,
    pub size: i64,
    pub sha256: String,
    pub added_by: String,
    pub added_at_ms: i64,
}

const SESSION_USER_COLUMNS: &str = "u.id, u.username, u.full_name, u.role, u.locked_until_ms";

fn joined_user(row: &AnyRow) -> Result<User, StoreError> {
    let d = || db("decode a user");
    let role: String = row.try_get("role").map_err(d())?;
    Ok(User {
        id: row.try_get("id").map_err(d())?,
        username: row.try_get("username").map_err(d())?,
        full_name: row.try_get("full_name").map_err(d())?,
        role: Role::parse(&role).ok_or(StoreError::Corrupt {
            column: "users.role",
            value: role,
        })?,
        locked_until_ms: row.try_get("locked_until_ms").map_err(d())?,
    })
}

fn locked(user: &User, now: i64) -> bool {
    user.locked_until_ms.is_some_and(|until| until > now)
}

enum Bind {
    Int(i64),
    Text(String),
}

impl Store {
    /// Signs `creds` in and opens a web UI session; returns the secret for the cookie. The
    /// password is checked as by [`Self::authenticate`] (failures counted, locks honoured), and
    /// the account checked again under the write lock as the session is opened: a reset, a
    /// change, a disable or a lock that lands while the password is being checked opens
    /// nothing. Sign-ins are audited (§11.10(e): who did what and when starts with who signed
    /// in), with the client's address where it is known.
    pub async fn sign_in(
        &self,
        creds: &super::users::Credentials,
        policy: crate::quality::LockoutPolicy,
        idle_ms: i64,
    ) -> Result<(User, String, Session), StoreError> {
        let (user, verified) = self.check_credentials(creds, policy, false).await?;
        let (secret, session) = self
            .open_session(&user, idle_ms, creds.client, Some(&verified))
            .await?;
        Ok((user, secret, session))
    }

    /// Opens a session for `user` without a password (tools and tests that vouch for the user
    /// themselves); a disabled or locked account gets none. Audited like a sign-in.
    pub async fn create_session(
        &self,
        user: &User,
        idle_ms: i64,
        client: Option<std::net::IpAddr>,
    ) -> Result<(String, Session), StoreError> {
        self.open_session(user, idle_ms, client, None).await
    }

    pub(super) async fn open_session(
        &self,
        user: &User,
        idle_ms: i64,
        client: Option<std::net::IpAddr>,
        verified: Option<&str>,
    ) -> Result<(String, Session), StoreError> {
        let cookie = secret();
        let digest = sha256_hex(&cookie);
        let csrf = secret();
        let mut tx = self.begin().await?;
        // Read under the write lock: a lock that expired while this waited for it is over.
        let now = now_ms();
        super::users::still_as_checked(&mut tx, user, verified, now).await?;
        sqlx::query(
            "INSERT INTO api_sessions (secret_sha256, user_id, csrf_token, created_at_ms, last_seen_ms, expires_at_ms) \
             VALUES ($1, $2, $3, $4, $4, $5)",
        )
        .bind(&digest)
        .bind(user.id)
        .bind(&csrf)
        .bind(now)
        .bind(now + idle_ms)
        .execute(&mut *tx)
        .await
        .map_err(db("open a session"))?;
        // Expired sessions of anyone are swept here, so the table stays small.
        sqlx::query("DELETE FROM api_sessions WHERE expires_at_ms < $1")
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db("sweep expired sessions"))?;
        self.append_audit(
            &mut tx,
            now,
            vec![NewAuditEntry {
                actor: user.username.clone(),
                action: "user.sign_in".into(),
                entity: "user".into(),
                entity_id: user.username.clone(),
                old_value: None,
                // With the fingerprint of the stored digest, so that `audit verify` can tell
                // this session from one added in the table.
                new_value: Some(super::users::with_credential(
                    format!(
                        "session opened (web UI){}",
                        super::users::from_suffix(client)
                    ),
                    &digest,
                )),
                reason: None,
            }],
        )
        .await?;
        tx.commit().await.map_err(db("open a session"))?;
        Ok((
            cookie,
            Session {
                user: user.clone(),
                csrf_token: csrf,
                expires_at_ms: now + idle_ms,
            },
        ))
    }

    /// The session behind a cookie secret, if it exists, has not been idle for longer than
    /// `idle_ms` and its user is not locked. With `extend` (a request the user made), the use
    /// extends it by `idle_ms`; without (the UI refreshing a view by itself), it does not, so
    /// that a terminal left on a refreshing page still signs itself out.
    pub async fn session(
        &self,
        secret: &str,
        idle_ms: i64,
        extend: bool,
    ) -> Result<Option<Session>, StoreError> {
        let now = now_ms();
        let hash = sha256_hex(secret);
        let Some(row) = self.session_row(&hash).await? else {
            return Ok(None);
        };
        let user = joined_user(&row)?;
        let expires: i64 = row
            .try_get("expires_at_ms")
            .map_err(db("decode a session"))?;
        let seen: i64 = row
            .try_get("last_seen_ms")
            .map_err(db("decode a session"))?;
        if expires <= now || locked(&user, now) {
            return Ok(None);
        }
        let mut expires_at_ms = expires;
        // Extending costs a write: do it at most every few seconds per session.
        if extend && now - seen >= 5_000 {
            expires_at_ms = now + idle_ms;
            let mut tx = self.begin().await?;
            sqlx::query(
                "UPDATE api_sessions SET last_seen_ms = $1, expires_at_ms = $2 WHERE secret_sha256 = $3",
            )
            .bind(now)
            .bind(expires_at_ms)
            .bind(&hash)
            .execute(&mut *tx)
            .await
            .map_err(db("extend a session"))?;
            tx.commit().await.map_err(db("extend a session"))?;
        }
        Ok(Some(Session {
            user,
            csrf_token: row.try_get("csrf_token").map_err(db("decode a session"))?,
            expires_at_ms,
        }))
    }

    /// Ends a session (sign-out), audited.
    pub async fn end_session(&self, secret: &str, user: &User) -> Result<(), StoreError> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM api_sessions WHERE secret_sha256 = $1")
            .bind(sha256_hex(secret))
            .execute(&mut *tx)
            .await
            .map_err(db("end a session"))?;
        self.append_audit(
            &mut tx,
            now,
            vec![NewAuditEntry {
                actor: user.username.clone(),
                action: "user.sign_out".into(),
                entity: "user".into(),
                entity_id: user.username.clone(),
                old_value: None,
                new_value: None,
                reason: None,
            }],
        )
        .await?;
        tx.commit().await.map_err(db("end a session"))
    }

    /// Issues a bearer token acting as `username` (for a machine, the MES, a script); returns
    /// the token, shown once. Audited.
    pub async fn create_token(
        &self,
        username: &str,
        name: &str,
        expires_at_ms: Option<i64>,
        actor: &str,
    ) -> Result<(ApiToken, String), StoreError> {
        if name.trim().is_empty() || name.len() > 100 {
            return Err(StoreError::Invalid(
                "name: give the token a name of 1 to 100 characters (what uses it)".into(),
            ));
        }
        let user = self.user(username).await?.ok_or(StoreError::NotFound {
            entity: "user",
            id: username.into(),
        })?;
        let disabled: Option<i64> =
            sqlx::query_scalar("SELECT disabled_at_ms FROM users WHERE id = $1")
                .bind(user.id)
                .fetch_one(self.reader())
                .await
                .map_err(db("look up a user"))?;
        if disabled.is_some() {
            return Err(StoreError::Disabled {
                username: user.username,
            });
        }
        let now = now_ms();
        if expires_at_ms.is_some_and(|t| t <= now) {
            return Err(StoreError::Invalid(
                "expires_at_ms: the expiry must be in the future".into(),
            ));
        }
        if expires_at_ms.is_some_and(|t| t - now > MAX_TOKEN_DAYS * DAY_MS) {
            return Err(StoreError::Invalid(format!(
                "expires_at_ms: at most {MAX_TOKEN_DAYS} days ahead; leave it out for a token that does not expire"
            )));
        }
        let token = format!("{TOKEN_PREFIX}{}", secret());
        let secret_sha256 = sha256_hex(&token);
        let mut tx = self.begin().await?;
        let id: i64 = sqlx::query(
            "INSERT INTO api_tokens (name, secret_sha256, user_id, created_by, created_at_ms, expires_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(name)
        .bind(&secret_sha256)
        .bind(user.id)
        .bind(actor)
        .bind(now)
        .bind(expires_at_ms)
        .fetch_one(&mut *tx)
        .await
        .map_err(db("store a token"))?
        .try_get(0)
        .map_err(db("store a token"))?;
        self.append_audit(
            &mut tx,
            now,
            vec![NewAuditEntry {
                actor: actor.into(),
                action: "token.create".into(),
                entity: "user".into(),
                entity_id: username.into(),
                old_value: None,
                new_value: Some(super::users::with_credential(
                    token_text(id, name, expires_at_ms),
                    &secret_sha256,
                )),
                reason: None,
            }],
        )
        .await?;
        tx.commit().await.map_err(db("store a token"))?;
        let listed = ApiToken {
            id,
            name: name.into(),
            username: username.into(),
            created_by: actor.into(),
            created_at_ms: now,
            expires_at_ms,
            revoked_at_ms: None,
            last_used_ms: None,
        };
        Ok((listed, token))
    }

    /// The session whose secret hashes to `hash`, with its user's columns.
    async fn session_row(&self, hash: &str) -> Result<Option<AnyRow>, StoreError> {
        sqlx::query(&format!(
            "SELECT {SESSION_USER_COLUMNS}, s.csrf_token, s.expires_at_ms, s.last_seen_ms \
             FROM api_sessions s JOIN users u ON u.id = s.user_id \
             WHERE s.secret_sha256 = $1 AND u.disabled_at_ms IS NULL"
        ))
        .bind(hash)
        .fetch_optional(self.reader())
        .await
        .map_err(db("look up a session"))
    }

    /// Whether a session is still open (not ended, not idle past its expiry, its user not
    /// locked), without extending it.
    pub async fn session_alive(&self, secret: &str) -> Result<bool, StoreError> {
        let now = now_ms();
        let Some(row) = self.session_row(&sha256_hex(secret)).await? else {
            return Ok(false);
        };
        let user = joined_user(&row)?;
        let expires: i64 = row
            .try_get("expires_at_ms")
            .map_err(db("decode a session"))?;
        Ok(expires > now && !locked(&user, now))
    }

    /// The user a bearer token acts as, if the token exists and is not revoked or expired. A
    /// password lockout does not stop tokens: wrong passwords typed for a name must not cut off
    /// the MES or a station that signs in with a token (revoke the token to stop it).
    pub async fn token_user(&self, token: &str) -> Result<Option<User>, StoreError> {
        if !token.starts_with(TOKEN_PREFIX) {
            return Ok(None);
        }
        let now = now_ms();
        let hash = sha256_hex(token);
        let row = sqlx::query(&format!(
            "SELECT {SESSION_USER_COLUMNS}, t.id AS token_id, t.expires_at_ms, t.revoked_at_ms, t.last_used_ms \
             FROM api_tokens t JOIN users u ON u.id = t.user_id \
             WHERE t.secret_sha256 = $1 AND u.disabled_at_ms IS NULL"
        ))
        .bind(&hash)
        .fetch_optional(self.reader())
        .await
        .map_err(db("look up a token"))?;
        let Some(row) = row else { return Ok(None) };
        let d = || db("decode a token");
        let user = joined_user(&row)?;
        let expires: Option<i64> = row.try_get("expires_at_ms").map_err(d())?;
        let revoked: Option<i64> = row.try_get("revoked_at_ms").map_err(d())?;
        let used: Option<i64> = row.try_get("last_used_ms").map_err(d())?;
        if revoked.is_some() || expires.is_some_and(|t| t <= now) {
            return Ok(None);
        }
        // Last use is kept to the minute: enough to find unused tokens, without a write per call.
        if used.is_none_or(|t| now - t >= 60_000) {
            let id: i64 = row.try_get("token_id").map_err(d())?;
            let mut tx = self.begin().await?;
            sqlx::query("UPDATE api_tokens SET last_used_ms = $1 WHERE id = $2")
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(db("note a token's use"))?;
            tx.commit().await.map_err(db("note a token's use"))?;
        }
        Ok(Some(user))
    }

    /// All tokens, newest first.
    pub async fn tokens(&self) -> Result<Vec<ApiToken>, StoreError> {
        let rows = sqlx::query(
            "SELECT t.id, t.name, u.username, t.created_by, t.created_at_ms, t.expires_at_ms, t.revoked_at_ms, t.last_used_ms \
             FROM api_tokens t JOIN users u ON u.id = t.user_id ORDER BY t.id DESC",
        )
        .fetch_all(self.reader())
        .await
        .map_err(db("list tokens"))?;
        rows.iter()
            .map(|r| {
                let d = || db("decode a token");
                Ok(ApiToken {
                    id: r.try_get("id").map_err(d())?,
                    name: r.try_get("name").map_err(d())?,
                    username: r.try_get("username").map_err(d())?,
                    created_by: r.try_get("created_by").map_err(d())?,
                    created_at_ms: r.try_get("created_at_ms").map_err(d())?,
                    expires_at_ms: r.try_get("expires_at_ms").map_err(d())?,
                    revoked_at_ms: r.try_get("revoked_at_ms").map_err(d())?,
                    last_used_ms: r.try_get("last_used_ms").map_err(d())?,
                })
            })
            .collect()
    }

    /// Revokes a token for good, audited with the reason.
    pub async fn revoke_token(&self, id: i64, actor: &str, reason: &str) -> Result<(), StoreError> {
        super::users::check_reason("revoking a token", reason)?;
        let now = now_ms();
        let mut tx = self.begin().await?;
        let done = sqlx::query(
            "UPDATE api_tokens SET revoked_at_ms = $1 WHERE id = $2 AND revoked_at_ms IS NULL",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(db("revoke a token"))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                entity: "unrevoked token",
                id: id.to_string(),
            });
        }
        self.append_audit(
            &mut tx,
            now,
            vec![NewAuditEntry {
                actor: actor.into(),
                action: "token.revoke".into(),
                entity: "token".into(),
                entity_id: id.to_string(),
                old_value: None,
                new_value: Some("revoked".into()),
                reason: Some(reason.into()),
            }],
        )
        .await?;
        tx.commit().await.map_err(db("revoke a token"))
    }

    /// Inspections matching `filter`, newest first (oldest first when `after_id` is given, so
    /// that a live view receives them in order).
    pub async fn list_inspections(
        &self,
        filter: &InspectionFilter,
    ) -> Result<Vec<InspectionRecord>, StoreError> {
        let mut clauses = Vec::new();
        let mut binds = Vec::new();
        let mut push = |clause: &str, value: Bind| {
            binds.push(value);
            clauses.push(clause.replace('?', &format!("${}", binds.len())));
        };
        if let Some(v) = filter.from_ms {
            push("at_ms >= ?", Bind::Int(v));
        }
        if let Some(v) = filter.to_ms {
            push("at_ms < ?", Bind::Int(v));
        }
        if let Some(v) = filter.verdict {
            push("verdict = ?", Bind::Text(v.as_str().into()));
        }
        for (column, value) in [
            ("lot", &filter.lot),
            ("camera", &filter.camera),
            ("recipe", &filter.recipe),
        ] {
            if let Some(v) = value {
                push(&format!("{column} = ?"), Bind::Text(v.clone()));
            }
        }
        if let Some(v) = filter.before_id {
            push("id < ?", Bind::Int(v));
        }
        if let Some(v) = filter.after_id {
            push("id > ?", Bind::Int(v));
        }
        let filter_sql = if clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", clauses.join(" AND "))
        };
        let order = if filter.after_id.is_some() {
            "ASC"
        } else {
            "DESC"
        };
        let sql = format!(
            "SELECT id, at_ms, part_id, lot, line, recipe, camera, model_name, model_sha256, threshold, score, verdict, \
             regions_json, image_ref, overlay_ref, timings_json, source, defect_class FROM inspections{filter_sql} \
             ORDER BY id {order} LIMIT {}",
            filter.limit.clamp(1, 1000)
        );
        let mut query = sqlx::query(&sql);
        for b in binds {
            query = match b {
                Bind::Int(v) => query.bind(v),
                Bind::Text(v) => query.bind(v),
            };
        }
        let rows = query
            .fetch_all(self.reader())
            .await
            .map_err(db("list inspections"))?;
        rows.iter()
            .map(|row| {
                let d = || db("decode an inspection");
                Ok(InspectionRecord {
                    id: row.try_get("id").map_err(d())?,
                    at_ms: row.try_get("at_ms").map_err(d())?,
                    inspection: inspection_row(row)?,
                })
            })
            .collect()
    }

    /// Inspections per camera since `since_ms`, with the reject rate.
    pub async fn camera_summary(&self, since_ms: i64) -> Result<Vec<CameraSummary>, StoreError> {
        let rows = sqlx::query(
            "SELECT camera, COUNT(*) AS total, \
             SUM(CASE WHEN verdict = 'defect' THEN 1 ELSE 0 END) AS defects, MAX(at_ms) AS last_at_ms \
             FROM inspections WHERE at_ms >= $1 GROUP BY camera ORDER BY camera",
        )
        .bind(since_ms)
        .fetch_all(self.reader())
        .await
        .map_err(db("summarise inspections"))?;
        rows.iter()
            .map(|r| {
                let d = || db("decode a summary");
                let total: i64 = r.try_get("total").map_err(d())?;
                let defects: i64 = r.try_get("defects").map_err(d())?;
                Ok(CameraSummary {
                    camera: r.try_get("camera").map_err(d())?,
                    total,
                    defects,
                    reject_rate: if total > 0 {
                        defects as f64 / total as f64
                    } else {
                        0.0
                    },
                    last_at_ms: r.try_get("last_at_ms").map_err(d())?,
                })
            })
            .collect()
    }

    /// Where a lot stands (a lot never held nor released reads as not held).
    pub async fn lot(&self, lot: &str) -> Result<LotStatus, StoreError> {
        let row = sqlx::query(
            "SELECT l.lot, l.hold_reason, l.held_at_ms, hu.username AS held_by, l.released_at_ms, ru.username AS released_by \
             FROM lots l LEFT JOIN users hu ON hu.id = l.held_by LEFT JOIN users ru ON ru.id = l.released_by \
             WHERE l.lot = $1",
        )
        .bind(lot)
        .fetch_optional(self.reader())
        .await
        .map_err(db("read a lot"))?;
        let mut status = match row {
            Some(row) => lot_row(&row)?,
            None => LotStatus {
                lot: lot.into(),
                held: false,
                hold_reason: None,
                held_by: None,
                held_at_ms: None,
                released_at_ms: None,
                released_by: None,
                open_ncrs: Vec::new(),
            },
        };
        status.open_ncrs = self.open_ncrs(lot).await?;
        Ok(status)
    }

    /// Lots on hold (`held_only`) or all known lots, most recently changed first.
    pub async fn lots(&self, held_only: bool, limit: i64) -> Result<Vec<LotStatus>, StoreError> {
        let filter = if held_only {
            " WHERE l.held_at_ms IS NOT NULL"
        } else {
            ""
        };
        let rows = sqlx::query(&format!(
            "SELECT l.lot, l.hold_reason, l.held_at_ms, hu.username AS held_by, l.released_at_ms, ru.username AS released_by \
             FROM lots l LEFT JOIN users hu ON hu.id = l.held_by LEFT JOIN users ru ON ru.id = l.released_by{filter} \
             ORDER BY COALESCE(l.held_at_ms, l.released_at_ms, 0) DESC, l.lot LIMIT $1"
        ))
        .bind(limit.clamp(1, 10_000))
        .fetch_all(self.reader())
        .await
        .map_err(db("list lots"))?;
        let mut lots = rows.iter().map(lot_row).collect::<Result<Vec<_>, _>>()?;
        for status in &mut lots {
            status.open_ncrs = self.open_ncrs(&status.lot).await?;
        }
        Ok(lots)
    }

    /// Puts a lot on hold (no shipment until QA releases it), audited with the reason.
    pub async fn hold_lot(
        &self,
        lot: &str,
        user: &User,
        reason: &str,
    ) -> Result<LotStatus, StoreError> {
        if !matches!(user.role, Role::Inspector | Role::QaApprover | Role::Admin) {
            return Err(crate::quality::TransitionError::Forbidden {
                action: "hold a lot",
                role: user.role,
            }
            .into());
        }
        check_lot(lot, crate::quality::MAX_LABEL_BYTES)?;
        if reason.trim().is_empty() {
            return Err(StoreError::Invalid(
                "reason: say why the lot is held".into(),
            ));
        }
        let now = now_ms();
        let mut tx = self.begin().await?;
        Self::put_lot_on_hold(&mut tx, lot, Some(user.id), reason, now).await?;
        self.append_audit(
            &mut tx,
            now,
            vec![NewAuditEntry {
                actor: user.username.clone(),
                action: "lot.hold".into(),
                entity: "lot".into(),
                entity_id: lot.into(),
                old_value: None,
                new_value: Some("held".into()),
                reason: Some(reason.into()),
            }],
        )
        .await?;
        tx.commit().await.map_err(db("hold a lot"))?;
        self.lot(lot).await
    }

    /// Attaches a file to an open NCR: the bytes are stored durably under `dir` (by content
    /// hash) before the record is written. Audited.
    pub async fn add_attachment(
        &self,
        dir: &Path,
        ncr_id: i64,
        name: &str,
        media_type: &str,
        bytes: &[u8],
        user: &User,
    ) -> Result<Attachment, StoreError> {
        // Evidence is added while the NCR is worked, up to QA's decision: after approval the
        // signed record is final (reopen it to add more).
        let refused = |state: NcrState| {
            StoreError::Invalid(format!(
                "ncr: NCR {ncr_id} is {}; reopen it before attaching files",
                state.as_str()
            ))
        };
        let takes_files = |state: NcrState| state.is_open() && state != NcrState::Approved;
        let ncr = self.ncr(ncr_id).await?;
        if !takes_files(ncr.state) {
            return Err(refused(ncr.state));
        }
        // Named after the form field they come with (`file`: its name and its media type).
        let name = name.trim();
        if name.is_empty()
            || name.len() > 255
            || name.contains(['/', '\\', '\0'])
            || name.chars().any(char::is_control)
        {
            return Err(StoreError::Invalid(
                "file: its file name must be 1 to 255 bytes, without slashes or control characters"
                    .into(),
            ));
        }
        if media_type.len() > crate::quality::MAX_LABEL_BYTES
            || media_type.chars().any(char::is_control)
        {
            return Err(StoreError::Invalid(format!(
                "file: its media type must be at most {} bytes, without control characters",
                crate::quality::MAX_LABEL_BYTES
            )));
        }
        if bytes.is_empty() {
            return Err(StoreError::Invalid("file: the file is empty".into()));
        }
        let dir = dir.to_path_buf();
        let owned = bytes.to_vec();
        let sha256 = tokio::task::spawn_blocking(move || write_content_addressed(&dir, &owned))
            .await
            .map_err(|e| StoreError::Io {
                what: "cannot store the attachment".into(),
                source: std::io::Error::other(e),
            })??;
        let now = now_ms();
        let mut tx = self.begin().await?;
        // Checked again under the write lock, and the NCR's version moves on: a signature made
        // on the NCR before this file was added no longer approves it.
        let state: String = sqlx::query("SELECT state FROM ncrs WHERE id = $1")
            .bind(ncr_id)
            .fetch_one(&mut *tx)
            .await
            .map_err(db("read an NCR"))?
            .try_get(0)
            .map_err(db("read an NCR"))?;
        let state = NcrState::parse(&state).ok_or(StoreError::Corrupt {
            column: "ncrs.state",
            value: state,
        })?;
        if !takes_files(state) {
            return Err(refused(state));
        }
        sqlx::query("UPDATE ncrs SET version = version + 1, updated_at_ms = $1 WHERE id = $2")
            .bind(now)
            .bind(ncr_id)
            .execute(&mut *tx)
            .await
            .map_err(db("update an NCR"))?;
        let id: i64 = sqlx::query(
            "INSERT INTO ncr_attachments (ncr_id, name, media_type, size, sha256, added_by, added_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        )
        .bind(ncr_id)
        .bind(name)
        .bind(media_type)
        .bind(bytes.len() as i64)
        .bind(&sha256)
        .bind(&user.username)
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(db("record an attachment"))?
        .try_get(0)
        .map_err(db("record an attachment"))?;
        self.append_audit(
            &mut tx,
            now,
            vec![NewAuditEntry {
                actor: user.username.clone(),
                action: "ncr.attach".into(),
                entity: "ncr".into(),
                entity_id: ncr_id.to_string(),
                old_value: None,
                new_value: Some(attachment_text(
                    id,
                    name,
                    media_type,
                    bytes.len() as i64,
                    &sha256,
                )),
                reason: None,
            }],
        )
        .await?;
        tx.commit().await.map_err(db("record an attachment"))?;
        Ok(Attachment {
            id,
            ncr_id,
            name: name.into(),
            media_type: media_type.into(),
            size: bytes.len() as i64,
            sha256,
            added_by: user.username.clone(),
            added_at_ms: now,
        })
    }

    /// An NCR's attachments, oldest first.
    pub async fn attachments(&self, ncr_id: i64) -> Result<Vec<Attachment>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, ncr_id, name, media_type, size, sha256, added_by, added_at_ms \
             FROM ncr_attachments WHERE ncr_id = $1 ORDER BY id",
        )
        .bind(ncr_id)
        .fetch_all(self.reader())
        .await
        .map_err(db("list attachments"))?;
        rows.iter().map(attachment_row).collect()
    }

    /// One attachment of an NCR.
    pub async fn attachment(&self, ncr_id: i64, id: i64) -> Result<Attachment, StoreError> {
        let row = sqlx::query(
            "SELECT id, ncr_id, name, media_type, size, sha256, added_by, added_at_ms \
             FROM ncr_attachments WHERE ncr_id = $1 AND id = $2",
        )
        .bind(ncr_id)
        .bind(id)
        .fetch_optional(self.reader())
        .await
        .map_err(db("read an attachment"))?
        .ok_or(StoreError::NotFound {
            entity: "attachment",
            id: format!("{ncr_id}/{id}"),
        })?;
        attachment_row(&row)
    }

    /// Signatures made on an NCR, oldest first.
    pub async fn ncr_signatures(
        &self,
        ncr_id: i64,
    ) -> Result<Vec<crate::quality::Signature>, StoreError> {
        let ids: Vec<i64> = sqlx::query(
            "SELECT id FROM signatures WHERE record_type = 'ncr' AND record_id = $1 ORDER BY id",
        )
        .bind(ncr_id.to_string())
        .fetch_all(self.reader())
        .await
        .map_err(db("list signatures"))?
        .iter()
        .map(|r| r.try_get::<i64, _>(0).map_err(db("list signatures")))
        .collect::<Result<_, _>>()?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.push(self.signature(id).await?);
        }
        Ok(out)
    }

    /// User names by id (for showing who claimed or decided something).
    pub async fn user_names(&self) -> Result<std::collections::HashMap<i64, String>, StoreError> {
        let rows = sqlx::query("SELECT id, username FROM users")
            .fetch_all(self.reader())
            .await
            .map_err(db("list users"))?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get::<i64, _>(0).map_err(db("decode a user"))?,
                    r.try_get::<String, _>(1).map_err(db("decode a user"))?,
                ))
            })
            .collect()
    }

    /// Records that someone exported audit entries (who, and `what`: the range and format).
    pub async fn record_export(&self, actor: &str, what: &str) -> Result<(), StoreError> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        self.append_audit(
            &mut tx,
            now,
            vec![NewAuditEntry {
                actor: actor.into(),
                action: "audit.export".into(),
                entity: "audit".into(),
                entity_id: "trail".into(),
                old_value: None,
                new_value: Some(what.into()),
                reason: None,
            }],
        )
        .await?;
        tx.commit().await.map_err(db("record an export"))
    }

    /// Audit entries about one kind of record (and optionally one record), from `from_seq` on.
    pub async fn audit_query(
        &self,
        from_seq: i64,
        entity: Option<&str>,
        entity_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<crate::quality::audit::AuditEntry>, StoreError> {
        let Some(entity) = entity else {
            return self.audit_entries(from_seq, limit.clamp(1, 10_000)).await;
        };
        // A page through the entity's index: a record with years of entries (an account's
        // sign-ins) is not read whole for each page of an export. The filter is one of two
        // constant texts, never input.
        // (Parameters numbered in the order they appear and are bound.)
        let (one_record, limit_param) = if entity_id.is_some() {
            (" AND entity_id = $3", "$4")
        } else {
            ("", "$3")
        };
        let sql = format!(
            "SELECT seq, at_ms, actor, action, entity, entity_id, old_value, new_value, reason, prev_hash, hash \
             FROM audit_log WHERE entity = $1 AND seq >= $2{one_record} ORDER BY seq LIMIT {limit_param}"
        );
        let mut query = sqlx::query(&sql).bind(entity).bind(from_seq);
        if let Some(id) = entity_id {
            query = query.bind(id);
        }
        let rows = query
            .bind(limit.clamp(1, 10_000))
            .fetch_all(self.reader())
            .await
            .map_err(db("read the audit trail"))?;
        rows.iter().map(super::audit_row).collect()
    }
}

fn lot_row(row: &AnyRow) -> Result<LotStatus, StoreError> {
    let d = || db("decode a lot");
    let held_at_ms: Option<i64> = row.try_get("held_at_ms").map_err(d())?;
    Ok(LotStatus {
        lot: row.try_get("lot").map_err(d())?,
        held: held_at_ms.is_some(),
        hold_reason: row.try_get("hold_reason").map_err(d())?,
        held_by: row.try_get("held_by").map_err(d())?,
        held_at_ms,
        released_at_ms: row.try_get("released_at_ms").map_err(d())?,
        released_by: row.try_get("released_by").map_err(d())?,
        open_ncrs: Vec::new(),
    })
}

fn attachment_row(row: &AnyRow) -> Result<Attachment, StoreError> {
    let d = || db("decode an attachment");
    Ok(Attachment {
        id: row.try_get("id").map_err(d())?,
        ncr_id: row.try_get("ncr_id").map_err(d())?,
        name: row.try_get("name").map_err(d())?,
        media_type: row.try_get("media_type").map_err(d())?,
        size: row.try_get("size").map_err(d())?,
        sha256: row.try_get("sha256").map_err(d())?,
        added_by: row.try_get("added_by").map_err(d())?,
        added_at_ms: row.try_get("added_at_ms").map_err(d())?,
    })
}

/// How an attachment's `ncr.attach` audit entry describes it; the records check compares the
/// attachment with the same text.
pub(crate) fn attachment_text(
    id: i64,
    name: &str,
    media_type: &str,
    size: i64,
    sha256: &str,
) -> String {
    format!("attachment {id}: {name} ({media_type}, {size} bytes, sha256={sha256})")
}
