//! The quality domain: inspection records, secondary inspections, non-conformance records
//! (NCRs), electronic signatures, users and roles, and the hash-chained audit trail.
//!
//! Everything here is pure — no I/O, no async, no database — so the rules can be tested
//! exhaustively; [`crate::store`] persists what this module decides. The domain does not know
//! about the inference pipeline: the pipeline hands it plain [`NewInspection`] values.
//!
//! - [`ncr`] — NCR life cycle and dispositions.
//! - [`task`] — secondary-inspection task life cycle and the re-inspection cap.
//! - [`rules`] — when a result opens a task, AQL sampling of accepts, reject-rate alert.
//! - [`audit`] — audit entries and the hash chain.
//! - [`signature`] — Part 11 style electronic signatures bound to a record's content hash.
//! - [`user`] — roles, argon2 password hashes, lockout policy.

pub mod audit;
pub mod ncr;
pub mod rules;
pub mod signature;
pub mod task;
pub mod user;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use audit::{AuditEntry, ChainBreak, NewAuditEntry};
pub use ncr::{Disposition, NcrAction, NcrState};
pub use rules::{OpeningReason, QualityConfig};
pub use signature::{Meaning, Signature, SignatureError};
pub use task::{TaskAction, TaskState};
pub use user::{LockoutPolicy, Role};

/// Why a state machine refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("cannot {action} {entity} in state {from}")]
    NotAllowed {
        entity: &'static str,
        from: &'static str,
        action: &'static str,
    },
    #[error("role {role} may not {action}")]
    Forbidden { action: &'static str, role: Role },
    #[error("{action} needs a reason")]
    ReasonRequired { action: &'static str },
    #[error("{action} needs a valid electronic signature")]
    SignatureRequired { action: &'static str },
    #[error("only the inspector who claimed the task may {action} it")]
    NotClaimant { action: &'static str },
    /// Four eyes: whoever proposed a disposition does not approve it.
    #[error("{user} proposed this disposition; another QA approver must approve it")]
    OwnProposal { user: String },
    /// Four eyes: whoever proposed a disposition of an NCR does not cancel it either, which
    /// would release its lot in place of the approval they may not give.
    #[error(
        "{user} proposed a disposition of this NCR; another QA approver or an administrator must cancel it"
    )]
    ProposerCancels { user: String },
}

/// Verdict of one inspection: the same type the inspection stage decides with, so a record can
/// never hold a verdict the model could not have given.
pub use crate::postprocess::Verdict;

/// One inspection result as the pipeline or a manual upload reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NewInspection {
    pub part_id: String,
    pub lot: String,
    pub line: String,
    pub recipe: String,
    pub camera: String,
    pub model_name: String,
    /// SHA-256 of the model graph (hex): the identity of the model behind the verdict.
    pub model_sha256: String,
    pub threshold: f64,
    pub score: f64,
    pub verdict: Verdict,
    /// Defect regions as JSON (the pipeline's own shape; stored verbatim).
    pub regions_json: String,
    /// Content hash of the stored image, if kept.
    pub image_ref: Option<String>,
    pub overlay_ref: Option<String>,
    /// Stage timings as JSON.
    pub timings_json: String,
    /// `automatic` or `manual`.
    pub source: String,
    /// The defect class, when the model or the uploader names one.
    pub defect_class: Option<String>,
}

/// The most bytes a record's names may hold: part id, lot, line, model name, and what arrives
/// with them in a trigger or an upload (trigger id, recipe, camera, defect class). Checked
/// where they come in, so that nothing accepted there is refused by the record later.
pub const MAX_LABEL_BYTES: usize = 200;

/// The most bytes of free text a person may enter: an NCR's description, a reason, a comment.
/// Each is kept whole in the record, the audit trail and the events, so it is bounded well
/// below the request limit.
pub const MAX_TEXT_BYTES: usize = 10_000;

/// `Err` naming `field` and the limit when `value` is longer than [`MAX_TEXT_BYTES`].
pub fn check_text(field: &str, value: &str) -> Result<(), String> {
    check_bytes(field, value, MAX_TEXT_BYTES)
}

/// `Err` naming `field` and the limit when `value` is longer than [`MAX_LABEL_BYTES`].
pub fn check_label(field: &str, value: &str) -> Result<(), String> {
    check_bytes(field, value, MAX_LABEL_BYTES)
}

fn check_bytes(field: &str, value: &str, max: usize) -> Result<(), String> {
    if value.len() > max {
        return Err(format!(
            "{field} is {} bytes long: at most {max}",
            value.len()
        ));
    }
    Ok(())
}

impl NewInspection {
    /// Checks fields a database would accept but a record must not have.
    pub fn validate(&self) -> Result<(), String> {
        for (field, value) in [
            ("part_id", &self.part_id),
            ("lot", &self.lot),
            ("line", &self.line),
            ("model_name", &self.model_name),
        ] {
            if value.trim().is_empty() {
                return Err(format!("{field} is empty"));
            }
            check_label(field, value)?;
        }
        if self.model_sha256.len() != 64
            || !self.model_sha256.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(format!(
                "model_sha256 {:?} is not 64 hexadecimal digits",
                self.model_sha256
            ));
        }
        for (field, v) in [("score", self.score), ("threshold", self.threshold)] {
            if !v.is_finite() {
                return Err(format!("{field} = {v}: must be a finite number"));
            }
        }
        if !matches!(self.source.as_str(), "automatic" | "manual") {
            return Err(format!(
                "source = {:?}: must be \"automatic\" or \"manual\"",
                self.source
            ));
        }
        Ok(())
    }
}

/// SHA-256 over length-prefixed fields: no two different field lists hash alike.
pub fn fields_hash(domain: &str, fields: &[Option<&str>]) -> String {
    let mut h = Sha256::new();
    h.update(domain.as_bytes());
    for f in fields {
        match f {
            None => h.update(b"\x00"),
            Some(s) => {
                h.update(b"\x01");
                h.update((s.len() as u64).to_be_bytes());
                h.update(s.as_bytes());
            }
        }
    }
    hex::encode(h.finalize())
}

/// Milliseconds since the Unix epoch, as stored.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The last millisecond RFC 3339 can write (9999-12-31T23:59:59.999Z).
const LAST_RFC3339_MS: i64 = 253_402_300_799_999;

/// `2026-11-23T18:50:35.123Z` for a millisecond timestamp (times before 1970 show as the epoch,
/// times past the year 9999 as its last millisecond: a stored value never fails to print).
pub fn format_ms(ms: i64) -> String {
    let ms = ms.clamp(0, LAST_RFC3339_MS);
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_format_as_utc() {
        assert_eq!(format_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(format_ms(1_795_459_835_123), "2026-11-23T18:50:35.123Z");
        // Past what RFC 3339 can write: the last millisecond it can, not a panic.
        assert_eq!(format_ms(253_402_300_800_000), "9999-12-31T23:59:59.999Z");
        assert_eq!(format_ms(i64::MAX), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn field_hash_is_unambiguous() {
        let a = fields_hash("d", &[Some("ab"), Some("c")]);
        let b = fields_hash("d", &[Some("a"), Some("bc")]);
        let c = fields_hash("d", &[Some(""), None]);
        let d = fields_hash("d", &[None, Some("")]);
        assert_ne!(a, b);
        assert_ne!(c, d);
        assert_eq!(a.len(), 64);
    }

    #[test]
    fn inspections_are_validated_with_field_names() {
        let mut i = rules::tests::inspection(0.7, Verdict::Defect);
        assert!(i.validate().is_ok());
        i.model_sha256 = "abc".into();
        assert!(i.validate().unwrap_err().contains("model_sha256"));
        i = rules::tests::inspection(f64::NAN, Verdict::Good);
        assert!(i.validate().unwrap_err().contains("score"));
    }
}
