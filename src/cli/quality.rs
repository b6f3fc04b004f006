//! `linesight audit …` and `linesight users …`: administration of the quality records from
//! the host. Whoever runs these commands has access to the database already; actions are
//! audited as `cli:<OS user>`.

use std::io::{BufRead as _, IsTerminal as _};

use anyhow::Context as _;
use clap::{Args, Subcommand};

use crate::config::Settings;
use crate::quality::audit::{Anchor, AuditCheck, RecordCheck, Verified};
use crate::quality::{Role, format_ms};
use crate::store::{NewUser, Store, redact};

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain of the audit trail, and the records against the entries that made
    /// and changed them (inspections, electronic signatures, NCR attachments, secondary-
    /// inspection tasks, NCRs with their transitions, lot holds and releases, accounts,
    /// bearer tokens, model activations); exit 1 and name what does not hold.
    /// Prints the newest entry's sequence number and hash: recorded outside the store (a batch
    /// record, the cloud; every MQTT health message carries it too), it lets a later check see
    /// entries removed from the end or a trail rewritten and re-hashed.
    Verify {
        /// An entry's sequence number and hash recorded outside the store; the trail must
        /// still hold it with that hash. Repeatable.
        #[arg(long, value_name = "SEQ:HASH")]
        expect: Vec<Anchor>,
    },
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Create a user. The password is read from the terminal (asked twice) or, when stdin is
    /// not a terminal, from the first line of stdin — never from the command line.
    Add(AddUserArgs),
    /// List the accounts with their role and state (never their passwords).
    List,
    /// Set a new password for a user who forgot theirs (audited with the reason; their web UI
    /// sessions end). Read as for `add`. Users change their own in the web UI.
    Passwd {
        username: String,
        /// Why the password is reset (recorded in the audit trail).
        #[arg(long)]
        reason: String,
    },
    /// Withdraw an account: sign-ins and signatures are refused, its web UI sessions end and
    /// its tokens stop working. Its records and signatures stay; `enable` gives it back.
    Disable {
        username: String,
        /// Why (recorded in the audit trail).
        #[arg(long)]
        reason: String,
    },
    /// Give a disabled account back.
    Enable {
        username: String,
        /// Why (recorded in the audit trail).
        #[arg(long)]
        reason: String,
    },
    /// Lift a lockout after repeated failed sign-ins.
    Unlock {
        username: String,
        /// Why the account is unlocked (recorded in the audit trail).
        #[arg(long)]
        reason: String,
    },
    /// Issue a bearer token acting as a user, for a machine, the MES or a script
    /// (`Authorization: Bearer lst_…`). The token is printed once; only its hash is kept.
    Token {
        username: String,
        /// What uses the token ("MES bridge line 3"), shown in the token list.
        #[arg(long)]
        name: String,
        /// Days until the token stops working (default: until revoked).
        #[arg(long, value_name = "DAYS", value_parser = clap::value_parser!(u32).range(1..=3650))]
        expires_days: Option<u32>,
    },
    /// List issued tokens (never their secrets).
    Tokens,
    /// Revoke a token for good.
    RevokeToken {
        id: i64,
        /// Why (recorded in the audit trail).
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ImagesCommand {
    /// Delete stored images past `quality.image_retention_days`, then the oldest ones until
    /// the rest fit in `quality.image_quota_bytes` (images of samples waiting for their upload
    /// are kept), and temporary files a crash left; count the images no record names.
    /// Inspection records keep their metadata. `linesight run` and `serve` do this every
    /// `quality.image_prune_interval_minutes`.
    Prune {
        /// Also delete the images no record names (older than an hour): written, then their
        /// record failed. Refused when the store holds no image record at all.
        #[arg(long)]
        unrecorded: bool,
    },
    /// Read every stored image, overlay and NCR attachment again and check it against the
    /// SHA-256 it is stored (and recorded) under, and that every image recorded as stored and
    /// every attachment has its file; exit 1 when one is altered, damaged, missing or
    /// unreadable, naming the first 20. May run beside a working service; reads every byte, so
    /// run it from a timer (weekly) rather than often.
    Verify,
}

#[derive(Debug, Args)]
pub struct AddUserArgs {
    pub username: String,
    /// Printed name, shown on electronic signatures.
    #[arg(long)]
    pub full_name: String,
    /// operator, inspector, qa_approver or admin.
    #[arg(long, value_parser = parse_role)]
    pub role: Role,
    /// The password typed here only serves the user to choose their own at their first
    /// sign-in (the web UI asks; the API answers 403 `password_change_due` until then): their
    /// password is also their electronic signature, which the administrator should not know.
    #[arg(long)]
    pub temporary_password: bool,
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s).ok_or_else(|| {
        format!("{s:?} is not a role: use operator, inspector, qa_approver or admin")
    })
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// The quality store with the outbox the settings configure: a change made here (a model
/// activation) queues its event like the same change made through the API.
pub(crate) async fn open(settings: &Settings) -> anyhow::Result<Store> {
    crate::outbox::open_store(settings).await.with_context(|| {
        format!(
            "cannot open the quality store {}",
            redact(&settings.store.effective_url())
        )
    })
}

pub(crate) fn cli_actor() -> String {
    format!(
        "cli:{}",
        std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_else(|_| "unknown".into())
    )
}

pub fn run_audit(settings: &Settings, cmd: AuditCommand) -> anyhow::Result<i32> {
    match cmd {
        AuditCommand::Verify { expect } => runtime()?.block_on(async {
            // Opening a store creates an empty database: a mistyped path would "verify".
            if let Some(path) = settings.store.sqlite_path() {
                anyhow::ensure!(
                    path.is_file(),
                    "no quality database at {} (store.url / store.data_dir)",
                    path.display()
                );
            }
            let store = open(settings).await?;
            let AuditCheck { chain, records } = store.verify_audit_against(&expect).await?;
            store.close().await;
            let mut code = 0;
            match chain {
                Ok(v) => print!("{}", describe_verified(&v, expect.len())),
                Err(b) => {
                    println!("audit trail BROKEN at entry {}: {}", b.seq, b.problem);
                    code = 1;
                }
            }
            print!("{}", describe_records(&records));
            if records.mismatches_total > 0 {
                code = 1;
            }
            Ok(code)
        }),
    }
}

/// What `images verify` prints of one folder.
fn describe_files(what: &str, c: &crate::store::FileCheck) -> String {
    use std::fmt::Write as _;
    let read = format!(
        "{} {}, {} bytes, in {}",
        c.files,
        if c.files == 1 { "file" } else { "files" },
        c.bytes,
        c.folder.display()
    );
    if c.is_ok() {
        return format!(
            "{what}: {read}: each holds what its SHA-256 names, and every recorded one is there\n"
        );
    }
    let mut found = Vec::new();
    for (n, word) in [
        (c.damaged, "DAMAGED"),
        (c.missing, "MISSING"),
        (c.unreadable, "UNREADABLE"),
    ] {
        if n > 0 {
            found.push(format!("{n} {word}"));
        }
    }
    let mut out = format!("{what}: {} of {read}\n", found.join(", "));
    for p in &c.problems {
        let _ = writeln!(out, "  {p}");
    }
    let unlisted = (c.damaged + c.missing + c.unreadable).saturating_sub(c.problems.len() as u64);
    if unlisted > 0 {
        let _ = writeln!(out, "  and {unlisted} more");
    }
    out
}

/// What `audit verify` prints of the records compared with the trail.
fn describe_records(r: &RecordCheck) -> String {
    use std::fmt::Write as _;
    let counts = [
        (r.inspections, "inspection", "inspections"),
        (
            r.signatures,
            "electronic signature",
            "electronic signatures",
        ),
        (
            r.tasks,
            "secondary-inspection task",
            "secondary-inspection tasks",
        ),
        (
            r.ncrs,
            "NCR with its transitions",
            "NCRs with their transitions",
        ),
        (r.attachments, "NCR attachment", "NCR attachments"),
        (r.lots, "lot", "lots"),
        (r.users, "account", "accounts"),
        (r.sessions, "web UI session", "web UI sessions"),
        (r.tokens, "bearer token", "bearer tokens"),
        (r.model_activations, "model activation", "model activations"),
    ];
    let named: Vec<String> = counts
        .iter()
        .filter(|(n, ..)| *n > 0)
        .map(|&(n, one, many)| format!("{n} {}", if n == 1 { one } else { many }))
        .collect();
    if named.is_empty() && r.mismatches_total == 0 {
        return "records: none yet (no inspections, tasks, NCRs, signatures, lots, accounts, sessions, tokens or model activations)\n".into();
    }
    let records = match named.as_slice() {
        [] => "0 records".to_owned(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    };
    if r.mismatches_total == 0 {
        return format!("records: all agree with the audit trail ({records})\n");
    }
    let mut out = format!(
        "records: {} {} from the audit trail (checked: {records})\n",
        r.mismatches_total,
        if r.mismatches_total == 1 {
            "DIFFERENCE"
        } else {
            "DIFFERENCES"
        }
    );
    for m in &r.mismatches {
        let entry = m
            .seq
            .map(|s| format!(" (audit entry {s})"))
            .unwrap_or_default();
        let record =
            m.id.map(|id| id.to_string())
                // A lot's or an account's name as it is, quotes and control characters shown.
                .or_else(|| m.name.as_ref().map(|n| format!("{n:?}")))
                .map(|key| format!("{} {key}", m.entity));
        let _ = writeln!(
            out,
            "  {}{entry}: {}",
            record.as_deref().unwrap_or(&m.entity),
            m.problem
        );
    }
    let unlisted = r.mismatches_total - r.mismatches.len() as u64;
    if unlisted > 0 {
        let _ = writeln!(out, "  and {unlisted} more");
    }
    out
}

/// What `audit verify` prints for an intact trail.
fn describe_verified(v: &Verified, anchors: usize) -> String {
    use std::fmt::Write as _;
    let mut out = format!("audit trail intact: {} entries verified\n", v.checked);
    if let Some(h) = &v.head {
        let _ = writeln!(
            out,
            "newest entry: {} at {}, hash {}\nrecord it outside the store; `linesight audit verify --expect {}:{}` shows later whether entries were removed or rewritten",
            h.seq,
            format_ms(h.at_ms),
            h.hash,
            h.seq,
            h.hash
        );
    }
    if anchors > 0 {
        let _ = writeln!(
            out,
            "anchors: all {anchors} found with the hash recorded outside the store"
        );
    }
    for step in &v.clock_steps_back {
        let _ = writeln!(
            out,
            "note: entry {} is dated {} before the entry before it: a clock was set back (or replicas' clocks disagree)",
            step.seq,
            humantime::format_duration(std::time::Duration::from_millis(step.back_ms as u64))
        );
    }
    let unlisted = v.clock_steps_back_total - v.clock_steps_back.len() as u64;
    if unlisted > 0 {
        let _ = writeln!(out, "note: {unlisted} more entries dated back in time");
    }
    out
}

pub fn run_users(settings: &Settings, cmd: UsersCommand) -> anyhow::Result<i32> {
    match cmd {
        UsersCommand::Add(args) => {
            let password = read_password()?;
            runtime()?.block_on(async {
                let store = open(settings).await?;
                let new = NewUser {
                    username: args.username,
                    full_name: args.full_name,
                    role: args.role,
                    password,
                };
                let user = if args.temporary_password {
                    store
                        .add_user_with_temporary_password(new, &cli_actor())
                        .await?
                } else {
                    store.add_user(new, &cli_actor()).await?
                };
                store.close().await;
                println!(
                    "created user {} ({}), role {}{}",
                    user.username,
                    user.full_name,
                    user.role,
                    if args.temporary_password {
                        "; the password is temporary: they choose their own at first sign-in"
                    } else {
                        ""
                    }
                );
                Ok(0)
            })
        }
        UsersCommand::Token {
            username,
            name,
            expires_days,
        } => runtime()?.block_on(async {
            let store = open(settings).await?;
            let expires =
                expires_days.map(|d| crate::quality::now_ms() + i64::from(d) * 86_400_000);
            let issued = store
                .create_token(&username, &name, expires, &cli_actor())
                .await;
            store.close().await;
            let (listed, token) = issued?;
            eprintln!(
                "token {} for {} ({}), expires {}; keep it secret, it is not shown again:",
                listed.id,
                listed.username,
                listed.name,
                listed.expires_at_ms.map_or("never".into(), format_ms)
            );
            println!("{token}");
            Ok(0)
        }),
        UsersCommand::Tokens => runtime()?.block_on(async {
            let store = open(settings).await?;
            let tokens = store.tokens().await;
            store.close().await;
            for t in tokens? {
                let state = match (t.revoked_at_ms, t.expires_at_ms) {
                    (Some(at), _) => format!("revoked {}", format_ms(at)),
                    (None, Some(at)) if at <= crate::quality::now_ms() => {
                        format!("expired {}", format_ms(at))
                    }
                    (None, Some(at)) => format!("expires {}", format_ms(at)),
                    (None, None) => "no expiry".into(),
                };
                println!(
                    "{:>5}  {:<16} {:<30} {}  last used {}",
                    t.id,
                    t.username,
                    t.name,
                    state,
                    t.last_used_ms.map_or("never".into(), format_ms)
                );
            }
            Ok(0)
        }),
        UsersCommand::RevokeToken { id, reason } => runtime()?.block_on(async {
            let store = open(settings).await?;
            let revoked = store.revoke_token(id, &cli_actor(), &reason).await;
            store.close().await;
            revoked?;
            println!("revoked token {id}");
            Ok(0)
        }),
        UsersCommand::List => runtime()?.block_on(async {
            let store = open(settings).await?;
            let users = store.users().await;
            store.close().await;
            let now = crate::quality::now_ms();
            for u in users? {
                let state = match (u.disabled_at_ms, u.locked_until_ms) {
                    (Some(at), _) => format!("disabled {}", format_ms(at)),
                    (None, Some(until)) if until > now => {
                        format!("locked until {}", format_ms(until))
                    }
                    _ => "active".into(),
                };
                println!(
                    "{:<16} {:<12} {:<30} {}  password set {}{}",
                    u.username,
                    u.role.as_str(),
                    u.full_name,
                    state,
                    u.password_set_at_ms.map_or("unknown".into(), format_ms),
                    if u.password_change_due {
                        ", to be changed at the next sign-in"
                    } else {
                        ""
                    }
                );
            }
            Ok(0)
        }),
        UsersCommand::Passwd { username, reason } => {
            let password = read_password()?;
            runtime()?.block_on(async {
                let store = open(settings).await?;
                let reset = store
                    .reset_password(&username, &password, &cli_actor(), &reason)
                    .await;
                store.close().await;
                reset?;
                println!("new password set for {username}; their web UI sessions ended");
                Ok(0)
            })
        }
        UsersCommand::Disable { username, reason } => {
            set_disabled(settings, &username, true, &reason)
        }
        UsersCommand::Enable { username, reason } => {
            set_disabled(settings, &username, false, &reason)
        }
        UsersCommand::Unlock { username, reason } => runtime()?.block_on(async {
            let store = open(settings).await?;
            store.unlock_user(&username, &cli_actor(), &reason).await?;
            store.close().await;
            println!(
                "unlocked {username} at {}",
                format_ms(crate::quality::now_ms())
            );
            Ok(0)
        }),
    }
}

fn set_disabled(
    settings: &Settings,
    username: &str,
    disabled: bool,
    reason: &str,
) -> anyhow::Result<i32> {
    runtime()?.block_on(async {
        let store = open(settings).await?;
        let done = store
            .set_user_disabled(username, disabled, &cli_actor(), reason)
            .await;
        store.close().await;
        done?;
        if disabled {
            println!("disabled {username}: sign-ins refused, sessions ended, tokens void");
        } else {
            println!("enabled {username}");
        }
        Ok(0)
    })
}

fn read_password() -> anyhow::Result<String> {
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ").context("cannot read the password")?;
        let again =
            rpassword::prompt_password("Password again: ").context("cannot read the password")?;
        anyhow::ensure!(first == again, "the two passwords differ");
        Ok(first)
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from stdin")?;
        let password = line.trim_end_matches(['\n', '\r']).to_owned();
        anyhow::ensure!(!password.is_empty(), "no password on stdin");
        Ok(password)
    }
}

pub fn run_images(settings: &Settings, cmd: ImagesCommand) -> anyhow::Result<i32> {
    match cmd {
        ImagesCommand::Verify => runtime()?.block_on(async {
            let store = open(settings).await?;
            let (images, attachments) = store
                .verify_files(&settings.image_dir(), &settings.attachment_dir())
                .await
                .context("cannot check the stored files")?;
            store.close().await;
            print!(
                "{}{}",
                describe_files("images and overlays", &images),
                describe_files("NCR attachments", &attachments)
            );
            Ok(if images.is_ok() && attachments.is_ok() {
                0
            } else {
                1
            })
        }),
        ImagesCommand::Prune { unrecorded } => runtime()?.block_on(async {
            let store = open(settings).await?;
            let dir = settings.image_dir();
            let report = super::run::prune_images_once(settings, &store, unrecorded)
                .await
                .with_context(|| format!("cannot prune images in {}", dir.display()))?;
            store.close().await;
            let (r, s) = (report.retention, report.sweep);
            println!(
                "pruned {} expired and {} over-quota images ({} bytes) in {}",
                r.expired,
                r.evicted,
                r.bytes_freed,
                dir.display()
            );
            if r.pinned > 0 {
                println!(
                    "kept {} images ({} bytes) due for removal: samples waiting for their upload name them",
                    r.pinned, r.pinned_bytes
                );
            }
            if r.held_for_tasks > 0 {
                println!(
                    "kept {} images ({} bytes) due for removal: open secondary-inspection tasks show them",
                    r.held_for_tasks, r.held_for_tasks_bytes
                );
            }
            if s.temporary > 0 {
                println!("removed {} left-over temporary files", s.temporary);
            }
            if s.unrecorded_removed > 0 {
                println!(
                    "removed {} images no record names ({} bytes)",
                    s.unrecorded_removed, s.unrecorded_bytes
                );
            } else if s.unrecorded > 0 {
                println!(
                    "found {} images no record names ({} bytes), kept: `linesight images prune --unrecorded` removes them",
                    s.unrecorded, s.unrecorded_bytes
                );
            }
            if r.missing > 0 {
                eprintln!(
                    "warning: {} of them had no file any more (deleted outside linesight, or held by another replica); their records keep the reference",
                    r.missing
                );
            }
            if r.errors + s.errors > 0 {
                eprintln!(
                    "warning: {} files could not be listed or removed (see the log); the next pass tries again",
                    r.errors + s.errors
                );
                return Ok(1);
            }
            Ok(0)
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quality::audit::RecordMismatch;

    #[test]
    fn records_are_counted_by_kind_and_differences_named_by_id_or_name() {
        assert_eq!(
            describe_records(&RecordCheck::default()),
            "records: none yet (no inspections, tasks, NCRs, signatures, lots, accounts, sessions, tokens or model activations)\n"
        );
        let mut r = RecordCheck {
            users: 1,
            ..RecordCheck::default()
        };
        assert_eq!(
            describe_records(&r),
            "records: all agree with the audit trail (1 account)\n"
        );
        r.tokens = 2;
        r.model_activations = 3;
        r.push(RecordMismatch {
            entity: "user".into(),
            id: None,
            name: Some("ana\"x".into()),
            seq: Some(4),
            problem: "added".into(),
        });
        r.push(RecordMismatch {
            entity: "model activation".into(),
            id: None,
            name: None,
            seq: Some(9),
            problem: "removed".into(),
        });
        assert_eq!(
            describe_records(&r),
            "records: 2 DIFFERENCES from the audit trail (checked: 1 account, 2 bearer tokens and 3 model activations)\n  user \"ana\\\"x\" (audit entry 4): added\n  model activation (audit entry 9): removed\n"
        );
    }
}
