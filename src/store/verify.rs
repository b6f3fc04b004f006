//! `audit verify`'s walks over one read snapshot of the store: the hash chain and its
//! anchors, then every record against the audit entries that made or changed it. Records are
//! not chained; what is altered, added or removed in their tables outside linesight shows here.
//! - Every record is walked side by side with the entries that created it ([`check_records`]):
//!   inspections, electronic signatures, NCR attachments, and the creation of tasks and NCRs.
//! - Tasks and NCRs, whose state moves on, are then read a page at a time with the entries
//!   that changed them (found through the `audit_log (entity, entity_id, seq)` index): their
//!   state, decision, disposition and number of changes, an NCR's transitions with their
//!   actors and signatures ([`check_task_states`], [`check_ncr_states`]).
//! - Lots, known by name, against their newest hold or release ([`check_lots`]).
//!
//! Memory stays within a page of records and their entries, and one entry per lot.

use std::collections::{HashMap, HashSet};

use sqlx::any::AnyRow;
use sqlx::{Any, Row as _, Transaction};

use super::{StoreError, audit_page, audit_row, db, inspections, ncrs};
use crate::quality::audit::{self, AuditEntry, ChainBreak};

mod access;

/// The hash chain and the anchors, page by page: what was found, or the first broken link.
pub(super) async fn check_chain(
    tx: &mut Transaction<'static, Any>,
    anchors: &[audit::Anchor],
    page_size: i64,
) -> Result<Result<audit::Verified, ChainBreak>, StoreError> {
    let mut check = audit::ChainCheck::new(anchors);
    // The trail starts at entry 1: an entry numbered below it was inserted outside linesight
    // (nothing would check its hash), and a first entry above it means the first ones are gone.
    if let Some(first) = audit_page(&mut **tx, i64::MIN, 1).await?.first()
        && first.seq != 1
    {
        return Ok(Err(ChainBreak {
            seq: first.seq,
            problem: if first.seq < 1 {
                "sequence numbers start at 1: this entry was inserted outside linesight".into()
            } else {
                "expected sequence number 1: entries are missing".into()
            },
        }));
    }
    loop {
        let from = check.next_seq();
        let page = audit_page(&mut **tx, from, page_size).await?;
        if let Err(b) = check.page(&page) {
            return Ok(Err(b));
        }
        if (page.len() as i64) < page_size {
            return Ok(check.finish());
        }
    }
}

/// A kind of record that one audit entry creates, for [`check_records`].
struct RecordKind<R> {
    entity: &'static str,
    /// Its rows with an id above `$1`, at most `$2`, by id.
    rows: String,
    /// The action of the entry that creates one.
    action: &'static str,
    decode: fn(&AnyRow) -> Result<R, StoreError>,
    /// The id of the record an entry created.
    created: fn(&AuditEntry) -> Option<i64>,
    /// What differs (empty: they agree), or `Err` when the entry cannot be what made it.
    differences: fn(&R, &AuditEntry) -> Result<Vec<String>, String>,
}

/// The records of one kind against the entries that created them. A record and its entry are
/// written in one transaction under the write lock, so both come in the same order: they are
/// walked side by side, a page of each at a time. Returns how many were compared.
async fn check_records<R>(
    tx: &mut Transaction<'static, Any>,
    page_size: i64,
    kind: &RecordKind<R>,
    check: &mut audit::RecordCheck,
) -> Result<u64, StoreError> {
    use std::collections::VecDeque;
    let mut compared = 0u64;
    let (mut rows, mut entries) = (VecDeque::new(), VecDeque::new());
    // From the smallest id: a row given id 0 or below outside linesight is read too.
    let (mut after_id, mut after_seq) = (i64::MIN, 0i64);
    let (mut rows_done, mut entries_done) = (false, false);
    let mismatch = |id: Option<i64>, seq: Option<i64>, problem: String| audit::RecordMismatch {
        entity: kind.entity.into(),
        id,
        name: None,
        seq,
        problem,
    };
    loop {
        if rows.is_empty() && !rows_done {
            let page = sqlx::query(&kind.rows)
                .bind(after_id)
                .bind(page_size)
                .fetch_all(&mut **tx)
                .await
                .map_err(db("read the records"))?;
            rows_done = (page.len() as i64) < page_size;
            for row in &page {
                let id: i64 = row.try_get("id").map_err(db("read a record's id"))?;
                after_id = id;
                rows.push_back((id, (kind.decode)(row)));
            }
        }
        if entries.is_empty() && !entries_done {
            let page = sqlx::query(
                "SELECT seq, at_ms, actor, action, entity, entity_id, old_value, new_value, reason, prev_hash, hash \
                 FROM audit_log WHERE action = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            )
            .bind(kind.action)
            .bind(after_seq)
            .bind(page_size)
            .fetch_all(&mut **tx)
            .await
            .map_err(db("read the audit trail"))?;
            entries_done = (page.len() as i64) < page_size;
            for row in &page {
                let e = audit_row(row)?;
                after_seq = e.seq;
                entries.push_back(((kind.created)(&e), e));
            }
        }
        // An entry that names no record is reported as it is.
        if let Some((None, _)) = entries.front() {
            let (_, e) = entries.pop_front().expect("just seen");
            check.push(mismatch(
                None,
                Some(e.seq),
                format!(
                    "audit entry {} ({}) names no {} id: the trail was written outside linesight",
                    e.seq, e.action, kind.entity
                ),
            ));
            continue;
        }
        let entry_id = entries.front().and_then(|(id, _)| *id);
        let row_first = match (rows.front().map(|r| r.0), entry_id) {
            (None, None) => return Ok(compared),
            (Some(id), Some(eid)) if id == eid => {
                let (_, record) = rows.pop_front().expect("just seen");
                let (_, e) = entries.pop_front().expect("just seen");
                compared += 1;
                let problem = match record.map(|r| (kind.differences)(&r, &e)) {
                    Ok(Ok(d)) => altered(d),
                    Ok(Err(entry)) => {
                        Some(format!("{entry}: the trail was written outside linesight"))
                    }
                    Err(err) => Some(format!(
                        "the record cannot be read ({err}): it was altered outside linesight"
                    )),
                };
                if let Some(problem) = problem {
                    check.push(mismatch(Some(id), Some(e.seq), problem));
                }
                continue;
            }
            (Some(id), Some(eid)) => id < eid,
            (Some(_), None) => true,
            (None, Some(_)) => false,
        };
        compared += 1;
        if row_first {
            let (id, _) = rows.pop_front().expect("just seen");
            check.push(mismatch(Some(id), None, ADDED.into()));
        } else {
            let (_, e) = entries.pop_front().expect("just seen");
            check.push(mismatch(
                entry_id,
                Some(e.seq),
                format!(
                    "recorded by audit entry {} but not among the records: it was removed outside linesight",
                    e.seq
                ),
            ));
        }
    }
}

/// Every kind of record against the entries that created and changed it (inspections,
/// signatures, attachments, tasks, NCRs and their transitions, lots, accounts, bearer tokens,
/// model activations): a record changed, added or removed outside linesight shows here
/// (records are not chained).
pub(super) async fn check_all_records(
    tx: &mut Transaction<'static, Any>,
    page_size: i64,
) -> Result<audit::RecordCheck, StoreError> {
    let mut check = audit::RecordCheck::default();
    let inspections = RecordKind {
        entity: "inspection",
        rows: "SELECT id, at_ms, part_id, lot, line, recipe, camera, model_name, model_sha256, threshold, score, verdict, \
               regions_json, image_ref, overlay_ref, timings_json, source, defect_class FROM inspections \
               WHERE id > $1 ORDER BY id LIMIT $2"
            .into(),
        action: "inspection.create",
        decode: |row| {
            let at: i64 = row.try_get("at_ms").map_err(db("decode an inspection"))?;
            Ok((at, inspections::inspection_row(row)?))
        },
        created: |e| e.entity_id.parse().ok(),
        differences: |(at, record), e| audit::inspection_differences(record, *at, e),
    };
    check.inspections = check_records(tx, page_size, &inspections, &mut check).await?;
    // With the user name of the account the signature's signer_id names: the hash of a
    // signature can be made again by anyone, the account it belongs to decides who may use it.
    let columns: Vec<String> = ncrs::SIG_COLUMNS
        .split(", ")
        .map(|c| format!("s.{c}"))
        .collect();
    let signatures = RecordKind {
        entity: "signature",
        rows: format!(
            "SELECT {}, u.username AS signer_account FROM signatures s \
             LEFT JOIN users u ON u.id = s.signer_id WHERE s.id > $1 ORDER BY s.id LIMIT $2",
            columns.join(", ")
        ),
        action: "signature.create",
        decode: |row| {
            let account: Option<String> = row
                .try_get("signer_account")
                .map_err(db("decode a signature"))?;
            Ok((ncrs::signature_row(row)?, account))
        },
        created: audit::signature_id_of,
        differences: |(sig, account), e| audit::signature_differences(sig, account.as_deref(), e),
    };
    check.signatures = check_records(tx, page_size, &signatures, &mut check).await?;
    let attachments = RecordKind {
        entity: "attachment",
        rows: "SELECT id, ncr_id, name, media_type, size, sha256, added_by, added_at_ms \
               FROM ncr_attachments WHERE id > $1 ORDER BY id LIMIT $2"
            .into(),
        action: "ncr.attach",
        decode: |row| {
            (|| {
                Ok::<_, sqlx::Error>(Attachment {
                    id: row.try_get("id")?,
                    ncr_id: row.try_get("ncr_id")?,
                    name: row.try_get("name")?,
                    media_type: row.try_get("media_type")?,
                    size: row.try_get("size")?,
                    sha256: row.try_get("sha256")?,
                    added_by: row.try_get("added_by")?,
                    added_at_ms: row.try_get("added_at_ms")?,
                })
            })()
            .map_err(db("decode an attachment"))
        },
        created: |e| {
            let rest = e.new_value.as_deref()?.strip_prefix("attachment ")?;
            rest.split_once(':')?.0.parse().ok()
        },
        differences: |a, e| Ok(attachment_differences(a, e)),
    };
    check.attachments = check_records(tx, page_size, &attachments, &mut check).await?;
    let tasks = RecordKind {
        entity: "task",
        rows: TASK_ROWS.into(),
        action: "task.open",
        decode: task_row,
        created: |e| e.entity_id.parse().ok(),
        differences: |t, e| Ok(task_opening_differences(t, e)),
    };
    check.tasks = check_records(tx, page_size, &tasks, &mut check).await?;
    let ncrs = RecordKind {
        entity: "ncr",
        rows: NCR_ROWS.into(),
        action: "ncr.create",
        decode: ncr_row,
        created: |e| e.entity_id.parse().ok(),
        differences: |n, e| Ok(ncr_creation_differences(n, e)),
    };
    check.ncrs = check_records(tx, page_size, &ncrs, &mut check).await?;
    check_task_states(tx, page_size, &mut check).await?;
    check_ncr_states(tx, page_size, &mut check).await?;
    check.lots = check_lots(tx, page_size, &mut check).await?;
    check.users = access::check_users(tx, page_size, &mut check).await?;
    check.sessions = access::check_sessions(tx, page_size, &mut check).await?;
    check.tokens = access::check_tokens(tx, page_size, &mut check).await?;
    check.model_activations = access::check_model_activations(tx, page_size, &mut check).await?;
    Ok(check)
}

/// An NCR attachment's row, as the records check reads it.
struct Attachment {
    id: i64,
    ncr_id: i64,
    name: String,
    media_type: String,
    size: i64,
    sha256: String,
    added_by: String,
    added_at_ms: i64,
}

fn attachment_differences(a: &Attachment, e: &AuditEntry) -> Vec<String> {
    let mut out = Vec::new();
    let text = super::api::attachment_text(a.id, &a.name, &a.media_type, a.size, &a.sha256);
    differ(&mut out, "", &Some(text), &e.new_value);
    differ(&mut out, "NCR ", &a.ncr_id.to_string(), &e.entity_id);
    differ(&mut out, "added by ", &a.added_by, &e.actor);
    differ_time(&mut out, a.added_at_ms, e.at_ms);
    out
}

/// Notes `what` when the record's value and the trail's differ.
fn differ<T: PartialEq + Shown + ?Sized>(out: &mut Vec<String>, what: &str, record: &T, trail: &T) {
    if record != trail {
        out.push(format!(
            "{what}{} in the record, {} in the trail",
            record.shown(),
            trail.shown()
        ));
    }
}

/// A value as a mismatch names it: quoted, or `nothing`.
trait Shown {
    fn shown(&self) -> String;
}

impl Shown for str {
    fn shown(&self) -> String {
        format!("{self:?}")
    }
}

impl Shown for String {
    fn shown(&self) -> String {
        self.as_str().shown()
    }
}

impl<T: Shown + ?Sized> Shown for &T {
    fn shown(&self) -> String {
        (**self).shown()
    }
}

impl<T: Shown> Shown for Option<T> {
    fn shown(&self) -> String {
        self.as_ref().map_or("nothing".into(), Shown::shown)
    }
}

fn differ_time(out: &mut Vec<String>, record: i64, trail: i64) {
    if record != trail {
        out.push(format!(
            "time {} in the record, {} in the trail",
            crate::quality::format_ms(record),
            crate::quality::format_ms(trail)
        ));
    }
}

/// The suffix a signed NCR transition's entry adds to the state text.
const SIGNED: &str = "; signed: ";

fn mismatch(entity: &str, id: i64, seq: Option<i64>, problem: String) -> audit::RecordMismatch {
    audit::RecordMismatch {
        entity: entity.into(),
        id: Some(id),
        name: None,
        seq,
        problem,
    }
}

fn altered(differences: Vec<String>) -> Option<String> {
    (!differences.is_empty()).then(|| {
        format!(
            "{}: the record was altered outside linesight",
            differences.join("; ")
        )
    })
}

/// The entries about the records `ids` of `entity`, oldest first, by record (through the
/// `audit_log_entity` index).
async fn entries_of(
    tx: &mut Transaction<'static, Any>,
    entity: &str,
    ids: &[i64],
) -> Result<HashMap<i64, Vec<AuditEntry>>, StoreError> {
    let mut by_id: HashMap<i64, Vec<AuditEntry>> = HashMap::new();
    if ids.is_empty() {
        return Ok(by_id);
    }
    let marks: Vec<String> = (0..ids.len()).map(|i| format!("${}", i + 2)).collect();
    let sql = format!(
        "SELECT seq, at_ms, actor, action, entity, entity_id, old_value, new_value, reason, prev_hash, hash \
         FROM audit_log WHERE entity = $1 AND entity_id IN ({}) AND seq > 0 ORDER BY seq",
        marks.join(", ")
    );
    let mut query = sqlx::query(&sql).bind(entity);
    for id in ids {
        query = query.bind(id.to_string());
    }
    for row in query
        .fetch_all(&mut **tx)
        .await
        .map_err(db("read the audit trail"))?
    {
        let e = audit_row(&row)?;
        if let Ok(id) = e.entity_id.parse() {
            by_id.entry(id).or_default().push(e);
        }
    }
    Ok(by_id)
}

/// A page of a table's rows (ids above `after`, by id), their ids, and the entries about them.
struct Page {
    rows: Vec<AnyRow>,
    ids: Vec<i64>,
    entries: HashMap<i64, Vec<AuditEntry>>,
    /// Fewer rows than asked for: nothing comes after.
    last: bool,
}

/// The page of `rows` (a query of ids above `$1`, at most `$2`, by id) after `after`, with the
/// entries of `entity` about them.
async fn page_with_entries(
    tx: &mut Transaction<'static, Any>,
    rows: &str,
    entity: &str,
    after: i64,
    page_size: i64,
) -> Result<Page, StoreError> {
    let rows = sqlx::query(rows)
        .bind(after)
        .bind(page_size)
        .fetch_all(&mut **tx)
        .await
        .map_err(db("read the records"))?;
    let ids = rows
        .iter()
        .map(|row| {
            row.try_get::<i64, _>("id")
                .map_err(db("read a record's id"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let entries = entries_of(tx, entity, &ids).await?;
    Ok(Page {
        last: (rows.len() as i64) < page_size,
        rows,
        ids,
        entries,
    })
}

/// Tasks with their inspection's part and lot and the account that decided them, from an id
/// above `$1`, at most `$2`.
const TASK_ROWS: &str = "SELECT t.id, t.inspection_id, t.part_id, t.lot, t.opening_reason, t.state, t.claimed_by, \
     t.decided_by, t.decision_reason, t.version, t.created_at_ms, u.username AS decided_account, \
     i.part_id AS inspection_part, i.lot AS inspection_lot FROM tasks t \
     LEFT JOIN users u ON u.id = t.decided_by LEFT JOIN inspections i ON i.id = t.inspection_id \
     WHERE t.id > $1 ORDER BY t.id LIMIT $2";

/// A task's row with what the check needs beside it.
struct TaskRow {
    task: inspections::Task,
    created_at_ms: i64,
    /// The user name of the account `decided_by` names.
    decided_account: Option<String>,
    /// Its inspection's part and lot, when that inspection is there.
    inspection: Option<(String, String)>,
}

fn task_row(row: &AnyRow) -> Result<TaskRow, StoreError> {
    let d = || db("decode a task");
    let part: Option<String> = row.try_get("inspection_part").map_err(d())?;
    let lot: Option<String> = row.try_get("inspection_lot").map_err(d())?;
    Ok(TaskRow {
        task: inspections::task_row(row)?,
        created_at_ms: row.try_get("created_at_ms").map_err(d())?,
        decided_account: row.try_get("decided_account").map_err(d())?,
        inspection: part.zip(lot),
    })
}

/// How a task differs from the `task.open` entry that opened it, and from its inspection.
fn task_opening_differences(r: &TaskRow, opened: &AuditEntry) -> Vec<String> {
    use crate::quality::task;
    let t = &r.task;
    let mut out = Vec::new();
    differ(
        &mut out,
        "",
        &Some(task::opening_text(t.inspection_id, &t.part_id)),
        &opened.new_value,
    );
    differ(
        &mut out,
        "opening reason ",
        &Some(t.opening_reason.clone()),
        &opened.reason,
    );
    differ_time(&mut out, r.created_at_ms, opened.at_ms);
    match &r.inspection {
        None => out.push(format!(
            "its inspection {} is not among the records",
            t.inspection_id
        )),
        Some((part, lot)) => {
            if (part, lot) != (&t.part_id, &t.lot) {
                out.push(format!(
                    "part {:?}, lot {:?} in the record, part {part:?}, lot {lot:?} in its inspection {}",
                    t.part_id, t.lot, t.inspection_id
                ));
            }
        }
    }
    out
}

/// How a task's state differs from what the entries that changed it say (`changes`: its
/// entries after the opening, oldest first).
fn task_state_differences(r: &TaskRow, changes: &[&AuditEntry]) -> Vec<String> {
    use crate::quality::task;
    let t = &r.task;
    let mut out = Vec::new();
    let latest = changes.last();
    let trail_state = match latest {
        Some(l) => l.new_value.clone(),
        None => Some(task::state_text(task::TaskState::Pending, None)),
    };
    differ(
        &mut out,
        "",
        &Some(task::state_text(t.state, t.claimed_by)),
        &trail_state,
    );
    differ(
        &mut out,
        "decision reason ",
        &t.decision_reason,
        &latest.and_then(|l| l.reason.clone()),
    );
    // The inspector who decided it is the one whose entry confirmed or overrode it.
    let decider = latest
        .filter(|l| {
            matches!(
                l.action.as_str(),
                "task.confirm_defect" | "task.override_good"
            )
        })
        .map(|l| l.actor.clone());
    let decided = t.decided_by.map(|id| {
        r.decided_account
            .clone()
            .unwrap_or_else(|| format!("account {id}, which does not exist"))
    });
    differ(&mut out, "decided by ", &decided, &decider);
    if t.version != changes.len() as i64 {
        out.push(format!(
            "changed {} times by its version, {} times in the trail",
            t.version,
            changes.len()
        ));
    }
    out
}

/// Each task's state against the entries that changed it, a page of tasks at a time.
async fn check_task_states(
    tx: &mut Transaction<'static, Any>,
    page_size: i64,
    check: &mut audit::RecordCheck,
) -> Result<(), StoreError> {
    let mut after = i64::MIN;
    loop {
        let page = page_with_entries(tx, TASK_ROWS, "task", after, page_size).await?;
        for (row, &id) in page.rows.iter().zip(&page.ids) {
            after = id;
            let Some(entries) = page.entries.get(&id) else {
                // No entry at all: reported by the walk of the openings.
                continue;
            };
            let changes: Vec<&AuditEntry> =
                entries.iter().filter(|e| e.action != "task.open").collect();
            let problem = match task_row(row) {
                Ok(r) => altered(task_state_differences(&r, &changes)),
                // Reported by the walk of the openings.
                Err(_) => None,
            };
            if let Some(problem) = problem {
                let seq = entries.last().map(|e| e.seq);
                check.push(mismatch("task", id, seq, problem));
            }
        }
        if page.last {
            return Ok(());
        }
    }
}

/// NCRs, their columns as stored, from an id above `$1`, at most `$2`.
const NCR_ROWS: &str = "SELECT id, lot, line, title, description, source, state, disposition, version, created_by, \
     created_at_ms, updated_at_ms FROM ncrs WHERE id > $1 ORDER BY id LIMIT $2";

/// An NCR's row, its columns as stored.
struct NcrRow {
    lot: String,
    line: String,
    title: String,
    description: String,
    source: String,
    state: String,
    disposition: Option<String>,
    version: i64,
    created_by: String,
    created_at_ms: i64,
    updated_at_ms: i64,
}

fn ncr_row(row: &AnyRow) -> Result<NcrRow, StoreError> {
    (|| {
        Ok::<_, sqlx::Error>(NcrRow {
            lot: row.try_get("lot")?,
            line: row.try_get("line")?,
            title: row.try_get("title")?,
            description: row.try_get("description")?,
            source: row.try_get("source")?,
            state: row.try_get("state")?,
            disposition: row.try_get("disposition")?,
            version: row.try_get("version")?,
            created_by: row.try_get("created_by")?,
            created_at_ms: row.try_get("created_at_ms")?,
            updated_at_ms: row.try_get("updated_at_ms")?,
        })
    })()
    .map_err(db("decode an NCR"))
}

/// How an NCR differs from the `ncr.create` entry that raised it.
fn ncr_creation_differences(n: &NcrRow, created: &AuditEntry) -> Vec<String> {
    let mut out = Vec::new();
    differ(
        &mut out,
        "",
        &Some(crate::quality::ncr::creation_text(
            &n.lot, &n.line, &n.source, &n.title,
        )),
        &created.new_value,
    );
    differ(
        &mut out,
        "description ",
        &Some(n.description.clone()),
        &created.reason,
    );
    differ(&mut out, "raised by ", &n.created_by, &created.actor);
    differ_time(&mut out, n.created_at_ms, created.at_ms);
    out
}

/// A row of `ncr_transitions`, with the user name of the account `actor_id` names.
struct TransitionRow {
    id: i64,
    ncr_id: i64,
    from_state: String,
    to_state: String,
    action: String,
    disposition: Option<String>,
    actor_id: i64,
    actor_account: Option<String>,
    reason: Option<String>,
    signature_id: Option<i64>,
    at_ms: i64,
}

fn transition_row(row: &AnyRow) -> Result<TransitionRow, StoreError> {
    (|| {
        Ok::<_, sqlx::Error>(TransitionRow {
            id: row.try_get("id")?,
            ncr_id: row.try_get("ncr_id")?,
            from_state: row.try_get("from_state")?,
            to_state: row.try_get("to_state")?,
            action: row.try_get("action")?,
            disposition: row.try_get("disposition")?,
            actor_id: row.try_get("actor_id")?,
            actor_account: row.try_get("actor_account")?,
            reason: row.try_get("reason")?,
            signature_id: row.try_get("signature_id")?,
            at_ms: row.try_get("at_ms")?,
        })
    })()
    .map_err(db("decode an NCR transition"))
}

/// The state text of a transition's entry, without the signature's manifestation.
fn unsigned(text: Option<&str>) -> Option<String> {
    text.map(|t| {
        t.split_once(SIGNED)
            .map_or(t, |(state, _)| state)
            .to_owned()
    })
}

/// The signature's manifestation a transition's entry names, if it was signed.
fn manifestation(text: Option<&str>) -> Option<&str> {
    text?.split_once(SIGNED).map(|(_, m)| m)
}

/// The signatures a page's transitions name, by id, and the ids of those that cannot be read.
struct Signatures<'a> {
    readable: &'a HashMap<i64, crate::quality::Signature>,
    unreadable: &'a HashSet<i64>,
}

/// How an NCR's state and its transition rows differ from what the entries that changed it
/// say (`entries`: all of the NCR's entries, oldest first). `signatures`: the signatures its
/// transitions name, by id.
fn ncr_state_differences(
    id: i64,
    n: &NcrRow,
    transitions: &[TransitionRow],
    entries: &[AuditEntry],
    signatures: &Signatures<'_>,
) -> Vec<String> {
    use crate::quality::ncr;
    let mut out = Vec::new();
    let created_at = entries
        .iter()
        .find(|e| e.action == "ncr.create")
        .map(|e| e.at_ms);
    // Transitions and attachments move its version on; signatures change nothing in it.
    let changes: Vec<&AuditEntry> = entries
        .iter()
        .filter(|e| !matches!(e.action.as_str(), "ncr.create" | "signature.create"))
        .collect();
    let moves: Vec<&AuditEntry> = changes
        .iter()
        .copied()
        .filter(|e| e.action != "ncr.attach")
        .collect();
    let trail_state = match moves.last() {
        Some(t) => unsigned(t.new_value.as_deref()),
        None => Some(ncr::state_text("open", None)),
    };
    differ(
        &mut out,
        "",
        &Some(ncr::state_text(&n.state, n.disposition.as_deref())),
        &trail_state,
    );
    if n.version != changes.len() as i64 {
        out.push(format!(
            "changed {} times by its version, {} times in the trail (transitions and attachments)",
            n.version,
            changes.len()
        ));
    }
    if let Some(at) = changes.last().map(|e| e.at_ms).or(created_at)
        && at != n.updated_at_ms
    {
        out.push(format!(
            "last changed {} in the record, {} in the trail",
            crate::quality::format_ms(n.updated_at_ms),
            crate::quality::format_ms(at)
        ));
    }
    for (i, seen) in moves.iter().enumerate() {
        let Some(t) = transitions.get(i) else {
            out.push(format!(
                "audit entry {} ({}) has no transition in the record",
                seen.seq, seen.action
            ));
            continue;
        };
        let mut d = Vec::new();
        differ(
            &mut d,
            "action ",
            &format!("ncr.{}", t.action),
            &seen.action,
        );
        differ(
            &mut d,
            "",
            &Some(ncr::state_text(&t.to_state, t.disposition.as_deref())),
            &unsigned(seen.new_value.as_deref()),
        );
        let from = format!("state={}; ", t.from_state);
        if !seen
            .old_value
            .as_deref()
            .is_some_and(|o| o.starts_with(&from))
        {
            d.push(format!(
                "from {:?} in the record, {} in the trail",
                t.from_state,
                seen.old_value.shown()
            ));
        }
        differ(&mut d, "reason ", &t.reason, &seen.reason);
        let actor = t
            .actor_account
            .clone()
            .unwrap_or_else(|| format!("account {}, which does not exist", t.actor_id));
        differ(&mut d, "by ", &actor, &seen.actor);
        differ_time(&mut d, t.at_ms, seen.at_ms);
        // The signature it names is the one its entry names, and it signs this NCR.
        let signed_in_trail = manifestation(seen.new_value.as_deref());
        match (t.signature_id, signed_in_trail) {
            (None, None) => {}
            (Some(sid), trail) => match signatures.readable.get(&sid) {
                None if signatures.unreadable.contains(&sid) => d.push(format!(
                    "signed with signature {sid} in the record, which cannot be read (see the signatures)"
                )),
                None => d.push(format!(
                    "signed with signature {sid} in the record, which does not exist"
                )),
                Some(sig) => {
                    let record = sig.manifestation();
                    differ(&mut d, "signed: ", &Some(record.as_str()), &trail);
                    if (sig.record_type.as_str(), sig.record_id.as_str())
                        != ("ncr", id.to_string().as_str())
                    {
                        d.push(format!(
                            "signature {sid} signs {} {}, not this NCR",
                            sig.record_type, sig.record_id
                        ));
                    }
                }
            },
            (None, Some(m)) => d.push(format!("unsigned in the record, signed in the trail: {m}")),
        }
        if !d.is_empty() {
            out.push(format!(
                "transition {} (entry {}): {}",
                t.id,
                seen.seq,
                d.join(", ")
            ));
        }
    }
    for t in transitions.iter().skip(moves.len()) {
        out.push(format!(
            "transition {} ({} to {}) has no audit entry",
            t.id, t.from_state, t.to_state
        ));
    }
    out
}

/// Each NCR's state and transitions against the entries that changed it, a page of NCRs at a
/// time.
async fn check_ncr_states(
    tx: &mut Transaction<'static, Any>,
    page_size: i64,
    check: &mut audit::RecordCheck,
) -> Result<(), StoreError> {
    let mut after = i64::MIN;
    loop {
        let page = page_with_entries(tx, NCR_ROWS, "ncr", after, page_size).await?;
        let (last_page, ids) = (page.last, &page.ids);
        // The transitions of this page's NCRs, and on the last page any beyond them.
        let upto = match ids.last() {
            Some(&last) if !last_page => last,
            _ => i64::MAX,
        };
        let mut transitions: HashMap<i64, Vec<TransitionRow>> = HashMap::new();
        let mut orphans = Vec::new();
        for row in sqlx::query(
            "SELECT tr.id, tr.ncr_id, tr.from_state, tr.to_state, tr.action, tr.disposition, tr.actor_id, \
             u.username AS actor_account, tr.reason, tr.signature_id, tr.at_ms FROM ncr_transitions tr \
             LEFT JOIN users u ON u.id = tr.actor_id WHERE tr.ncr_id > $1 AND tr.ncr_id <= $2 \
             ORDER BY tr.ncr_id, tr.id",
        )
        .bind(after)
        .bind(upto)
        .fetch_all(&mut **tx)
        .await
        .map_err(db("read the NCR transitions"))?
        .iter()
        {
            let t = match transition_row(row) {
                Ok(t) => t,
                Err(e) => {
                    let ncr: Option<i64> = row.try_get("ncr_id").ok();
                    let tid: Option<i64> = row.try_get("id").ok();
                    check.push(audit::RecordMismatch {
                        entity: "ncr".into(),
                        id: ncr,
                        name: None,
                        seq: None,
                        problem: format!(
                            "its transition {} cannot be read ({e}): it was altered outside linesight",
                            tid.map_or("?".into(), |t| t.to_string())
                        ),
                    });
                    continue;
                }
            };
            if ids.binary_search(&t.ncr_id).is_ok() {
                transitions.entry(t.ncr_id).or_default().push(t);
            } else {
                orphans.push(t);
            }
        }
        let columns: Vec<String> = ncrs::SIG_COLUMNS
            .split(", ")
            .map(|c| format!("s.{c}"))
            .collect();
        let mut signatures = HashMap::new();
        let mut unreadable = HashSet::new();
        for row in sqlx::query(&format!(
            "SELECT {} FROM signatures s WHERE s.id IN (SELECT signature_id FROM ncr_transitions \
             WHERE ncr_id > $1 AND ncr_id <= $2)",
            columns.join(", ")
        ))
        .bind(after)
        .bind(upto)
        .fetch_all(&mut **tx)
        .await
        .map_err(db("read the signatures of NCR transitions"))?
        .iter()
        {
            // One that cannot be read is reported by the walk of the signatures.
            match ncrs::signature_row(row) {
                Ok(sig) => {
                    signatures.insert(sig.id, sig);
                }
                Err(_) => {
                    if let Ok(id) = row.try_get::<i64, _>("id") {
                        unreadable.insert(id);
                    }
                }
            }
        }
        for (row, &id) in page.rows.iter().zip(ids) {
            after = id;
            let Some(entries) = page.entries.get(&id) else {
                // No entry at all: reported by the walk of the creations.
                continue;
            };
            let problem = match ncr_row(row) {
                Ok(n) => altered(ncr_state_differences(
                    id,
                    &n,
                    transitions.get(&id).map_or(&[][..], Vec::as_slice),
                    entries,
                    &Signatures {
                        readable: &signatures,
                        unreadable: &unreadable,
                    },
                )),
                // Reported by the walk of the creations.
                Err(_) => None,
            };
            if let Some(problem) = problem {
                let seq = entries.last().map(|e| e.seq);
                check.push(mismatch("ncr", id, seq, problem));
            }
        }
        for t in orphans {
            check.push(mismatch(
                "ncr",
                t.ncr_id,
                None,
                format!(
                    "transition {} ({} to {}) names NCR {}, which is not among the records: \
                     the transition was added, or its NCR removed, outside linesight",
                    t.id, t.from_state, t.to_state, t.ncr_id
                ),
            ));
        }
        if last_page {
            return Ok(());
        }
    }
}

/// A lot's row with the user names of the accounts that held or released it.
struct LotRow {
    held_at_ms: Option<i64>,
    held_by: Option<i64>,
    held_account: Option<String>,
    hold_reason: Option<String>,
    released_at_ms: Option<i64>,
    released_by: Option<i64>,
    released_account: Option<String>,
}

fn lot_row(row: &AnyRow) -> Result<LotRow, StoreError> {
    (|| {
        Ok::<_, sqlx::Error>(LotRow {
            held_at_ms: row.try_get("held_at_ms")?,
            held_by: row.try_get("held_by")?,
            held_account: row.try_get("held_account")?,
            hold_reason: row.try_get("hold_reason")?,
            released_at_ms: row.try_get("released_at_ms")?,
            released_by: row.try_get("released_by")?,
            released_account: row.try_get("released_account")?,
        })
    })()
    .map_err(db("decode a lot"))
}

/// How a lot differs from its newest `lot.hold` or `lot.release` entry. A hold clears the
/// release and a release the hold: the other side is empty.
fn lot_differences(l: &LotRow, latest: &AuditEntry) -> Vec<String> {
    let account = |id: Option<i64>, name: &Option<String>| match (id, name) {
        (Some(_), Some(name)) => name.clone(),
        (Some(id), None) => format!("account {id}, which does not exist"),
        // A hold the system made (a reject-rate or re-test NCR) names no account.
        (None, _) => super::SYSTEM_ACTOR.into(),
    };
    let mut out = Vec::new();
    let held = l.held_at_ms.is_some() || l.held_by.is_some() || l.hold_reason.is_some();
    let released = l.released_at_ms.is_some() || l.released_by.is_some();
    let (state, at, by) = match (held, released, l.held_at_ms, l.released_at_ms) {
        (true, false, Some(at), _) => ("held", at, account(l.held_by, &l.held_account)),
        (false, true, _, Some(at)) => ("released", at, account(l.released_by, &l.released_account)),
        (true, true, ..) => {
            out.push("both held and released in the record".into());
            return out;
        }
        (true, false, None, _) => {
            out.push("held in the record without the time of the hold".into());
            return out;
        }
        (false, true, _, None) => {
            out.push("released in the record without the time of the release".into());
            return out;
        }
        (false, false, ..) => {
            out.push("neither held nor released in the record".into());
            return out;
        }
    };
    let trail_state = match latest.action.as_str() {
        "lot.hold" => "held",
        "lot.release" => "released",
        other => other,
    };
    differ(&mut out, "", &state, &trail_state);
    if state == trail_state {
        differ(&mut out, "by ", &by, &latest.actor);
        differ_time(&mut out, at, latest.at_ms);
        if state == "held" {
            differ(&mut out, "reason ", &l.hold_reason, &latest.reason);
        }
    }
    out
}

/// Lots against their newest `lot.hold` or `lot.release` entry: the entries about lots are
/// folded first (one kept per lot), then the lots are read page by page. Returns how many
/// were compared.
async fn check_lots(
    tx: &mut Transaction<'static, Any>,
    page_size: i64,
    check: &mut audit::RecordCheck,
) -> Result<u64, StoreError> {
    let lot_mismatch = |lot: &str, seq: Option<i64>, problem: String| audit::RecordMismatch {
        entity: "lot".into(),
        id: None,
        name: Some(lot.into()),
        seq,
        problem,
    };
    // In the order of the `audit_log_entity` index: the last entry seen of a lot is its
    // newest. Entries numbered below 1 are not the trail's (the chain check names them).
    let mut newest: HashMap<String, AuditEntry> = HashMap::new();
    let mut after: Option<(String, i64)> = None;
    loop {
        let (first, next) = (
            "SELECT seq, at_ms, actor, action, entity, entity_id, old_value, new_value, reason, prev_hash, hash \
             FROM audit_log WHERE entity = 'lot' AND seq > 0 ORDER BY entity_id, seq LIMIT $1",
            "SELECT seq, at_ms, actor, action, entity, entity_id, old_value, new_value, reason, prev_hash, hash \
             FROM audit_log WHERE entity = 'lot' AND seq > 0 \
             AND (entity_id > $1 OR (entity_id = $1 AND seq > $2)) ORDER BY entity_id, seq LIMIT $3",
        );
        let query = match &after {
            None => sqlx::query(first).bind(page_size),
            Some((lot, seq)) => sqlx::query(next)
                .bind(lot.clone())
                .bind(*seq)
                .bind(page_size),
        };
        let rows = query
            .fetch_all(&mut **tx)
            .await
            .map_err(db("read the audit trail"))?;
        for row in &rows {
            let e = audit_row(row)?;
            after = Some((e.entity_id.clone(), e.seq));
            newest.insert(e.entity_id.clone(), e);
        }
        if (rows.len() as i64) < page_size {
            break;
        }
    }
    let mut compared = 0u64;
    // SQLite lets a key of text be NULL; linesight never writes one.
    let nameless: i64 = sqlx::query("SELECT COUNT(*) FROM lots WHERE lot IS NULL")
        .fetch_one(&mut **tx)
        .await
        .and_then(|row| row.try_get(0))
        .map_err(db("read the lots"))?;
    for _ in 0..nameless {
        compared += 1;
        check.push(audit::RecordMismatch {
            entity: "lot".into(),
            id: None,
            name: None,
            seq: None,
            problem: "a lot without a name: it was added outside linesight".into(),
        });
    }
    let mut after: Option<String> = None;
    loop {
        // Every name, the empty one included (NULL ones are counted above).
        let (first, next) = (
            format!("{LOT_ROWS} WHERE l.lot IS NOT NULL ORDER BY l.lot LIMIT $1"),
            format!("{LOT_ROWS} WHERE l.lot > $1 ORDER BY l.lot LIMIT $2"),
        );
        let query = match &after {
            None => sqlx::query(&first).bind(page_size),
            Some(lot) => sqlx::query(&next).bind(lot.clone()).bind(page_size),
        };
        let rows = query
            .fetch_all(&mut **tx)
            .await
            .map_err(db("read the lots"))?;
        let before = after.clone();
        for row in &rows {
            let lot: String = match row.try_get("lot") {
                Ok(lot) => lot,
                // Not text (SQLite keeps what it is given): named as it reads, and the walk
                // goes on from the last name read.
                Err(e) => {
                    compared += 1;
                    check.push(lot_mismatch(
                        "?",
                        None,
                        format!(
                            "a lot whose name cannot be read ({e}): it was added outside linesight"
                        ),
                    ));
                    continue;
                }
            };
            compared += 1;
            match newest.remove(&lot) {
                None => check.push(lot_mismatch(&lot, None, ADDED.into())),
                Some(latest) => {
                    let problem = match lot_row(row) {
                        Ok(l) => altered(lot_differences(&l, &latest)),
                        Err(e) => Some(format!(
                            "the record cannot be read ({e}): it was altered outside linesight"
                        )),
                    };
                    if let Some(problem) = problem {
                        check.push(lot_mismatch(&lot, Some(latest.seq), problem));
                    }
                }
            }
            after = Some(lot);
        }
        // A full page of names that cannot be read would be read again: stop there.
        if (rows.len() as i64) < page_size || after == before {
            break;
        }
    }
    let mut gone: Vec<_> = newest.into_iter().collect();
    gone.sort_by(|a, b| a.0.cmp(&b.0));
    for (lot, latest) in gone {
        compared += 1;
        check.push(lot_mismatch(
            &lot,
            Some(latest.seq),
            format!(
                "audit entries up to entry {} record it, but it is not among the records: it was removed outside linesight",
                latest.seq
            ),
        ));
    }
    Ok(compared)
}

/// The lots with the user names of the accounts that held or released them.
const LOT_ROWS: &str = "SELECT l.lot, l.held_at_ms, l.held_by, h.username AS held_account, l.hold_reason, \
     l.released_at_ms, l.released_by, r.username AS released_account FROM lots l \
     LEFT JOIN users h ON h.id = l.held_by LEFT JOIN users r ON r.id = l.released_by";

/// What a record with no entry at all is told.
const ADDED: &str = "no audit entry records it: it was added outside linesight, or its audit \
                     entries were removed (entries removed from the end of the trail show \
                     against an anchor, `audit verify --expect`)";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quality::{NcrAction, QualityConfig, Role, TaskAction, Verdict};
    use crate::store::{NewNcr, NewUser, Store, sqlite_in};

    /// Seven tasks (one confirmed, one escalated), five NCRs (each holding its own lot, one
    /// with transitions).
    async fn some_states(store: &Store) {
        let cfg = QualityConfig {
            accept_sampling: false,
            ..QualityConfig::default()
        };
        let ina = store
            .add_user(
                NewUser {
                    username: "ina".into(),
                    full_name: "Ina Inspector".into(),
                    role: Role::Inspector,
                    password: "s3cret-pass".into(),
                },
                "test",
            )
            .await
            .unwrap();
        for i in 0..7 {
            let mut new = crate::quality::rules::tests::inspection(0.9, Verdict::Defect);
            new.part_id = format!("P-{i}");
            store.record_inspection(&new, &cfg, "system").await.unwrap();
        }
        for action in [TaskAction::ConfirmDefect, TaskAction::Escalate] {
            let t = store.claim_next_task(&ina).await.unwrap().unwrap();
            store
                .act_on_task(t.id, &ina, action, Some("seen on the part"), &cfg)
                .await
                .unwrap();
        }
        for i in 0..5 {
            let ncr = store
                .create_ncr(
                    &NewNcr {
                        lot: format!("LOT-{i}"),
                        line: "line-1".into(),
                        title: "Burrs".into(),
                        description: "Found at final inspection".into(),
                    },
                    &ina,
                )
                .await
                .unwrap();
            if i == 2 {
                for action in [NcrAction::Contain, NcrAction::Investigate] {
                    store
                        .transition_ncr(ncr.id, &ina, action, None, None)
                        .await
                        .unwrap();
                }
            }
        }
    }

    #[tokio::test]
    async fn tasks_ncrs_and_lots_are_checked_page_by_page() {
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite_in(dir.path()).await;
        some_states(&store).await;
        for page in [1, 2, 3, 7, 100] {
            let r = store
                .verify_with_pages(&[], page, page)
                .await
                .unwrap()
                .records;
            assert_eq!(
                (r.tasks, r.ncrs, r.lots, r.mismatches_total),
                (7, 5, 5, 0),
                "page {page}: {r:?}"
            );
        }
        // A task at a page's end changed, a transition gone, a hold's reason changed and a
        // transition of no NCR: each found, whatever the pages.
        for sql in [
            "UPDATE tasks SET state = 'pending', claimed_by = NULL WHERE id = 2",
            "DELETE FROM ncr_transitions WHERE ncr_id = 3 AND action = 'investigate'",
            "UPDATE lots SET hold_reason = 'none' WHERE lot = 'LOT-4'",
            "UPDATE ncrs SET version = 9 WHERE id = 5",
            // The writer is one connection: its foreign keys off, as someone editing the file
            // could have them.
            "PRAGMA foreign_keys = OFF",
            "INSERT INTO ncr_transitions (ncr_id, from_state, to_state, action, actor_id, at_ms) \
             VALUES (99, 'open', 'closed', 'close', 1, 0)",
            "PRAGMA foreign_keys = ON",
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
                    ("task", Some(2), None),
                    ("ncr", Some(3), None),
                    ("ncr", Some(5), None),
                    ("ncr", Some(99), None),
                    ("lot", None, Some("LOT-4")),
                ],
                "page {page}: {r:?}"
            );
            let text = |i: usize| r.mismatches[i].problem.as_str();
            assert!(
                text(0).starts_with(
                    "\"state=pending; claimed_by=-\" in the record, \"state=escalated; claimed_by=1\" in the trail"
                ),
                "{}",
                text(0)
            );
            assert!(
                text(1).contains("(ncr.investigate) has no transition in the record"),
                "{}",
                text(1)
            );
            assert!(
                text(2).starts_with("changed 9 times by its version, 0 times in the trail"),
                "{}",
                text(2)
            );
            assert!(
                text(3).contains("names NCR 99, which is not among the records"),
                "{}",
                text(3)
            );
            assert!(
                text(4).contains("reason \"none\" in the record"),
                "{}",
                text(4)
            );
        }

        // An entry numbered below the trail's first, inserted to give task 3 a history that
        // matches a changed row: the chain names it, and the records check does not take it
        // as the task's.
        sqlx::query(
            "INSERT INTO audit_log (seq, at_ms, actor, action, entity, entity_id, old_value, new_value, \
             reason, prev_hash, hash) VALUES (0, 0, 'ina', 'task.claim', 'task', '3', 'state=pending', \
             'state=claimed; claimed_by=1', NULL, '', '')",
        )
        .execute(&store.writer)
        .await
        .unwrap();
        sqlx::query("UPDATE tasks SET state = 'claimed', claimed_by = 1, version = 1 WHERE id = 3")
            .execute(&store.writer)
            .await
            .unwrap();
        let check = store.verify_with_pages(&[], 2, 2).await.unwrap();
        let b = check.chain.unwrap_err();
        assert_eq!(b.seq, 0, "{b}");
        assert!(b.problem.contains("inserted outside linesight"), "{b}");
        assert!(
            check
                .records
                .mismatches
                .iter()
                .any(|m| m.id == Some(3) && m.entity == "task"),
            "{:?}",
            check.records
        );
    }

    #[test]
    fn a_lot_is_held_or_released_never_both_and_a_system_hold_names_no_account() {
        let hold = AuditEntry {
            seq: 3,
            at_ms: 30,
            actor: crate::store::SYSTEM_ACTOR.into(),
            action: "lot.hold".into(),
            entity: "lot".into(),
            entity_id: "L1".into(),
            old_value: None,
            new_value: Some("held".into()),
            reason: Some("NCR 1 raised".into()),
            prev_hash: String::new(),
            hash: String::new(),
        };
        let mut lot = LotRow {
            held_at_ms: Some(30),
            held_by: None,
            held_account: None,
            hold_reason: Some("NCR 1 raised".into()),
            released_at_ms: None,
            released_by: None,
            released_account: None,
        };
        assert_eq!(lot_differences(&lot, &hold), Vec::<String>::new());
        lot.held_by = Some(7);
        assert_eq!(
            lot_differences(&lot, &hold),
            ["by \"account 7, which does not exist\" in the record, \"system\" in the trail"]
        );
        lot.released_at_ms = Some(40);
        assert_eq!(
            lot_differences(&lot, &hold),
            ["both held and released in the record"]
        );
        // Released, with a hold's reason left in it.
        lot.held_at_ms = None;
        lot.held_by = None;
        assert_eq!(
            lot_differences(&lot, &hold),
            ["both held and released in the record"]
        );
        lot.hold_reason = None;
        lot.released_at_ms = None;
        assert_eq!(
            lot_differences(&lot, &hold),
            ["neither held nor released in the record"]
        );
    }

    #[test]
    fn a_signed_transition_is_compared_without_its_manifestation() {
        assert_eq!(
            unsigned(Some(
                "state=approved; disposition=scrap; signed: Ana Lopez (approved)"
            )),
            Some("state=approved; disposition=scrap".into())
        );
        assert_eq!(
            unsigned(Some("state=closed; disposition=-")),
            Some("state=closed; disposition=-".into())
        );
        assert_eq!(unsigned(None), None);
        assert_eq!(
            manifestation(Some(
                "state=approved; disposition=scrap; signed: Ana Lopez (ana)"
            )),
            Some("Ana Lopez (ana)")
        );
        assert_eq!(manifestation(Some("state=closed; disposition=-")), None);
    }
}
