//! PNG plots for evaluation reports: the ROC curve and the score histogram.
//!
//! Invariants:
//! - Every plot is 800 × 600 RGB PNG with titled axes and a legend.
//! - Text is drawn with DejaVu Sans compiled into the binary (the `dejavu` crate, registered with
//!   plotters' `ab_glyph` backend on first use), so plots render the same on a bare edge device
//!   or in a container without system fonts.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use super::metrics::RocPoint;

/// Width and height of every plot, pixels.
pub const PLOT_SIZE: (u32, u32) = (800, 600);

/// Font family name the plots use; registered from the embedded DejaVu Sans.
const FONT: &str = "sans-serif";

const GOOD_COLOUR: RGBColor = RGBColor(31, 119, 180);
const DEFECT_COLOUR: RGBColor = RGBColor(214, 39, 40);

/// Why a plot could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("cannot load the embedded DejaVu Sans font into plotters")]
    Font,
    #[error("cannot draw or write plot {path}: {message}")]
    Draw { path: PathBuf, message: String },
}

/// Draws the ROC curve (false-positive rate → true-positive rate) with the chance diagonal and
/// the AUROC in the title and legend.
pub fn write_roc_png(path: &Path, roc: &[RocPoint], auc: f64) -> Result<(), PlotError> {
    ensure_fonts()?;
    let draw_err = draw_error(path);
    let root = BitMapBackend::new(path, PLOT_SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(&draw_err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("ROC curve (image level), AUROC = {auc:.4}"),
            (FONT, 26),
        )
        .margin(20)
        .x_label_area_size(55)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..1f64, 0f64..1f64)
        .map_err(&draw_err)?;
    chart
        .configure_mesh()
        .x_desc("False-positive rate (good parts flagged)")
        .y_desc("True-positive rate (defects caught)")
        .axis_desc_style((FONT, 18))
        .label_style((FONT, 15))
        .bold_line_style(BLACK.mix(0.15))
        .light_line_style(BLACK.mix(0.04))
        .x_labels(11)
        .y_labels(11)
        .draw()
        .map_err(&draw_err)?;

    let chance = BLACK.mix(0.45).stroke_width(1);
    chart
        .draw_series(LineSeries::new([(0.0, 0.0), (1.0, 1.0)], chance))
        .map_err(&draw_err)?
        .label("chance (AUROC 0.5)")
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 24, y)], chance));

    let curve = DEFECT_COLOUR.stroke_width(2);
    chart
        .draw_series(LineSeries::new(roc.iter().map(|p| (p.fpr, p.tpr)), curve))
        .map_err(&draw_err)?
        .label(format!("model (AUROC {auc:.4})"))
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 24, y)], curve));

    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .margin(15)
        .label_font((FONT, 17))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(&draw_err)?;
    root.present().map_err(&draw_err)?;
    Ok(())
}

/// Draws overlaid histograms of the image scores of good and defect images (shared bins) and
/// a vertical line at the decision threshold. Non-finite scores are left out of the bars.
pub fn write_score_histogram_png(
    path: &Path,
    good: &[f32],
    defect: &[f32],
    threshold: f32,
) -> Result<(), PlotError> {
    const BINS: usize = 40;
    ensure_fonts()?;
    let draw_err = draw_error(path);

    let finite = |s: &[f32]| -> Vec<f64> {
        s.iter()
            .filter(|v| v.is_finite())
            .map(|&v| f64::from(v))
            .collect()
    };
    let (good, defect) = (finite(good), finite(defect));
    let t = f64::from(threshold);
    let (mut lo, mut hi) = good
        .iter()
        .chain(&defect)
        .chain(t.is_finite().then_some(&t))
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    if !(lo.is_finite() && hi.is_finite()) {
        (lo, hi) = (0.0, 1.0);
    }
    if hi - lo < 1e-9 {
        (lo, hi) = (lo - 0.5, hi + 0.5);
    }
    // A little room either side so edge bars are not glued to the axes.
    let pad = (hi - lo) * 0.02;
    let (lo, hi) = (lo - pad, hi + pad);
    let width = (hi - lo) / BINS as f64;
    let histogram = |values: &[f64]| -> Vec<u32> {
        let mut counts = vec![0u32; BINS];
        for &v in values {
            let bin = (((v - lo) / width) as usize).min(BINS - 1);
            counts[bin] += 1;
        }
        counts
    };
    let (good_counts, defect_counts) = (histogram(&good), histogram(&defect));
    let top = good_counts
        .iter()
        .chain(&defect_counts)
        .copied()
        .max()
        .unwrap_or(0)
        .max(1);
    // Headroom above the tallest bar keeps the legend (upper right) clear of the bars.
    let y_max = f64::from(top) * 1.4;

    let root = BitMapBackend::new(path, PLOT_SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(&draw_err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Image scores by ground truth", (FONT, 26))
        .margin(20)
        .x_label_area_size(55)
        .y_label_area_size(70)
        .build_cartesian_2d(lo..hi, 0f64..y_max)
        .map_err(&draw_err)?;
    chart
        .configure_mesh()
        .x_desc("Anomaly score")
        .y_desc("Number of images")
        .axis_desc_style((FONT, 18))
        .label_style((FONT, 15))
        .bold_line_style(BLACK.mix(0.15))
        .light_line_style(BLACK.mix(0.04))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(&draw_err)?;

    for (counts, colour, name, n) in [
        (&good_counts, GOOD_COLOUR, "good", good.len()),
        (&defect_counts, DEFECT_COLOUR, "defect", defect.len()),
    ] {
        let fill = colour.mix(0.45).filled();
        chart
            .draw_series(
                counts
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| **c > 0)
                    .map(|(i, &c)| {
                        let x0 = lo + i as f64 * width;
                        Rectangle::new([(x0, 0.0), (x0 + width, f64::from(c))], fill)
                    }),
            )
            .map_err(&draw_err)?
            .label(format!("{name} ({n} images)"))
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 18, y + 6)], fill));
        // Outline each bar so overlapping bars stay distinguishable.
        chart
            .draw_series(
                counts
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| **c > 0)
                    .map(|(i, &c)| {
                        let x0 = lo + i as f64 * width;
                        Rectangle::new(
                            [(x0, 0.0), (x0 + width, f64::from(c))],
                            colour.stroke_width(1),
                        )
                    }),
            )
            .map_err(&draw_err)?;
    }

    if t.is_finite() {
        let line = BLACK.stroke_width(2);
        chart
            .draw_series(DashedLineSeries::new([(t, 0.0), (t, y_max)], 8, 5, line))
            .map_err(&draw_err)?
            .label(format!("threshold {threshold} (defect if score >)"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 24, y)], line));
    }

    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .margin(15)
        .label_font((FONT, 17))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(&draw_err)?;
    root.present().map_err(&draw_err)?;
    Ok(())
}

/// Registers DejaVu Sans (regular and bold) as the plot font, once per process.
fn ensure_fonts() -> Result<(), PlotError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_ok()
            && register_font(FONT, FontStyle::Bold, dejavu::sans::bold()).is_ok()
    });
    if ok { Ok(()) } else { Err(PlotError::Font) }
}

fn draw_error<E: std::fmt::Display>(path: &Path) -> impl Fn(E) -> PlotError + '_ {
    move |e| PlotError::Draw {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluate::metrics::{auroc, roc_curve};

    /// Reproducible scores shaped like a real test split: good around 0.45, defects spread
    /// higher with a tail overlapping the good ones.
    fn example_scores() -> (Vec<f32>, Vec<f32>) {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut uniform = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut normal = move |mean: f64, sd: f64| {
            let s: f64 = (0..12).map(|_| uniform()).sum::<f64>() - 6.0;
            (mean + sd * s).clamp(0.0, 1.0) as f32
        };
        let good = (0..191).map(|_| normal(0.45, 0.07)).collect();
        let defect = (0..392)
            .map(|k| {
                if k % 3 == 0 {
                    normal(0.5, 0.08)
                } else {
                    normal(0.68, 0.12)
                }
            })
            .collect();
        (good, defect)
    }

    fn roc_of(good: &[f32], defect: &[f32]) -> (Vec<RocPoint>, f64) {
        let scores: Vec<f32> = good.iter().chain(defect).copied().collect();
        let labels: Vec<bool> = (0..scores.len()).map(|i| i >= good.len()).collect();
        (
            roc_curve(&scores, &labels),
            auroc(&scores, &labels).expect("both classes"),
        )
    }

    /// Pixels in `rows` that are nearly black: text (and axes) were drawn there.
    fn dark_pixels(img: &image::RgbImage, rows: std::ops::Range<u32>) -> usize {
        rows.flat_map(|y| (0..img.width()).map(move |x| (x, y)))
            .filter(|&(x, y)| img.get_pixel(x, y).0.iter().all(|&c| c < 80))
            .count()
    }

    fn count_colour(img: &image::RgbImage, colour: RGBColor) -> usize {
        img.pixels()
            .filter(|p| p.0 == [colour.0, colour.1, colour.2])
            .count()
    }

    #[test]
    fn roc_png_is_800x600_with_title_and_curve() {
        let (good, defect) = example_scores();
        let (roc, auc) = roc_of(&good, &defect);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("roc.png");
        write_roc_png(&path, &roc, auc).expect("drawn");
        let bytes = std::fs::read(&path).expect("written");
        assert_eq!(
            image::guess_format(&bytes).expect("known"),
            image::ImageFormat::Png
        );
        let img = image::load_from_memory(&bytes)
            .expect("valid PNG")
            .into_rgb8();
        assert_eq!(img.dimensions(), PLOT_SIZE);
        // The title sits in the top band: glyphs there mean the embedded font rendered.
        assert!(dark_pixels(&img, 0..50) > 300, "no title text");
        // The curve is drawn in the defect colour, at least as long as the plot is wide.
        assert!(count_colour(&img, DEFECT_COLOUR) > 600);
    }

    #[test]
    fn histogram_png_shows_both_classes_and_threshold() {
        let (good, defect) = example_scores();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("hist.png");
        write_score_histogram_png(&path, &good, &defect, 0.5).expect("drawn");
        let img = image::open(&path).expect("valid PNG").into_rgb8();
        assert_eq!(img.dimensions(), PLOT_SIZE);
        assert!(dark_pixels(&img, 0..50) > 300, "no title text");
        // Bar outlines in both class colours.
        assert!(count_colour(&img, GOOD_COLOUR) > 200);
        assert!(count_colour(&img, DEFECT_COLOUR) > 200);
    }

    #[test]
    fn histogram_copes_with_degenerate_input() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("h.png");
        write_score_histogram_png(&path, &[], &[], f32::NAN).expect("empty");
        write_score_histogram_png(&path, &[0.5; 4], &[0.5, f32::NAN], 0.5).expect("constant");
        let img = image::open(&path).expect("valid PNG");
        assert_eq!((img.width(), img.height()), PLOT_SIZE);
    }

    #[test]
    fn unwritable_path_is_an_error_naming_it() {
        let path = Path::new("/nonexistent-dir/roc.png");
        let err = write_roc_png(path, &[], 0.5).expect_err("cannot write");
        assert!(
            err.to_string().contains("/nonexistent-dir/roc.png"),
            "{err}"
        );
    }

    /// Renders the two example plots to `/tmp/linesight-plots/` to look at them.
    #[test]
    #[ignore = "writes to /tmp; run by hand to inspect the plots"]
    fn render_examples_to_tmp() {
        let (good, defect) = example_scores();
        let (roc, auc) = roc_of(&good, &defect);
        let dir = Path::new("/tmp/linesight-plots");
        std::fs::create_dir_all(dir).expect("mkdir");
        write_roc_png(&dir.join("roc.png"), &roc, auc).expect("roc");
        write_score_histogram_png(&dir.join("scores.png"), &good, &defect, 0.5).expect("hist");
    }
}
