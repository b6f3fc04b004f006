//! Users, roles, password hashes and the lockout policy.
//!
//! Passwords are stored only as argon2id PHC strings (random salt per hash). After
//! `max_failures` consecutive wrong passwords an account is locked for `lockout_ms`; while it
//! is locked even the right password is refused, so guessing cannot go on.

use argon2::Argon2;
use password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use serde::{Deserialize, Serialize};

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Operator,
    Inspector,
    QaApprover,
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [
        Role::Operator,
        Role::Inspector,
        Role::QaApprover,
        Role::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Inspector => "inspector",
            Role::QaApprover => "qa_approver",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Shortest password accepted.
pub const MIN_PASSWORD_LEN: usize = 8;

/// Checks a new password against the minimum rules.
pub fn check_new_password(password: &str) -> Result<(), String> {
    let n = password.chars().count();
    if n < MIN_PASSWORD_LEN {
        return Err(format!(
            "password has {n} characters: at least {MIN_PASSWORD_LEN} are required"
        ));
    }
    if n > 1024 {
        return Err(format!("password has {n} characters: at most 1024"));
    }
    Ok(())
}

/// Hashes a password with argon2id and a fresh random salt (CPU-heavy: call off the runtime).
pub fn hash_password(password: &str) -> Result<String, password_hash::Error> {
    let salt = SaltString::generate(&mut password_hash::rand_core::OsRng);
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}

/// Whether `password` matches a stored PHC string (CPU-heavy: call off the runtime).
pub fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

/// Password checks run at most on half the cores at once (one on a 2-core device): each holds
/// a core and argon2's 19 MiB, and a burst of sign-ins must neither exhaust an edge device's
/// memory nor take the cores inference needs. Further checks wait their turn.
fn password_checks() -> std::sync::Arc<tokio::sync::Semaphore> {
    static CHECKS: std::sync::OnceLock<std::sync::Arc<tokio::sync::Semaphore>> =
        std::sync::OnceLock::new();
    CHECKS
        .get_or_init(|| {
            let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
            std::sync::Arc::new(tokio::sync::Semaphore::new((cores / 2).max(1)))
        })
        .clone()
}

/// A hash to check passwords of unknown users against, so that they cost the same time.
fn unknown_user_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| hash_password("no such user").unwrap_or_default())
}

/// How long a password check waits for its turn before its request is answered busy: a flood
/// of sign-ins must not hold every other sign-in and signature in an endless queue.
pub const PASSWORD_CHECK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// [`verify_password`] on the blocking pool, on at most half the cores at once; `None` when
/// no turn came within [`PASSWORD_CHECK_WAIT`]. With `phc` `None` (an unknown user) it does the
/// same work and answers false.
pub async fn verify_password_limited(password: String, phc: Option<String>) -> Option<bool> {
    let permit = tokio::time::timeout(PASSWORD_CHECK_WAIT, password_checks().acquire_owned())
        .await
        .ok()?
        .ok()?;
    let checked = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        match phc {
            Some(phc) => verify_password(&password, &phc),
            None => {
                verify_password(&password, unknown_user_hash());
                false
            }
        }
    })
    .await
    .unwrap_or(false);
    Some(checked)
}

/// Lockout after repeated failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockoutPolicy {
    pub max_failures: u32,
    pub lockout_ms: i64,
}

impl LockoutPolicy {
    /// After one more failure with `failures_before` already counted: the new count and, when
    /// the limit is reached, the time until which the account is locked (the count restarts).
    pub fn after_failure(self, failures_before: u32, now_ms: i64) -> (u32, Option<i64>) {
        let n = failures_before + 1;
        if n >= self.max_failures {
            (0, Some(now_ms + self.lockout_ms))
        } else {
            (n, None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_with_salt_and_verify() {
        let a = hash_password("correct horse").unwrap();
        let b = hash_password("correct horse").unwrap();
        assert_ne!(a, b, "salted");
        assert!(a.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &a));
        assert!(!verify_password("correct horsE", &a));
        assert!(!verify_password("correct horse", "not a phc string"));
        assert!(check_new_password("short").is_err());
        assert!(check_new_password("long enough").is_ok());
    }

    #[test]
    fn lockout_after_the_limit() {
        let p = LockoutPolicy {
            max_failures: 3,
            lockout_ms: 60_000,
        };
        assert_eq!(p.after_failure(0, 10), (1, None));
        assert_eq!(p.after_failure(1, 10), (2, None));
        assert_eq!(p.after_failure(2, 10), (0, Some(60_010)));
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
    }
}
