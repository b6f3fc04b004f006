//! Parity with Python onnxruntime on the reference anomalib PaDiM export (magnetic tile): the
//! scores a quality engineer calibrated in Python must be the scores linesight reports.

use std::collections::HashMap;
use std::path::Path;

use linesight::evaluate::evaluate_dataset;
use linesight::postprocess::Verdict;

use crate::common::{inspector, shared_data};

struct RefRow {
    image: String,
    pred_score: f32,
    pred_label: bool,
    pred_score_tv: f32,
    pred_label_tv: bool,
}

fn reference_rows(data: &Path) -> Vec<RefRow> {
    let mut reader =
        csv::Reader::from_path(data.join("models/padim-magnetic-tile/reference_scores.csv"))
            .expect("reference_scores.csv");
    let headers = reader.headers().unwrap().clone();
    let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let (image, score, label, score_tv, label_tv) = (
        col("image"),
        col("pred_score"),
        col("pred_label"),
        col("pred_score_tv"),
        col("pred_label_tv"),
    );
    reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            RefRow {
                image: r[image].to_string(),
                pred_score: r[score].parse().unwrap(),
                pred_label: &r[label] == "1",
                pred_score_tv: r[score_tv].parse().unwrap(),
                pred_label_tv: &r[label_tv] == "1",
            }
        })
        .collect()
}

/// Runs `model` over every reference image in batches of 4 and returns image → score/verdict.
fn score_all(model: &Path, data: &Path, rows: &[RefRow]) -> HashMap<String, (f32, Verdict)> {
    let mut inspector = inspector(model, None);
    let mut out = HashMap::new();
    for chunk in rows.chunks(4) {
        let bytes: Vec<(String, Vec<u8>)> = chunk
            .iter()
            .map(|r| (r.image.clone(), std::fs::read(data.join(&r.image)).unwrap()))
            .collect();
        let items: Vec<(String, &[u8])> = bytes
            .iter()
            .map(|(n, b)| (n.clone(), b.as_slice()))
            .collect();
        let (results, _) = inspector.inspect_batch(&items);
        for (row, result) in chunk.iter().zip(results) {
            let inspection = result.unwrap_or_else(|e| panic!("{}: {e}", row.image));
            out.insert(row.image.clone(), (inspection.score, inspection.verdict));
        }
    }
    out
}

#[test]
fn padim_scores_and_evaluation_match_python_onnxruntime_with_pillow_preprocessing() {
    let Some(data) = shared_data() else { return };
    let rows = reference_rows(&data);
    assert_eq!(rows.len(), 583, "the whole magnetic-tile test split");
    let mut inspector = inspector(&data.join("models/padim-magnetic-tile"), None);
    // The evaluate command's own loop, batches of 4, over the MVTec-layout test split.
    let report = evaluate_dataset(&mut inspector, &data.join("magnetic-tile"), 4, |_, _| {})
        .expect("evaluation runs");
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    assert_eq!(report.images.len(), rows.len());
    let by_image: HashMap<&str, &RefRow> = rows.iter().map(|r| (r.image.as_str(), r)).collect();
    let mut worst = (0.0f32, String::new());
    for image in &report.images {
        let key = format!(
            "magnetic-tile/{}",
            image.path.split("magnetic-tile/").last().unwrap()
        );
        let row = by_image[key.as_str()];
        let diff = (image.score - row.pred_score).abs();
        if diff > worst.0 {
            worst = (diff, key.clone());
        }
        assert!(
            diff <= 1e-4,
            "{key}: linesight {} vs Python {} (diff {diff:.2e})",
            image.score,
            row.pred_score
        );
        assert_eq!(
            image.verdict == Verdict::Defect,
            row.pred_label,
            "{key}: verdict differs (score {})",
            image.score
        );
    }
    eprintln!(
        "max |score - python| = {:.2e} ({}) over {} images",
        worst.0,
        worst.1,
        rows.len()
    );

    let eval: serde_json::Value = serde_json::from_slice(
        &std::fs::read(data.join("models/padim-magnetic-tile/eval.json")).unwrap(),
    )
    .unwrap();
    let want = eval["metrics"]["pil_bilinear"]["image_auroc"]
        .as_f64()
        .unwrap();
    let got = report.image_auroc.unwrap();
    assert_eq!(
        format!("{got:.3}"),
        format!("{want:.3}"),
        "image AUROC {got} vs eval.json {want}"
    );
    let f1 = eval["metrics"]["pil_bilinear"]["image_f1_at_baked_threshold"]
        .as_f64()
        .unwrap();
    assert!((report.image_metrics.f1.unwrap() - f1).abs() < 1e-9);
}

#[test]
fn torchvision_resize_mode_tracks_the_torchvision_reference() {
    let Some(data) = shared_data() else { return };
    let rows = reference_rows(&data);
    // A package that says its threshold was calibrated with anomalib's torchvision pipeline.
    let model = tempfile::tempdir().unwrap();
    let src = data.join("models/padim-magnetic-tile");
    for f in ["model.onnx", "model.onnx.data"] {
        std::os::unix::fs::symlink(src.join(f).canonicalize().unwrap(), model.path().join(f))
            .unwrap();
    }
    std::fs::write(
        model.path().join("model.toml"),
        "name = \"padim-tv\"\n[input]\nresize = \"torchvision-antialias\"\n",
    )
    .unwrap();
    let scores = score_all(model.path(), &data, &rows);
    let mut max_diff = 0.0f32;
    let mut verdicts_equal = 0;
    for row in &rows {
        let (score, verdict) = scores[&row.image];
        max_diff = max_diff.max((score - row.pred_score_tv).abs());
        if (verdict == Verdict::Defect) == row.pred_label_tv {
            verdicts_equal += 1;
        }
    }
    eprintln!(
        "torchvision mode: max |score - python_tv| = {max_diff:.2e}, verdicts equal {verdicts_equal}/{}",
        rows.len()
    );
    // Within 1/255 per pixel of torchvision gives scores within a few 1e-3; the Pillow path
    // differs from torchvision by up to 3e-2, so this tells the two modes apart.
    assert!(max_diff <= 5e-3, "max diff {max_diff}");
    assert!(
        verdicts_equal >= rows.len() - 2,
        "{verdicts_equal} verdicts equal"
    );
}
