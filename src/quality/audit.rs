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
}
