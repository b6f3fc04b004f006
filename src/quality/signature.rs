//! Electronic signatures in the style of 21 CFR Part 11 (§11.50, §11.70, §11.200).
//!
//! A signature shows the signer's printed name, the date and time and its meaning, and is
//! bound to one record: its type, id and the hash of its content at signing time. The
//! signature's own hash covers all of these, so a signature row copied onto another record or
//! edited in the database no longer verifies, and a record changed after signing no longer
//! matches the signed content hash. Password re-entry at signing is enforced by the store,
//! which only creates signatures after checking the password.

use serde::{Deserialize, Serialize};

use super::fields_hash;

/// What the signer means by signing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Meaning {
    Reviewed,
    Approved,
    Rejected,
}

impl Meaning {
    pub const ALL: [Meaning; 3] = [Meaning::Reviewed, Meaning::Approved, Meaning::Rejected];

    pub fn as_str(self) -> &'static str {
        match self {
            Meaning::Reviewed => "reviewed",
            Meaning::Approved => "approved",
            Meaning::Rejected => "rejected",
        }
    }

    pub fn parse(s: &str) -> Option<Meaning> {
        Meaning::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

/// Why a signature does not count for a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("signature {id} was altered after it was made")]
    Tampered { id: i64 },
    #[error(
        "signature {id} belongs to {signed_type} {signed_id}, not to {record_type} {record_id}"
    )]
    OtherRecord {
        id: i64,
        signed_type: String,
        signed_id: String,
        record_type: String,
        record_id: String,
    },
    #[error(
        "signature {id} was made on an earlier version of {record_type} {record_id}: the record changed after signing"
    )]
    RecordChanged {
        id: i64,
        record_type: String,
        record_id: String,
    },
    #[error("signature {id} means {actual}, {expected} is needed")]
    WrongMeaning {
        id: i64,
        actual: &'static str,
        expected: &'static str,
    },
    #[error("signature {id} was already used for another action")]
    AlreadyUsed { id: i64 },
}

/// A stored signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Signature {
    pub id: i64,
    pub signer_id: i64,
    pub username: String,
    /// Printed name of the signer (§11.50(a)(1)).
    pub full_name: String,
    pub meaning: Meaning,
    pub signed_at_ms: i64,
    pub record_type: String,
    pub record_id: String,
    /// Content hash of the record when it was signed (§11.70).
    pub record_hash: String,
    pub signature_hash: String,
}

impl Signature {
    /// The hash binding every field together.
    pub fn compute_hash(&self) -> String {
        let signer = self.signer_id.to_string();
        let at = self.signed_at_ms.to_string();
        fields_hash(
            "linesight-signature-v1",
            &[
                Some(&signer),
                Some(&self.username),
                Some(&self.full_name),
                Some(self.meaning.as_str()),
                Some(&at),
                Some(&self.record_type),
                Some(&self.record_id),
                Some(&self.record_hash),
            ],
        )
    }

    /// Whether this signature, with `meaning`, counts for the record as it is now.
    pub fn verify_for(
        &self,
        record_type: &str,
        record_id: &str,
        current_hash: &str,
        meaning: Meaning,
    ) -> Result<(), SignatureError> {
        if self.compute_hash() != self.signature_hash {
            return Err(SignatureError::Tampered { id: self.id });
        }
        if self.record_type != record_type || self.record_id != record_id {
            return Err(SignatureError::OtherRecord {
                id: self.id,
                signed_type: self.record_type.clone(),
                signed_id: self.record_id.clone(),
                record_type: record_type.into(),
                record_id: record_id.into(),
            });
        }
        if self.record_hash != current_hash {
            return Err(SignatureError::RecordChanged {
                id: self.id,
                record_type: record_type.into(),
                record_id: record_id.into(),
            });
        }
        if self.meaning != meaning {
            return Err(SignatureError::WrongMeaning {
                id: self.id,
                actual: self.meaning.as_str(),
                expected: meaning.as_str(),
            });
        }
        Ok(())
    }

    /// What the audit trail records of it (`signature.create`): its id, manifestation and the
    /// version of the record signed.
    pub fn audit_text(&self) -> String {
        format!(
            "signature {}: {}; record_hash={}",
            self.id,
            self.manifestation(),
            self.record_hash
        )
    }

    /// The manifestation shown with the record (§11.50).
    pub fn manifestation(&self) -> String {
        format!(
            "{} ({}), {}, {}",
            self.full_name,
            self.username,
            super::format_ms(self.signed_at_ms),
            self.meaning.as_str()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig() -> Signature {
        let mut s = Signature {
            id: 1,
            signer_id: 3,
            username: "qa".into(),
            full_name: "Quinn Approver".into(),
            meaning: Meaning::Approved,
            signed_at_ms: 1_795_459_835_123,
            record_type: "ncr".into(),
            record_id: "12".into(),
            record_hash: "aa".repeat(32),
            signature_hash: String::new(),
        };
        s.signature_hash = s.compute_hash();
        s
    }

    #[test]
    fn a_signature_counts_only_for_its_record_as_signed() {
        let s = sig();
        let h = "aa".repeat(32);
        assert_eq!(s.verify_for("ncr", "12", &h, Meaning::Approved), Ok(()));
        assert!(matches!(
            s.verify_for("ncr", "13", &h, Meaning::Approved),
            Err(SignatureError::OtherRecord { .. })
        ));
        assert!(matches!(
            s.verify_for("ncr", "12", &"bb".repeat(32), Meaning::Approved),
            Err(SignatureError::RecordChanged { .. })
        ));
        assert!(matches!(
            s.verify_for("ncr", "12", &h, Meaning::Reviewed),
            Err(SignatureError::WrongMeaning { .. })
        ));
        // Copying the row onto another record (editing record_id) breaks its hash.
        let mut copied = s.clone();
        copied.record_id = "13".into();
        assert_eq!(
            copied.verify_for("ncr", "13", &h, Meaning::Approved),
            Err(SignatureError::Tampered { id: 1 })
        );
        assert_eq!(
            s.manifestation(),
            "Quinn Approver (qa), 2026-11-23T18:50:35.123Z, approved"
        );
    }
}
