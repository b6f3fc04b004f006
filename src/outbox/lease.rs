//! One deliverer per database. Every instance that records queues its events and samples in the
//! outbox, but only one at a time delivers them: two deliverers would send every row twice, mix
//! the order of events with the same key, and (with the same MQTT client id) take the broker
//! session from each other in turn.
//!
//! - PostgreSQL: a session-level advisory lock, keyed by the schema, held on a connection of
//!   its own while the instance delivers. The server releases it when that session ends, also
//!   when the process dies, and another instance takes it at its next try.
//! - SQLite: an exclusive lock on `<database file>.delivery.lock`, released by the kernel when
//!   the file is closed or the process exits. An in-memory database has one process anyway.
//!
//! Neither is a crate's job: the advisory lock is one SQL call on a connection the store
//! already has, and the file lock is the standard library's `File::try_lock`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sqlx::Row as _;

use super::OutboxError;
use crate::store::{Backend, Store, StoreError, db};

/// `pg_try_advisory_lock(key1, key2)`: key1 says "linesight outbox", key2 is the schema's hash.
const ADVISORY_CLASS: i32 = 0x6c73_6f62; // "lsob"

/// How long a liveness check of the lease connection may take before the lease counts as lost.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Leases this process holds, for the metrics (`linesight_outbox_delivering`).
static HELD: AtomicUsize = AtomicUsize::new(0);

/// Whether this process delivers an outbox now.
pub(crate) fn delivering() -> bool {
    HELD.load(Ordering::Relaxed) > 0
}

/// The right to deliver one database's outbox; given back when dropped.
#[derive(Debug)]
pub(crate) struct Lease {
    hold: Hold,
}

#[derive(Debug)]
enum Hold {
    Postgres(sqlx::AnyConnection),
    /// The locked file, kept open for its lock; `None`: an in-memory database.
    Sqlite {
        _locked: Option<std::fs::File>,
    },
}

/// An instance waiting for the lease; on PostgreSQL it keeps its connection between tries.
#[derive(Debug, Default)]
pub(crate) struct Claimant {
    conn: Option<sqlx::AnyConnection>,
}

impl Claimant {
    /// Takes the lease if no other instance holds it; `None` when one does.
    pub(crate) async fn try_acquire(
        &mut self,
        store: &Store,
    ) -> Result<Option<Lease>, OutboxError> {
        let hold = match store.backend() {
            Backend::Postgres => {
                let mut conn = match self.conn.take() {
                    Some(conn) => conn,
                    None => store
                        .raw_pool()
                        .acquire()
                        .await
                        .map_err(db("open the outbox delivery lease connection"))?
                        .detach(),
                };
                let got: bool =
                    sqlx::query("SELECT pg_try_advisory_lock($1, hashtext(current_schema()))")
                        .bind(ADVISORY_CLASS)
                        .fetch_one(&mut conn)
                        .await
                        .and_then(|r| r.try_get(0))
                        .map_err(db("take the outbox delivery lease"))?;
                if !got {
                    self.conn = Some(conn);
                    return Ok(None);
                }
                Hold::Postgres(conn)
            }
            Backend::Sqlite => match lock_path(store).await? {
                None => Hold::Sqlite { _locked: None },
                Some(path) => {
                    let io = |source| OutboxError::Lease {
                        path: path.display().to_string(),
                        source,
                    };
                    let file = std::fs::OpenOptions::new()
                        .create(true)
                        .truncate(false)
                        .write(true)
                        .open(&path)
                        .map_err(io)?;
                    match file.try_lock() {
                        Ok(()) => Hold::Sqlite {
                            _locked: Some(file),
                        },
                        Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
                        Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
                    }
                }
            },
        };
        HELD.fetch_add(1, Ordering::Relaxed);
        Ok(Some(Lease { hold }))
    }
}

impl Lease {
    /// Whether the lease still holds: on PostgreSQL, whether its session still answers.
    pub(crate) async fn alive(&mut self) -> bool {
        match &mut self.hold {
            Hold::Postgres(conn) => matches!(
                tokio::time::timeout(CHECK_TIMEOUT, sqlx::query("SELECT 1").execute(conn)).await,
                Ok(Ok(_))
            ),
            Hold::Sqlite { .. } => true,
        }
    }

    /// Gives the lease back at once (dropping it does too, the PostgreSQL session a moment
    /// later).
    pub(crate) async fn release(mut self) {
        if let Hold::Postgres(conn) = &mut self.hold {
            let _ = sqlx::query("SELECT pg_advisory_unlock_all()")
                .execute(&mut *conn)
                .await;
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        HELD.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `<database file>.delivery.lock`, or `None` for an in-memory database.
async fn lock_path(store: &Store) -> Result<Option<PathBuf>, StoreError> {
    let rows = sqlx::query("PRAGMA database_list")
        .fetch_all(store.raw_pool())
        .await
        .map_err(db("find the database file"))?;
    for r in rows {
        let name: String = r.try_get(1).unwrap_or_default();
        let file: String = r.try_get(2).unwrap_or_default();
        if name == "main" && !file.is_empty() {
            let mut path = PathBuf::from(file).into_os_string();
            path.push(".delivery.lock");
            return Ok(Some(path.into()));
        }
    }
    Ok(None)
}

/// Whether some instance holds the delivery lease of `store`'s database now (for `linesight
/// outbox status`). On SQLite this briefly takes the lock file's lock when it is free.
pub(crate) async fn held_by_anyone(store: &Store) -> Result<bool, OutboxError> {
    match store.backend() {
        Backend::Postgres => sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND classid = CAST($1 AS oid) AND objid = CAST(hashtext(current_schema()) AS oid) \
             AND objsubid = 2)",
        )
        .bind(i64::from(ADVISORY_CLASS))
        .fetch_one(store.raw_pool())
        .await
        .map_err(|e| db("look for the outbox delivery lease")(e).into()),
        Backend::Sqlite => {
            let Some(path) = lock_path(store).await? else {
                return Ok(false);
            };
            let Ok(file) = std::fs::File::open(&path) else {
                return Ok(false); // Never taken.
            };
            match file.try_lock_shared() {
                Ok(()) => Ok(false),
                Err(std::fs::TryLockError::WouldBlock) => Ok(true),
                Err(std::fs::TryLockError::Error(source)) => Err(OutboxError::Lease {
                    path: path.display().to_string(),
                    source,
                }),
            }
        }
    }
}
