//! Who may act and with which model, against the audit trail: accounts (name, role,
//! password, withdrawal), web UI sessions, bearer tokens and model activations. A role raised, a password hash
//! or a token digest replaced, an account or a token added in the tables would let somebody
//! act or sign as another person; an activation changed would hide which model judged parts.

use std::collections::{HashMap, VecDeque};

use sqlx::{Any, Row as _, Transaction};

use super::super::models::{self, ModelActivation};
use super::super::users::{self, UserAccount};
use super::super::{StoreError, audit_row, db};
use super::{ADDED, RecordKind, altered, check_records, differ, differ_time, page_with_entries};
use crate::quality::audit::{self, AuditEntry};

/// The entries that set an account's name and role, its password or its withdrawal.
const USER_ACTIONS: &[&str] = &[
    "user.create",
    "user.password_change",
    "user.password_reset",
    "user.disable",
    "user.enable",
];

/// The entries that record an activation or a refusal of a model.
const MODEL_ACTIONS: &[&str] = &["model.activate", "model.refuse"];

/// The entries of `entity` with one of `actions`, oldest first, by the name they are about
/// (`entity_id`). Only for kinds of entries that stay few (accounts, model slots): they are
/// kept for the whole check. Entries numbered below 1 are not the trail's.
async fn entries_by_name(
    tx: &mut Transaction<'static, Any>,
    entity: &str,
    actions: &[&'static str],
    page_size: i64,
) -> Result<HashMap<String, Vec<AuditEntry>>, StoreError> {
    // The actions are this module's constants, never input.
    let listed: Vec<String> = actions.iter().map(|a| format!("'{a}'")).collect();
    let sql = format!(
        "SELECT seq, at_ms, actor, action, entity, entity_id, old_value, new_value, reason, prev_hash, hash \
         FROM audit_log WHERE entity = $1 AND action IN ({}) AND seq > $2 ORDER BY seq LIMIT $3",
        listed.join(", ")
    );
    let mut by_name: HashMap<String, Vec<AuditEntry>> = HashMap::new();
    let mut after = 0i64;
    loop {
        let rows = sqlx::query(&sql)
            .bind(entity)
            .bind(after)
            .bind(page_size)
            .fetch_all(&mut **tx)
            .await
            .map_err(db("read the audit trail"))?;
        for row in &rows {
            let e = audit_row(row)?;
            after = e.seq;
            by_name.entry(e.entity_id.clone()).or_default().push(e);
        }
        if (rows.len() as i64) < page_size {
            return Ok(by_name);
        }
    }
}

fn named(entity: &str, name: &str, seq: Option<i64>, problem: String) -> audit::RecordMismatch {
    audit::RecordMismatch {
        entity: entity.into(),
        id: None,
        name: Some(name.into()),
        seq,
        problem,
    }
}

/// The names left in `entries` (their records are gone), in name order; how many.
fn removed(
    entity: &str,
    entries: HashMap<String, Vec<AuditEntry>>,
    check: &mut audit::RecordCheck,
) -> u64 {
    let mut gone: Vec<_> = entries.into_iter().collect();
    let count = gone.len() as u64;
    gone.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, entries) in gone {
        let first = entries.first().map(|e| e.seq);
        check.push(named(
            entity,
            &name,
            first,
            format!(
                "audit entries from entry {} record it, but it is not among the records: it was removed outside linesight",
                first.unwrap_or_default()
            ),
        ));
    }
    count
}

/// Accounts against the entries that created them and set their password and withdrawal.
/// Returns how many were compared.
pub(super) async fn check_users(
    tx: &mut Transaction<'static, Any>,
    page_size: i64,
    check: &mut audit::RecordCheck,
) -> Result<u64, StoreError> {
    let mut entries = entries_by_name(tx, "user", USER_ACTIONS, page_size).await?;
    let sql = format!(
        "SELECT {}, created_at_ms FROM users WHERE id > $1 ORDER BY id LIMIT $2",
        users::USER_COLUMNS
    );
    let mut compared = 0u64;
    let mut after = i64::MIN;
    loop {
        let rows = sqlx::query(&sql)
            .bind(after)
            .bind(page_size)
            .fetch_all(&mut **tx)
            .await
            .map_err(db("read the accounts"))?;
        for row in &rows {
            after = row.try_get("id").map_err(db("read an account's id"))?;
            compared += 1;
            let name: String = match row.try_get("username") {
                Ok(name) => name,
                Err(e) => {
                    check.push(named(
                        "user",
                        "?",
                        None,
                        format!("an account whose name cannot be read ({e}): it was added or altered outside linesight"),
                    ));
                    continue;
                }
            };
            let mine = entries.remove(&name).unwrap_or_default();
            let Some(created) = mine.iter().find(|e| e.action == "user.create") else {
                check.push(named("user", &name, None, ADDED.into()));
                continue;
            };
            let read = users::account_row(row).and_then(|a| {
                let hash: String = row.try_get("password_hash").map_err(db("decode a user"))?;
                Ok((a, hash))
            });
            let problem = match read {
                Ok((account, hash)) => altered(user_differences(&account, &hash, created, &mine)),
                Err(e) => Some(format!(
                    "the record cannot be read ({e}): it was altered outside linesight"
                )),
            };
            if let Some(problem) = problem {
                check.push(named("user", &name, Some(created.seq), problem));
            }
        }
        if (rows.len() as i64) < page_size {
            break;
        }
    }
    Ok(compared + removed("user", entries, check))
}

/// How an account differs from its `user.create` entry and its other entries (oldest first): its name
/// and role as created, its creation time, when and how its password was last set (and the
/// hash's fingerprint where the entry names one), and whether it is withdrawn.
fn user_differences(
    a: &UserAccount,
    hash: &str,
    created: &AuditEntry,
    entries: &[AuditEntry],
) -> Vec<String> {
    let mut out = Vec::new();
    let (text, _) = users::split_credential(created.new_value.as_deref().unwrap_or_default());
    // Whether the password was temporary is the entry's word alone.
    let temporary = text.ends_with(users::TEMPORARY);
    differ(
        &mut out,
        "",
        users::creation_text(&a.full_name, a.role, temporary).as_str(),
        text,
    );
    differ_time(&mut out, a.created_at_ms, created.at_ms);
    let password = entries
        .iter()
        .rev()
        .find(|e| e.action != "user.disable" && e.action != "user.enable")
        .unwrap_or(created);
    if a.password_set_at_ms != Some(password.at_ms) {
        out.push(format!(
            "password set {} in the record, {} in the trail (entry {})",
            a.password_set_at_ms
                .map_or("never".into(), crate::quality::format_ms),
            crate::quality::format_ms(password.at_ms),
            password.seq
        ));
    }
    let due = match password.action.as_str() {
        "user.password_reset" => true,
        "user.password_change" => false,
        _ => temporary,
    };
    if a.password_change_due != due {
        out.push(format!(
            "a password change {} in the record, {} in the trail",
            if a.password_change_due {
                "due"
            } else {
                "not due"
            },
            if due { "due" } else { "not due" },
        ));
    }
    if let (_, Some(fp)) =
        users::split_credential(password.new_value.as_deref().unwrap_or_default())
        && fp != users::credential_fingerprint(hash)
    {
        out.push(format!(
            "password hash (fingerprint {}) not the one entry {} set ({fp})",
            users::credential_fingerprint(hash),
            password.seq
        ));
    }
    let withdrawn = entries
        .iter()
        .rev()
        .find(|e| e.action == "user.disable" || e.action == "user.enable")
        .filter(|e| e.action == "user.disable")
        .map(|e| e.at_ms);
    if a.disabled_at_ms != withdrawn {
        let shown = |at: Option<i64>| {
            at.map_or("enabled".into(), |t| {
                format!("disabled at {}", crate::quality::format_ms(t))
            })
        };
        out.push(format!(
            "{} in the record, {} in the trail",
            shown(a.disabled_at_ms),
            shown(withdrawn)
        ));
    }
    out
}

/// Bearer tokens with the user names of their accounts, from an id above `$1`, at most `$2`.
const TOKEN_ROWS: &str = "SELECT t.id, t.name, u.username AS account, t.created_by, t.created_at_ms, \
     t.expires_at_ms, t.revoked_at_ms, t.secret_sha256 FROM api_tokens t \
     LEFT JOIN users u ON u.id = t.user_id WHERE t.id > $1 ORDER BY t.id LIMIT $2";

/// A bearer token's row, as the check reads it.
struct TokenRow {
    id: i64,
    name: String,
    account: Option<String>,
    created_by: String,
    created_at_ms: i64,
    expires_at_ms: Option<i64>,
    revoked_at_ms: Option<i64>,
    secret_sha256: String,
}

fn token_row(row: &sqlx::any::AnyRow) -> Result<TokenRow, StoreError> {
    (|| {
        Ok::<_, sqlx::Error>(TokenRow {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            account: row.try_get("account")?,
            created_by: row.try_get("created_by")?,
            created_at_ms: row.try_get("created_at_ms")?,
            expires_at_ms: row.try_get("expires_at_ms")?,
            revoked_at_ms: row.try_get("revoked_at_ms")?,
            secret_sha256: row.try_get("secret_sha256")?,
        })
    })()
    .map_err(db("decode a token"))
}

/// How a token differs from its `token.create` entry: name, expiry, account, who made it,
/// when, and the fingerprint of its digest where the entry names one.
fn token_differences(t: &TokenRow, e: &AuditEntry) -> Vec<String> {
    let mut out = Vec::new();
    let (text, fp) = users::split_credential(e.new_value.as_deref().unwrap_or_default());
    differ(
        &mut out,
        "",
        super::super::api::token_text(t.id, &t.name, t.expires_at_ms).as_str(),
        text,
    );
    differ(&mut out, "account ", &t.account, &Some(e.entity_id.clone()));
    differ(&mut out, "made by ", &t.created_by, &e.actor);
    differ_time(&mut out, t.created_at_ms, e.at_ms);
    if let Some(fp) = fp
        && fp != users::credential_fingerprint(&t.secret_sha256)
    {
        out.push(format!(
            "secret digest (fingerprint {}) not the one the entry recorded ({fp})",
            users::credential_fingerprint(&t.secret_sha256)
        ));
    }
    out
}

/// Bearer tokens against their `token.create` entry, then their revocation against their
/// `token.revoke` entry. Returns how many were compared.
pub(super) async fn check_tokens(
    tx: &mut Transaction<'static, Any>,
    page_size: i64,
    check: &mut audit::RecordCheck,
) -> Result<u64, StoreError> {
    let kind = RecordKind {
        entity: "token",
        rows: TOKEN_ROWS.into(),
        action: "token.create",
        decode: token_row,
        created: |e| {
            let rest = e.new_value.as_deref()?.strip_prefix("token ")?;
            rest.split_once(' ')?.0.parse().ok()
        },
        differences: |t, e| Ok(token_differences(t, e)),
    };
    let compared = check_records(tx, page_size, &kind, check).await?;
    let mut after = i64::MIN;
    loop {
        let page = page_with_entries(tx, TOKEN_ROWS, "token", after, page_size).await?;
        for (row, id) in page.rows.iter().zip(&page.ids) {
            after = *id;
            // An unreadable row is named by the creation check above.
            let Ok(t) = token_row(row) else { continue };
            let revoked = page
                .entries
                .get(id)
                .and_then(|es| es.iter().rev().find(|e| e.action == "token.revoke"));
            if t.revoked_at_ms != revoked.map(|e| e.at_ms) {
                let shown = |at: Option<i64>| {
                    at.map_or("not revoked".into(), |t| {
                        format!("revoked at {}", crate::quality::format_ms(t))
                    })
                };
                check.push(audit::RecordMismatch {
                    entity: "token".into(),
                    id: Some(*id),
                    name: None,
                    seq: revoked.map(|e| e.seq),
                    problem: format!(
                        "{} in the record, {} in the trail: the record was altered outside linesight",
                        shown(t.revoked_at_ms),
                        shown(revoked.map(|e| e.at_ms))
                    ),
                });
            }
        }
        if page.last {
            return Ok(compared);
        }
    }
}

/// What an activation and its entry both hold: the slot, the action, the model, the reason,
/// who and when. Two activations hold the same only if made in the same millisecond.
type ActivationKey = (String, String, Option<String>, Option<String>, String, i64);

fn activation_key(a: &ModelActivation) -> ActivationKey {
    (
        a.slot.clone(),
        a.state.action().to_owned(),
        Some(models::activation_text(&a.sha256, &a.package_path)),
        a.reason.clone(),
        a.actor.clone(),
        a.at_ms,
    )
}

fn entry_key(e: &AuditEntry) -> ActivationKey {
    (
        e.entity_id.clone(),
        e.action.clone(),
        e.new_value.clone(),
        e.reason.clone(),
        e.actor.clone(),
        e.at_ms,
    )
}

/// Model activations and refusals against their `model.activate` / `model.refuse` entries.
/// The entries name the slot, not the row, so each row is matched with the entry that holds
/// what it holds: a row that matches none was added or altered, an entry no row matches lost
/// its row. A slot's rows and entries are written in one transaction under the write lock,
/// so they come in the same order; a row out of that order (the newest active row of a slot
/// is the model it serves) was moved. Activations stay few (one per model change): the
/// entries are kept for the whole check. Returns how many rows and unmatched entries were
/// compared.
pub(super) async fn check_model_activations(
    tx: &mut Transaction<'static, Any>,
    page_size: i64,
    check: &mut audit::RecordCheck,
) -> Result<u64, StoreError> {
    let mut entries: HashMap<ActivationKey, VecDeque<AuditEntry>> = HashMap::new();
    for e in entries_by_name(tx, "model_slot", MODEL_ACTIONS, page_size)
        .await?
        .into_values()
        .flatten()
    {
        entries.entry(entry_key(&e)).or_default().push_back(e);
    }
    let sql = format!(
        "SELECT {} FROM model_activations WHERE id > $1 ORDER BY id LIMIT $2",
        models::COLUMNS
    );
    let row_mismatch = |id: i64, seq: Option<i64>, problem: String| audit::RecordMismatch {
        entity: "model activation".into(),
        id: Some(id),
        name: None,
        seq,
        problem,
    };
    // The newest entry matched so far in each slot, with its row.
    let mut newest: HashMap<String, (i64, i64)> = HashMap::new();
    let mut compared = 0u64;
    let mut after = i64::MIN;
    loop {
        let rows = sqlx::query(&sql)
            .bind(after)
            .bind(page_size)
            .fetch_all(&mut **tx)
            .await
            .map_err(db("read the model activations"))?;
        for row in &rows {
            after = row.try_get("id").map_err(db("read an activation's id"))?;
            compared += 1;
            let a = match models::activation_row(row) {
                Ok(a) => a,
                Err(e) => {
                    check.push(row_mismatch(
                        after,
                        None,
                        format!(
                            "the record cannot be read ({e}): it was altered outside linesight"
                        ),
                    ));
                    continue;
                }
            };
            let Some(e) = entries
                .get_mut(&activation_key(&a))
                .and_then(VecDeque::pop_front)
            else {
                check.push(row_mismatch(
                    a.id,
                    None,
                    format!(
                        "{} of {} in slot {:?} by {:?} at {}: no audit entry records it: it was added or altered outside linesight",
                        a.state.action(),
                        models::activation_text(&a.sha256, &a.package_path),
                        a.slot,
                        a.actor,
                        crate::quality::format_ms(a.at_ms)
                    ),
                ));
                continue;
            };
            match newest.get(&a.slot) {
                Some(&(seq, id)) if seq > e.seq => check.push(row_mismatch(
                    a.id,
                    Some(e.seq),
                    format!(
                        "recorded by audit entry {} before activation {id} (entry {seq}) of slot {:?}, but after it in the table: \
                         the order was altered outside linesight (a slot serves its newest active model)",
                        e.seq, a.slot
                    ),
                )),
                _ => {
                    newest.insert(a.slot.clone(), (e.seq, a.id));
                }
            }
        }
        if (rows.len() as i64) < page_size {
            break;
        }
    }
    let mut left: Vec<AuditEntry> = entries.into_values().flatten().collect();
    left.sort_by_key(|e| e.seq);
    for lost in &left {
        compared += 1;
        check.push(lost_activation(lost));
    }
    Ok(compared)
}

/// The entries that end every web UI session of an account (a password set, a withdrawal, a
/// lock): a session opened before one of them was deleted with it.
const SESSION_ENDING: &[&str] = &[
    "user.password_change",
    "user.password_reset",
    "user.disable",
    "user.locked",
];

/// Web UI sessions against the `user.sign_in` entry that opened each: the account, the time
/// and, where the entry names one, the fingerprint of the session's secret. A session row
/// added in the tables would let somebody act in the web UI as the account it names (decide
/// tasks, hold lots; signing still asks for the password). A session that a later password
/// set, withdrawal or lock ended, found again, was restored. Sessions are few (the open ones):
/// each is looked up in the trail by its account's index. Returns how many were compared.
pub(super) async fn check_sessions(
    tx: &mut Transaction<'static, Any>,
    page_size: i64,
    check: &mut audit::RecordCheck,
) -> Result<u64, StoreError> {
    const ENTRY: &str = "SELECT seq, at_ms, actor, action, entity, entity_id, old_value, new_value, reason, prev_hash, hash \
                         FROM audit_log WHERE entity = 'user' AND entity_id = $1";
    let listed: Vec<String> = SESSION_ENDING.iter().map(|a| format!("'{a}'")).collect();
    let opened_sql = format!("{ENTRY} AND action = 'user.sign_in' AND at_ms = $2 ORDER BY seq");
    let ended_sql = format!(
        "{ENTRY} AND action IN ({}) AND seq > $2 ORDER BY seq LIMIT 1",
        listed.join(", ")
    );
    let mut compared = 0u64;
    let mut after = String::new();
    loop {
        let rows = sqlx::query(
            "SELECT s.secret_sha256, s.user_id, s.created_at_ms, u.username FROM api_sessions s \
             LEFT JOIN users u ON u.id = s.user_id WHERE s.secret_sha256 > $1 \
             ORDER BY s.secret_sha256 LIMIT $2",
        )
        .bind(&after)
        .bind(page_size)
        .fetch_all(&mut **tx)
        .await
        .map_err(db("read the web UI sessions"))?;
        for row in &rows {
            let read = (|| {
                Ok::<_, sqlx::Error>((
                    row.try_get::<String, _>("secret_sha256")?,
                    row.try_get::<i64, _>("user_id")?,
                    row.try_get::<i64, _>("created_at_ms")?,
                    row.try_get::<Option<String>, _>("username")?,
                ))
            })();
            let (secret, user_id, opened_ms, username) = match read {
                Ok(read) => read,
                Err(e) => return Err(db("decode a web UI session")(e)),
            };
            after.clone_from(&secret);
            compared += 1;
            let Some(username) = username else {
                check.push(named(
                    "web UI session",
                    &format!("account {user_id}"),
                    None,
                    "a session of an account that does not exist: it was added outside linesight"
                        .into(),
                ));
                continue;
            };
            let opened: Vec<AuditEntry> = sqlx::query(&opened_sql)
                .bind(&username)
                .bind(opened_ms)
                .fetch_all(&mut **tx)
                .await
                .map_err(db("read the audit trail"))?
                .iter()
                .map(audit_row)
                .collect::<Result<_, _>>()?;
            let fingerprint = users::credential_fingerprint(&secret);
            fn credential(e: &AuditEntry) -> Option<&str> {
                users::split_credential(e.new_value.as_deref().unwrap_or("")).1
            }
            // An entry of an earlier version names no fingerprint: any of them at that time.
            let entry = opened
                .iter()
                .find(|e| credential(e) == Some(fingerprint.as_str()))
                .or_else(|| opened.iter().find(|e| credential(e).is_none()));
            let Some(entry) = entry else {
                let problem = match opened.first() {
                    Some(e) => format!(
                        "opened at {}, but its secret is not the one the sign-in entry {} names: it was replaced outside linesight",
                        crate::quality::format_ms(opened_ms),
                        e.seq
                    ),
                    None => format!(
                        "opened at {}, but no sign-in entry records it: it was added outside linesight",
                        crate::quality::format_ms(opened_ms)
                    ),
                };
                check.push(named(
                    "web UI session",
                    &username,
                    opened.first().map(|e| e.seq),
                    problem,
                ));
                continue;
            };
            let ended = sqlx::query(&ended_sql)
                .bind(&username)
                .bind(entry.seq)
                .fetch_optional(&mut **tx)
                .await
                .map_err(db("read the audit trail"))?;
            if let Some(ended) = ended {
                let ended = audit_row(&ended)?;
                check.push(named(
                    "web UI session",
                    &username,
                    Some(entry.seq),
                    format!(
                        "opened at {}, but entry {} ({}) ended every session of the account after that: it was restored outside linesight",
                        crate::quality::format_ms(opened_ms),
                        ended.seq,
                        ended.action
                    ),
                ));
            }
        }
        if (rows.len() as i64) < page_size {
            return Ok(compared);
        }
    }
}

fn lost_activation(e: &AuditEntry) -> audit::RecordMismatch {
    audit::RecordMismatch {
        entity: "model activation".into(),
        id: None,
        name: None,
        seq: Some(e.seq),
        problem: format!(
            "audit entry {} records {} of {} in slot {:?} by {:?}, but no activation is that one: it was removed or altered outside linesight",
            e.seq,
            e.action,
            e.new_value.as_deref().unwrap_or("nothing"),
            e.entity_id,
            e.actor
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::models::ActivationState;
    use super::super::super::{NewModelActivation, NewUser, Store, sqlite_in};
    use crate::quality::Role;

    const PASSWORD: &str = "correct-horse-battery";

    /// Five accounts (one withdrawn, one reset), three tokens (one revoked) and five
    /// activations in two slots.
    async fn some_access(store: &Store) {
        for (i, name) in ["ada", "bo", "cy", "di", "ed"].into_iter().enumerate() {
            store
                .add_user(
                    NewUser {
                        username: name.into(),
                        full_name: format!("{name} Fullname"),
                        role: if i == 0 { Role::Admin } else { Role::Inspector },
                        password: PASSWORD.into(),
                    },
                    "cli:root",
                )
                .await
                .unwrap();
        }
        store
            .set_user_disabled("bo", true, "ada", "left")
            .await
            .unwrap();
        store
            .reset_password("cy", "an0ther-long-pw", "ada", "forgotten")
            .await
            .unwrap();
        for name in ["line 1", "line 2", "MES"] {
            store.create_token("ada", name, None, "ada").await.unwrap();
        }
        store.revoke_token(2, "ada", "replaced").await.unwrap();
        for (slot, sha, state) in [
            ("default", "a", ActivationState::Active),
            ("recipe-b", "b", ActivationState::Active),
            ("default", "c", ActivationState::Refused),
            ("default", "d", ActivationState::Active),
            ("recipe-b", "e", ActivationState::Active),
        ] {
            store
                .record_model_activation(NewModelActivation {
                    slot: slot.into(),
                    package_path: format!("/models/{sha}"),
                    sha256: sha.repeat(64),
                    state,
                    reason: None,
                    actor: "cli:ada".into(),
                })
                .await
                .unwrap();
        }
    }

    #[tokio::test]
    async fn accounts_tokens_and_activations_are_checked_page_by_page() {
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite_in(dir.path()).await;
        some_access(&store).await;
        for page in [1, 2, 3, 7, 100] {
            let r = store
                .verify_with_pages(&[], page, page)
                .await
                .unwrap()
                .records;
            assert_eq!(
                (r.users, r.tokens, r.model_activations, r.mismatches_total),
                (5, 3, 5, 0),
                "page {page}: {r:?}"
            );
        }
        for sql in [
            "UPDATE users SET full_name = 'Ed Else' WHERE username = 'ed'",
            "UPDATE users SET disabled_at_ms = NULL WHERE username = 'bo'",
            "UPDATE api_tokens SET revoked_at_ms = NULL WHERE id = 2",
            "DROP TRIGGER model_activations_no_update",
            // The recipe's second activation changed.
            "UPDATE model_activations SET actor = 'cli:eve' WHERE id = 5",
        ] {
            sqlx::query(sql).execute(&store.writer).await.unwrap();
        }
        for page in [1, 2, 3, 4, 7, 100] {
            let r = store
                .verify_with_pages(&[], page, page)
                .await
                .unwrap()
                .records;
            let found: Vec<(&str, Option<i64>, Option<&str>)> = r
                .mismatches
                .iter()
                .map(|m| (m.entity.as_str(), m.id, m.name.as_deref()))
                .collect();
            assert_eq!(
                found,
                [
                    ("user", None, Some("bo")),
                    ("user", None, Some("ed")),
                    ("token", Some(2), None),
                    ("model activation", Some(5), None),
                    ("model activation", None, None),
                ],
                "page {page}: {r:?}"
            );
            assert_eq!(
                (r.users, r.tokens, r.model_activations),
                (5, 3, 6),
                "page {page}"
            );
        }
    }
}
