//! Rules that turn inspection results into human work: when a secondary inspection opens,
//! which accepted parts are sampled for audit, and when a reject rate raises an NCR.
//! Also the `[quality]` configuration section that tunes them.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Verdict;

/// `[quality]` settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QualityConfig {
    /// A score within this distance of the threshold (either side) is uncertain and goes to a
    /// human even when the verdict is good.
    pub uncertainty_band: f64,
    /// Sample accepted parts for human audit (ISO 2859-1 general inspection level II).
    pub accept_sampling: bool,
    /// Acceptable quality limit in percent, recorded with sampled tasks (e.g. 0.65).
    pub aql_percent: f64,
    /// Lot size the sample size is computed for (ISO 2859-1 Table 1, level II).
    pub expected_lot_size: u32,
    /// Most secondary inspections one part may get.
    pub reinspection_cap: u32,
    /// Number of most recent inspections of a lot the reject rate is computed over.
    pub reject_rate_window: u32,
    /// Reject fraction (0–1) above which an NCR is raised for the lot.
    pub reject_rate_alert: f64,
    /// Fewest inspections in the window before the reject rate is judged.
    pub reject_rate_min_inspections: u32,
    /// Defect classes whose confirmation by an inspector raises an NCR.
    pub critical_defect_classes: Vec<String>,
    /// Images and overlays older than this are deleted (their records stay).
    pub image_retention_days: u32,
    /// Disk space images may use; the oldest go first when it is exceeded.
    pub image_quota_bytes: u64,
    /// Minutes between the passes of image keeping that `linesight run` and `linesight serve`
    /// make (retention, quota, left-over files); the first at start-up. 0 leaves it to
    /// `linesight images prune` (a timer of your own).
    pub image_prune_interval_minutes: u32,
    /// Where images are kept (default: `images` under the data folder).
    pub image_dir: Option<PathBuf>,
    /// Consecutive wrong passwords before an account locks.
    pub max_failed_logins: u32,
    /// How long a locked account stays locked.
    pub lockout_minutes: u32,
}

impl Default for QualityConfig {
    fn default() -> Self {
        QualityConfig {
            uncertainty_band: 0.05,
            accept_sampling: true,
            aql_percent: 0.65,
            expected_lot_size: 1200,
            reinspection_cap: 2,
            reject_rate_window: 200,
            reject_rate_alert: 0.05,
            reject_rate_min_inspections: 50,
            critical_defect_classes: Vec::new(),
            image_retention_days: 90,
            image_quota_bytes: 10 << 30,
            image_prune_interval_minutes: 60,
            image_dir: None,
            max_failed_logins: 5,
            lockout_minutes: 15,
        }
    }
}

impl QualityConfig {
    /// Problems with the values, each naming its key and limit.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !(0.0..=0.5).contains(&self.uncertainty_band) {
            p.push(format!(
                "quality.uncertainty_band = {}: must be between 0 and 0.5",
                self.uncertainty_band
            ));
        }
        if !(0.0..=100.0).contains(&self.aql_percent) || self.aql_percent == 0.0 {
            p.push(format!(
                "quality.aql_percent = {}: must be above 0 and at most 100",
                self.aql_percent
            ));
        }
        if self.expected_lot_size < 2 {
            p.push(format!(
                "quality.expected_lot_size = {}: must be at least 2",
                self.expected_lot_size
            ));
        }
        if !(1..=10).contains(&self.reinspection_cap) {
            p.push(format!(
                "quality.reinspection_cap = {}: must be between 1 and 10",
                self.reinspection_cap
            ));
        }
        if !(1..=100_000).contains(&self.reject_rate_window) {
            p.push(format!(
                "quality.reject_rate_window = {}: must be between 1 and 100000",
                self.reject_rate_window
            ));
        }
        if self.reject_rate_min_inspections > self.reject_rate_window {
            p.push(format!(
                "quality.reject_rate_min_inspections = {}: must not exceed reject_rate_window ({})",
                self.reject_rate_min_inspections, self.reject_rate_window
            ));
        }
        if !(0.0..1.0).contains(&self.reject_rate_alert) {
            p.push(format!(
                "quality.reject_rate_alert = {}: must be at least 0 and below 1",
                self.reject_rate_alert
            ));
        }
        if self.max_failed_logins == 0 || self.max_failed_logins > 100 {
            p.push(format!(
                "quality.max_failed_logins = {}: must be between 1 and 100",
                self.max_failed_logins
            ));
        }
        if !(1..=10_080).contains(&self.lockout_minutes) {
            p.push(format!(
                "quality.lockout_minutes = {}: must be between 1 and 10080 (a week); 0 would \
                 switch the lockout off",
                self.lockout_minutes
            ));
        }
        if self.image_quota_bytes < 1 << 20 {
            p.push(format!(
                "quality.image_quota_bytes = {}: must be at least 1048576 (1 MiB)",
                self.image_quota_bytes
            ));
        }
        if self.image_prune_interval_minutes > 10_080 {
            p.push(format!(
                "quality.image_prune_interval_minutes = {}: must be at most 10080 (a week), or 0 for none",
                self.image_prune_interval_minutes
            ));
        }
        p
    }

    /// Accept one in this many good parts for audit (≥ 1), from the level II sample size.
    pub fn accept_sampling_interval(&self) -> u32 {
        let n = sample_size_level_ii(self.expected_lot_size);
        (self.expected_lot_size / n).max(1)
    }

    pub fn lockout(&self) -> super::LockoutPolicy {
        super::LockoutPolicy {
            max_failures: self.max_failed_logins,
            lockout_ms: i64::from(self.lockout_minutes) * 60_000,
        }
    }
}

/// ISO 2859-1 Table 1 (general inspection level II) code letter, then Table 2-A sample size.
pub fn sample_size_level_ii(lot_size: u32) -> u32 {
    const TABLE: [(u32, u32); 15] = [
        (8, 2),
        (15, 3),
        (25, 5),
        (50, 8),
        (90, 13),
        (150, 20),
        (280, 32),
        (500, 50),
        (1_200, 80),
        (3_200, 125),
        (10_000, 200),
        (35_000, 315),
        (150_000, 500),
        (500_000, 800),
        (u32::MAX, 1_250),
    ];
    let n = TABLE
        .iter()
        .find(|(max, _)| lot_size <= *max)
        .map_or(1_250, |t| t.1);
    n.min(lot_size.max(1))
}

/// Why a result goes to a human.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpeningReason {
    /// The machine rejected the part.
    Reject,
    /// The score lies within the uncertainty band around the threshold.
    Uncertain,
    /// A good part drawn by accept sampling.
    Sampled,
    /// A pass of a part found defective before (by the machine, with no inspector finding
    /// that inspection good, or by an inspector) and not found good by an inspector since. A
    /// person decides, so that a part is not re-tested into acceptance.
    Retest,
}

impl OpeningReason {
    pub fn as_str(self) -> &'static str {
        match self {
            OpeningReason::Reject => "reject",
            OpeningReason::Uncertain => "uncertain",
            OpeningReason::Sampled => "sampled",
            OpeningReason::Retest => "retest",
        }
    }
}

/// Whether an inspection opens a secondary-inspection task. `accepts_before` is how many good
/// parts the lot had before this one (systematic sampling: every k-th accept);
/// `found_defective_before`: the part was rejected and not cleared since (see
/// [`OpeningReason::Retest`]).
pub fn opening_reason(
    cfg: &QualityConfig,
    verdict: Verdict,
    score: f64,
    threshold: f64,
    accepts_before: u64,
    found_defective_before: bool,
) -> Option<OpeningReason> {
    if verdict == Verdict::Defect {
        return Some(OpeningReason::Reject);
    }
    if found_defective_before {
        return Some(OpeningReason::Retest);
    }
    if (score - threshold).abs() <= cfg.uncertainty_band {
        return Some(OpeningReason::Uncertain);
    }
    let k = u64::from(cfg.accept_sampling_interval());
    if cfg.accept_sampling && (accepts_before + 1).is_multiple_of(k) {
        return Some(OpeningReason::Sampled);
    }
    None
}

/// Whether `rejects` out of the last `total` inspections exceed the alert limit.
pub fn reject_rate_exceeded(cfg: &QualityConfig, rejects: u64, total: u64) -> bool {
    total >= u64::from(cfg.reject_rate_min_inspections.max(1))
        && rejects as f64 / total as f64 > cfg.reject_rate_alert
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::quality::NewInspection;

    pub(crate) fn inspection(score: f64, verdict: Verdict) -> NewInspection {
        NewInspection {
            part_id: "P-1".into(),
            lot: "L-1".into(),
            line: "line-1".into(),
            recipe: "washer".into(),
            camera: "cam0".into(),
            model_name: "padim".into(),
            model_sha256: "ab".repeat(32),
            threshold: 0.5,
            score,
            verdict,
            regions_json: "[]".into(),
            image_ref: None,
            overlay_ref: None,
            timings_json: "{}".into(),
            source: "automatic".into(),
            defect_class: None,
        }
    }

    #[test]
    fn rejects_and_uncertain_scores_open_tasks() {
        let cfg = QualityConfig {
            accept_sampling: false,
            ..QualityConfig::default()
        };
        assert_eq!(
            opening_reason(&cfg, Verdict::Defect, 0.9, 0.5, 0, false),
            Some(OpeningReason::Reject)
        );
        assert_eq!(
            opening_reason(&cfg, Verdict::Good, 0.46, 0.5, 0, false),
            Some(OpeningReason::Uncertain)
        );
        assert_eq!(
            opening_reason(&cfg, Verdict::Good, 0.54, 0.5, 0, false),
            Some(OpeningReason::Uncertain)
        );
        assert_eq!(
            opening_reason(&cfg, Verdict::Good, 0.44, 0.5, 0, false),
            None
        );
        // A pass of a part found defective before goes to a person, clear or near the line.
        for score in [0.1, 0.46] {
            assert_eq!(
                opening_reason(&cfg, Verdict::Good, score, 0.5, 0, true),
                Some(OpeningReason::Retest)
            );
        }
        assert_eq!(
            opening_reason(&cfg, Verdict::Defect, 0.9, 0.5, 0, true),
            Some(OpeningReason::Reject)
        );
    }

    #[test]
    fn accept_sampling_follows_iso_2859_level_ii() {
        assert_eq!(sample_size_level_ii(1200), 80);
        assert_eq!(sample_size_level_ii(1201), 125);
        assert_eq!(sample_size_level_ii(8), 2);
        assert_eq!(sample_size_level_ii(2), 2);
        assert_eq!(sample_size_level_ii(1_000_000), 1250);
        let cfg = QualityConfig::default();
        assert_eq!(cfg.accept_sampling_interval(), 15);
        let sampled = (0..1200u64)
            .filter(|&before| {
                opening_reason(&cfg, Verdict::Good, 0.1, 0.5, before, false).is_some()
            })
            .count();
        assert_eq!(
            sampled, 80,
            "one lot of 1200 accepts yields the level II sample"
        );
    }

    #[test]
    fn reject_rate_alert_needs_enough_inspections() {
        let cfg = QualityConfig::default();
        assert!(!reject_rate_exceeded(&cfg, 10, 20), "too few to judge");
        assert!(
            !reject_rate_exceeded(&cfg, 10, 200),
            "exactly 5 % is not above"
        );
        assert!(reject_rate_exceeded(&cfg, 11, 200));
    }

    #[test]
    fn config_problems_name_keys_and_limits() {
        let cfg = QualityConfig {
            uncertainty_band: 0.9,
            reinspection_cap: 0,
            reject_rate_alert: 1.5,
            image_prune_interval_minutes: 20_000,
            lockout_minutes: 0,
            ..QualityConfig::default()
        };
        let p = cfg.problems();
        assert_eq!(p.len(), 5, "{p:?}");
        assert!(
            p.iter()
                .any(|m| m.starts_with("quality.lockout_minutes = 0: must be between 1")),
            "{p:?}"
        );
        assert!(p[0].contains("quality.uncertainty_band = 0.9"));
        assert!(
            p.iter().any(|m| m
                .contains("quality.image_prune_interval_minutes = 20000: must be at most 10080")),
            "{p:?}"
        );
        assert!(QualityConfig::default().problems().is_empty());
    }
}
