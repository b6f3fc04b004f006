//! Persistence of the quality records with sqlx, on SQLite (embedded default) or PostgreSQL
//! (several service instances sharing one database).
//!
//! Invariants:
//! - Every change and its audit entries commit in one transaction: a record never exists
//!   without its audit trail, and an acknowledged write is on disk (SQLite: WAL with
//!   `synchronous=FULL`; PostgreSQL: its commit durability, with `synchronous_commit` turned
//!   on for linesight's connections where the server's default is off).
//! - SQLite has exactly one writer connection; concurrent writers queue for it in the pool
//!   (first come, first served), so "database is locked" cannot happen inside one process.
//!   Readers use separate read-only connections and never block the writer (WAL).
//! - Write transactions take turns on both databases: SQLite has one writer; on PostgreSQL
//!   every write transaction starts with `LOCK TABLE audit_log IN EXCLUSIVE MODE` (plain reads
//!   pass). So instances sharing a database extend one audit chain, and a check made inside a
//!   write transaction (no open NCR before a lot release, one reject-rate NCR per lot) holds
//!   until it commits. Quality records arrive at tens per second, far below what one writer
//!   sustains.
//!   Triggers in both databases refuse UPDATE and DELETE on it.
//! - Secondary-inspection tasks are claimed with `FOR UPDATE SKIP LOCKED` on PostgreSQL: two
//!   instances never claim the same task.

mod api;
mod evidence;
mod images;
mod inspections;
mod models;
mod ncrs;
mod triggers;
mod users;
mod verify;

pub(crate) use users::SYSTEM_ACTOR;

use std::borrow::Cow;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::{Any, AnyPool, Executor, Row as _, Transaction};

use crate::quality::audit::{self, AuditEntry, ChainBreak, GENESIS, NewAuditEntry};
use crate::quality::{SignatureError, TransitionError};

pub use api::{
    ApiToken, Attachment, CameraSummary, InspectionFilter, LotStatus, Session, TOKEN_PREFIX,
};
pub use evidence::{FileCheck, check_content, read_verified};
pub use images::{
    ImageFile, ImageKeepingMetrics, PruneReport, RetentionReport, SWEEP_GRACE, SweepReport,
    TEMPORARY_FOLDER, image_path, sweep_temporary_files, write_and_record_images,
    write_image_files, write_images,
};
pub(crate) use inspections::inspection_row;
pub use inspections::{InspectionRecord, RecordedInspection, Task};
pub use models::{ActivationState, ModelActivation, NewModelActivation};
pub use ncrs::{NcrRecord, NcrTransition, NewNcr};
pub use triggers::{Journalled, JournalledTrigger, MAX_TRIGGER_FIELD_BYTES, TriggerAnswer};
pub use users::{Credentials, NewUser, User, UserAccount};

/// `[store]` settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sqlite://PATH` or `postgres://USER@HOST:PORT/DB`; default: SQLite file
    /// `linesight.db` under `data_dir`.
    pub url: Option<String>,
    /// Folder for the embedded database (and images unless `quality.image_dir` says otherwise).
    pub data_dir: PathBuf,
    /// Connections for reads (and, on PostgreSQL, writes). SQLite always has one writer.
    pub max_connections: u32,
    /// PostgreSQL schema holding the tables (default: the server's search path).
    pub pg_schema: Option<String>,
    /// How long a write waits for its turn before failing.
    pub acquire_timeout_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: None,
            data_dir: PathBuf::from("/var/lib/linesight"),
            max_connections: 8,
            pg_schema: None,
            acquire_timeout_ms: 60_000,
        }
    }
}

impl StoreConfig {
    /// The database URL in effect.
    pub fn effective_url(&self) -> String {
        self.url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("linesight.db").display()))
    }

    /// The database file when the store is SQLite.
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        let url = self.effective_url();
        let rest = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))?;
        Some(PathBuf::from(rest.split('?').next().unwrap_or(rest)))
    }

    /// Problems with the values, each naming its key.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let url = self.effective_url();
        if Backend::of(&url).is_none() {
            p.push(format!(
                "store.url = {:?}: must start with sqlite:// or postgres://",
                redact(&url)
            ));
        }
        if !(1..=256).contains(&self.max_connections) {
            p.push(format!(
                "store.max_connections = {}: must be between 1 and 256",
                self.max_connections
            ));
        }
        if let Some(s) = &self.pg_schema
            && !valid_identifier(s)
        {
            p.push(format!(
                "store.pg_schema = {s:?}: must be a lower-case identifier (a-z, 0-9, _; at most 63)"
            ));
        }
        if self.acquire_timeout_ms < 100 {
            p.push(format!(
                "store.acquire_timeout_ms = {}: must be at least 100",
                self.acquire_timeout_ms
            ));
        }
        p
    }
}

fn valid_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// The URL with every secret in it replaced by `***`: the password of its credentials, and the
/// value of each query parameter whose name says it holds one (`?password=`, `sslpassword`,
/// `token`, …; PostgreSQL and RTSP servers take them there too). A connection string in
/// PostgreSQL's `key=value` form has its secret values hidden the same way. The credentials
/// end at the last `@` before the query: a password typed with an unescaped `@` is hidden
/// whole (a path holding `@` is hidden with it, which errs on the safe side). A password typed
/// with an unescaped `?` would look like the start of a query: where a `:` comes before the
/// first `?`, no `@` before it, and what follows the last `@` reads as a host and path (no
/// `=` or `&` before its own `?`), the credentials end at that `@`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        if url.contains('=') && !url.starts_with("sqlite:") {
            return redact_conninfo(url);
        }
        return url.to_owned();
    };
    let query_at = match rest.split_once('?') {
        Some((before, after))
            if !before.contains('@')
                && before.contains(':')
                && after.rsplit_once('@').is_some_and(|(_, location)| {
                    !location
                        .split('?')
                        .next()
                        .unwrap_or_default()
                        .contains(['=', '&'])
                }) =>
        {
            let at = rest.rfind('@').unwrap_or_default();
            rest[at..].find('?').map(|q| at + q)
        }
        _ => rest.find('?'),
    };
    let (before_query, query) = match query_at {
        Some(q) => (&rest[..q], Some(&rest[q + 1..])),
        None => (rest, None),
    };
    let (credentials, location) = match before_query.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => (format!("{user}:***@"), host),
            None => (format!("{userinfo}@"), host),
        },
        None => (String::new(), before_query),
    };
    let query = query.map_or_else(String::new, |q| {
        let pairs: Vec<String> = q
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _value)) if names_a_secret(key) => format!("{key}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        format!("?{}", pairs.join("&"))
    });
    format!("{scheme}://{credentials}{location}{query}")
}

/// A PostgreSQL `key=value` connection string with its secret values hidden. Read as libpq
/// reads it (spaces around `=`, values in single quotes with `\` escapes), so that a quoted
/// password with spaces is hidden whole; written back as `key=value` pairs.
fn redact_conninfo(conninfo: &str) -> String {
    let mut chars = conninfo.chars().peekable();
    let mut pairs = Vec::new();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let key: String =
            std::iter::from_fn(|| chars.next_if(|c| *c != '=' && !c.is_whitespace())).collect();
        if key.is_empty() && chars.peek().is_none() {
            break;
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next_if_eq(&'=').is_none() {
            // Not a connection string after all: nothing more of it is shown.
            pairs.push(format!("{key}=***"));
            break;
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            value.push('\'');
            while let Some(c) = chars.next() {
                value.push(c);
                match c {
                    '\\' => value.extend(chars.next()),
                    '\'' => break,
                    _ => {}
                }
            }
        } else {
            value.extend(std::iter::from_fn(|| chars.next_if(|c| !c.is_whitespace())));
        }
        if names_a_secret(&key) {
            value = "***".into();
        }
        pairs.push(format!("{key}={value}"));
    }
    pairs.join(" ")
}

/// Whether a parameter of this name holds a secret (`password`, `sslpassword`, `passwd`,
/// `pwd`, `secret`, `token`, `access_token`, `auth`, `api_key`, …).
pub(crate) fn names_a_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["pass", "pwd", "secret", "token", "auth", "key"]
        .iter()
        .any(|word| key.contains(word))
        // File paths of keys, not keys.
        && !matches!(key.as_str(), "sslkey" | "sslrootcert" | "sslcert")
}

/// Which database holds the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn of(url: &str) -> Option<Backend> {
        if url.starts_with("sqlite:") {
            Some(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Backend::Postgres)
        } else {
            None
        }
    }
}

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open database {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot migrate the database schema: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error while trying to {op}: {source}")]
    Db {
        op: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("{entity} {id} does not exist")]
    NotFound { entity: &'static str, id: String },
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error(transparent)]
    Signature(#[from] SignatureError),
    #[error("invalid user name or password")]
    InvalidCredentials,
    #[error("account {username} is locked until {until} after repeated failed sign-ins")]
    Locked { username: String, until: String },
    #[error("account {username} is disabled: an administrator withdrew it")]
    Disabled { username: String },
    #[error(
        "the password of {username} was reset by an administrator: choose a new one first (the web UI asks for it; POST /api/v1/session/password)"
    )]
    PasswordChangeDue { username: String },
    #[error("user {0} already exists")]
    UserExists(String),
    #[error("lot {lot} cannot be released: {} still open", open_list(.ncrs))]
    LotHasOpenNcr { lot: String, ncrs: Vec<i64> },
    #[error("{entity} {id} changed since it was read (version {seen}, now {now}); read it again")]
    Stale {
        entity: &'static str,
        id: i64,
        seen: i64,
        now: i64,
    },
    #[error("part {part_id} already had {cap} secondary inspections (quality.reinspection_cap)")]
    ReinspectionCapReached { part_id: String, cap: u32 },
    #[error("task {id} changed meanwhile (another inspector acted first); reload and retry")]
    Conflict { id: i64 },
    #[error("stored value {value:?} in {column} is not valid")]
    Corrupt { column: &'static str, value: String },
    /// Reading or writing the store's files (images, attachments) failed: the machine's
    /// fault (a full or failing disk, permissions), never the caller's.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A stored image, overlay or attachment whose content no longer hashes to its name: it
    /// was altered or damaged on disk, and is not served as the evidence it replaced.
    #[error(
        "{} does not hold what was stored under that name (its content hashes to {hash}): altered or damaged on disk; `linesight images verify` checks every stored file",
        path.display()
    )]
    Damaged {
        path: std::path::PathBuf,
        hash: String,
    },
    /// Image retention removed a content-identical file between its writing and its record;
    /// [`write_and_record_images`] writes it again and retries.
    #[error(
        "image {hash} was removed by image retention while it was being recorded; write it again"
    )]
    ImageGone { hash: String },
    /// The trigger of an inspection being recorded was answered with an inspection already
    /// (an earlier try of the same record committed); nothing was written.
    #[error("trigger {id} has its inspection recorded already; it is not recorded again")]
    TriggerAnswered { id: String },
    /// The work was not started because too much of it is waiting (password checks).
    #[error("{0}")]
    Busy(String),
}

fn open_list(ncrs: &[i64]) -> String {
    let ids: Vec<String> = ncrs.iter().map(i64::to_string).collect();
    match ids.len() {
        1 => format!("NCR {} is", ids[0]),
        _ => format!("NCRs {} are", ids.join(", ")),
    }
}

/// Shorthand used by the repositories.
pub(crate) fn db(op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Db { op, source }
}

/// A connection to the quality records.
#[derive(Debug, Clone)]
pub struct Store {
    writer: AnyPool,
    reader: AnyPool,
    backend: Backend,
    /// When set, write paths also append outbox events (see [`crate::outbox`]).
    outbox: Option<std::sync::Arc<crate::outbox::OutboxConfig>>,
}

/// Migrations embedded in the binary, one set per database.
#[derive(Debug)]
struct Embedded(Backend);

impl<'s> MigrationSource<'s> for Embedded {
    fn resolve(
        self,
    ) -> Pin<
        Box<
            dyn Future<Output = Result<Vec<Migration>, Box<dyn std::error::Error + Send + Sync>>>
                + Send
                + 's,
        >,
    > {
        // (version, description, SQLite, PostgreSQL), in order.
        let all: &[(i64, &str, &str, &str)] = &[
            (
                1,
                "quality",
                include_str!("../../migrations/sqlite/0001_quality.sql"),
                include_str!("../../migrations/postgres/0001_quality.sql"),
            ),
            (
                2,
                "outbox",
                include_str!("../../migrations/sqlite/0002_outbox.sql"),
                include_str!("../../migrations/postgres/0002_outbox.sql"),
            ),
            (
                4,
                "models",
                include_str!("../../migrations/sqlite/0004_models.sql"),
                include_str!("../../migrations/postgres/0004_models.sql"),
            ),
            (
                5,
                "triggers",
                include_str!("../../migrations/sqlite/0005_triggers.sql"),
                include_str!("../../migrations/postgres/0005_triggers.sql"),
            ),
            (
                6,
                "api",
                include_str!("../../migrations/sqlite/0006_api.sql"),
                include_str!("../../migrations/postgres/0006_api.sql"),
            ),
            (
                7,
                "lot_counts",
                include_str!("../../migrations/sqlite/0007_lot_counts.sql"),
                include_str!("../../migrations/postgres/0007_lot_counts.sql"),
            ),
            (
                8,
                "image_refs",
                include_str!("../../migrations/sqlite/0008_image_refs.sql"),
                include_str!("../../migrations/postgres/0008_image_refs.sql"),
            ),
            (
                9,
                "outbox_discards",
                include_str!("../../migrations/sqlite/0009_outbox_discards.sql"),
                include_str!("../../migrations/postgres/0009_outbox_discards.sql"),
            ),
            (
                10,
                "discarded_samples",
                include_str!("../../migrations/sqlite/0010_discarded_samples.sql"),
                include_str!("../../migrations/postgres/0010_discarded_samples.sql"),
            ),
            (
                11,
                "user_access",
                include_str!("../../migrations/sqlite/0011_user_access.sql"),
                include_str!("../../migrations/postgres/0011_user_access.sql"),
            ),
            (
                12,
                "audit_entity",
                include_str!("../../migrations/sqlite/0012_audit_entity.sql"),
                include_str!("../../migrations/postgres/0012_audit_entity.sql"),
            ),
        ];
        let backend = self.0;
        Box::pin(async move {
            Ok(all
                .iter()
                .map(|&(version, name, sqlite, postgres)| {
                    let sql = match backend {
                        Backend::Sqlite => sqlite,
                        Backend::Postgres => postgres,
                    };
                    Migration::new(
                        version,
                        Cow::Borrowed(name),
                        MigrationType::Simple,
                        Cow::Borrowed(sql),
                        false,
                    )
                })
                .collect())
        })
    }
}

impl Store {
    /// Opens (creating if needed) the database in `config` and brings its schema up to date.
    pub async fn open(config: &StoreConfig) -> Result<Store, StoreError> {
        let problems = config.problems();
        if !problems.is_empty() {
            return Err(StoreError::Invalid(problems.join("; ")));
        }
        sqlx::any::install_default_drivers();
        let url = config.effective_url();
        let backend = Backend::of(&url).ok_or_else(|| StoreError::Invalid(url.clone()))?;
        let connect_err = |source| StoreError::Connect {
            url: redact(&url),
            source,
        };
        let timeout = Duration::from_millis(config.acquire_timeout_ms);
        let (writer, reader) = match backend {
            Backend::Sqlite => {
                let path = config.sqlite_path().unwrap_or_default();
                let path = path.display().to_string();
                if let Some(parent) = std::path::Path::new(&path).parent()
                    && !parent.as_os_str().is_empty()
                {
                    std::fs::create_dir_all(parent).map_err(|e| {
                        StoreError::Invalid(format!(
                            "cannot create database folder {}: {e}",
                            parent.display()
                        ))
                    })?;
                }
                let writer = AnyPoolOptions::new()
                    .max_connections(1)
                    .min_connections(1)
                    .acquire_timeout(timeout)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            for pragma in [
                                "PRAGMA journal_mode = WAL",
                                "PRAGMA synchronous = FULL",
                                "PRAGMA foreign_keys = ON",
                                "PRAGMA busy_timeout = 30000",
                            ] {
                                conn.execute(pragma).await?;
                            }
                            Ok(())
                        })
                    })
                    .connect(&format!("sqlite://{path}?mode=rwc"))
                    .await
                    .map_err(connect_err)?;
                // The writer creates the file and switches it to WAL before readers open it.
                let reader = AnyPoolOptions::new()
                    .max_connections(config.max_connections)
                    .acquire_timeout(timeout)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            conn.execute("PRAGMA busy_timeout = 30000").await?;
                            Ok(())
                        })
                    })
                    .connect_lazy(&format!("sqlite://{path}?mode=ro"))
                    .map_err(connect_err)?;
                (writer, reader)
            }
            Backend::Postgres => {
                let schema = config.pg_schema.clone();
                let pool = AnyPoolOptions::new()
                    .max_connections(config.max_connections)
                    .acquire_timeout(timeout)
                    .after_connect(move |conn, _| {
                        let schema = schema.clone();
                        Box::pin(async move {
                            if let Some(s) = schema {
                                // Validated as a plain identifier in `problems`.
                                conn.execute(format!("SET search_path TO {s}").as_str())
                                    .await?;
                            }
                            // An acknowledged record is on disk: a server, database or role
                            // default of synchronous_commit = off would answer commits before
                            // their WAL is flushed, and a crash would lose them. The other
                            // levels (local, on, remote_write, remote_apply) are kept.
                            let level: String =
                                sqlx::query_scalar("SELECT current_setting('synchronous_commit')")
                                    .fetch_one(&mut *conn)
                                    .await?;
                            if level == "off" {
                                conn.execute("SET synchronous_commit TO on").await?;
                            }
                            Ok(())
                        })
                    })
                    .connect(&url)
                    .await
                    .map_err(connect_err)?;
                (pool.clone(), pool)
            }
        };
        let store = Store {
            writer,
            reader,
            backend,
            outbox: None,
        };
        let mut migrator = Migrator::new(Embedded(backend)).await?;
        // Several instances may start together on PostgreSQL: sqlx takes an advisory lock.
        migrator.set_locking(backend == Backend::Postgres);
        migrator.run(&store.writer).await?;
        if backend == Backend::Postgres {
            store.warn_of_postgres_durability().await;
        }
        Ok(store)
    }

    /// Says at start-up when the PostgreSQL server is set up to lose acknowledged commits:
    /// `synchronous_commit = off` as its default (this store's connections turn it on), or
    /// `fsync = off` (which no connection can change: the server must).
    async fn warn_of_postgres_durability(&self) {
        let read = |sql| sqlx::query_scalar::<_, String>(sql).fetch_one(&self.writer);
        if let Ok(level) =
            read("SELECT reset_val FROM pg_settings WHERE name = 'synchronous_commit'").await
            && level == "off"
        {
            tracing::warn!(
                "PostgreSQL's default is synchronous_commit = off; linesight turns it on for its own connections, so that a record is on disk before it is acknowledged"
            );
        }
        if let Ok(fsync) = read("SELECT current_setting('fsync')").await
            && fsync == "off"
        {
            tracing::warn!(
                "PostgreSQL runs with fsync = off: a power loss or an operating system crash can lose or corrupt acknowledged quality records; set fsync = on in postgresql.conf"
            );
        }
    }

    /// The pool writes go through, for tests and tooling that must reach the database
    /// directly (for example to prove that tampering is detected).
    #[doc(hidden)]
    pub fn raw_pool(&self) -> &AnyPool {
        &self.writer
    }

    /// This store with the outbox switched on: from now on every write path also appends its
    /// events (and chosen samples) to the outbox in the same transaction.
    pub fn with_outbox(mut self, config: crate::outbox::OutboxConfig) -> Store {
        self.outbox = Some(std::sync::Arc::new(config));
        self
    }

    pub(crate) fn outbox_config(&self) -> Option<&crate::outbox::OutboxConfig> {
        self.outbox.as_deref()
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Closes the pools (waits for checked-out connections).
    pub async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }

    pub(crate) async fn begin(&self) -> Result<Transaction<'static, Any>, StoreError> {
        match self.backend {
            // Take the write lock up front: another process writing the same file makes us
            // wait (busy_timeout) instead of failing later with SQLITE_BUSY_SNAPSHOT.
            Backend::Sqlite => self.writer.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => {
                let mut tx = self
                    .writer
                    .begin()
                    .await
                    .map_err(db("begin a transaction"))?;
                // Writers from every instance take turns, as on SQLite: checks made at the
                // start of a transaction (one reject-rate NCR per lot, open NCRs before a
                // release) stay true until it commits. Plain reads are not blocked.
                sqlx::query("LOCK TABLE audit_log IN EXCLUSIVE MODE")
                    .execute(&mut *tx)
                    .await
                    .map_err(db("take the write lock"))?;
                return Ok(tx);
            }
        }
        .map_err(db("begin a transaction"))
    }

    pub(crate) fn reader(&self) -> &AnyPool {
        &self.reader
    }

    /// Appends entries to the audit chain inside the caller's transaction.
    pub(crate) async fn append_audit(
        &self,
        tx: &mut Transaction<'static, Any>,
        at_ms: i64,
        entries: Vec<NewAuditEntry>,
    ) -> Result<(), StoreError> {
        if self.backend == Backend::Postgres {
            // Serialises appends across instances; plain reads are not blocked.
            sqlx::query("LOCK TABLE audit_log IN EXCLUSIVE MODE")
                .execute(&mut **tx)
                .await
                .map_err(db("lock the audit trail"))?;
        }
        let last = sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut **tx)
            .await
            .map_err(db("read the end of the audit trail"))?;
        let (mut seq, mut prev) = match last {
            Some(row) => (
                row.try_get::<i64, _>(0).map_err(db("read audit seq"))?,
                row.try_get::<String, _>(1).map_err(db("read audit hash"))?,
            ),
            None => (0, GENESIS.to_owned()),
        };
        for new in entries {
            seq += 1;
            let e = AuditEntry::chain(new, seq, at_ms, &prev);
            // The outbox sees every audited change: one hook for all write paths.
            let for_outbox = self.outbox.is_some().then(|| e.clone());
            sqlx::query(
                "INSERT INTO audit_log (seq, at_ms, actor, action, entity, entity_id, old_value, new_value, reason, prev_hash, hash) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            )
            .bind(e.seq)
            .bind(e.at_ms)
            .bind(e.actor)
            .bind(e.action)
            .bind(e.entity)
            .bind(e.entity_id)
            .bind(e.old_value)
            .bind(e.new_value)
            .bind(e.reason)
            .bind(e.prev_hash)
            .bind(e.hash.clone())
            .execute(&mut **tx)
            .await
            .map_err(db("append to the audit trail"))?;
            prev = e.hash;
            if let (Some(cfg), Some(entry)) = (self.outbox.as_deref(), for_outbox) {
                crate::outbox::on_audit(cfg, tx, &entry).await?;
            }
        }
        Ok(())
    }

    /// Audit entries with `seq` in `from..from + limit`, in order.
    pub async fn audit_entries(
        &self,
        from: i64,
        limit: i64,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        audit_page(&self.reader, from, limit).await
    }

    /// Audit entries about one record, oldest first.
    pub async fn audit_for(
        &self,
        entity: &str,
        entity_id: &str,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, at_ms, actor, action, entity, entity_id, old_value, new_value, reason, prev_hash, hash \
             FROM audit_log WHERE entity = $1 AND entity_id = $2 ORDER BY seq",
        )
        .bind(entity)
        .bind(entity_id)
        .fetch_all(&self.reader)
        .await
        .map_err(db("read the audit trail"))?;
        rows.iter().map(audit_row).collect()
    }

    /// Checks the whole audit chain page by page: how many entries verified, or the first
    /// broken link.
    pub async fn verify_audit(&self) -> Result<Result<u64, ChainBreak>, StoreError> {
        Ok(self
            .verify_audit_against(&[])
            .await?
            .chain
            .map(|v| v.checked))
    }

    /// Compares the records with the entries that made and changed them (see
    /// [`Store::verify_audit_against`]).
    pub async fn verify_records(&self) -> Result<audit::RecordCheck, StoreError> {
        Ok(self.verify_audit_against(&[]).await?.records)
    }

    /// Checks the audit trail and the records against it, all in one snapshot of the store (a
    /// running service goes on writing; what it writes meanwhile is not seen, so a record and
    /// its entry are always seen together):
    /// - the hash chain, page by page, and that it holds each anchor (an entry's hash
    ///   recorded outside the store) with the same hash;
    /// - every record against the entries that made and changed it (`store::verify`):
    ///   inspections, electronic signatures and NCR attachments against the entry that
    ///   recorded them; tasks, NCRs (with their transitions and the signatures these name) and
    ///   lots, accounts, bearer tokens and model activations against their state as their
    ///   entries leave it. A record changed, added or removed outside linesight shows here
    ///   (records are not chained).
    pub async fn verify_audit_against(
        &self,
        anchors: &[audit::Anchor],
    ) -> Result<audit::AuditCheck, StoreError> {
        self.verify_with_pages(anchors, 5_000, 200).await
    }

    /// [`Store::verify_audit_against`] with the page sizes given (the tests walk small pages).
    pub(crate) async fn verify_with_pages(
        &self,
        anchors: &[audit::Anchor],
        chain_page: i64,
        record_page: i64,
    ) -> Result<audit::AuditCheck, StoreError> {
        let mut tx = match self.backend {
            // A deferred transaction reads one WAL snapshot from its first read on.
            Backend::Sqlite => self.reader.begin().await,
            Backend::Postgres => {
                self.reader
                    .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .await
            }
        }
        .map_err(db("begin reading the audit trail"))?;
        let chain = verify::check_chain(&mut tx, anchors, chain_page).await?;
        let records = verify::check_all_records(&mut tx, record_page).await?;
        // Nothing was written; ending it releases the snapshot.
        tx.rollback()
            .await
            .map_err(db("end reading the audit trail"))?;
        Ok(audit::AuditCheck { chain, records })
    }

    /// The newest audit entry (to record outside the store as an anchor).
    pub async fn audit_head(&self) -> Result<Option<audit::Head>, StoreError> {
        let row = sqlx::query("SELECT seq, at_ms, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&self.reader)
            .await
            .map_err(db("read the end of the audit trail"))?;
        row.map(|row| {
            Ok::<_, sqlx::Error>(audit::Head {
                seq: row.try_get(0)?,
                at_ms: row.try_get(1)?,
                hash: row.try_get(2)?,
            })
        })
        .transpose()
        .map_err(db("read the end of the audit trail"))
    }
}

/// Audit entries with `seq` from `from` on, at most `limit`, in order.
async fn audit_page<'e>(
    ex: impl Executor<'e, Database = Any>,
    from: i64,
    limit: i64,
) -> Result<Vec<AuditEntry>, StoreError> {
    let rows = sqlx::query(
        "SELECT seq, at_ms, actor, action, entity, entity_id, old_value, new_value, reason, prev_hash, hash \
         FROM audit_log WHERE seq >= $1 ORDER BY seq LIMIT $2",
    )
    .bind(from)
    .bind(limit)
    .fetch_all(ex)
    .await
    .map_err(db("read the audit trail"))?;
    rows.iter().map(audit_row).collect()
}

fn audit_row(row: &AnyRow) -> Result<AuditEntry, StoreError> {
    let e = db("decode an audit entry");
    (|| {
        Ok::<_, sqlx::Error>(AuditEntry {
            seq: row.try_get(0)?,
            at_ms: row.try_get(1)?,
            actor: row.try_get(2)?,
            action: row.try_get(3)?,
            entity: row.try_get(4)?,
            entity_id: row.try_get(5)?,
            old_value: row.try_get(6)?,
            new_value: row.try_get(7)?,
            reason: row.try_get(8)?,
            prev_hash: row.try_get(9)?,
            hash: row.try_get(10)?,
        })
    })()
    .map_err(e)
}

/// A fresh SQLite store in `dir`, for the unit tests of the modules that use one.
#[cfg(test)]
pub(crate) async fn sqlite_in(dir: &std::path::Path) -> Store {
    Store::open(&StoreConfig {
        url: Some(format!("sqlite://{}", dir.join("q.db").display())),
        ..StoreConfig::default()
    })
    .await
    .expect("a SQLite store opens in a temporary folder")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted_and_checked() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/q"),
            "postgres://app:***@db:5432/q"
        );
        assert_eq!(redact("sqlite:///x.db"), "sqlite:///x.db");
        assert_eq!(
            redact("rtsp://admin:p@ss:w/rd@10.0.0.7:554/stream1"),
            "rtsp://admin:***@10.0.0.7:554/stream1"
        );
        // Secrets in the query, and in PostgreSQL's key=value form.
        assert_eq!(
            redact("postgres://app@db:5432/q?sslmode=require&password=hunter22&sslkey=/k.pem"),
            "postgres://app@db:5432/q?sslmode=require&password=***&sslkey=/k.pem"
        );
        assert_eq!(
            redact("rtsp://10.0.0.7/stream1?user=admin&PWD=1234&channel=1"),
            "rtsp://10.0.0.7/stream1?user=admin&PWD=***&channel=1"
        );
        assert_eq!(
            redact("postgres://a:b@db/q?sslpassword=x"),
            "postgres://a:***@db/q?sslpassword=***"
        );
        assert_eq!(
            redact("host=db user=app password=hunter22 dbname=q"),
            "host=db user=app password=*** dbname=q"
        );
        // libpq's spaces around `=` and quoted values.
        assert_eq!(
            redact("host=db password = hunter22 user='app'"),
            "host=db password=*** user='app'"
        );
        assert_eq!(redact(r"password='a b\'c' host=db"), "password=*** host=db");
        // A `?` or `#` typed into a password, unescaped.
        assert_eq!(
            redact("postgres://app:s3cr?t@db:5432/quality"),
            "postgres://app:***@db:5432/quality"
        );
        assert_eq!(
            redact("rtsp://admin:pa?ss@10.0.0.7/s1?channel=1&pwd=x"),
            "rtsp://admin:***@10.0.0.7/s1?channel=1&pwd=***"
        );
        assert_eq!(
            redact("rtsp://admin:p#w@10.0.0.7/s1"),
            "rtsp://admin:***@10.0.0.7/s1"
        );
        assert_eq!(
            redact("postgres://db:5432/q?user=qc@line3&password=hunter22"),
            "postgres://db:5432/q?user=qc@line3&password=***"
        );
        assert_eq!(
            redact("postgres://db:5432/q?cb=http://u@h/x&token=abc"),
            "postgres://db:5432/q?cb=http://u@h/x&token=***"
        );
        assert_eq!(
            redact("rtsp://10.0.0.7:554/s?user=cam@site/1&pwd=secret"),
            "rtsp://10.0.0.7:554/s?user=cam@site/1&pwd=***"
        );
        // An `@` in the query does not move the credentials' end.
        assert_eq!(
            redact("postgres://app:pw@db/q?application_name=qc@line3&password=hunter22"),
            "postgres://app:***@db/q?application_name=qc@line3&password=***"
        );
        assert_eq!(
            redact("rtsp://cam/s?user=ops@plant.com&password=x"),
            "rtsp://cam/s?user=ops@plant.com&password=***"
        );
        assert_eq!(
            redact("sqlite:///var/lib/x.db?mode=rwc"),
            "sqlite:///var/lib/x.db?mode=rwc"
        );
        let cfg = StoreConfig {
            url: Some("mysql://x".into()),
            pg_schema: Some("Bad;drop".into()),
            ..StoreConfig::default()
        };
        let p = cfg.problems();
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!(
            StoreConfig::default().effective_url(),
            "sqlite:///var/lib/linesight/linesight.db"
        );
    }

    /// Inspections recorded as the pipeline records them, each a different part.
    async fn record_some(store: &Store, from: usize, n: usize) -> Vec<i64> {
        let cfg = crate::quality::QualityConfig {
            accept_sampling: false,
            ..crate::quality::QualityConfig::default()
        };
        let mut ids = Vec::new();
        for i in from..from + n {
            let mut new = crate::quality::rules::tests::inspection(
                0.1 + i as f64 / 1000.0,
                crate::quality::Verdict::Good,
            );
            new.part_id = format!("P-{i}");
            ids.push(
                store
                    .record_inspection(&new, &cfg, "system")
                    .await
                    .unwrap()
                    .inspection_id,
            );
        }
        ids
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_are_walked_page_by_page_in_one_snapshot_while_inspections_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite_in(dir.path()).await;
        let ids = record_some(&store, 0, 7).await;
        for page in [1, 2, 3, 7, 8, 100] {
            let check = store.verify_with_pages(&[], page, page).await.unwrap();
            assert_eq!(check.chain.map(|v| v.checked), Ok(7), "page {page}");
            assert_eq!(
                (check.records.inspections, check.records.mismatches_total),
                (7, 0),
                "page {page}"
            );
        }
        // One record removed at a page's end and one altered in the next, whatever the pages.
        for sql in [
            format!("DELETE FROM inspections WHERE id = {}", ids[2]),
            format!("UPDATE inspections SET lot = 'L-9' WHERE id = {}", ids[3]),
            format!("DELETE FROM inspections WHERE id = {}", ids[6]),
        ] {
            sqlx::query(&sql).execute(&store.writer).await.unwrap();
        }
        let expected = |check: &audit::RecordCheck| {
            let found: Vec<(Option<i64>, bool)> = check
                .mismatches
                .iter()
                .map(|m| (m.id, m.problem.contains("removed")))
                .collect();
            found
                == vec![
                    (Some(ids[2]), true),
                    (Some(ids[3]), false),
                    (Some(ids[6]), true),
                ]
                && check.inspections == 7
        };
        for page in [1, 2, 3, 4, 7, 100] {
            let check = store.verify_with_pages(&[], page, page).await.unwrap();
            assert!(expected(&check.records), "page {page}: {:?}", check.records);
        }

        // A service goes on recording while the trail is checked in small pages: what it
        // writes meanwhile is either wholly seen (record and entry) or not at all.
        let writer = {
            let store = store.clone();
            tokio::spawn(async move { record_some(&store, 100, 150).await })
        };
        let mut rounds = 0;
        while !writer.is_finished() {
            let check = store.verify_with_pages(&[], 3, 2).await.unwrap();
            assert!(check.chain.is_ok(), "{:?}", check.chain);
            let r = &check.records;
            assert_eq!(r.mismatches_total, 3, "round {rounds}: {r:?}");
            rounds += 1;
        }
        writer.await.unwrap();
        assert!(rounds > 0);
    }
}
