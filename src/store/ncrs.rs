//! Non-conformance records, their transitions, electronic signatures and lot release.

use sqlx::any::AnyRow;
use sqlx::{Any, Row as _, Transaction};

use super::users::{Credentials, User};
use super::{Backend, Store, StoreError, db};
use crate::quality::audit::NewAuditEntry;
use crate::quality::ncr::{self, NcrContext};
use crate::quality::{
    Disposition, LockoutPolicy, Meaning, NcrAction, NcrState, Role, Signature, fields_hash, now_ms,
};

/// An NCR to raise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewNcr {
    pub lot: String,
    pub line: String,
    pub title: String,
    pub description: String,
}

/// Why an NCR exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NcrSource {
    Manual,
    ConfirmedDefect,
    RejectRate,
    /// A part found defective passed a re-test after its secondary inspections ran out.
    Retest,
}

impl NcrSource {
    fn as_str(self) -> &'static str {
        match self {
            NcrSource::Manual => "manual",
            NcrSource::ConfirmedDefect => "confirmed_defect",
            NcrSource::RejectRate => "reject_rate",
            NcrSource::Retest => "retest",
        }
    }
}

/// A stored NCR.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct NcrRecord {
    pub id: i64,
    pub lot: String,
    pub line: String,
    pub title: String,
    pub description: String,
    pub source: String,
    pub state: NcrState,
    pub disposition: Option<Disposition>,
    /// Incremented by every change; part of the content hash.
    pub version: i64,
    pub created_by: String,
    pub created_at_ms: i64,
}

impl NcrRecord {
    /// Hash of the content a signature is bound to.
    pub fn content_hash(&self) -> String {
        let id = self.id.to_string();
        let version = self.version.to_string();
        fields_hash(
            "linesight-ncr-v1",
            &[
                Some(&id),
                Some(&self.lot),
                Some(&self.line),
                Some(&self.title),
                Some(&self.description),
                Some(&self.source),
                Some(self.state.as_str()),
                self.disposition.map(Disposition::as_str),
                Some(&version),
            ],
        )
    }
}

/// One row of an NCR's history.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct NcrTransition {
    pub from: NcrState,
    pub to: NcrState,
    pub action: String,
    pub disposition: Option<Disposition>,
    pub actor_id: i64,
    /// User name and printed name of the actor, as people read the history.
    pub actor_username: String,
    pub actor_full_name: String,
    pub reason: Option<String>,
    pub signature_id: Option<i64>,
    pub at_ms: i64,
}

const NCR_COLUMNS: &str = "id, lot, line, title, description, source, state, disposition, version, created_by, created_at_ms";
pub(crate) const SIG_COLUMNS: &str = "id, signer_id, username, full_name, meaning, signed_at_ms, record_type, record_id, record_hash, signature_hash";

fn corrupt(column: &'static str, value: String) -> StoreError {
    StoreError::Corrupt { column, value }
}

fn ncr_row(row: &AnyRow) -> Result<NcrRecord, StoreError> {
    let d = || db("decode an NCR");
    let state: String = row.try_get("state").map_err(d())?;
    let disposition: Option<String> = row.try_get("disposition").map_err(d())?;
    Ok(NcrRecord {
        id: row.try_get("id").map_err(d())?,
        lot: row.try_get("lot").map_err(d())?,
        line: row.try_get("line").map_err(d())?,
        title: row.try_get("title").map_err(d())?,
        description: row.try_get("description").map_err(d())?,
        source: row.try_get("source").map_err(d())?,
        state: NcrState::parse(&state).ok_or_else(|| corrupt("ncrs.state", state))?,
        disposition: match disposition {
            None => None,
            Some(s) => Some(Disposition::parse(&s).ok_or_else(|| corrupt("ncrs.disposition", s))?),
        },
        version: row.try_get("version").map_err(d())?,
        created_by: row.try_get("created_by").map_err(d())?,
        created_at_ms: row.try_get("created_at_ms").map_err(d())?,
    })
}

/// In `tx`: refuses (`OwnProposal`) when `user` proposed NCR `id`'s pending disposition: a
/// disposition is approved by someone other than its proposer.
async fn not_own_proposal(
    tx: &mut Transaction<'static, Any>,
    id: i64,
    user: &User,
) -> Result<(), StoreError> {
    let proposer: Option<i64> = sqlx::query(
        "SELECT actor_id FROM ncr_transitions WHERE ncr_id = $1 AND action = 'propose' \
         ORDER BY id DESC LIMIT 1",
    )
    .bind(id)
    .fetch_optional(&mut **tx)
    .await
    .map_err(db("read an NCR's history"))?
    .map(|r| r.try_get(0))
    .transpose()
    .map_err(db("read an NCR's history"))?;
    if proposer == Some(user.id) {
        return Err(crate::quality::TransitionError::OwnProposal {
            user: user.username.clone(),
        }
        .into());
    }
    Ok(())
}

/// In `tx`: refuses (`ProposerCancels`) when `user` ever proposed a disposition of NCR `id`,
/// withdrawn since or not: cancelling would stand in for the approval they may not give.
async fn not_a_proposer(
    tx: &mut Transaction<'static, Any>,
    id: i64,
    user: &User,
) -> Result<(), StoreError> {
    let proposed = sqlx::query(
        "SELECT id FROM ncr_transitions WHERE ncr_id = $1 AND action = 'propose' AND actor_id = $2 \
         LIMIT 1",
    )
    .bind(id)
    .bind(user.id)
    .fetch_optional(&mut **tx)
    .await
    .map_err(db("read an NCR's history"))?;
    if proposed.is_some() {
        return Err(crate::quality::TransitionError::ProposerCancels {
            user: user.username.clone(),
        }
        .into());
    }
    Ok(())
}

pub(crate) fn signature_row(row: &AnyRow) -> Result<Signature, StoreError> {
    let d = || db("decode a signature");
    let meaning: String = row.try_get("meaning").map_err(d())?;
    Ok(Signature {
        id: row.try_get("id").map_err(d())?,
        signer_id: row.try_get("signer_id").map_err(d())?,
        username: row.try_get("username").map_err(d())?,
        full_name: row.try_get("full_name").map_err(d())?,
        meaning: Meaning::parse(&meaning).ok_or_else(|| corrupt("signatures.meaning", meaning))?,
        signed_at_ms: row.try_get("signed_at_ms").map_err(d())?,
        record_type: row.try_get("record_type").map_err(d())?,
        record_id: row.try_get("record_id").map_err(d())?,
        record_hash: row.try_get("record_hash").map_err(d())?,
        signature_hash: row.try_get("signature_hash").map_err(d())?,
    })
}

impl Store {
    pub(crate) async fn insert_ncr(
        tx: &mut Transaction<'static, Any>,
        new: &NewNcr,
        source: NcrSource,
        actor: &str,
        now: i64,
    ) -> Result<(i64, Vec<NewAuditEntry>), StoreError> {
        for (field, value) in [
            ("lot", &new.lot),
            ("line", &new.line),
            ("title", &new.title),
        ] {
            if value.trim().is_empty() {
                return Err(StoreError::Invalid(format!("ncr: {field} is empty")));
            }
        }
        let id: i64 = sqlx::query(
            "INSERT INTO ncrs (lot, line, title, description, source, state, version, created_by, created_at_ms, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5, 'open', 0, $6, $7, $7) RETURNING id",
        )
        .bind(&new.lot)
        .bind(&new.line)
        .bind(&new.title)
        .bind(&new.description)
        .bind(source.as_str())
        .bind(actor)
        .bind(now)
        .fetch_one(&mut **tx)
        .await
        .map_err(db("raise an NCR"))?
        .try_get(0)
        .map_err(db("raise an NCR"))?;
        let mut audit = vec![NewAuditEntry {
            actor: actor.into(),
            action: "ncr.create".into(),
            entity: "ncr".into(),
            entity_id: id.to_string(),
            old_value: None,
            new_value: Some(crate::quality::ncr::creation_text(
                &new.lot,
                &new.line,
                source.as_str(),
                &new.title,
            )),
            reason: Some(new.description.clone()),
        }];
        let why = format!("NCR {id} raised: {}", new.title);
        audit.extend(Self::hold_lot_for_ncr(tx, &new.lot, actor, &why, now).await?);
        Ok((id, audit))
    }

    /// In `tx`: `lot` held from `now` by `held_by` (none: the system) for `reason`, its release
    /// withdrawn.
    pub(crate) async fn put_lot_on_hold(
        tx: &mut Transaction<'static, Any>,
        lot: &str,
        held_by: Option<i64>,
        reason: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO lots (lot, held_at_ms, held_by, hold_reason) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (lot) DO UPDATE SET held_at_ms = $2, held_by = $3, hold_reason = $4, \
             released_at_ms = NULL, released_by = NULL",
        )
        .bind(lot)
        .bind(now)
        .bind(held_by)
        .bind(reason)
        .execute(&mut **tx)
        .await
        .map_err(db("hold a lot"))?;
        Ok(())
    }

    /// In `tx`: puts `lot` on hold because of an NCR (raised, reopened or contained) and
    /// withdraws its release, unless it is on hold already (the first reason stands). The
    /// audit entry, when the lot changed. A release is refused anyway while an NCR is open;
    /// the hold makes the lot's status say so, including for a lot released before.
    pub(crate) async fn hold_lot_for_ncr(
        tx: &mut Transaction<'static, Any>,
        lot: &str,
        actor: &str,
        why: &str,
        now: i64,
    ) -> Result<Option<NewAuditEntry>, StoreError> {
        let before = sqlx::query("SELECT held_at_ms, released_at_ms FROM lots WHERE lot = $1")
            .bind(lot)
            .fetch_optional(&mut **tx)
            .await
            .map_err(db("read a lot"))?;
        let was_released = match &before {
            Some(row) => {
                let held: Option<i64> = row.try_get(0).map_err(db("read a lot"))?;
                if held.is_some() {
                    return Ok(None);
                }
                row.try_get::<Option<i64>, _>(1)
                    .map_err(db("read a lot"))?
                    .is_some()
            }
            None => false,
        };
        // `held_by` names a user; the system (a reject-rate NCR) is none.
        let actor_id: Option<i64> = sqlx::query("SELECT id FROM users WHERE username = $1")
            .bind(actor)
            .fetch_optional(&mut **tx)
            .await
            .map_err(db("look up a user"))?
            .map(|r| r.try_get(0))
            .transpose()
            .map_err(db("look up a user"))?;
        Self::put_lot_on_hold(tx, lot, actor_id, why, now).await?;
        Ok(Some(NewAuditEntry {
            actor: actor.into(),
            action: "lot.hold".into(),
            entity: "lot".into(),
            entity_id: lot.into(),
            old_value: was_released.then(|| "released".into()),
            new_value: Some("held".into()),
            reason: Some(why.into()),
        }))
    }

    /// Raises an NCR by hand (any signed-in user may raise one).
    pub async fn create_ncr(&self, new: &NewNcr, user: &User) -> Result<NcrRecord, StoreError> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        let (id, audit) =
            Self::insert_ncr(&mut tx, new, NcrSource::Manual, &user.username, now).await?;
        self.append_audit(&mut tx, now, audit).await?;
        tx.commit().await.map_err(db("commit an NCR"))?;
        self.ncr(id).await
    }

    /// One NCR.
    pub async fn ncr(&self, id: i64) -> Result<NcrRecord, StoreError> {
        let row = sqlx::query(&format!("SELECT {NCR_COLUMNS} FROM ncrs WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.writer)
            .await
            .map_err(db("read an NCR"))?
            .ok_or(StoreError::NotFound {
                entity: "ncr",
                id: id.to_string(),
            })?;
        ncr_row(&row)
    }

    /// NCRs, newest first: all of them or only open ones, optionally for one lot.
    pub async fn list_ncrs(
        &self,
        lot: Option<&str>,
        open_only: bool,
        limit: i64,
    ) -> Result<Vec<NcrRecord>, StoreError> {
        let open = if open_only {
            " AND state NOT IN ('closed', 'cancelled')"
        } else {
            ""
        };
        let rows = sqlx::query(&format!(
            "SELECT {NCR_COLUMNS} FROM ncrs WHERE ($1 = '' OR lot = $1){open} ORDER BY id DESC LIMIT $2"
        ))
        .bind(lot.unwrap_or(""))
        .bind(limit.clamp(1, 10_000))
        .fetch_all(self.reader())
        .await
        .map_err(db("list NCRs"))?;
        rows.iter().map(ncr_row).collect()
    }

    /// NCRs against a lot that are still open (not Closed or Cancelled).
    pub async fn open_ncrs(&self, lot: &str) -> Result<Vec<i64>, StoreError> {
        let rows = sqlx::query(
            "SELECT id FROM ncrs WHERE lot = $1 AND state NOT IN ('closed', 'cancelled') ORDER BY id",
        )
        .bind(lot)
        .fetch_all(&self.writer)
        .await
        .map_err(db("list open NCRs"))?;
        rows.iter()
            .map(|r| r.try_get::<i64, _>(0).map_err(db("list open NCRs")))
            .collect()
    }

    /// An NCR's history, oldest first.
    pub async fn ncr_transitions(&self, id: i64) -> Result<Vec<NcrTransition>, StoreError> {
        let rows = sqlx::query(
            "SELECT t.from_state, t.to_state, t.action, t.disposition, t.actor_id, t.reason, t.signature_id, t.at_ms, \
             COALESCE(u.username, ''), COALESCE(u.full_name, '') \
             FROM ncr_transitions t LEFT JOIN users u ON u.id = t.actor_id WHERE t.ncr_id = $1 ORDER BY t.id",
        )
        .bind(id)
        .fetch_all(self.reader())
        .await
        .map_err(db("read NCR transitions"))?;
        rows.iter()
            .map(|r| {
                let d = || db("decode an NCR transition");
                let from: String = r.try_get(0).map_err(d())?;
                let to: String = r.try_get(1).map_err(d())?;
                let disp: Option<String> = r.try_get(3).map_err(d())?;
                Ok(NcrTransition {
                    from: NcrState::parse(&from)
                        .ok_or_else(|| corrupt("ncr_transitions.from_state", from))?,
                    to: NcrState::parse(&to)
                        .ok_or_else(|| corrupt("ncr_transitions.to_state", to))?,
                    action: r.try_get(2).map_err(d())?,
                    disposition: disp.as_deref().and_then(Disposition::parse),
                    actor_id: r.try_get(4).map_err(d())?,
                    actor_username: r.try_get(8).map_err(d())?,
                    actor_full_name: r.try_get(9).map_err(d())?,
                    reason: r.try_get(5).map_err(d())?,
                    signature_id: r.try_get(6).map_err(d())?,
                    at_ms: r.try_get(7).map_err(d())?,
                })
            })
            .collect()
    }

    /// Signs an NCR as it is now. The password must be entered again (§11.200): a wrong one
    /// counts towards the lockout like a failed sign-in.
    pub async fn sign_ncr(
        &self,
        ncr_id: i64,
        creds: &Credentials,
        meaning: Meaning,
        policy: LockoutPolicy,
    ) -> Result<Signature, StoreError> {
        self.sign_ncr_seen(ncr_id, creds, meaning, policy, None)
            .await
    }

    /// Signs an NCR as the signer saw it: with `seen_version`, the signature is refused
    /// ([`StoreError::Stale`]) when the NCR has changed since, so that it never binds to
    /// content the signer did not read.
    pub async fn sign_ncr_seen(
        &self,
        ncr_id: i64,
        creds: &Credentials,
        meaning: Meaning,
        policy: LockoutPolicy,
        seen_version: Option<i64>,
    ) -> Result<Signature, StoreError> {
        let (user, verified) = self.check_credentials(creds, policy, false).await?;
        let mut tx = self.begin().await?;
        let now = now_ms();
        // Checked again under the write lock: an account disabled, locked, or given another
        // password while the password was being checked signs nothing.
        super::users::still_as_checked(&mut tx, &user, Some(&verified), now).await?;
        let row = sqlx::query(&format!("SELECT {NCR_COLUMNS} FROM ncrs WHERE id = $1"))
            .bind(ncr_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db("read an NCR"))?
            .ok_or(StoreError::NotFound {
                entity: "ncr",
                id: ncr_id.to_string(),
            })?;
        let record = ncr_row(&row)?;
        // "Approved" and "rejected" are the decision on a proposed disposition: only those who
        // may make it sign so, and only while a disposition awaits it. "Reviewed" is open to
        // every role, at any state.
        let decides = match meaning {
            Meaning::Approved => Some((NcrAction::Approve, "sign an NCR as approved")),
            Meaning::Rejected => Some((NcrAction::RejectDisposition, "sign an NCR as rejected")),
            Meaning::Reviewed => None,
        };
        if let Some((action, what)) = decides {
            if !action.allowed_roles().contains(&user.role) {
                return Err(crate::quality::TransitionError::Forbidden {
                    action: what,
                    role: user.role,
                }
                .into());
            }
            if record.state != NcrState::DispositionProposed {
                return Err(StoreError::Invalid(format!(
                    "meaning: NCR {ncr_id} is {}; an \"{}\" signature is given to a proposed \
                     disposition only",
                    record.state.as_str(),
                    meaning.as_str()
                )));
            }
            // Refused here already, not only at the approval: a signature that could not be
            // used would stand on the record as an approval its signer may not give.
            if action == NcrAction::Approve {
                not_own_proposal(&mut tx, ncr_id, &user).await?;
            }
        }
        if let Some(seen) = seen_version
            && seen != record.version
        {
            return Err(StoreError::Stale {
                entity: "ncr",
                id: ncr_id,
                seen,
                now: record.version,
            });
        }
        let mut sig = Signature {
            id: 0,
            signer_id: user.id,
            username: user.username.clone(),
            full_name: user.full_name.clone(),
            meaning,
            signed_at_ms: now,
            record_type: "ncr".into(),
            record_id: ncr_id.to_string(),
            record_hash: record.content_hash(),
            signature_hash: String::new(),
        };
        sig.signature_hash = sig.compute_hash();
        sig.id = sqlx::query(
            "INSERT INTO signatures (signer_id, username, full_name, meaning, signed_at_ms, record_type, record_id, record_hash, signature_hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
        )
        .bind(sig.signer_id)
        .bind(&sig.username)
        .bind(&sig.full_name)
        .bind(meaning.as_str())
        .bind(now)
        .bind(&sig.record_type)
        .bind(&sig.record_id)
        .bind(&sig.record_hash)
        .bind(&sig.signature_hash)
        .fetch_one(&mut *tx)
        .await
        .map_err(db("store a signature"))?
        .try_get(0)
        .map_err(db("store a signature"))?;
        self.append_audit(
            &mut tx,
            now,
            vec![NewAuditEntry {
                actor: user.username.clone(),
                action: "signature.create".into(),
                entity: "ncr".into(),
                entity_id: ncr_id.to_string(),
                old_value: None,
                new_value: Some(sig.audit_text()),
                reason: None,
            }],
        )
        .await?;
        tx.commit().await.map_err(db("commit a signature"))?;
        Ok(sig)
    }

    /// One signature.
    pub async fn signature(&self, id: i64) -> Result<Signature, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {SIG_COLUMNS} FROM signatures WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.writer)
        .await
        .map_err(db("read a signature"))?
        .ok_or(StoreError::NotFound {
            entity: "signature",
            id: id.to_string(),
        })?;
        signature_row(&row)
    }

    /// Moves an NCR. Approval needs `signature_id`: a signature by `user` with meaning
    /// "approved", made on this NCR as it is now and not used before.
    pub async fn transition_ncr(
        &self,
        id: i64,
        user: &User,
        action: NcrAction,
        reason: Option<&str>,
        signature_id: Option<i64>,
    ) -> Result<NcrRecord, StoreError> {
        let lock = match self.backend() {
            Backend::Postgres => " FOR UPDATE",
            Backend::Sqlite => "",
        };
        let now = now_ms();
        let mut tx = self.begin().await?;
        let row = sqlx::query(&format!(
            "SELECT {NCR_COLUMNS} FROM ncrs WHERE id = $1{lock}"
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db("read an NCR"))?
        .ok_or(StoreError::NotFound {
            entity: "ncr",
            id: id.to_string(),
        })?;
        let before = ncr_row(&row)?;
        let mut signed = false;
        let mut manifestation = None;
        if signature_id.is_some() && action != NcrAction::Approve {
            // A signature means what it says ("approved"); it is not spent on another action.
            return Err(StoreError::Invalid(format!(
                "signature_id: only approve takes a signature, not {}",
                action.name()
            )));
        }
        if let Some(sid) = signature_id {
            let row = sqlx::query(&format!(
                "SELECT {SIG_COLUMNS} FROM signatures WHERE id = $1"
            ))
            .bind(sid)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db("read a signature"))?
            .ok_or(StoreError::NotFound {
                entity: "signature",
                id: sid.to_string(),
            })?;
            let sig = signature_row(&row)?;
            sig.verify_for(
                "ncr",
                &id.to_string(),
                &before.content_hash(),
                Meaning::Approved,
            )?;
            if sig.signer_id != user.id {
                return Err(StoreError::Invalid(format!(
                    "signature {sid} was made by {}, not by {}",
                    sig.username, user.username
                )));
            }
            let used = sqlx::query("SELECT id FROM ncr_transitions WHERE signature_id = $1")
                .bind(sid)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db("check signature use"))?;
            if used.is_some() {
                return Err(crate::quality::SignatureError::AlreadyUsed { id: sid }.into());
            }
            signed = true;
            manifestation = Some(sig.manifestation());
        }
        match action {
            NcrAction::Approve => not_own_proposal(&mut tx, id, user).await?,
            NcrAction::Cancel => not_a_proposer(&mut tx, id, user).await?,
            _ => {}
        }
        let to = ncr::apply(
            before.state,
            action,
            NcrContext {
                role: user.role,
                reason,
                signed,
            },
        )?;
        let disposition = match action {
            NcrAction::Propose(d) => Some(d),
            NcrAction::RejectDisposition => None,
            _ => before.disposition,
        };
        let n = sqlx::query(
            "UPDATE ncrs SET state = $1, disposition = $2, version = version + 1, updated_at_ms = $3 \
             WHERE id = $4 AND version = $5",
        )
        .bind(to.as_str())
        .bind(disposition.map(Disposition::as_str))
        .bind(now)
        .bind(id)
        .bind(before.version)
        .execute(&mut *tx)
        .await
        .map_err(db("update an NCR"))?
        .rows_affected();
        if n != 1 {
            return Err(StoreError::Conflict { id });
        }
        sqlx::query(
            "INSERT INTO ncr_transitions (ncr_id, from_state, to_state, action, disposition, actor_id, reason, signature_id, at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(id)
        .bind(before.state.as_str())
        .bind(to.as_str())
        .bind(action.name())
        .bind(disposition.map(Disposition::as_str))
        .bind(user.id)
        .bind(reason)
        .bind(signature_id.filter(|_| signed))
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db("record an NCR transition"))?;
        let describe = |s: NcrState, d: Option<Disposition>| {
            crate::quality::ncr::state_text(s.as_str(), d.map(Disposition::as_str))
        };
        let mut new_value = describe(to, disposition);
        if let Some(m) = manifestation {
            new_value.push_str(&format!("; signed: {m}"));
        }
        let mut audit = vec![NewAuditEntry {
            actor: user.username.clone(),
            action: format!("ncr.{}", action.name()),
            entity: "ncr".into(),
            entity_id: id.to_string(),
            old_value: Some(describe(before.state, before.disposition)),
            new_value: Some(new_value),
            reason: reason.map(str::to_owned),
        }];
        let hold = match action {
            NcrAction::Reopen => Some(format!(
                "NCR {id} reopened: {}",
                reason.unwrap_or_default().trim()
            )),
            NcrAction::Contain => Some(format!("NCR {id} contained: {}", before.title)),
            _ => None,
        };
        if let Some(why) = hold {
            audit.extend(
                Self::hold_lot_for_ncr(&mut tx, &before.lot, &user.username, &why, now).await?,
            );
        }
        self.append_audit(&mut tx, now, audit).await?;
        tx.commit().await.map_err(db("commit an NCR transition"))?;
        self.ncr(id).await
    }

    /// Releases a lot for shipment; refused while any NCR against it is open.
    pub async fn release_lot(&self, lot: &str, user: &User) -> Result<(), StoreError> {
        if !matches!(user.role, Role::QaApprover | Role::Admin) {
            return Err(crate::quality::TransitionError::Forbidden {
                action: "release a lot",
                role: user.role,
            }
            .into());
        }
        super::api::check_lot(lot, super::api::MAX_HELD_LOT_BYTES)?;
        // Longer than a record's lot may be: only a lot held by an earlier version, which
        // took such names, is released; no row is made for one that was never held.
        if lot.len() > crate::quality::MAX_LABEL_BYTES && !self.lot(lot).await?.held {
            return Err(StoreError::Invalid(format!(
                "lot: {} bytes long, at most {} (a longer one is released only when it is held)",
                lot.len(),
                crate::quality::MAX_LABEL_BYTES
            )));
        }
        let now = now_ms();
        let mut tx = self.begin().await?;
        if self.backend() == Backend::Postgres {
            // Serialise with NCRs being raised for the same lot by other instances.
            sqlx::query("LOCK TABLE ncrs IN SHARE ROW EXCLUSIVE MODE")
                .execute(&mut *tx)
                .await
                .map_err(db("lock NCRs"))?;
        }
        let rows = sqlx::query(
            "SELECT id FROM ncrs WHERE lot = $1 AND state NOT IN ('closed', 'cancelled') ORDER BY id",
        )
        .bind(lot)
        .fetch_all(&mut *tx)
        .await
        .map_err(db("list open NCRs"))?;
        let open: Vec<i64> = rows
            .iter()
            .filter_map(|r| r.try_get::<i64, _>(0).ok())
            .collect();
        if !open.is_empty() {
            return Err(StoreError::LotHasOpenNcr {
                lot: lot.into(),
                ncrs: open,
            });
        }
        sqlx::query(
            "INSERT INTO lots (lot, released_at_ms, released_by) VALUES ($1, $2, $3) \
             ON CONFLICT (lot) DO UPDATE SET released_at_ms = $2, released_by = $3, \
             held_at_ms = NULL, held_by = NULL, hold_reason = NULL",
        )
        .bind(lot)
        .bind(now)
        .bind(user.id)
        .execute(&mut *tx)
        .await
        .map_err(db("release a lot"))?;
        self.append_audit(
            &mut tx,
            now,
            vec![NewAuditEntry {
                actor: user.username.clone(),
                action: "lot.release".into(),
                entity: "lot".into(),
                entity_id: lot.into(),
                old_value: None,
                new_value: Some("released".into()),
                reason: None,
            }],
        )
        .await?;
        tx.commit().await.map_err(db("commit a lot release"))?;
        Ok(())
    }
}
