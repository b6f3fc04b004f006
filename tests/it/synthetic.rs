//! The project's own data: the demo model on the synthetic washers must give the scores Python
//! onnxruntime + Pillow gave (`testdata/synthetic/reference_scores.csv`, made by
//! `tools/build_models.py`), and the same through every supported graph shape.

use linesight::postprocess::Verdict;

use crate::common::{inspector, repo};

fn reference() -> Vec<(String, f32, bool, u64)> {
    let mut reader =
        csv::Reader::from_path(repo().join("testdata/synthetic/reference_scores.csv")).unwrap();
    reader
        .deserialize::<(String, u8, f32, u8, f32, u64)>()
        .map(|r| {
            let (image, _label, score, pred_label, _map_max, mask_pixels) = r.unwrap();
            (image, score, pred_label == 1, mask_pixels)
        })
        .collect()
}

#[test]
fn demo_model_scores_match_python_and_regions_follow_pred_mask() {
    let rows = reference();
    assert_eq!(rows.len(), 25);
    let mut inspector = inspector(&repo().join("models/demo"), None);
    for (image, want, want_defect, mask_pixels) in &rows {
        let bytes = std::fs::read(repo().join("testdata/synthetic").join(image)).unwrap();
        let (results, _) = inspector.inspect_batch(&[(image.clone(), bytes.as_slice())]);
        let got = results.into_iter().next().unwrap().unwrap();
        assert!(
            (got.score - want).abs() <= 1e-5,
            "{image}: {} vs Python {want}",
            got.score
        );
        assert_eq!(got.verdict == Verdict::Defect, *want_defect, "{image}");
        // pred_mask pixels exist exactly when linesight finds regions at the same threshold.
        assert_eq!(got.regions.is_empty(), *mask_pixels == 0, "{image}");
    }
}

#[test]
fn every_graph_shape_gives_the_same_score() {
    let image = "test/scratch/001.png";
    let bytes = std::fs::read(repo().join("testdata/synthetic").join(image)).unwrap();
    let score = |model: &str, threshold: Option<f32>| {
        let mut inspector = inspector(&repo().join(model), threshold);
        let (results, _) = inspector.inspect_batch(&[(image.to_string(), bytes.as_slice())]);
        results.into_iter().next().unwrap().unwrap().score
    };
    let demo = score("models/demo", None);
    for model in [
        "testdata/models/external-data",
        "testdata/models/fixed-batch",
        "testdata/models/dynamic-size",
    ] {
        assert_eq!(score(model, None), demo, "{model}");
    }
    assert_eq!(score("testdata/models/score-only", Some(0.5)), demo);
}

#[test]
fn fixed_batch_models_are_padded_and_keep_order() {
    // Batch fixed at 2, fed 3 images: one full call and one padded call.
    let names = [
        "test/good/000.png",
        "test/spot/000.png",
        "test/chip/001.png",
    ];
    let bytes: Vec<Vec<u8>> = names
        .iter()
        .map(|n| std::fs::read(repo().join("testdata/synthetic").join(n)).unwrap())
        .collect();
    let items: Vec<(String, &[u8])> = names
        .iter()
        .zip(&bytes)
        .map(|(n, b)| (n.to_string(), b.as_slice()))
        .collect();
    let mut fixed = inspector(&repo().join("testdata/models/fixed-batch"), None);
    let (batched, _) = fixed.inspect_batch(&items);
    let mut single = inspector(&repo().join("models/demo"), None);
    for (item, result) in items.iter().zip(batched) {
        let (one, _) = single.inspect_batch(std::slice::from_ref(item));
        let (a, b) = (result.unwrap(), one.into_iter().next().unwrap().unwrap());
        assert!(
            (a.score - b.score).abs() <= 1e-6,
            "{}: {} vs {}",
            item.0,
            a.score,
            b.score
        );
    }
}

#[test]
fn map_only_model_scores_are_the_map_maximum() {
    let image = "test/spot/002.png";
    let bytes = std::fs::read(repo().join("testdata/synthetic").join(image)).unwrap();
    let mut inspector = inspector(&repo().join("testdata/models/map-only"), Some(1e9));
    let (results, _) = inspector.inspect_batch(&[(image.to_string(), bytes.as_slice())]);
    let got = results.into_iter().next().unwrap().unwrap();
    let map = got.map.expect("map-only model has a map");
    let max = map.values.iter().copied().fold(f32::MIN, f32::max);
    assert_eq!(got.score, max);
    assert_eq!(
        got.verdict,
        Verdict::Good,
        "threshold 1e9 is above any score"
    );
}
