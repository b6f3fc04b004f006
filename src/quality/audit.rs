//! Audit trail entries and their hash chain.
//!
//! Each entry records who did what to which record, when, the old and new values and the
//! reason, plus the hash of the previous entry; its own hash covers all of that. Changing,
//! removing or reordering any stored entry breaks the chain at that entry, which
//! [`verify_chain`] reports. The first entry's previous hash is [`GENESIS`].

use serde::Serialize;

use super::fields_hash;

/// The previous hash of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What a change wants recorded (the store adds sequence, time and chain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAuditEntry {
    /// User name, or `system` for computer-generated records.
    pub actor: String,
    /// `ncr.transition`, `inspection.create`, `user.locked`, …
    pub action: String,
    pub entity: String,
    pub entity_id: String,
    pub old_value: Option<String>,
    pub new_value: Option<String>,
    pub reason: Option<String>,
}

/// A stored audit entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub seq: i64,
    pub at_ms: i64,
    pub actor: String,
    pub action: String,
    pub entity: String,
    pub entity_id: String,
    pub old_value: Option<String>,
    pub new_value: Option<String>,
    pub reason: Option<String>,
    pub prev_hash: String,
    pub hash: String,
}

impl AuditEntry {
    /// Builds the entry that follows `prev_hash` at position `seq`.
    pub fn chain(new: NewAuditEntry, seq: i64, at_ms: i64, prev_hash: &str) -> AuditEntry {
        let mut e = AuditEntry {
            seq,
            at_ms,
            actor: new.actor,
            action: new.action,
            entity: new.entity,
            entity_id: new.entity_id,
            old_value: new.old_value,
            new_value: new.new_value,
            reason: new.reason,
            prev_hash: prev_hash.to_owned(),
            hash: String::new(),
        };
        e.hash = e.compute_hash();
        e
    }

    /// The hash this entry's content should have.
    pub fn compute_hash(&self) -> String {
        let seq = self.seq.to_string();
        let at = self.at_ms.to_string();
        fields_hash(
            "linesight-audit-v1",
            &[
                Some(&seq),
                Some(&at),
                Some(&self.actor),
                Some(&self.action),
                Some(&self.entity),
                Some(&self.entity_id),
                self.old_value.as_deref(),
                self.new_value.as_deref(),
                self.reason.as_deref(),
                Some(&self.prev_hash),
            ],
        )
    }
}

/// The first place where the chain does not hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ChainBreak {
    /// Sequence number of the first entry that fails.
    pub seq: i64,
    pub problem: String,
}

impl std::fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "audit entry {}: {}", self.seq, self.problem)
    }
}

/// Walks entries in sequence order. `prev` is the last verified entry before them (`None` at
/// the start of the trail), so long trails can be checked page by page.
pub fn verify_chain<'a>(
    prev: Option<&AuditEntry>,
    entries: impl IntoIterator<Item = &'a AuditEntry>,
) -> Result<(), ChainBreak> {
    let (mut expected_seq, mut expected_prev) = match prev {
        Some(p) => (p.seq + 1, p.hash.clone()),
        None => (1, GENESIS.to_owned()),
    };
    for e in entries {
        if e.seq != expected_seq {
            return Err(ChainBreak {
                seq: e.seq,
                problem: format!(
                    "expected sequence number {expected_seq}: entries are missing or reordered"
                ),
            });
        }
        if e.prev_hash != expected_prev {
            return Err(ChainBreak {
                seq: e.seq,
                problem: format!(
                    "previous hash {} does not match the hash {} of entry {}",
                    e.prev_hash,
                    expected_prev,
                    e.seq - 1
                ),
            });
        }
        let actual = e.compute_hash();
        if actual != e.hash {
            return Err(ChainBreak {
                seq: e.seq,
                problem: format!(
                    "content does not match its hash (stored {}, computed {actual}): the entry was altered",
                    e.hash
                ),
            });
        }
        expected_seq += 1;
        expected_prev = e.hash.clone();
    }
    Ok(())
}

/// An entry's sequence number and hash as recorded outside the store: taken from an MQTT
/// health message or event, written into a batch record from `audit verify`, or kept by the
/// cloud. The chain alone cannot show that its newest entries were removed, or that it was
/// rewritten and re-hashed from some entry on; an anchor can.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Anchor {
    pub seq: i64,
    pub hash: String,
}

impl std::str::FromStr for Anchor {
    type Err = String;

    /// `SEQ:HASH`, e.g. `1532:3f9a…` (the hash's 64 hexadecimal digits).
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!(
                "anchor {s:?}: {why}; write SEQ:HASH, an audit entry's sequence number, a colon and its hash of 64 hexadecimal digits, as `linesight audit verify` prints them"
            )
        };
        let (seq, hash) = s.trim().split_once(':').ok_or_else(|| bad("no ':'"))?;
        let seq: i64 = seq
            .parse()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| bad("the sequence number is not a whole number of 1 or more"))?;
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("the hash is not 64 hexadecimal digits"));
        }
        Ok(Anchor {
            seq,
            hash: hash.to_ascii_lowercase(),
        })
    }
}

/// The newest entry of a verified trail: what to record outside the store as an [`Anchor`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Head {
    pub seq: i64,
    pub at_ms: i64,
    pub hash: String,
}

/// An entry dated earlier than the entry before it by more than [`CLOCK_TOLERANCE_MS`]: the
/// clock of the instance that wrote it was set back (or, with replicas sharing a store, their
/// clocks disagree). It breaks nothing, but the dates near it deserve a second look.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ClockStep {
    pub seq: i64,
    /// How much earlier than the entry before it.
    pub back_ms: i64,
}

/// Entries may be out of time order without any clock change: a change is dated when it is
/// made, then waits its turn for the write lock (on a slow disk or behind a long transaction,
/// seconds; the waits give up after a minute or so). A clock set back is noted past this.
pub const CLOCK_TOLERANCE_MS: i64 = 120_000;

/// Findings (clock steps, records that disagree) listed one by one; more are only counted.
const LISTED: usize = 20;

/// What a complete check found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Verified {
    /// Entries checked.
    pub checked: u64,
    /// The newest entry; none in an empty trail.
    pub head: Option<Head>,
    /// Anchors found in the trail with their recorded hash.
    pub anchors_matched: usize,
    /// Entries dated back in time (the first 20).
    pub clock_steps_back: Vec<ClockStep>,
    /// How many entries were dated back in time in all.
    pub clock_steps_back_total: u64,
}

/// Checks a trail page by page (see [`verify_chain`]), against anchors recorded outside it.
pub struct ChainCheck {
    /// Anchors not reached yet, highest sequence number first.
    anchors: Vec<Anchor>,
    prev: Option<AuditEntry>,
    found: Verified,
}

impl ChainCheck {
    pub fn new(anchors: &[Anchor]) -> ChainCheck {
        let mut anchors = anchors.to_vec();
        anchors.sort_by_key(|a| std::cmp::Reverse(a.seq));
        ChainCheck {
            anchors,
            prev: None,
            found: Verified {
                checked: 0,
                head: None,
                anchors_matched: 0,
                clock_steps_back: Vec::new(),
                clock_steps_back_total: 0,
            },
        }
    }

    /// The sequence number the next page starts at.
    pub fn next_seq(&self) -> i64 {
        self.prev.as_ref().map_or(1, |p| p.seq + 1)
    }

    /// Checks the next entries, in sequence order; the first problem found, entry by entry.
    pub fn page(&mut self, entries: &[AuditEntry]) -> Result<(), ChainBreak> {
        for (i, e) in entries.iter().enumerate() {
            let prev = match i {
                0 => self.prev.as_ref(),
                _ => Some(&entries[i - 1]),
            };
            verify_chain(prev, std::slice::from_ref(e))?;
            if let Some(p) = prev {
                let back_ms = p.at_ms.saturating_sub(e.at_ms);
                if back_ms > CLOCK_TOLERANCE_MS {
                    self.found.clock_steps_back_total += 1;
                    if self.found.clock_steps_back.len() < LISTED {
                        self.found.clock_steps_back.push(ClockStep {
                            seq: e.seq,
                            back_ms,
                        });
                    }
                }
            }
            while self.anchors.last().is_some_and(|a| a.seq == e.seq) {
                let a = self.anchors.pop().expect("just seen");
                if a.hash != e.hash {
                    return Err(ChainBreak {
                        seq: e.seq,
                        problem: format!(
                            "its hash {} differs from the hash {} recorded outside the store: the trail was rewritten from this entry or an earlier one (or the anchor was not taken from this store)",
                            e.hash, a.hash
                        ),
                    });
                }
                self.found.anchors_matched += 1;
            }
            self.found.checked += 1;
        }
        if let Some(last) = entries.last() {
            self.prev = Some(last.clone());
        }
        Ok(())
    }

    /// After the last page: anchors past the end of the trail mean its newest entries are gone.
    pub fn finish(mut self) -> Result<Verified, ChainBreak> {
        if let Some(a) = self.anchors.last() {
            let end = self.prev.as_ref().map_or_else(
                || "is empty".to_owned(),
                |p| format!("ends at entry {}", p.seq),
            );
            return Err(ChainBreak {
                seq: a.seq,
                problem: format!(
                    "recorded outside the store with hash {}, but the trail {end}: its newest entries were removed (or the store was restored from an earlier backup)",
                    a.hash
                ),
            });
        }
        self.found.head = self.prev.map(|p| Head {
            seq: p.seq,
            at_ms: p.at_ms,
            hash: p.hash,
        });
        Ok(self.found)
    }
}

/// A record that does not agree with the audit entry that made it: changed, added or removed
/// outside linesight (the chain cannot show this; the records are not chained).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct RecordMismatch {
    /// `inspection`, `signature`, `attachment`, `task`, `ncr` or `lot`.
    pub entity: String,
    /// The record's id; none for a lot, and when its audit entry names no id.
    pub id: Option<i64>,
    /// A lot's name (lots are known by name, not by id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The audit entry that made it, if there is one.
    pub seq: Option<i64>,
    pub problem: String,
}

/// What `audit verify` found: the chain (the first broken link, if any) and the records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditCheck {
    pub chain: Result<Verified, ChainBreak>,
    pub records: RecordCheck,
}

/// What comparing the records with the audit trail found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct RecordCheck {
    /// Inspection records and `inspection.create` entries compared.
    pub inspections: u64,
    /// Electronic signatures and `signature.create` entries compared.
    pub signatures: u64,
    /// NCR attachments and `ncr.attach` entries compared.
    #[serde(default)]
    pub attachments: u64,
    /// Secondary-inspection tasks compared with their entries (opening, state, claim,
    /// decision and its reason, number of changes, the inspection they belong to).
    #[serde(default)]
    pub tasks: u64,
    /// NCRs compared with their entries (what they were raised with, state, disposition,
    /// number of changes, and each recorded transition with its actor, reason and signature).
    #[serde(default)]
    pub ncrs: u64,
    /// Lots compared with their newest `lot.hold` or `lot.release` entry.
    #[serde(default)]
    pub lots: u64,
    /// Accounts compared with their entries (name and role as created, when and how the
    /// password was last set and the fingerprint of its hash, withdrawal).
    #[serde(default)]
    pub users: u64,
    /// Open web UI sessions compared with the sign-in entry that opened each (account, time,
    /// the fingerprint of the secret) and with the entries that would have ended them.
    #[serde(default)]
    pub sessions: u64,
    /// Bearer tokens compared with their entries (name, account, expiry, who made them and
    /// when, the fingerprint of their digest, revocation).
    #[serde(default)]
    pub tokens: u64,
    /// Model activations and refusals compared with their entries.
    #[serde(default)]
    pub model_activations: u64,
    /// The first 20 differences found (a record may show more than one: its creation and
    /// its state, or an NCR and its transitions).
    pub mismatches: Vec<RecordMismatch>,
    /// How many differences were found in all.
    pub mismatches_total: u64,
}

impl RecordCheck {
    pub fn push(&mut self, m: RecordMismatch) {
        self.mismatches_total += 1;
        if self.mismatches.len() < LISTED {
            self.mismatches.push(m);
        }
    }
}

/// How an inspection record (its fields and time) differs from the `inspection.create` entry
/// that recorded it: empty when they agree, `Err` when the entry holds no inspection.
pub fn inspection_differences(
    record: &super::NewInspection,
    at_ms: i64,
    entry: &AuditEntry,
) -> Result<Vec<String>, String> {
    let recorded = serde_json::to_value(record).unwrap_or_default();
    let Some(trail) = entry
        .new_value
        .as_deref()
        .and_then(|v| serde_json::from_str::<serde_json::Value>(v).ok())
        .filter(serde_json::Value::is_object)
    else {
        return Err(format!("audit entry {} holds no inspection", entry.seq));
    };
    let mut out = Vec::new();
    if at_ms != entry.at_ms {
        out.push(format!(
            "time {} in the record, {} in the trail",
            super::format_ms(at_ms),
            super::format_ms(entry.at_ms)
        ));
    }
    let (Some(recorded), Some(trail)) = (recorded.as_object(), trail.as_object()) else {
        return Ok(out);
    };
    let mut keys: Vec<&String> = recorded.keys().chain(trail.keys()).collect();
    keys.sort();
    keys.dedup();
    let null = serde_json::Value::Null;
    for key in keys {
        let (a, b) = (
            recorded.get(key).unwrap_or(&null),
            trail.get(key).unwrap_or(&null),
        );
        if !same_value(a, b) {
            out.push(format!(
                "{key} {} in the record, {} in the trail",
                shown(a),
                shown(b)
            ));
        }
    }
    Ok(out)
}

/// The signature an audit entry recorded (`signature.create`), from its text.
pub fn signature_id_of(entry: &AuditEntry) -> Option<i64> {
    let rest = entry.new_value.as_deref()?.strip_prefix("signature ")?;
    rest.split_once(':')?.0.parse().ok()
}

/// How an electronic signature differs from the `signature.create` entry that recorded it,
/// whether it still matches its own hash, and whether its signer's account (`signer`: the
/// user name of the account `signer_id` names) is the one named in it; empty when all agree.
pub fn signature_differences(
    sig: &super::Signature,
    signer: Option<&str>,
    entry: &AuditEntry,
) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    if sig.compute_hash() != sig.signature_hash {
        out.push("its content does not match its own hash".into());
    }
    if signer != Some(sig.username.as_str()) {
        out.push(format!(
            "it names {} but belongs to account {} ({})",
            sig.username,
            sig.signer_id,
            signer.unwrap_or("no such account")
        ));
    }
    let text = sig.audit_text();
    if entry.new_value.as_deref() != Some(text.as_str()) {
        out.push(format!(
            "{:?} in the record, {} in the trail",
            text,
            entry
                .new_value
                .as_ref()
                .map_or("nothing".into(), |v| format!("{v:?}"))
        ));
    }
    if (entry.entity.as_str(), entry.entity_id.as_str())
        != (sig.record_type.as_str(), sig.record_id.as_str())
    {
        out.push(format!(
            "signs {} {} in the record, {} {} in the trail",
            sig.record_type, sig.record_id, entry.entity, entry.entity_id
        ));
    }
    if entry.actor != sig.username {
        out.push(format!(
            "signer {} in the record, {} in the trail",
            sig.username, entry.actor
        ));
    }
    if entry.at_ms != sig.signed_at_ms {
        out.push(format!(
            "time {} in the record, {} in the trail",
            super::format_ms(sig.signed_at_ms),
            super::format_ms(entry.at_ms)
        ));
    }
    Ok(out)
}

/// Equal, numbers within a few units in the last place (JSON's text form of a score may come
/// back one unit off).
fn same_value(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) if a.is_number() && b.is_number() => {
            x == y || (x - y).abs() <= 4.0 * f64::EPSILON * x.abs().max(y.abs())
        }
        _ => a == b,
    }
}

fn shown(v: &serde_json::Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(60) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trail(n: i64) -> Vec<AuditEntry> {
        let mut prev = GENESIS.to_owned();
        (1..=n)
            .map(|seq| {
                let e = AuditEntry::chain(
                    NewAuditEntry {
                        actor: "ana".into(),
                        action: "ncr.transition".into(),
                        entity: "ncr".into(),
                        entity_id: seq.to_string(),
                        old_value: Some("open".into()),
                        new_value: Some("contained".into()),
                        reason: None,
                    },
                    seq,
                    1000 + seq,
                    &prev,
                );
                prev = e.hash.clone();
                e
            })
            .collect()
    }

    #[test]
    fn an_intact_chain_verifies_in_one_go_and_page_by_page() {
        let t = trail(10);
        assert_eq!(verify_chain(None, &t), Ok(()));
        assert_eq!(verify_chain(None, &t[..4]), Ok(()));
        assert_eq!(verify_chain(Some(&t[3]), &t[4..]), Ok(()));
    }

    #[test]
    fn each_kind_of_tampering_is_found_at_the_right_entry() {
        let mut t = trail(6);
        t[3].new_value = Some("closed".into());
        let b = verify_chain(None, &t).unwrap_err();
        assert_eq!(b.seq, 4);
        assert!(b.problem.contains("altered"), "{b}");

        // Re-hashing the altered entry moves the break to the next link.
        t[3].hash = t[3].compute_hash();
        let b = verify_chain(None, &t).unwrap_err();
        assert_eq!(b.seq, 5);
        assert!(b.problem.contains("previous hash"), "{b}");

        let mut t = trail(6);
        t.remove(2);
        let b = verify_chain(None, &t).unwrap_err();
        assert_eq!(b.seq, 4);
        assert!(b.problem.contains("missing"), "{b}");

        let mut t = trail(3);
        t[0].reason = Some(String::new());
        assert_eq!(
            verify_chain(None, &t).unwrap_err().seq,
            1,
            "None and \"\" differ"
        );
    }

    fn anchor(e: &AuditEntry) -> Anchor {
        Anchor {
            seq: e.seq,
            hash: e.hash.clone(),
        }
    }

    #[test]
    fn anchors_reveal_a_removed_tail_and_a_rewritten_trail() {
        let t = trail(8);
        let mut check = ChainCheck::new(&[anchor(&t[2]), anchor(&t[6])]);
        check.page(&t[..5]).unwrap();
        check.page(&t[5..]).unwrap();
        let v = check.finish().unwrap();
        assert_eq!((v.checked, v.anchors_matched), (8, 2));
        assert_eq!(
            v.head.map(|h| (h.seq, h.hash)),
            Some((8, t[7].hash.clone()))
        );

        // The newest two entries removed: the chain alone still holds.
        let mut check = ChainCheck::new(&[anchor(&t[2]), anchor(&t[6])]);
        check.page(&t[..6]).unwrap();
        let b = check.finish().unwrap_err();
        assert_eq!(b.seq, 7);
        assert!(b.problem.contains("ends at entry 6"), "{b}");
        assert!(b.problem.contains("removed"), "{b}");
        let b = ChainCheck::new(&[anchor(&t[0])]).finish().unwrap_err();
        assert!(b.problem.contains("is empty"), "{b}");

        // Entry 4 altered and every hash from it on computed again: a consistent chain, which
        // only the anchor at entry 7 contradicts.
        let mut forged = t.clone();
        forged[3].new_value = Some("closed".into());
        for i in 3..forged.len() {
            forged[i].prev_hash = forged[i - 1].hash.clone();
            forged[i].hash = forged[i].compute_hash();
        }
        assert_eq!(verify_chain(None, &forged), Ok(()));
        let mut check = ChainCheck::new(&[anchor(&t[2]), anchor(&t[6])]);
        let b = check.page(&forged).unwrap_err();
        assert_eq!(b.seq, 7);
        assert!(b.problem.contains("rewritten"), "{b}");
    }

    #[test]
    fn anchors_are_read_as_seq_colon_hash() {
        let h = "AB".repeat(32);
        assert_eq!(
            format!("12:{h}").parse::<Anchor>(),
            Ok(Anchor {
                seq: 12,
                hash: h.to_ascii_lowercase()
            })
        );
        for (bad, why) in [
            ("12", "no ':'"),
            (&*format!("0:{h}"), "sequence number"),
            (&*format!("x:{h}"), "sequence number"),
            ("12:abc", "64 hexadecimal"),
            (&*format!("12:{}", "g".repeat(64)), "64 hexadecimal"),
        ] {
            let err = bad.parse::<Anchor>().unwrap_err();
            assert!(
                err.contains(why) && err.contains("SEQ:HASH"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn entries_dated_back_in_time_are_noted_not_failed() {
        let mut t = trail(5);
        t[2].at_ms = t[1].at_ms - CLOCK_TOLERANCE_MS - 1; // set back past the tolerance
        t[4].at_ms = t[3].at_ms - CLOCK_TOLERANCE_MS; // within it: a writer waiting its turn
        let mut prev = GENESIS.to_owned();
        for e in &mut t {
            e.prev_hash = prev;
            e.hash = e.compute_hash();
            prev = e.hash.clone();
        }
        let mut check = ChainCheck::new(&[]);
        check.page(&t).unwrap();
        let v = check.finish().unwrap();
        assert_eq!(v.checked, 5);
        assert_eq!(
            v.clock_steps_back,
            vec![ClockStep {
                seq: 3,
                back_ms: CLOCK_TOLERANCE_MS + 1
            }]
        );
        assert_eq!(v.clock_steps_back_total, 1);
    }

    #[test]
    fn an_inspection_record_is_compared_field_by_field_with_its_entry() {
        let record = crate::quality::rules::tests::inspection(
            0.9876543210987654,
            crate::quality::Verdict::Defect,
        );
        let entry = |value: &crate::quality::NewInspection| {
            AuditEntry::chain(
                NewAuditEntry {
                    actor: "system".into(),
                    action: "inspection.create".into(),
                    entity: "inspection".into(),
                    entity_id: "7".into(),
                    old_value: None,
                    new_value: Some(serde_json::to_string(value).unwrap()),
                    reason: None,
                },
                3,
                1_000,
                GENESIS,
            )
        };
        assert_eq!(
            inspection_differences(&record, 1_000, &entry(&record)),
            Ok(vec![])
        );
        // One unit in the last place is how a number may come back from its text form.
        let mut near = record.clone();
        near.score = f64::from_bits(record.score.to_bits() + 1);
        assert_eq!(
            inspection_differences(&near, 1_000, &entry(&record)),
            Ok(vec![])
        );

        let mut passed = record.clone();
        passed.verdict = crate::quality::Verdict::Good;
        passed.score = 0.2;
        passed.defect_class = Some("scratch".into());
        assert_eq!(
            inspection_differences(&passed, 999, &entry(&record)).unwrap(),
            vec![
                "time 1970-01-01T00:00:00.999Z in the record, 1970-01-01T00:00:01.000Z in the trail",
                "defect_class \"scratch\" in the record, null in the trail",
                "score 0.2 in the record, 0.9876543210987654 in the trail",
                "verdict \"good\" in the record, \"defect\" in the trail",
            ]
        );
        let mut unreadable = entry(&record);
        unreadable.new_value = Some("P1 scored 0.98".into());
        assert_eq!(
            inspection_differences(&record, 1_000, &unreadable),
            Err("audit entry 3 holds no inspection".into())
        );
    }

    #[test]
    fn a_signature_entry_names_its_signature() {
        let mut e = trail(1).remove(0);
        e.new_value = Some(
            "signature 12: Quinn (quinn), 2026-12-07T04:00:00.000Z, approved; record_hash=ab"
                .into(),
        );
        assert_eq!(signature_id_of(&e), Some(12));
        for other in ["signature x: y", "sig 12: y", "signature 12"] {
            e.new_value = Some(other.into());
            assert_eq!(signature_id_of(&e), None, "{other}");
        }
        e.new_value = None;
        assert_eq!(signature_id_of(&e), None);
    }
}
