//! Detection metrics: AUROC, ROC curves, and precision/recall/F1/accuracy at a threshold.
//!
//! Invariants:
//! - **Exact with ties.** AUROC is the area under the ROC curve whose steps group equal scores
//!   (a tie between a defect and a good sample counts one half), which is the value of sklearn's
//!   `roc_auc_score` and of the Mann–Whitney U statistic divided by `P × N`. The area is summed in
//!   integers, so the only rounding is the final division.
//! - **One ordering of scores everywhere.** Scores are compared through an order-preserving `u32`
//!   key of the `f32` bits ([`score_key`]): `-0.0` equals `0.0`, and NaN ranks as `-inf` (the
//!   lowest score). That matches the verdict rule `score > threshold`, which never calls a NaN
//!   score a defect.
//! - **Verdicts are strict.** [`BinaryCounts`] counts a sample as predicted defective when
//!   `score > threshold`, anomalib's `pred_label = pred_score > threshold`. ROC points follow
//!   sklearn instead (`score >= threshold`); both describe the same set of operating points.
//! - **Pixel AUROC is exact and lean.** [`PixelAurocAccumulator`] keeps one `u32` per pixel (the
//!   score key, in a defect list or a good list), so a 583-image MVTec-size test split
//!   (583 × 256 × 256 ≈ 38 M pixels) needs ~153 MB and two `sort_unstable` calls — no precision is
//!   given up for the memory saving.

use serde::Serialize;

/// Errors of the metric accumulators.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MetricsError {
    #[error(
        "anomaly map has {map_len} values but the mask has {mask_len}; they must cover the same pixels"
    )]
    LengthMismatch { map_len: usize, mask_len: usize },
}

/// Order-preserving key of an `f32` score: `a < b` ⇔ `score_key(a) < score_key(b)` and
/// `a == b` ⇔ equal keys, for all non-NaN scores (so `-0.0` and `0.0` share a key).
/// NaN maps to the key of `-inf`, the lowest score.
pub fn score_key(score: f32) -> u32 {
    let canonical = if score.is_nan() {
        f32::NEG_INFINITY
    } else if score == 0.0 {
        0.0 // folds -0.0 into +0.0
    } else {
        score
    };
    let bits = canonical.to_bits();
    // Positive floats order like their bits; setting the sign bit lifts them above all negatives.
    // Negative floats order backwards, so all bits are flipped.
    if bits & 0x8000_0000 == 0 {
        bits | 0x8000_0000
    } else {
        !bits
    }
}

/// The `f32` a [`score_key`] came from (canonical: `+0.0`, never NaN).
pub fn key_score(key: u32) -> f32 {
    let bits = if key & 0x8000_0000 != 0 {
        key & 0x7fff_ffff
    } else {
        !key
    };
    f32::from_bits(bits)
}

/// One point of a ROC curve: predicting "defect" for `score >= threshold` gives these rates.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RocPoint {
    /// False-positive rate: good samples flagged / good samples.
    pub fpr: f64,
    /// True-positive rate: defect samples flagged / defect samples.
    pub tpr: f64,
    /// The score threshold, inclusive; `+inf` for the first point (nothing flagged), as sklearn
    /// does. Serialised as `null` when infinite (JSON has no infinity).
    pub threshold: f64,
}

/// Area under the ROC curve, exact with ties (sklearn's `roc_auc_score`).
///
/// `labels[i]` is `true` for a defect (the positive class). Returns `None` when only one class is
/// present, where AUROC is undefined.
///
/// # Panics
/// If `scores` and `labels` differ in length (a bug in the caller, not bad input).
pub fn auroc(scores: &[f32], labels: &[bool]) -> Option<f64> {
    let (mut defect, mut good) = split_keys(scores, labels);
    defect.sort_unstable();
    good.sort_unstable();
    auroc_sorted(&defect, &good)
}

/// The ROC curve, one point per distinct score plus the `(0, 0)` start at threshold `+inf`;
/// sklearn's `roc_curve(labels, scores, drop_intermediate=False)`. Points run from the highest
/// threshold to the lowest; the last one is `(1, 1)`.
///
/// Returns an empty curve when only one class is present. The curve has at most
/// `scores.len() + 1` points — a few hundred for an image-level test split, small enough to plot.
///
/// # Panics
/// If `scores` and `labels` differ in length.
pub fn roc_curve(scores: &[f32], labels: &[bool]) -> Vec<RocPoint> {
    let (mut defect, mut good) = split_keys(scores, labels);
    if defect.is_empty() || good.is_empty() {
        return Vec::new();
    }
    defect.sort_unstable();
    good.sort_unstable();
    let (p, n) = (defect.len() as f64, good.len() as f64);
    let mut points = vec![RocPoint {
        fpr: 0.0,
        tpr: 0.0,
        threshold: f64::INFINITY,
    }];
    walk_descending(&defect, &good, |key, tp, fp| {
        points.push(RocPoint {
            fpr: fp as f64 / n,
            tpr: tp as f64 / p,
            threshold: f64::from(key_score(key)),
        });
    });
    points
}

/// Confusion counts at a threshold, with the rule **defect = `score > threshold`** (strict).
///
/// Ratios whose denominator is zero are undefined and come back as `None` (JSON `null`,
/// shown as "n/a"), rather than sklearn's default of 0, so a report never shows a made-up number:
/// - [`precision`](Self::precision) `= tp / (tp + fp)`: `None` when nothing was flagged.
/// - [`recall`](Self::recall) `= tp / (tp + fn)`: `None` when there are no defects.
/// - [`f1`](Self::f1) `= 2tp / (2tp + fp + fn)` (the harmonic mean of the two, written so that
///   it stays defined when only one of them is): `None` only when there are no defects and
///   nothing was flagged; `0.0` when defects exist and none was flagged.
/// - [`accuracy`](Self::accuracy) `= (tp + tn) / total`: `None` when there are no samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct BinaryCounts {
    /// Defects flagged as defects.
    pub tp: u64,
    /// Good samples flagged as defects (false alarms).
    pub fp: u64,
    /// Good samples passed as good.
    pub tn: u64,
    /// Defects passed as good (escapes).
    #[serde(rename = "fn")]
    pub fn_: u64,
}

impl BinaryCounts {
    /// Counts `scores` against `labels` (`true` = defect) at `threshold`.
    ///
    /// # Panics
    /// If `scores` and `labels` differ in length.
    pub fn at_threshold(scores: &[f32], labels: &[bool], threshold: f32) -> BinaryCounts {
        let mut counts = BinaryCounts::default();
        counts.add(scores, labels, threshold);
        counts
    }

    /// Adds more samples (for example one anomaly map and its mask) to the counts.
    ///
    /// # Panics
    /// If `scores` and `labels` differ in length.
    pub fn add(&mut self, scores: &[f32], labels: &[bool], threshold: f32) {
        assert_same_len(scores.len(), labels.len());
        for (&score, &is_defect) in scores.iter().zip(labels) {
            self.add_one(score, is_defect, threshold);
        }
    }

    /// Adds one sample.
    pub fn add_one(&mut self, score: f32, is_defect: bool, threshold: f32) {
        match (score > threshold, is_defect) {
            (true, true) => self.tp += 1,
            (true, false) => self.fp += 1,
            (false, false) => self.tn += 1,
            (false, true) => self.fn_ += 1,
        }
    }

    /// Number of samples counted.
    pub fn total(&self) -> u64 {
        self.tp + self.fp + self.tn + self.fn_
    }

    /// `tp / (tp + fp)`; `None` when nothing was flagged.
    pub fn precision(&self) -> Option<f64> {
        ratio(self.tp, self.tp + self.fp)
    }

    /// `tp / (tp + fn)`; `None` when there are no defects.
    pub fn recall(&self) -> Option<f64> {
        ratio(self.tp, self.tp + self.fn_)
    }

    /// `2tp / (2tp + fp + fn)`; `None` when there are no defects and nothing was flagged.
    pub fn f1(&self) -> Option<f64> {
        ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn_)
    }

    /// `(tp + tn) / total`; `None` when there are no samples.
    pub fn accuracy(&self) -> Option<f64> {
        ratio(self.tp + self.tn, self.total())
    }
}

/// Pixel-level AUROC and F1 over a whole test split, fed one image at a time.
///
/// Every pixel is kept as one `u32` score key in a defect list or a good list (4 bytes per pixel,
/// no precision lost); [`finish`](Self::finish) sorts both lists once and walks them together.
/// For 583 maps of 256 × 256 that is ~153 MB and two sorts of a few seconds on one core.
///
/// Feed **good images too** (their pixels are all good: [`add_all_good`](Self::add_all_good));
/// anomalib's pixel metrics include them. Defect images without a ground-truth mask must be left
/// out, since their pixels cannot be labelled.
#[derive(Debug, Clone, Default)]
pub struct PixelAurocAccumulator {
    defect: Vec<u32>,
    good: Vec<u32>,
    sorted: bool,
}

impl PixelAurocAccumulator {
    /// An empty accumulator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one anomaly map and its ground-truth mask (`true` = defect pixel), both row-major at
    /// the same size.
    pub fn add(&mut self, map: &[f32], mask: &[bool]) -> Result<(), MetricsError> {
        if map.len() != mask.len() {
            return Err(MetricsError::LengthMismatch {
                map_len: map.len(),
                mask_len: mask.len(),
            });
        }
        let n_defect = mask.iter().filter(|&&m| m).count();
        self.defect.reserve(n_defect);
        self.good.reserve(map.len() - n_defect);
        for (&score, &is_defect) in map.iter().zip(mask) {
            if is_defect {
                self.defect.push(score_key(score));
            } else {
                self.good.push(score_key(score));
            }
        }
        self.sorted = false;
        Ok(())
    }

    /// Adds the anomaly map of a good image (no mask: every pixel is good).
    pub fn add_all_good(&mut self, map: &[f32]) {
        self.good.extend(map.iter().map(|&s| score_key(s)));
        self.sorted = false;
    }

    /// Pixels added so far: `(defect, good)`.
    pub fn n_pixels(&self) -> (usize, usize) {
        (self.defect.len(), self.good.len())
    }

    /// Pixel AUROC over everything added so far; `None` unless both defect and good pixels exist.
    /// Sorts on the first call after an `add`; later calls are cheap.
    pub fn finish(&mut self) -> Option<f64> {
        self.sort();
        auroc_sorted(&self.defect, &self.good)
    }

    /// Pixel confusion counts at `threshold` (defect = `score > threshold`), by binary search in
    /// the sorted lists.
    pub fn counts_at(&mut self, threshold: f32) -> BinaryCounts {
        self.sort();
        // Keys above the threshold's key are exactly the scores `> threshold` (a NaN threshold
        // ranks as -inf, so then every non-NaN score counts as flagged).
        let t = score_key(threshold);
        let defect_at_or_below = self.defect.partition_point(|&k| k <= t) as u64;
        let good_at_or_below = self.good.partition_point(|&k| k <= t) as u64;
        BinaryCounts {
            tp: self.defect.len() as u64 - defect_at_or_below,
            fp: self.good.len() as u64 - good_at_or_below,
            tn: good_at_or_below,
            fn_: defect_at_or_below,
        }
    }

    /// Pixel F1 at `threshold` (see [`BinaryCounts::f1`]), pooled over all pixels added.
    pub fn pixel_f1(&mut self, threshold: f32) -> Option<f64> {
        self.counts_at(threshold).f1()
    }

    fn sort(&mut self) {
        if !self.sorted {
            self.defect.sort_unstable();
            self.good.sort_unstable();
            self.sorted = true;
        }
    }
}

fn assert_same_len(scores: usize, labels: usize) {
    assert_eq!(
        scores, labels,
        "scores and labels must have the same length ({scores} scores, {labels} labels)"
    );
}

fn ratio(numerator: u64, denominator: u64) -> Option<f64> {
    (denominator > 0).then(|| numerator as f64 / denominator as f64)
}

fn split_keys(scores: &[f32], labels: &[bool]) -> (Vec<u32>, Vec<u32>) {
    assert_same_len(scores.len(), labels.len());
    let mut defect = Vec::new();
    let mut good = Vec::new();
    for (&score, &is_defect) in scores.iter().zip(labels) {
        if is_defect {
            defect.push(score_key(score));
        } else {
            good.push(score_key(score));
        }
    }
    (defect, good)
}

/// AUROC from ascending-sorted defect and good keys.
fn auroc_sorted(defect: &[u32], good: &[u32]) -> Option<f64> {
    if defect.is_empty() || good.is_empty() {
        return None;
    }
    // Twice the area, in units of (1 good) × (1 defect): each step right by `dfp` good samples
    // while rising by `dtp` defects adds the trapezoid dfp × (2·tp_before + dtp). Integer sums keep
    // it exact; at most 2·P·N, far below u128's range.
    let mut twice_area: u128 = 0;
    let mut tp_before: u64 = 0;
    let mut fp_before: u64 = 0;
    walk_descending(defect, good, |_, tp, fp| {
        let (dtp, dfp) = (tp - tp_before, fp - fp_before);
        twice_area += u128::from(dfp) * u128::from(2 * tp_before + dtp);
        tp_before = tp;
        fp_before = fp;
    });
    let denominator = 2 * defect.len() as u128 * good.len() as u128;
    Some(twice_area as f64 / denominator as f64)
}

/// Visits the distinct keys of two ascending-sorted lists from the highest down, calling
/// `visit(key, tp, fp)` with the cumulative counts of defect and good keys `>= key`.
fn walk_descending(defect: &[u32], good: &[u32], mut visit: impl FnMut(u32, u64, u64)) {
    let (mut i, mut j) = (defect.len(), good.len());
    loop {
        let key = match (defect[..i].last(), good[..j].last()) {
            (Some(&a), Some(&b)) => a.max(b),
            (Some(&a), None) => a,
            (None, Some(&b)) => b,
            (None, None) => break,
        };
        while i > 0 && defect[i - 1] == key {
            i -= 1;
        }
        while j > 0 && good[j - 1] == key {
            j -= 1;
        }
        visit(key, (defect.len() - i) as u64, (good.len() - j) as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    /// Made by `tools/golden/make_metrics_golden.py`: pairwise-comparison AUROC and
    /// threshold-counting ROC in NumPy, cross-checked against scikit-learn.
    const GOLDEN: &str = include_str!("../../testdata/golden/metrics/metrics_golden.json");

    struct Case {
        name: String,
        scores: Vec<f32>,
        labels: Vec<bool>,
        json: Value,
    }

    fn golden_cases() -> Vec<Case> {
        let doc: Value = serde_json::from_str(GOLDEN).expect("golden file is valid JSON");
        doc["cases"]
            .as_array()
            .expect("cases")
            .iter()
            .map(|c| Case {
                name: c["name"].as_str().expect("name").to_owned(),
                // The golden holds exact decimal forms of float32 values: the cast is lossless.
                scores: c["scores"]
                    .as_array()
                    .expect("scores")
                    .iter()
                    .map(|v| v.as_f64().expect("score") as f32)
                    .collect(),
                labels: c["labels"]
                    .as_array()
                    .expect("labels")
                    .iter()
                    .map(|v| v.as_bool().expect("label"))
                    .collect(),
                json: c.clone(),
            })
            .collect()
    }

    fn opt_f64(v: &Value) -> Option<f64> {
        v.as_f64()
    }

    fn assert_close(got: Option<f64>, want: Option<f64>, what: &str) {
        match (got, want) {
            (Some(g), Some(w)) => assert!((g - w).abs() <= 1e-12, "{what}: got {g}, want {w}"),
            (None, None) => {}
            _ => panic!("{what}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn golden_has_the_expected_cases() {
        let names: Vec<String> = golden_cases().into_iter().map(|c| c.name).collect();
        assert_eq!(names.len(), 9, "{names:?}");
        assert!(names.iter().any(|n| n == "signed_zero_and_negative"));
    }

    #[test]
    fn auroc_matches_golden_and_sklearn() {
        for case in golden_cases() {
            let got = auroc(&case.scores, &case.labels);
            assert_close(got, opt_f64(&case.json["auroc"]), &case.name);
            if let Some(sk) = case.json.get("auroc_sklearn") {
                assert_close(got, opt_f64(sk), &format!("{} (sklearn)", case.name));
            }
        }
    }

    #[test]
    fn roc_curve_matches_golden() {
        for case in golden_cases() {
            let got = roc_curve(&case.scores, &case.labels);
            let want = case.json["roc"].as_array().expect("roc");
            assert_eq!(got.len(), want.len(), "{}: number of ROC points", case.name);
            for (k, (g, w)) in got.iter().zip(want).enumerate() {
                let ctx = format!("{} point {k}", case.name);
                assert_close(Some(g.fpr), w["fpr"].as_f64(), &ctx);
                assert_close(Some(g.tpr), w["tpr"].as_f64(), &ctx);
                match w["threshold"].as_f64() {
                    None => assert_eq!(g.threshold, f64::INFINITY, "{ctx}"),
                    // Compared as f32: serde_json's default float parser may land one f64 ulp
                    // away from the decimal, never a whole f32 ulp. `==` also equates -0.0 and
                    // 0.0, as NumPy does.
                    Some(t) => assert!(
                        g.threshold as f32 == t as f32,
                        "{ctx}: {} vs {t}",
                        g.threshold
                    ),
                }
            }
        }
    }

    #[test]
    fn counts_and_ratios_match_golden() {
        for case in golden_cases() {
            for row in case.json["counts"].as_array().expect("counts") {
                let t = row["threshold"].as_f64().expect("threshold") as f32;
                let c = BinaryCounts::at_threshold(&case.scores, &case.labels, t);
                let ctx = format!("{} at {t}", case.name);
                let want = |k: &str| row[k].as_u64().expect("count");
                assert_eq!(
                    (c.tp, c.fp, c.tn, c.fn_),
                    (want("tp"), want("fp"), want("tn"), want("fn")),
                    "{ctx}"
                );
                assert_close(c.precision(), opt_f64(&row["precision"]), &ctx);
                assert_close(c.recall(), opt_f64(&row["recall"]), &ctx);
                assert_close(c.f1(), opt_f64(&row["f1"]), &ctx);
                assert_close(c.accuracy(), opt_f64(&row["accuracy"]), &ctx);
            }
        }
    }

    #[test]
    fn pixel_accumulator_matches_golden_fed_map_by_map() {
        let case = golden_cases()
            .into_iter()
            .find(|c| c.name == "pixel_maps_3x32x32")
            .expect("pixel case");
        let map_len = case.json["map_len"].as_u64().expect("map_len") as usize;
        let mut acc = PixelAurocAccumulator::new();
        for (map, mask) in case.scores.chunks(map_len).zip(case.labels.chunks(map_len)) {
            if mask.iter().any(|&m| m) {
                acc.add(map, mask).expect("same length");
            } else {
                acc.add_all_good(map);
            }
        }
        assert_eq!(acc.n_pixels().0 + acc.n_pixels().1, case.scores.len());
        assert_close(acc.finish(), opt_f64(&case.json["auroc"]), "pixel AUROC");
        // finish() is idempotent.
        assert_close(
            acc.finish(),
            opt_f64(&case.json["auroc"]),
            "pixel AUROC again",
        );
        for row in case.json["counts"].as_array().expect("counts") {
            let t = row["threshold"].as_f64().expect("threshold") as f32;
            let c = acc.counts_at(t);
            assert_eq!(
                (c.tp, c.fp, c.tn, c.fn_),
                (
                    row["tp"].as_u64().unwrap_or(u64::MAX),
                    row["fp"].as_u64().unwrap_or(u64::MAX),
                    row["tn"].as_u64().unwrap_or(u64::MAX),
                    row["fn"].as_u64().unwrap_or(u64::MAX)
                ),
                "pixel counts at {t}"
            );
            assert_close(acc.pixel_f1(t), opt_f64(&row["f1"]), "pixel F1");
        }
    }

    #[test]
    fn hand_computed_small_cases() {
        // Perfect separation, inverted separation, and a single tie worth one half.
        assert_eq!(
            auroc(&[0.1, 0.2, 0.8, 0.9], &[false, false, true, true]),
            Some(1.0)
        );
        assert_eq!(
            auroc(&[0.9, 0.8, 0.2, 0.1], &[false, false, true, true]),
            Some(0.0)
        );
        assert_eq!(auroc(&[0.5, 0.5], &[true, false]), Some(0.5));
        // One class only: undefined.
        assert_eq!(auroc(&[0.1, 0.2], &[true, true]), None);
        assert_eq!(auroc(&[], &[]), None);
        assert!(roc_curve(&[0.1, 0.2], &[false, false]).is_empty());
        // -0.0 and 0.0 are the same score: a tie.
        assert_eq!(auroc(&[-0.0, 0.0], &[true, false]), Some(0.5));
    }

    #[test]
    fn nan_scores_rank_lowest() {
        // NaN defect ranks below the good 0.1 → that pair is lost; like -inf.
        let with_nan = auroc(&[f32::NAN, 0.9, 0.1], &[true, true, false]);
        let with_neg_inf = auroc(&[f32::NEG_INFINITY, 0.9, 0.1], &[true, true, false]);
        assert_eq!(with_nan, Some(0.5));
        assert_eq!(with_nan, with_neg_inf);
        // And the verdict rule never flags NaN.
        let c = BinaryCounts::at_threshold(&[f32::NAN], &[true], 0.5);
        assert_eq!(c.fn_, 1);
    }

    #[test]
    fn threshold_is_strict() {
        // A score equal to the threshold is good (anomalib: pred_score > threshold).
        let c = BinaryCounts::at_threshold(&[0.5, 0.5000001, 0.4], &[true, true, false], 0.5);
        assert_eq!((c.tp, c.fp, c.tn, c.fn_), (1, 0, 1, 1));
        let mut acc = PixelAurocAccumulator::new();
        acc.add(&[0.5, 0.5000001, 0.4], &[true, true, false])
            .expect("same length");
        assert_eq!(acc.counts_at(0.5), c);
    }

    #[test]
    fn zero_denominators_are_none_not_zero() {
        // Nothing flagged, defects present: precision undefined, recall and F1 are 0.
        let c = BinaryCounts {
            tp: 0,
            fp: 0,
            tn: 5,
            fn_: 3,
        };
        assert_eq!(
            (c.precision(), c.recall(), c.f1()),
            (None, Some(0.0), Some(0.0))
        );
        // No defects at all and nothing flagged: recall and F1 undefined, accuracy 1.
        let c = BinaryCounts {
            tp: 0,
            fp: 0,
            tn: 5,
            fn_: 0,
        };
        assert_eq!(
            (c.precision(), c.recall(), c.f1(), c.accuracy()),
            (None, None, None, Some(1.0))
        );
        assert_eq!(BinaryCounts::default().accuracy(), None);
    }

    #[test]
    fn accumulator_rejects_mismatched_mask() {
        let mut acc = PixelAurocAccumulator::new();
        assert_eq!(
            acc.add(&[0.1, 0.2, 0.3], &[true, false]),
            Err(MetricsError::LengthMismatch {
                map_len: 3,
                mask_len: 2
            })
        );
        assert_eq!(acc.n_pixels(), (0, 0));
    }

    #[test]
    fn accumulator_can_grow_after_finish() {
        let mut acc = PixelAurocAccumulator::new();
        acc.add(&[0.9, 0.1], &[true, false]).expect("same length");
        assert_eq!(acc.finish(), Some(1.0));
        acc.add(&[0.05, 0.95], &[true, false]).expect("same length");
        assert_eq!(
            acc.finish(),
            auroc(&[0.9, 0.1, 0.05, 0.95], &[true, false, true, false])
        );
        // Pairs (defect, good): 0.9 beats 0.1 only, out of four.
        assert_eq!(acc.finish(), Some(0.25));
    }

    #[test]
    fn score_key_orders_like_floats() {
        let values = [
            f32::NEG_INFINITY,
            -1e30,
            -1.0,
            -f32::MIN_POSITIVE,
            -1e-45,
            0.0,
            1e-45,
            f32::MIN_POSITIVE,
            0.5,
            1.0,
            f32::MAX,
            f32::INFINITY,
        ];
        for w in values.windows(2) {
            assert!(score_key(w[0]) < score_key(w[1]), "{} < {}", w[0], w[1]);
        }
        for &v in &values {
            assert_eq!(key_score(score_key(v)), v);
        }
        assert_eq!(score_key(-0.0), score_key(0.0));
        assert_eq!(score_key(f32::NAN), score_key(f32::NEG_INFINITY));
    }

    /// Size check at MVTec scale: 583 maps of 256 × 256. Run with
    /// `cargo test --release --lib pixel_auroc_at_mvtec_scale -- --ignored --nocapture`.
    #[test]
    #[ignore = "allocates ~150 MB and takes seconds; run by hand"]
    fn pixel_auroc_at_mvtec_scale() {
        let (n_maps, side) = (583usize, 256usize);
        let mut acc = PixelAurocAccumulator::new();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut map = vec![0f32; side * side];
        let mut mask = vec![false; side * side];
        let start = std::time::Instant::now();
        for k in 0..n_maps {
            for (v, m) in map.iter_mut().zip(mask.iter_mut()) {
                // xorshift: cheap reproducible noise, defect pixels shifted up.
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *m = !k.is_multiple_of(3) && state.is_multiple_of(10);
                *v = ((state >> 40) % 4096) as f32 / 4096.0 + if *m { 0.2 } else { 0.0 };
            }
            acc.add(&map, &mask).expect("same length");
        }
        let filled = start.elapsed();
        let auc = acc.finish().expect("both classes");
        let f1 = acc.pixel_f1(0.5);
        println!(
            "{} pixels: fill {filled:?}, finish {:?}, AUROC {auc:.6}, F1@0.5 {f1:?}",
            n_maps * side * side,
            start.elapsed() - filled
        );
        assert!(auc > 0.6 && auc < 0.8, "{auc}");
    }

    /// Scores on a coarse grid so that ties are common.
    fn scored_samples() -> impl Strategy<Value = Vec<(f32, bool)>> {
        prop::collection::vec(
            ((-20i32..20).prop_map(|k| k as f32 / 8.0), any::<bool>()),
            2..200,
        )
    }

    proptest! {
        #[test]
        fn negating_scores_flips_auroc(samples in scored_samples()) {
            let (scores, labels): (Vec<f32>, Vec<bool>) = samples.into_iter().unzip();
            let negated: Vec<f32> = scores.iter().map(|s| -s).collect();
            match (auroc(&scores, &labels), auroc(&negated, &labels)) {
                (Some(a), Some(b)) => prop_assert!((a + b - 1.0).abs() <= 1e-12, "{a} + {b}"),
                (None, None) => prop_assert!(labels.iter().all(|&l| l) || labels.iter().all(|&l| !l)),
                other => prop_assert!(false, "one defined, one not: {other:?}"),
            }
        }

        #[test]
        fn auroc_equals_pairwise_count(samples in scored_samples()) {
            let (scores, labels): (Vec<f32>, Vec<bool>) = samples.into_iter().unzip();
            let (mut wins, mut pairs) = (0u64, 0u64);
            for (&p, _) in scores.iter().zip(&labels).filter(|(_, l)| **l) {
                for (&n, _) in scores.iter().zip(&labels).filter(|(_, l)| !**l) {
                    wins += if p > n { 2 } else if p == n { 1 } else { 0 };
                    pairs += 2;
                }
            }
            let want = (pairs > 0).then(|| wins as f64 / pairs as f64);
            let got = auroc(&scores, &labels);
            prop_assert_eq!(got.is_some(), want.is_some());
            if let (Some(g), Some(w)) = (got, want) {
                prop_assert!((g - w).abs() <= 1e-12, "{} vs {}", g, w);
            }
        }

        #[test]
        fn roc_ends_at_one_and_area_matches(samples in scored_samples()) {
            let (scores, labels): (Vec<f32>, Vec<bool>) = samples.into_iter().unzip();
            let roc = roc_curve(&scores, &labels);
            if let Some(a) = auroc(&scores, &labels) {
                let last = roc.last().copied().expect("non-empty curve");
                prop_assert_eq!((last.fpr, last.tpr), (1.0, 1.0));
                let trapezoid: f64 = roc
                    .windows(2)
                    .map(|w| (w[1].fpr - w[0].fpr) * (w[1].tpr + w[0].tpr) / 2.0)
                    .sum();
                prop_assert!((trapezoid - a).abs() <= 1e-12);
            }
        }

        #[test]
        fn pixel_accumulator_equals_auroc_of_concatenation(
            samples in scored_samples(), split in 0usize..200
        ) {
            let (scores, labels): (Vec<f32>, Vec<bool>) = samples.into_iter().unzip();
            let k = split.min(scores.len());
            let mut acc = PixelAurocAccumulator::new();
            acc.add(&scores[..k], &labels[..k]).expect("same length");
            acc.add(&scores[k..], &labels[k..]).expect("same length");
            prop_assert_eq!(acc.finish(), auroc(&scores, &labels));
        }
    }
}
