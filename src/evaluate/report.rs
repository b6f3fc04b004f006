//! The evaluation report: `report.json` for machines, [`EvaluationReport::render_text`] for people.
//!
//! Invariants:
//! - Every figure is computed here from the per-image results handed in (image metrics) or from
//!   the pixel accumulator's summary, so the JSON and the text always agree with each other.
//! - The verdict rule is anomalib's, `score > threshold` (strict), and the report says so.
//! - Undefined ratios (0/0) are `null` in JSON and "n/a" in text, never a made-up 0 (see
//!   [`BinaryCounts`]).
//! - Rows keep the order they were handed in (the dataset's sorted order), so two runs over the
//!   same dataset produce reports that diff cleanly.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::dataset::{GOOD, Sample};
use super::metrics::{BinaryCounts, PixelAurocAccumulator, auroc};
use crate::postprocess::Verdict;

/// Why a report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot serialise the evaluation report: {0}")]
    Serialise(#[from] serde_json::Error),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub use crate::inspect::ModelIdentity;

/// Ground truth of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Label {
    Good,
    Defect,
}

/// The model's result for one test image, as the evaluate command hands it in.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageResult {
    pub path: PathBuf,
    pub defect_type: String,
    pub is_defect: bool,
    /// Image score (anomalib `pred_score`).
    pub score: f32,
    /// Time spent on this image (decode + pre-process + inference + post-process), ms.
    pub elapsed_ms: f64,
}

impl ImageResult {
    /// The result for a discovered sample.
    pub fn new(sample: &Sample, score: f32, elapsed_ms: f64) -> Self {
        ImageResult {
            path: sample.path.clone(),
            defect_type: sample.defect_type.clone(),
            is_defect: sample.is_defect,
            score,
            elapsed_ms,
        }
    }
}

/// An image that could not be scored, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SkippedImage {
    pub path: String,
    pub error: String,
}

impl SkippedImage {
    /// Records `path` as skipped because of `error` (its `Display` text, with sources).
    pub fn new(path: &Path, error: &dyn std::error::Error) -> Self {
        let mut message = error.to_string();
        let mut source = error.source();
        while let Some(s) = source {
            let _ = write!(message, ": {s}");
            source = s.source();
        }
        SkippedImage {
            path: path.display().to_string(),
            error: message,
        }
    }
}

/// Pixel-level results, summarised from a [`PixelAurocAccumulator`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PixelSummary {
    /// Pixel AUROC over every pixel of every image counted; `None` without both classes.
    pub auroc: Option<f64>,
    /// Pixel F1 at the report threshold, pooled over all pixels.
    pub f1: Option<f64>,
    /// Images whose pixels were counted (good images and defect images with a mask).
    pub n_images: usize,
    pub n_defect_pixels: u64,
    pub n_good_pixels: u64,
    /// Defect images left out of pixel metrics because they have no ground-truth mask.
    pub defect_images_without_mask: Vec<String>,
}

impl PixelSummary {
    /// Finishes `acc` (sorts it once) and reads AUROC and F1 at `threshold`.
    pub fn from_accumulator(
        acc: &mut PixelAurocAccumulator,
        threshold: f32,
        n_images: usize,
        defect_images_without_mask: &[PathBuf],
    ) -> Self {
        let (n_defect, n_good) = acc.n_pixels();
        PixelSummary {
            auroc: acc.finish(),
            f1: acc.pixel_f1(threshold),
            n_images,
            n_defect_pixels: n_defect as u64,
            n_good_pixels: n_good as u64,
            defect_images_without_mask: defect_images_without_mask
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
        }
    }
}

/// Everything [`EvaluationReport::build`] needs.
#[derive(Debug, Clone)]
pub struct ReportInputs {
    pub dataset: PathBuf,
    pub model: ModelIdentity,
    /// Decision threshold: defect when `score > threshold`.
    pub threshold: f32,
    /// One entry per scored image, in dataset order.
    pub images: Vec<ImageResult>,
    pub skipped: Vec<SkippedImage>,
    /// `None` when pixel metrics were not computed (no anomaly map, or switched off).
    pub pixel: Option<PixelSummary>,
    /// Wall-clock time of the whole run, ms, if measured.
    pub wall_ms: Option<f64>,
}

/// Image counts of the test split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ImageCounts {
    /// Images scored (skipped ones excluded).
    pub n_images: usize,
    pub n_good: usize,
    pub n_defect: usize,
    pub n_skipped: usize,
}

/// Image-level decision quality at the report threshold.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ThresholdMetrics {
    pub confusion: BinaryCounts,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub f1: Option<f64>,
    pub accuracy: Option<f64>,
}

impl From<BinaryCounts> for ThresholdMetrics {
    fn from(c: BinaryCounts) -> Self {
        ThresholdMetrics {
            confusion: c,
            precision: c.precision(),
            recall: c.recall(),
            f1: c.f1(),
            accuracy: c.accuracy(),
        }
    }
}

/// Scores of one defect type (or of the good images).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DefectTypeRow {
    pub defect_type: String,
    pub n: usize,
    /// Images with `score > threshold`. For `good` these are false alarms.
    pub detected: usize,
    pub mean_score: f64,
    pub min_score: f32,
    pub max_score: f32,
}

/// One scored image.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImageRow {
    pub path: String,
    pub defect_type: String,
    pub label: Label,
    pub score: f32,
    pub verdict: Verdict,
}

/// Per-image timing, ms (nearest-rank percentiles).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TimingSummary {
    pub n: usize,
    pub total_ms: f64,
    pub mean_ms: Option<f64>,
    pub median_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// Wall-clock time of the whole run, if measured.
    pub wall_ms: Option<f64>,
}

impl TimingSummary {
    /// Summarises per-image times; percentiles by nearest rank (`sorted[ceil(p·n) − 1]`).
    pub fn from_times(times_ms: &[f64], wall_ms: Option<f64>) -> Self {
        let mut sorted = times_ms.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let rank = |q| crate::telemetry::nearest_rank(&sorted, q);
        let total_ms: f64 = sorted.iter().sum();
        TimingSummary {
            n,
            total_ms,
            mean_ms: (n > 0).then(|| total_ms / n as f64),
            median_ms: rank(0.5),
            p90_ms: rank(0.9),
            max_ms: sorted.last().copied(),
            wall_ms,
        }
    }
}

/// The whole evaluation, serialised as `report.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvaluationReport {
    pub linesight_version: String,
    pub dataset: String,
    pub model: ModelIdentity,
    pub threshold: f32,
    pub threshold_rule: &'static str,
    pub counts: ImageCounts,
    /// `None` unless both good and defect images were scored.
    pub image_auroc: Option<f64>,
    pub image_metrics: ThresholdMetrics,
    pub pixel_auroc: Option<f64>,
    pub pixel_f1: Option<f64>,
    /// Which pixels the pixel metrics cover; `None` when they were not computed.
    pub pixel: Option<PixelSummary>,
    /// `good` first, then the defect types by name.
    pub per_defect_type: Vec<DefectTypeRow>,
    pub images: Vec<ImageRow>,
    pub skipped: Vec<SkippedImage>,
    pub timings: TimingSummary,
}

impl EvaluationReport {
    /// Computes every figure from the per-image results.
    pub fn build(inputs: ReportInputs) -> EvaluationReport {
        let ReportInputs {
            dataset,
            model,
            threshold,
            images,
            skipped,
            pixel,
            wall_ms,
        } = inputs;
        let scores: Vec<f32> = images.iter().map(|r| r.score).collect();
        let labels: Vec<bool> = images.iter().map(|r| r.is_defect).collect();
        let n_defect = labels.iter().filter(|&&d| d).count();

        let mut types: Vec<&str> = images.iter().map(|r| r.defect_type.as_str()).collect();
        types.sort_by_key(|t| (*t != GOOD, *t));
        types.dedup();
        let per_defect_type = types
            .into_iter()
            .map(|t| {
                let s: Vec<f32> = images
                    .iter()
                    .filter(|r| r.defect_type == t)
                    .map(|r| r.score)
                    .collect();
                DefectTypeRow {
                    defect_type: t.to_owned(),
                    n: s.len(),
                    detected: s.iter().filter(|&&v| v > threshold).count(),
                    mean_score: s.iter().map(|&v| f64::from(v)).sum::<f64>() / s.len() as f64,
                    min_score: s.iter().copied().fold(f32::INFINITY, f32::min),
                    max_score: s.iter().copied().fold(f32::NEG_INFINITY, f32::max),
                }
            })
            .collect();

        let times: Vec<f64> = images.iter().map(|r| r.elapsed_ms).collect();
        let rows = images
            .iter()
            .map(|r| ImageRow {
                path: r.path.display().to_string(),
                defect_type: r.defect_type.clone(),
                label: if r.is_defect {
                    Label::Defect
                } else {
                    Label::Good
                },
                score: r.score,
                verdict: Verdict::from_score(r.score, threshold),
            })
            .collect();

        EvaluationReport {
            linesight_version: env!("CARGO_PKG_VERSION").to_owned(),
            dataset: dataset.display().to_string(),
            model,
            threshold,
            threshold_rule: "defect when score > threshold",
            counts: ImageCounts {
                n_images: images.len(),
                n_good: images.len() - n_defect,
                n_defect,
                n_skipped: skipped.len(),
            },
            image_auroc: auroc(&scores, &labels),
            image_metrics: BinaryCounts::at_threshold(&scores, &labels, threshold).into(),
            pixel_auroc: pixel.as_ref().and_then(|p| p.auroc),
            pixel_f1: pixel.as_ref().and_then(|p| p.f1),
            pixel,
            per_defect_type,
            images: rows,
            skipped,
            timings: TimingSummary::from_times(&times, wall_ms),
        }
    }

    /// Writes the report as pretty-printed JSON (conventionally `report.json`).
    pub fn write_json(&self, path: &Path) -> Result<(), ReportError> {
        let mut text = serde_json::to_string_pretty(self)?;
        text.push('\n');
        std::fs::write(path, text).map_err(|source| ReportError::Write {
            path: path.to_path_buf(),
            source,
        })
    }

    /// A readable summary for the terminal: headline metrics, the per-defect-type table,
    /// pixel-metric coverage, timings and skipped images (per-image rows stay in the JSON).
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail; the results are ignored on purpose.
        let _ = self.write_text(&mut out);
        out
    }

    fn write_text(&self, out: &mut String) -> std::fmt::Result {
        let m = &self.image_metrics;
        let c = &m.confusion;
        writeln!(
            out,
            "Evaluation of {} {} (sha256 {}) on {}",
            self.model.name,
            self.model.version.as_deref().unwrap_or("(no version)"),
            short_hash(&self.model.sha256),
            self.dataset
        )?;
        writeln!(
            out,
            "Images: {} scored ({} good, {} defect), {} skipped",
            self.counts.n_images, self.counts.n_good, self.counts.n_defect, self.counts.n_skipped
        )?;
        writeln!(out)?;
        writeln!(out, "  Image AUROC   {}", fmt_metric(self.image_auroc))?;
        writeln!(out, "  Pixel AUROC   {}", fmt_metric(self.pixel_auroc))?;
        writeln!(
            out,
            "At threshold {} ({}):",
            self.threshold, self.threshold_rule
        )?;
        writeln!(
            out,
            "  Precision {}   Recall {}   F1 {}   Accuracy {}",
            fmt_metric(m.precision),
            fmt_metric(m.recall),
            fmt_metric(m.f1),
            fmt_metric(m.accuracy)
        )?;
        writeln!(
            out,
            "  Defects caught {} of {}, escapes {}; false alarms {} of {} good",
            c.tp,
            c.tp + c.fn_,
            c.fn_,
            c.fp,
            c.fp + c.tn
        )?;
        writeln!(out, "  Pixel F1  {}", fmt_metric(self.pixel_f1))?;
        writeln!(out)?;

        let width = self
            .per_defect_type
            .iter()
            .map(|r| r.defect_type.chars().count())
            .chain([11])
            .max()
            .unwrap_or(11);
        writeln!(
            out,
            "{:<width$}  {:>5}  {:>8}  {:>6}  {:>7}  {:>7}  {:>7}",
            "defect type", "n", "detected", "rate", "mean", "min", "max"
        )?;
        for r in &self.per_defect_type {
            let rate = r.detected as f64 / r.n as f64 * 100.0;
            writeln!(
                out,
                "{:<width$}  {:>5}  {:>8}  {:>5.1}%  {:>7.4}  {:>7.4}  {:>7.4}{}",
                r.defect_type,
                r.n,
                r.detected,
                rate,
                r.mean_score,
                r.min_score,
                r.max_score,
                if r.defect_type == GOOD {
                    "  (detected = false alarms)"
                } else {
                    ""
                }
            )?;
        }
        writeln!(out)?;

        match &self.pixel {
            None => writeln!(out, "Pixel metrics: not computed.")?,
            Some(p) => {
                writeln!(
                    out,
                    "Pixel metrics over {} images ({} defect pixels, {} good pixels).",
                    p.n_images, p.n_defect_pixels, p.n_good_pixels
                )?;
                if !p.defect_images_without_mask.is_empty() {
                    writeln!(
                        out,
                        "  {} defect images have no ground-truth mask and are left out of pixel metrics:",
                        p.defect_images_without_mask.len()
                    )?;
                    write_list(out, &p.defect_images_without_mask)?;
                }
            }
        }

        let t = &self.timings;
        writeln!(
            out,
            "Time per image: mean {} ms, median {} ms, p90 {} ms, max {} ms{}",
            fmt_ms(t.mean_ms),
            fmt_ms(t.median_ms),
            fmt_ms(t.p90_ms),
            fmt_ms(t.max_ms),
            t.wall_ms
                .map(|w| format!("; whole run {:.1} s", w / 1000.0))
                .unwrap_or_default()
        )?;

        if !self.skipped.is_empty() {
            writeln!(out, "Skipped {} images:", self.skipped.len())?;
            let lines: Vec<String> = self
                .skipped
                .iter()
                .map(|s| format!("{}: {}", s.path, s.error))
                .collect();
            write_list(out, &lines)?;
        }
        Ok(())
    }
}

/// Lists up to 10 lines, then a count of the rest (the full list is in the JSON).
fn write_list(out: &mut String, lines: &[String]) -> std::fmt::Result {
    const SHOWN: usize = 10;
    for line in lines.iter().take(SHOWN) {
        writeln!(out, "    {line}")?;
    }
    if lines.len() > SHOWN {
        writeln!(
            out,
            "    … and {} more (see report.json)",
            lines.len() - SHOWN
        )?;
    }
    Ok(())
}

fn fmt_metric(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.4}"))
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.1}"))
}

fn short_hash(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn result(path: &str, defect_type: &str, score: f32, ms: f64) -> ImageResult {
        ImageResult {
            path: PathBuf::from(path),
            defect_type: defect_type.to_owned(),
            is_defect: defect_type != GOOD,
            score,
            elapsed_ms: ms,
        }
    }

    /// Six images at threshold 0.5, worked out by hand:
    /// good 0.2, 0.6 (false alarm), 0.5 (equal to the threshold: good); crack 0.9, 0.4 (escape);
    /// scratch 0.7. TP 2, FP 1, TN 2, FN 1. AUROC: 0.9 and 0.7 beat all three good scores, 0.4
    /// beats one → 7/9.
    fn inputs() -> ReportInputs {
        ReportInputs {
            dataset: PathBuf::from("/data/tiles"),
            model: ModelIdentity {
                name: "padim-tiles".into(),
                version: Some("1.2.0".into()),
                sha256: "bb0f78e125ceeca6bbd49f1b4f59bcedc1912e2439c5795e51e92b018c8b021b".into(),
            },
            threshold: 0.5,
            images: vec![
                result("test/crack/x.png", "crack", 0.9, 10.0),
                result("test/crack/y.png", "crack", 0.4, 20.0),
                result("test/good/a.png", GOOD, 0.2, 30.0),
                result("test/good/b.png", GOOD, 0.6, 40.0),
                result("test/good/c.png", GOOD, 0.5, 50.0),
                result("test/scratch/z.png", "scratch", 0.7, 60.0),
            ],
            skipped: vec![SkippedImage::new(
                Path::new("test/good/broken.png"),
                &std::io::Error::other("truncated PNG"),
            )],
            pixel: None,
            wall_ms: Some(1234.0),
        }
    }

    #[test]
    fn figures_match_hand_computation() {
        let r = EvaluationReport::build(inputs());
        assert_eq!(
            r.counts,
            ImageCounts {
                n_images: 6,
                n_good: 3,
                n_defect: 3,
                n_skipped: 1
            }
        );
        let c = r.image_metrics.confusion;
        assert_eq!((c.tp, c.fp, c.tn, c.fn_), (2, 1, 2, 1));
        let close = |a: Option<f64>, b: f64| (a.expect("defined") - b).abs() < 1e-12;
        assert!(close(r.image_auroc, 7.0 / 9.0));
        assert!(close(r.image_metrics.precision, 2.0 / 3.0));
        assert!(close(r.image_metrics.recall, 2.0 / 3.0));
        assert!(close(r.image_metrics.f1, 2.0 / 3.0));
        assert!(close(r.image_metrics.accuracy, 4.0 / 6.0));
        assert_eq!((r.pixel_auroc, r.pixel_f1), (None, None));

        let types: Vec<(&str, usize, usize)> = r
            .per_defect_type
            .iter()
            .map(|t| (t.defect_type.as_str(), t.n, t.detected))
            .collect();
        assert_eq!(
            types,
            vec![("good", 3, 1), ("crack", 2, 1), ("scratch", 1, 1)]
        );
        let good = &r.per_defect_type[0];
        assert!((good.mean_score - (0.2f64 + 0.6 + 0.5) / 3.0).abs() < 1e-6);
        assert_eq!((good.min_score, good.max_score), (0.2, 0.6));

        // Rows keep input order; 0.5 at threshold 0.5 is good (strict rule).
        assert_eq!(r.images[4].verdict, Verdict::Good);
        assert_eq!(r.images[3].verdict, Verdict::Defect);
        assert_eq!(r.images[3].label, Label::Good);

        let t = r.timings;
        assert_eq!(
            (
                t.n,
                t.total_ms,
                t.mean_ms,
                t.median_ms,
                t.p90_ms,
                t.max_ms,
                t.wall_ms
            ),
            (
                6,
                210.0,
                Some(35.0),
                Some(30.0),
                Some(60.0),
                Some(60.0),
                Some(1234.0)
            )
        );
    }

    #[test]
    fn json_has_the_documented_shape() {
        let r = EvaluationReport::build(inputs());
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("report.json");
        r.write_json(&path).expect("written");
        let v: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
        assert_eq!(v["dataset"], "/data/tiles");
        assert_eq!(v["model"]["sha256"].as_str().map(str::len), Some(64));
        assert_eq!(v["threshold"], 0.5);
        assert_eq!(v["threshold_rule"], "defect when score > threshold");
        assert_eq!(v["counts"]["n_defect"], 3);
        assert!((v["image_auroc"].as_f64().expect("auroc") - 7.0 / 9.0).abs() < 1e-12);
        assert_eq!(v["image_metrics"]["confusion"]["fn"], 1);
        assert!(v["pixel_auroc"].is_null() && v["pixel_f1"].is_null() && v["pixel"].is_null());
        assert_eq!(v["per_defect_type"][0]["defect_type"], "good");
        assert_eq!(v["images"][3]["label"], "good");
        assert_eq!(v["images"][3]["verdict"], "defect");
        assert_eq!(v["skipped"][0]["path"], "test/good/broken.png");
        assert_eq!(v["skipped"][0]["error"], "truncated PNG");
        assert_eq!(v["timings"]["p90_ms"], 60.0);
    }

    #[test]
    fn text_table_is_readable() {
        let mut i = inputs();
        let mut acc = PixelAurocAccumulator::new();
        acc.add(&[0.9, 0.1, 0.6, 0.2], &[true, false, true, false])
            .expect("same length");
        acc.add_all_good(&[0.3, 0.7]);
        i.pixel = Some(PixelSummary::from_accumulator(
            &mut acc,
            0.5,
            2,
            &[PathBuf::from("test/scratch/z.png")],
        ));
        let r = EvaluationReport::build(i);
        // Pixels: defect {0.9, 0.6} vs good {0.1, 0.2, 0.3, 0.7}: 0.9 beats 4, 0.6 beats 3 → 7/8.
        // At 0.5: TP 2, FP 1 (0.7), FN 0 → F1 = 4 / 5.
        assert_eq!(r.pixel_auroc, Some(7.0 / 8.0));
        assert_eq!(r.pixel_f1, Some(0.8));
        let text = r.render_text();
        println!("{text}");
        for needle in [
            "Evaluation of padim-tiles 1.2.0 (sha256 bb0f78e125ce) on /data/tiles",
            "Images: 6 scored (3 good, 3 defect), 1 skipped",
            "Image AUROC   0.7778",
            "Pixel AUROC   0.8750",
            "At threshold 0.5 (defect when score > threshold):",
            "Precision 0.6667   Recall 0.6667   F1 0.6667   Accuracy 0.6667",
            "Defects caught 2 of 3, escapes 1; false alarms 1 of 3 good",
            "Pixel F1  0.8000",
            "1 defect images have no ground-truth mask",
            "test/scratch/z.png",
            "Time per image: mean 35.0 ms, median 30.0 ms, p90 60.0 ms, max 60.0 ms; whole run 1.2 s",
            "test/good/broken.png: truncated PNG",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        // Table rows line up: good first, with its meaning spelled out.
        let good_row = text
            .lines()
            .find(|l| l.starts_with("good "))
            .expect("good row");
        assert!(good_row.contains("33.3%") && good_row.ends_with("(detected = false alarms)"));
        let header = text
            .lines()
            .find(|l| l.starts_with("defect type"))
            .expect("header");
        let crack_row = text
            .lines()
            .find(|l| l.starts_with("crack "))
            .expect("crack row");
        assert_eq!(
            header.find("detected").map(|p| p + 8),
            crack_row.find(" 1  ").map(|p| p + 2)
        );
    }

    #[test]
    fn empty_and_single_class_runs_say_n_a() {
        let mut i = inputs();
        i.images.retain(|r| r.defect_type == GOOD);
        let r = EvaluationReport::build(i);
        assert_eq!(r.image_auroc, None);
        assert_eq!(r.image_metrics.recall, None);
        assert!(r.render_text().contains("Image AUROC   n/a"));

        let mut i = inputs();
        i.images.clear();
        let r = EvaluationReport::build(i);
        assert_eq!(r.timings.median_ms, None);
        assert!(r.per_defect_type.is_empty());
        assert!(r.render_text().contains("mean n/a ms"));
    }
}
