//! Which inspections become training samples, and the SageMaker Ground Truth manifest line of
//! one sample. Pure: the store applies the daily quotas and keeps the lines.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::quality::Verdict;

/// `[outbox.upload.sampling]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingConfig {
    /// Every rejected part.
    pub all_rejects: bool,
    /// Every part whose human decision differs from the machine verdict.
    pub all_overridden: bool,
    /// Share of accepted parts, 0 to 100 (chosen by a hash of the inspection id, so the choice
    /// is the same on every instance and after a restart).
    pub accept_percent: f64,
    /// Scores within this distance of the threshold (either side).
    pub uncertainty_band: f64,
    /// Samples per UTC day and class (defect class, else `good` / `defect`); 0 = no quota.
    /// Human overrides are not counted against it.
    pub daily_quota_per_class: u32,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            all_rejects: true,
            all_overridden: true,
            accept_percent: 1.0,
            uncertainty_band: 0.05,
            daily_quota_per_class: 1000,
        }
    }
}

impl SamplingConfig {
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !(0.0..=100.0).contains(&self.accept_percent) {
            p.push(format!(
                "outbox.upload.sampling.accept_percent = {}: must be between 0 and 100",
                self.accept_percent
            ));
        }
        if !(self.uncertainty_band >= 0.0 && self.uncertainty_band.is_finite()) {
            p.push(format!(
                "outbox.upload.sampling.uncertainty_band = {}: must be a number >= 0",
                self.uncertainty_band
            ));
        }
        p
    }
}

/// Why an inspection was sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SamplingReason {
    Reject,
    Uncertain,
    AcceptSample,
    HumanOverride,
}

/// Whether a fresh machine result is sampled (quotas aside).
pub fn sampling_reason(
    cfg: &SamplingConfig,
    inspection_id: i64,
    verdict: Verdict,
    score: f64,
    threshold: f64,
) -> Option<SamplingReason> {
    if verdict == Verdict::Defect && cfg.all_rejects {
        return Some(SamplingReason::Reject);
    }
    if (score - threshold).abs() <= cfg.uncertainty_band {
        return Some(SamplingReason::Uncertain);
    }
    if verdict == Verdict::Good && cfg.accept_percent > 0.0 {
        let h = Sha256::digest(inspection_id.to_le_bytes());
        let bucket = u64::from_le_bytes(h[..8].try_into().unwrap_or([0; 8])) % 10_000;
        if (bucket as f64) < cfg.accept_percent * 100.0 {
            return Some(SamplingReason::AcceptSample);
        }
    }
    None
}

/// One line of the daily Ground Truth image-classification manifest. `human` is the inspector's
/// label when there is one; it wins over the machine's.
pub fn manifest_line(
    source_ref: &str,
    label_attribute: &str,
    machine: Verdict,
    human: Option<Verdict>,
    at_ms: i64,
) -> String {
    let label = human.unwrap_or(machine);
    let (value, class) = match label {
        Verdict::Good => (0, "normal"),
        Verdict::Defect => (1, "anomaly"),
    };
    let mut line = serde_json::Map::new();
    line.insert("source-ref".into(), source_ref.into());
    line.insert(label_attribute.into(), value.into());
    line.insert(
        format!("{label_attribute}-metadata"),
        serde_json::json!({
            "class-name": class,
            "confidence": 1.0,
            "type": "groundtruth/image-classification",
            "human-annotated": if human.is_some() { "yes" } else { "no" },
            "creation-date": creation_date(at_ms),
        }),
    );
    serde_json::Value::Object(line).to_string()
}

/// `YYYY-MM-DDTHH:MM:SS` (UTC), the form Ground Truth writes.
fn creation_date(at_ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(at_ms.max(0) as u64);
    let s = humantime::format_rfc3339_seconds(t).to_string();
    s.trim_end_matches('Z').to_owned()
}

/// The UTC day `YYYY-MM-DD` of a timestamp.
pub(crate) fn day_of(at_ms: i64) -> String {
    creation_date(at_ms)[..10].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_uncertain_and_a_share_of_accepts_are_sampled() {
        let cfg = SamplingConfig {
            accept_percent: 10.0,
            ..SamplingConfig::default()
        };
        assert_eq!(
            sampling_reason(&cfg, 1, Verdict::Defect, 0.9, 0.5),
            Some(SamplingReason::Reject)
        );
        assert_eq!(
            sampling_reason(&cfg, 1, Verdict::Good, 0.47, 0.5),
            Some(SamplingReason::Uncertain)
        );
        let taken = (0..10_000)
            .filter(|&id| sampling_reason(&cfg, id, Verdict::Good, 0.1, 0.5).is_some())
            .count();
        assert!((800..1200).contains(&taken), "{taken} of 10000 at 10 %");
        let none = SamplingConfig {
            accept_percent: 0.0,
            ..cfg
        };
        assert_eq!(sampling_reason(&none, 7, Verdict::Good, 0.1, 0.5), None);
    }

    #[test]
    fn manifest_line_takes_the_human_label() {
        let line = manifest_line(
            "s3://b/k.png",
            "anomaly",
            Verdict::Defect,
            Some(Verdict::Good),
            1_763_892_000_000,
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["source-ref"], "s3://b/k.png");
        assert_eq!(v["anomaly"], 0);
        assert_eq!(v["anomaly-metadata"]["class-name"], "normal");
        assert_eq!(v["anomaly-metadata"]["human-annotated"], "yes");
        assert_eq!(
            v["anomaly-metadata"]["creation-date"],
            "2025-11-23T10:00:00"
        );
        assert_eq!(day_of(1_763_892_000_000), "2025-11-23");
    }
}
