//! Users: creation, sign-in with lockout, unlock, passwords set by their owner or reset by an
//! administrator, accounts disabled and enabled again. An account is never deleted: records
//! and signatures name it.

use sqlx::Row as _;
use sqlx::any::AnyRow;

use super::{Store, StoreError, db};
use crate::quality::audit::NewAuditEntry;
use crate::quality::user::{check_new_password, hash_password, verify_password_limited};
use crate::quality::{LockoutPolicy, Role, format_ms, now_ms};

/// A user as stored (without the password hash).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct User {
    pub id: i64,
    pub username: String,
    pub full_name: String,
    pub role: Role,
    pub locked_until_ms: Option<i64>,
}

/// A user to create.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub username: String,
    pub full_name: String,
    pub role: Role,
    pub password: String,
}

/// User name and password as typed (the password is never logged or stored), and where they
/// came from (recorded with failed sign-ins in the audit trail).
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    /// The client's address, where known (see `api.trusted_proxies`).
    pub client: Option<std::net::IpAddr>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"***")
            .field("client", &self.client)
            .finish()
    }
}

/// The turn of sign-in attempts on `username` in this process. Names share 64 locks by their
/// hash, so that a flood of made-up names holds no memory; two names on one lock only wait for
/// each other's password check.
fn sign_in_turn(username: &str) -> &'static tokio::sync::Mutex<()> {
    use std::hash::{Hash as _, Hasher as _};
    static TURNS: std::sync::OnceLock<Vec<tokio::sync::Mutex<()>>> = std::sync::OnceLock::new();
    let turns = TURNS.get_or_init(|| (0..64).map(|_| tokio::sync::Mutex::new(())).collect());
    let mut h = std::collections::hash_map::DefaultHasher::new();
    username.hash(&mut h);
    &turns[(h.finish() % turns.len() as u64) as usize]
}

/// `"; from=ADDR"` for an audit entry's value, when the client's address is known.
pub(super) fn from_suffix(client: Option<std::net::IpAddr>) -> String {
    client.map(|ip| format!("; from={ip}")).unwrap_or_default()
}

/// The text of a `user.create` entry before its credential (see [`with_credential`]);
/// `audit verify` compares each account with it.
pub(super) fn creation_text(full_name: &str, role: Role, temporary: bool) -> String {
    format!(
        "full_name={full_name}; role={}{}",
        role.as_str(),
        if temporary { TEMPORARY } else { "" }
    )
}

/// What a `user.create` entry's text ends with when the password is temporary.
pub(super) const TEMPORARY: &str = "; temporary password (to be changed at first sign-in)";

/// What separates an entry's text from the credential it set.
const CREDENTIAL: &str = "; credential=";

/// `text` followed by the fingerprint of the stored secret an entry set: the SHA-256 of a
/// password's salted hash (or of a token's digest). It tells nothing of the secret, and lets
/// `audit verify` see a password hash or a token digest replaced in its table: somebody who
/// could sign as another person. All of it: a shortened one could be matched by trying
/// secrets (argon2 leaves some parameters of the hash's text out of what it computes).
pub(super) fn with_credential(text: String, stored: &str) -> String {
    format!("{text}{CREDENTIAL}{}", credential_fingerprint(stored))
}

/// The fingerprint [`with_credential`] records of a stored secret.
pub(super) fn credential_fingerprint(stored: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(stored.as_bytes()))
}

/// An entry's text and the credential fingerprint it ends with, if any (entries written
/// before linesight recorded fingerprints have none).
pub(super) fn split_credential(text: &str) -> (&str, Option<&str>) {
    match text.rsplit_once(CREDENTIAL) {
        Some((text, fp)) if fp.len() == 64 && fp.bytes().all(|b| b.is_ascii_hexdigit()) => {
            (text, Some(fp))
        }
        _ => (text, None),
    }
}

fn password_checks_busy() -> StoreError {
    StoreError::Busy(format!(
        "password checks are queued beyond {} s; try again shortly",
        crate::quality::user::PASSWORD_CHECK_WAIT.as_secs()
    ))
}

fn user_row(row: &AnyRow) -> Result<(User, String, i64), StoreError> {
    let e = db("decode a user");
    let role: String = row.try_get("role").map_err(db("decode a user"))?;
    let user = User {
        id: row.try_get("id").map_err(db("decode a user"))?,
        username: row.try_get("username").map_err(db("decode a user"))?,
        full_name: row.try_get("full_name").map_err(db("decode a user"))?,
        role: Role::parse(&role).ok_or(StoreError::Corrupt {
            column: "users.role",
            value: role,
        })?,
        locked_until_ms: row
            .try_get("locked_until_ms")
            .map_err(db("decode a user"))?,
    };
    let hash: String = row.try_get("password_hash").map_err(e)?;
    let failed: i64 = row
        .try_get("failed_attempts")
        .map_err(db("decode a user"))?;
    Ok((user, hash, failed))
}

/// An account as `users` lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct UserAccount {
    pub username: String,
    /// Printed on the user's signatures.
    pub full_name: String,
    pub role: Role,
    /// Locked after failed sign-ins until then (`users unlock` lifts it).
    pub locked_until_ms: Option<i64>,
    /// Wrong passwords since the last right one.
    pub failed_attempts: i64,
    pub disabled_at_ms: Option<i64>,
    pub password_set_at_ms: Option<i64>,
    /// Reset by an administrator: the user chooses a new one before anything else.
    pub password_change_due: bool,
    pub created_at_ms: i64,
}

pub(super) fn account_row(row: &AnyRow) -> Result<UserAccount, StoreError> {
    let d = || db("decode a user");
    let (user, _, failed_attempts) = user_row(row)?;
    Ok(UserAccount {
        username: user.username,
        full_name: user.full_name,
        role: user.role,
        locked_until_ms: user.locked_until_ms,
        failed_attempts,
        disabled_at_ms: row.try_get("disabled_at_ms").map_err(d())?,
        password_set_at_ms: row.try_get("password_set_at_ms").map_err(d())?,
        password_change_due: row.try_get::<i64, _>("password_change_due").map_err(d())? != 0,
        created_at_ms: row.try_get("created_at_ms").map_err(d())?,
    })
}

/// The reason an administrator's change to an account must give (recorded in the audit
/// trail): not blank, and within [`crate::quality::MAX_TEXT_BYTES`] like every reason.
pub(super) fn check_reason(change: &str, reason: &str) -> Result<(), StoreError> {
    if reason.trim().is_empty() {
        return Err(StoreError::Invalid(format!(
            "reason: {change} needs a reason"
        )));
    }
    crate::quality::check_text("reason", reason).map_err(StoreError::Invalid)
}

/// How [`Store::set_password_of`] writes: over which hash, from where, why.
struct PasswordWrite<'a> {
    /// The hash a change was checked against; none for a reset.
    replacing: Option<&'a str>,
    /// The client's address, recorded with a change.
    client: Option<std::net::IpAddr>,
    reason: Option<&'a str>,
}

/// Ends every web UI session of user `id` in `tx`; how many there were.
async fn end_sessions(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    id: i64,
) -> Result<u64, StoreError> {
    Ok(sqlx::query("DELETE FROM api_sessions WHERE user_id = $1")
        .bind(id)
        .execute(&mut **tx)
        .await
        .map_err(db("end a user's sessions"))?
        .rows_affected())
}

/// Checks, inside a write transaction (so under the write lock every writer takes), that
/// `user`'s account is still as it was when their password was checked: not disabled, not
/// locked, and, where `verified` gives the hash the password was checked against, not given
/// another password since (a reset or a change in between answers as a wrong password would).
pub(super) async fn still_as_checked(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    user: &User,
    verified: Option<&str>,
    now: i64,
) -> Result<(), StoreError> {
    let d = || db("look up a user");
    let row = sqlx::query(
        "SELECT disabled_at_ms, password_hash, locked_until_ms FROM users WHERE id = $1",
    )
    .bind(user.id)
    .fetch_optional(&mut **tx)
    .await
    .map_err(d())?
    .ok_or(StoreError::InvalidCredentials)?;
    let disabled: Option<i64> = row.try_get(0).map_err(d())?;
    let hash: String = row.try_get(1).map_err(d())?;
    let until: Option<i64> = row.try_get(2).map_err(d())?;
    if verified.is_some_and(|verified| verified != hash) {
        return Err(StoreError::InvalidCredentials);
    }
    if disabled.is_some() {
        return Err(StoreError::Disabled {
            username: user.username.clone(),
        });
    }
    if let Some(until) = until
        && until > now
    {
        return Err(StoreError::Locked {
            username: user.username.clone(),
            until: format_ms(until),
        });
    }
    Ok(())
}

/// The actor of the audit entries linesight writes on its own (results of the live pipeline,
/// NCRs it raises, accounts it locks).
pub(crate) const SYSTEM_ACTOR: &str = "system";

pub(super) const USER_COLUMNS: &str = "id, username, full_name, role, locked_until_ms, password_hash, \
     failed_attempts, disabled_at_ms, password_set_at_ms, password_change_due";

impl Store {
    /// Creates a user; `actor` is who does it (audited).
    pub async fn add_user(&self, new: NewUser, actor: &str) -> Result<User, StoreError> {
        self.create_user(new, actor, false).await
    }

    /// Creates a user whose password, chosen by the administrator, only serves to choose
    /// their own at their first sign-in (as after [`Self::reset_password`]): the password is
    /// also its owner's electronic signature, which nobody else should know.
    pub async fn add_user_with_temporary_password(
        &self,
        new: NewUser,
        actor: &str,
    ) -> Result<User, StoreError> {
        self.create_user(new, actor, true).await
    }

    async fn create_user(
        &self,
        new: NewUser,
        actor: &str,
        temporary: bool,
    ) -> Result<User, StoreError> {
        let username = new.username.trim().to_owned();
        if username.is_empty()
            || username.len() > 64
            || !username
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(StoreError::Invalid(format!(
                "username {username:?}: 1 to 64 characters from a-z, A-Z, 0-9, '.', '_', '-'"
            )));
        }
        // The audit trail names linesight's own actions "system" (and the command line's
        // "cli:…"): no person may appear as the machine.
        if username.eq_ignore_ascii_case(SYSTEM_ACTOR) {
            return Err(StoreError::Invalid(format!(
                "username {username:?}: reserved for linesight's own entries in the audit trail"
            )));
        }
        if new.full_name.trim().is_empty() || new.full_name.len() > 200 {
            return Err(StoreError::Invalid(
                "full_name must not be empty and at most 200 bytes (it is printed on signatures)"
                    .into(),
            ));
        }
        check_new_password(&new.password).map_err(StoreError::Invalid)?;
        let password = new.password;
        let hash = tokio::task::spawn_blocking(move || hash_password(&password))
            .await
            .map_err(|e| StoreError::Invalid(format!("password hashing failed: {e}")))?
            .map_err(|e| StoreError::Invalid(format!("password hashing failed: {e}")))?;
        let now = now_ms();
        let mut tx = self.begin().await?;
        let exists = sqlx::query("SELECT id FROM users WHERE username = $1")
            .bind(&username)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db("look up a user"))?;
        if exists.is_some() {
            return Err(StoreError::UserExists(username));
        }
        let id: i64 = sqlx::query(
            "INSERT INTO users (username, full_name, role, password_hash, failed_attempts, created_at_ms, password_set_at_ms, password_change_due) \
             VALUES ($1, $2, $3, $4, 0, $5, $5, $6) RETURNING id",
        )
        .bind(&username)
        .bind(new.full_name.trim())
        .bind(new.role.as_str())
        .bind(&hash)
        .bind(now)
        .bind(i64::from(temporary))
        .fetch_one(&mut *tx)
        .await
        .map_err(db("create a user"))?
        .try_get(0)
        .map_err(db("create a user"))?;
        let user = User {
            id,
            username,
            full_name: new.full_name.trim().to_owned(),
            role: new.role,
            locked_until_ms: None,
        };
        self.append_audit(
            &mut tx,
            now,
            vec![NewAuditEntry {
                actor: actor.to_owned(),
                action: "user.create".into(),
                entity: "user".into(),
                entity_id: user.username.clone(),
                old_value: None,
                new_value: Some(with_credential(
                    creation_text(&user.full_name, user.role, temporary),
                    &hash,
                )),
                reason: None,
            }],
        )
        .await?;
        tx.commit().await.map_err(db("commit a new user"))?;
        Ok(user)
    }

    /// A user by name.
    pub async fn user(&self, username: &str) -> Result<Option<User>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE username = $1"
        ))
        .bind(username)
        .fetch_optional(self.reader())
        .await
        .map_err(db("look up a user"))?;
        row.as_ref()
            .map(user_row)
            .transpose()
            .map(|o| o.map(|t| t.0))
    }

    /// Checks a user name and password. Wrong passwords count towards the lockout; a locked
    /// account is refused without looking at the password.
    ///
    /// The attempts on one name take turns in this process ([`sign_in_turn`]): each reads the
    /// account after the one before has counted its failure, so requests sent at once to one
    /// instance cannot try more than `max_failures` passwords between two lockouts, and parallel
    /// requests with the right password all pass. Instances sharing a PostgreSQL store count
    /// failures together, each checks up to the limit before it sees the lock, and a right
    /// password never lifts a lock set meanwhile.
    ///
    /// A password an administrator reset only serves to choose a new one
    /// ([`Self::change_password`]): anything else gets [`StoreError::PasswordChangeDue`].
    pub async fn authenticate(
        &self,
        creds: &Credentials,
        policy: LockoutPolicy,
    ) -> Result<User, StoreError> {
        self.check_credentials(creds, policy, false)
            .await
            .map(|(user, _)| user)
    }

    /// [`Self::authenticate`], passing a password due for change when `changing` it; with the
    /// password hash that was verified, for writes that must still find it.
    pub(super) async fn check_credentials(
        &self,
        creds: &Credentials,
        policy: LockoutPolicy,
        changing: bool,
    ) -> Result<(User, String), StoreError> {
        let _turn = sign_in_turn(&creds.username).lock().await;
        let row = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE username = $1"
        ))
        .bind(&creds.username)
        .fetch_optional(&self.writer)
        .await
        .map_err(db("look up a user"))?;
        let Some(row) = row else {
            // An unknown name costs the same hashing as a wrong password, so the answer's
            // time does not tell which names exist.
            verify_password_limited(creds.password.clone(), None)
                .await
                .ok_or_else(password_checks_busy)?;
            return Err(StoreError::InvalidCredentials);
        };
        let (user, hash, _) = user_row(&row)?;
        let now = now_ms();
        if let Some(until) = user.locked_until_ms
            && until > now
        {
            return Err(StoreError::Locked {
                username: user.username,
                until: format_ms(until),
            });
        }
        let ok = verify_password_limited(creds.password.clone(), Some(hash.clone()))
            .await
            .ok_or_else(password_checks_busy)?;
        let mut tx = self.begin().await?;
        if ok {
            // Only if the account is as it was read: not locked by another instance, disabled
            // or given another password (a reset, a change) while the password was checked.
            // A wrong password on a disabled account counts like any other (below); only the
            // right one learns that the account is withdrawn.
            let due: Option<i64> = sqlx::query(
                "UPDATE users SET failed_attempts = 0, locked_until_ms = NULL \
                 WHERE id = $1 AND (locked_until_ms IS NULL OR locked_until_ms <= $2) \
                 AND disabled_at_ms IS NULL AND password_hash = $3 \
                 RETURNING password_change_due",
            )
            .bind(user.id)
            .bind(now_ms())
            .bind(&hash)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db("reset failed sign-ins"))?
            .map(|r| r.try_get(0))
            .transpose()
            .map_err(db("reset failed sign-ins"))?;
            let Some(due) = due else {
                let row = sqlx::query(
                    "SELECT locked_until_ms, disabled_at_ms, password_hash FROM users WHERE id = $1",
                )
                .bind(user.id)
                .fetch_one(&mut *tx)
                .await
                .map_err(db("look up a user"))?;
                let d = || db("look up a user");
                let until: Option<i64> = row.try_get(0).map_err(d())?;
                let disabled: Option<i64> = row.try_get(1).map_err(d())?;
                let now_hash: String = row.try_get(2).map_err(d())?;
                return Err(if now_hash != hash {
                    StoreError::InvalidCredentials
                } else if disabled.is_some() {
                    StoreError::Disabled {
                        username: user.username,
                    }
                } else {
                    StoreError::Locked {
                        username: user.username,
                        until: format_ms(until.unwrap_or_default()),
                    }
                });
            };
            tx.commit().await.map_err(db("reset failed sign-ins"))?;
            if due != 0 && !changing {
                return Err(StoreError::PasswordChangeDue {
                    username: user.username,
                });
            }
            return Ok((
                User {
                    locked_until_ms: None,
                    ..user
                },
                hash,
            ));
        }
        let failed: i64 = sqlx::query(
            "UPDATE users SET failed_attempts = failed_attempts + 1 WHERE id = $1 RETURNING failed_attempts",
        )
        .bind(user.id)
        .fetch_one(&mut *tx)
        .await
        .map_err(db("count a failed sign-in"))?
        .try_get(0)
        .map_err(db("count a failed sign-in"))?;
        let (_, locked) = policy.after_failure((failed - 1).max(0) as u32, now);
        let mut audit = vec![NewAuditEntry {
            actor: user.username.clone(),
            action: "user.sign_in_failed".into(),
            entity: "user".into(),
            entity_id: user.username.clone(),
            old_value: None,
            new_value: Some(format!(
                "failed_attempts={failed}{}",
                from_suffix(creds.client)
            )),
            reason: None,
        }];
        if let Some(until) = locked {
            let reason = match creds.client {
                Some(ip) => format!("{failed} consecutive failed sign-ins, the last from {ip}"),
                None => format!("{failed} consecutive failed sign-ins"),
            };
            audit.push(
                self.lock_account(&mut tx, &user.username, user.id, until, reason)
                    .await?,
            );
        }
        self.append_audit(&mut tx, now, audit).await?;
        tx.commit().await.map_err(db("record a failed sign-in"))?;
        Err(StoreError::InvalidCredentials)
    }

    /// Locks an account until `until` in `tx` and restarts its count; the audit entry to
    /// append.
    async fn lock_account(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        username: &str,
        id: i64,
        until: i64,
        reason: String,
    ) -> Result<NewAuditEntry, StoreError> {
        sqlx::query("UPDATE users SET failed_attempts = 0, locked_until_ms = $1 WHERE id = $2")
            .bind(until)
            .bind(id)
            .execute(&mut **tx)
            .await
            .map_err(db("lock an account"))?;
        // The user's web UI sessions end, not pause: unlocked (by the clock or an
        // administrator), the user signs in again, and a cookie left on a terminal is no use.
        let ended = end_sessions(tx, id).await?;
        Ok(NewAuditEntry {
            actor: SYSTEM_ACTOR.into(),
            action: "user.locked".into(),
            entity: "user".into(),
            entity_id: username.to_owned(),
            old_value: None,
            new_value: Some(format!(
                "locked_until={}; sessions_ended={ended}",
                format_ms(until)
            )),
            reason: Some(reason),
        })
    }

    /// The accounts, by name, with their state (never their password hashes).
    pub async fn users(&self) -> Result<Vec<UserAccount>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {USER_COLUMNS}, created_at_ms FROM users ORDER BY username"
        ))
        .fetch_all(self.reader())
        .await
        .map_err(db("list users"))?;
        rows.iter().map(account_row).collect()
    }

    /// One account with its state, read from the writer (what was just changed counts).
    pub async fn account(&self, username: &str) -> Result<Option<UserAccount>, StoreError> {
        sqlx::query(&format!(
            "SELECT {USER_COLUMNS}, created_at_ms FROM users WHERE username = $1"
        ))
        .bind(username)
        .fetch_optional(&self.writer)
        .await
        .map_err(db("look up a user"))?
        .as_ref()
        .map(account_row)
        .transpose()
    }

    /// Changes a user's own password: the current one is checked as at sign-in (a wrong one
    /// counts towards the lockout), the new one must pass the password rules and differ from
    /// it. The user's web UI sessions end: they sign in again with the new password.
    pub async fn change_password(
        &self,
        creds: &Credentials,
        new_password: &str,
        policy: LockoutPolicy,
    ) -> Result<User, StoreError> {
        check_new_password(new_password)
            .map_err(|m| StoreError::Invalid(format!("new_password: {m}")))?;
        if new_password == creds.password {
            return Err(StoreError::Invalid(
                "new_password: the same as the current password".into(),
            ));
        }
        let (user, verified) = self.check_credentials(creds, policy, true).await?;
        self.set_password_of(
            &user.username,
            new_password,
            &user.username,
            "user.password_change",
            PasswordWrite {
                replacing: Some(&verified),
                client: creds.client,
                reason: None,
            },
        )
        .await?;
        Ok(user)
    }

    /// Sets a new password for `username` on an administrator's word (a forgotten password),
    /// audited with `reason` as `user.password_reset`. The user's web UI sessions end, and the
    /// password only serves to choose a new one: the administrator knows it, and a password is
    /// also its owner's electronic signature.
    pub async fn reset_password(
        &self,
        username: &str,
        new_password: &str,
        actor: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        check_reason("resetting a password", reason)?;
        check_new_password(new_password)
            .map_err(|m| StoreError::Invalid(format!("new_password: {m}")))?;
        self.set_password_of(
            username,
            new_password,
            actor,
            "user.password_reset",
            PasswordWrite {
                replacing: None,
                client: None,
                reason: Some(reason),
            },
        )
        .await
    }

    /// Stores a new password hash for `username` and ends its sessions, with the audit entry
    /// `action` (never the hash: a fingerprint of it, [`with_credential`]). A lockout stays: a
    /// reset is not an unlock. A change replaces only the hash its owner's password was
    /// checked against: should a reset have landed meanwhile, the change is refused
    /// ([`StoreError::InvalidCredentials`]).
    async fn set_password_of(
        &self,
        username: &str,
        password: &str,
        actor: &str,
        action: &str,
        write: PasswordWrite<'_>,
    ) -> Result<(), StoreError> {
        let password = password.to_owned();
        let hash = tokio::task::spawn_blocking(move || hash_password(&password))
            .await
            .map_err(|e| StoreError::Invalid(format!("password hashing failed: {e}")))?
            .map_err(|e| StoreError::Invalid(format!("password hashing failed: {e}")))?;
        let now = now_ms();
        let mut tx = self.begin().await?;
        let due = i64::from(action == "user.password_reset");
        let guard = if write.replacing.is_some() {
            " AND password_hash = $5"
        } else {
            ""
        };
        let sql = format!(
            "UPDATE users SET password_hash = $1, password_set_at_ms = $2, password_change_due = $3 \
             WHERE username = $4{guard} RETURNING id"
        );
        let mut update = sqlx::query(&sql)
            .bind(&hash)
            .bind(now)
            .bind(due)
            .bind(username);
        if let Some(replacing) = write.replacing {
            update = update.bind(replacing);
        }
        let id: Option<i64> = update
            .fetch_optional(&mut *tx)
            .await
            .map_err(db("set a password"))?
            .map(|r| r.try_get(0))
            .transpose()
            .map_err(db("set a password"))?;
        let Some(id) = id else {
            if write.replacing.is_some() {
                return Err(StoreError::InvalidCredentials);
            }
            return Err(StoreError::NotFound {
                entity: "user",
                id: username.into(),
            });
        };
        let ended = end_sessions(&mut tx, id).await?;
        self.append_audit(
            &mut tx,
            now,
            vec![NewAuditEntry {
                actor: actor.into(),
                action: action.into(),
                entity: "user".into(),
                entity_id: username.into(),
                old_value: None,
                new_value: Some(with_credential(
                    format!(
                        "password set; sessions_ended={ended}{}",
                        from_suffix(write.client)
                    ),
                    &hash,
                )),
                reason: write.reason.map(str::to_owned),
            }],
        )
        .await?;
        tx.commit().await.map_err(db("set a password"))?;
        Ok(())
    }

    /// Withdraws an account (`disabled`) or gives it back, audited with `reason`. A disabled
    /// account is refused at sign-in and for signatures, its web UI sessions end and its
    /// bearer tokens stop working; its records and signatures stay. The last enabled
    /// administrator is not disabled: somebody must be able to give accounts back.
    pub async fn set_user_disabled(
        &self,
        username: &str,
        disabled: bool,
        actor: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        check_reason(
            if disabled {
                "disabling an account"
            } else {
                "enabling an account"
            },
            reason,
        )?;
        let now = now_ms();
        let mut tx = self.begin().await?;
        let row = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE username = $1"
        ))
        .bind(username)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db("look up a user"))?
        .ok_or_else(|| StoreError::NotFound {
            entity: "user",
            id: username.into(),
        })?;
        let (user, _, _) = user_row(&row)?;
        let was: Option<i64> = row.try_get("disabled_at_ms").map_err(db("decode a user"))?;
        if was.is_some() == disabled {
            return Err(StoreError::Invalid(format!(
                "username: {username} is already {}",
                if disabled { "disabled" } else { "enabled" }
            )));
        }
        if disabled && user.role == Role::Admin {
            let admins: i64 = sqlx::query(
                "SELECT COUNT(*) FROM users WHERE role = 'admin' AND disabled_at_ms IS NULL",
            )
            .fetch_one(&mut *tx)
            .await
            .and_then(|r| r.try_get(0))
            .map_err(db("count administrators"))?;
            if admins <= 1 {
                return Err(StoreError::Invalid(format!(
                    "username: {username} is the last enabled administrator; enable or add another first"
                )));
            }
        }
        sqlx::query("UPDATE users SET disabled_at_ms = $1 WHERE id = $2")
            .bind(disabled.then_some(now))
            .bind(user.id)
            .execute(&mut *tx)
            .await
            .map_err(db("disable an account"))?;
        let (action, new_value) = if disabled {
            let ended = end_sessions(&mut tx, user.id).await?;
            ("user.disable", format!("disabled; sessions_ended={ended}"))
        } else {
            ("user.enable", "enabled".to_owned())
        };
        self.append_audit(
            &mut tx,
            now,
            vec![NewAuditEntry {
                actor: actor.into(),
                action: action.into(),
                entity: "user".into(),
                entity_id: username.into(),
                old_value: Some(if disabled { "enabled" } else { "disabled" }.into()),
                new_value: Some(new_value),
                reason: Some(reason.into()),
            }],
        )
        .await?;
        tx.commit().await.map_err(db("disable an account"))?;
        Ok(())
    }

    /// Lifts a lockout (an administrator's action, audited with its reason).
    pub async fn unlock_user(
        &self,
        username: &str,
        actor: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        check_reason("unlocking an account", reason)?;
        let now = now_ms();
        let mut tx = self.begin().await?;
        let n = sqlx::query(
            "UPDATE users SET failed_attempts = 0, locked_until_ms = NULL WHERE username = $1",
        )
        .bind(username)
        .execute(&mut *tx)
        .await
        .map_err(db("unlock an account"))?
        .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound {
                entity: "user",
                id: username.into(),
            });
        }
        self.append_audit(
            &mut tx,
            now,
            vec![NewAuditEntry {
                actor: actor.into(),
                action: "user.unlock".into(),
                entity: "user".into(),
                entity_id: username.into(),
                old_value: None,
                new_value: None,
                reason: Some(reason.into()),
            }],
        )
        .await?;
        tx.commit().await.map_err(db("unlock an account"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWORD: &str = "correct-horse-battery";

    #[test]
    fn an_entry_names_the_fingerprint_of_the_secret_it_set_last() {
        let hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA";
        let fp = credential_fingerprint(hash);
        assert_eq!(fp.len(), 64);
        assert_ne!(
            fp,
            credential_fingerprint("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$b3RoZXI")
        );
        // A full name that looks like the separator does not hide the real one.
        let text = creation_text(
            &format!("Eve; credential={}", "0".repeat(64)),
            Role::Admin,
            false,
        );
        let entry = with_credential(text.clone(), hash);
        assert_eq!(split_credential(&entry), (text.as_str(), Some(fp.as_str())));
        // Entries written before fingerprints were recorded have none.
        let legacy = creation_text("Ana Lopez", Role::QaApprover, true);
        assert_eq!(split_credential(&legacy), (legacy.as_str(), None));
        assert_eq!(
            split_credential("password set; sessions_ended=2; from=10.0.0.7"),
            ("password set; sessions_ended=2; from=10.0.0.7", None)
        );
    }

    fn creds(username: &str, password: &str) -> Credentials {
        Credentials {
            username: username.into(),
            password: password.into(),
            client: None,
        }
    }

    const POLICY: LockoutPolicy = LockoutPolicy {
        max_failures: 5,
        lockout_ms: 60_000,
    };

    /// Checks `username`'s password, runs `meanwhile`, then opens a session on the check.
    async fn opened_after(
        s: &Store,
        username: &str,
        meanwhile: impl std::future::Future<Output = ()>,
    ) -> (User, Result<(String, crate::store::Session), StoreError>) {
        let (user, verified) = s
            .check_credentials(&creds(username, PASSWORD), POLICY, false)
            .await
            .unwrap();
        meanwhile.await;
        let opened = s.open_session(&user, 60_000, None, Some(&verified)).await;
        (user, opened)
    }

    /// The step between checking a password and acting on it: whatever an administrator did to
    /// the account in that gap (here done in the gap, deterministically) stops the act.
    #[tokio::test]
    async fn an_account_changed_while_its_password_was_checked_gets_no_session() {
        let dir = tempfile::tempdir().unwrap();
        let s = crate::store::sqlite_in(dir.path()).await;
        for (name, role) in [("ada", Role::Admin), ("quinn", Role::QaApprover)] {
            s.add_user(
                NewUser {
                    username: name.into(),
                    full_name: name.into(),
                    role,
                    password: PASSWORD.into(),
                },
                "ada",
            )
            .await
            .unwrap();
        }
        let sessions = || async {
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM api_sessions")
                .fetch_one(s.raw_pool())
                .await
                .unwrap()
        };

        // Reset in the gap: the checked password is no longer the account's.
        let (_, opened) = opened_after(&s, "quinn", async {
            s.reset_password("quinn", "r3set-secret-pass", "ada", "forgotten")
                .await
                .unwrap();
        })
        .await;
        let err = opened.unwrap_err();
        assert!(matches!(err, StoreError::InvalidCredentials), "{err:?}");
        assert_eq!(sessions().await, 0);

        // Disabled in the gap.
        s.add_user(
            NewUser {
                username: "amir".into(),
                full_name: "Amir".into(),
                role: Role::Admin,
                password: PASSWORD.into(),
            },
            "ada",
        )
        .await
        .unwrap();
        let (user, opened) = opened_after(&s, "ada", async {
            s.set_user_disabled("ada", true, "amir", "left the company")
                .await
                .unwrap();
        })
        .await;
        let err = opened.unwrap_err();
        assert!(matches!(err, StoreError::Disabled { .. }), "{err:?}");
        // Nor can a tool open one for a disabled account without a password.
        let err = s.create_session(&user, 60_000, None).await.unwrap_err();
        assert!(matches!(err, StoreError::Disabled { .. }), "{err:?}");
        assert_eq!(sessions().await, 0);

        // Left alone, the same steps open the session.
        opened_after(&s, "amir", async {}).await.1.unwrap();
        let (_, _, session) = s
            .sign_in(&creds("amir", PASSWORD), POLICY, 60_000)
            .await
            .unwrap();
        assert_eq!(session.user.username, "amir");
        assert_eq!(sessions().await, 2);
        s.close().await;
    }
}
