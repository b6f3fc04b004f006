#!/usr/bin/env python3
"""Golden files for `src/evaluate/metrics.rs`: AUROC, ROC curves and threshold counts.

Writes testdata/golden/metrics/metrics_golden.json. Run from the repository root:

    python tools/golden/make_metrics_golden.py

Needs only NumPy. The reference values are computed here by deliberately naive, independent
methods (not the sort-and-walk the Rust code uses):
  - AUROC: every (defect, good) pair is compared; AUROC = (#pairs defect > good + 0.5 * #ties)
    / (#defect * #good), counted in integers (the Mann-Whitney definition).
  - ROC: for every distinct score t, from high to low, TPR = mean(defect >= t), FPR = mean(good >= t),
    after a (0, 0) point at threshold +inf (stored as null).
  - Counts at a threshold: defect = score > threshold (strict), by NumPy comparisons.
When scikit-learn is importable, every value is also checked against `roc_auc_score`,
`roc_curve(drop_intermediate=False)`, `precision_score`/`recall_score`/`f1_score`
(zero_division=nan) and `accuracy_score`, and the version used is recorded in the file
(`cross_checked_with`). scikit-learn is optional: without it the NumPy values are written alone.

Scores are float32 (what models emit) with many ties, and are written as exact decimal forms of
those float32 values, so the Rust test reads back the same bits.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

SEED = 20261123
DEFAULT_OUT = Path(__file__).resolve().parents[2] / "testdata" / "golden" / "metrics"

try:  # optional cross-check
    import sklearn
    from sklearn import metrics as skm
except ImportError:  # pragma: no cover - depends on the environment
    sklearn = None
    skm = None


def pairwise_auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    pos = scores[labels].astype(np.float64)
    neg = scores[~labels].astype(np.float64)
    if len(pos) == 0 or len(neg) == 0:
        return None
    greater = 0
    ties = 0
    # Row by row keeps memory small; integer counts keep the value exact until the last division.
    for p in pos:
        greater += int(np.count_nonzero(p > neg))
        ties += int(np.count_nonzero(p == neg))
    return (2 * greater + ties) / (2 * len(pos) * len(neg))


def threshold_roc(scores: np.ndarray, labels: np.ndarray) -> list[dict]:
    pos = scores[labels].astype(np.float64)
    neg = scores[~labels].astype(np.float64)
    if len(pos) == 0 or len(neg) == 0:
        return []
    points = [{"fpr": 0.0, "tpr": 0.0, "threshold": None}]
    # np.unique treats -0.0 and 0.0 as one value, as any `==` comparison does.
    for t in np.unique(scores.astype(np.float64))[::-1]:
        points.append(
            {
                "fpr": float(np.count_nonzero(neg >= t)) / len(neg),
                "tpr": float(np.count_nonzero(pos >= t)) / len(pos),
                "threshold": float(t),
            }
        )
    return points


def ratio(num: int, den: int) -> float | None:
    return None if den == 0 else num / den


def counts_at(scores: np.ndarray, labels: np.ndarray, threshold: np.float32) -> dict:
    flagged = scores > threshold
    tp = int(np.count_nonzero(flagged & labels))
    fp = int(np.count_nonzero(flagged & ~labels))
    tn = int(np.count_nonzero(~flagged & ~labels))
    fn = int(np.count_nonzero(~flagged & labels))
    row = {
        "threshold": float(threshold),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "accuracy": ratio(tp + tn, tp + fp + tn + fn),
    }
    if skm is not None:
        y_pred = flagged.astype(int)
        y_true = labels.astype(int)
        for name, fn_ in [
            ("precision", skm.precision_score),
            ("recall", skm.recall_score),
            ("f1", skm.f1_score),
        ]:
            value = float(fn_(y_true, y_pred, zero_division=np.nan))
            expected = row[name]
            if expected is None:
                assert math.isnan(value), (name, value)
            else:
                assert abs(value - expected) < 1e-15, (name, value, expected)
        assert abs(float(skm.accuracy_score(y_true, y_pred)) - row["accuracy"]) < 1e-15
    return row


def cross_check(scores: np.ndarray, labels: np.ndarray, auroc: float | None, roc: list[dict]) -> dict:
    if skm is None:
        return {}
    if auroc is None:
        return {"auroc_sklearn": None}
    sk_auroc = float(skm.roc_auc_score(labels.astype(int), scores))
    assert abs(sk_auroc - auroc) < 1e-12, (sk_auroc, auroc)
    fpr, tpr, thr = skm.roc_curve(labels.astype(int), scores, drop_intermediate=False)
    assert len(fpr) == len(roc), (len(fpr), len(roc))
    for f, t, h, point in zip(fpr, tpr, thr, roc):
        assert abs(f - point["fpr"]) < 1e-15 and abs(t - point["tpr"]) < 1e-15
        if point["threshold"] is None:
            assert math.isinf(h)
        else:
            assert h == point["threshold"], (h, point["threshold"])
    return {"auroc_sklearn": sk_auroc}


def f32_list(a: np.ndarray) -> list[float]:
    # float(np.float32) is the exact double of the float32; repr round-trips it.
    return [float(x) for x in a.astype(np.float32)]


def make_case(name: str, scores: np.ndarray, labels: np.ndarray, extra_thresholds=()) -> dict:
    scores = scores.astype(np.float32)
    labels = labels.astype(bool)
    auroc = pairwise_auroc(scores, labels)
    roc = threshold_roc(scores, labels)
    uniq = np.unique(scores)
    thresholds = [np.float32(0.5), uniq[len(uniq) // 2], uniq[0] - np.float32(1.0), uniq[-1]]
    thresholds += [np.float32(t) for t in extra_thresholds]
    case = {
        "name": name,
        "scores": f32_list(scores),
        "labels": [bool(x) for x in labels],
        "auroc": auroc,
        "roc": roc,
        "counts": [counts_at(scores, labels, t) for t in thresholds],
    }
    case.update(cross_check(scores, labels, auroc, roc))
    return case


def quantised(rng: np.random.Generator, n: int, levels: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
    """Scores on a coarse grid (so many ties); defects shifted up to give a middling AUROC."""
    labels = rng.random(n) < 0.4
    raw = rng.normal(0.0, 1.0, n) + shift * labels
    grid = np.clip(np.round((raw + 3.0) / 6.0 * (levels - 1)), 0, levels - 1)
    return (grid / (levels - 1)).astype(np.float32), labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    args = parser.parse_args()
    rng = np.random.default_rng(SEED)
    cases = []

    # sklearn's documented example: AUROC 0.75.
    cases.append(make_case("hand", np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])))
    # Every score tied: AUROC exactly 0.5, ROC a single diagonal step.
    cases.append(make_case("all_tied", np.full(7, 0.25), np.array([1, 0, 0, 1, 0, 1, 0])))

    s, l = quantised(rng, 40, 5, 1.0)
    cases.append(make_case("ties_small", s, l))
    s, l = quantised(rng, 2000, 50, 0.8)
    cases.append(make_case("ties_many", s, l))

    # Continuous float32 scores with a block of exact duplicates mixed in.
    labels = rng.random(600) < 0.5
    scores = (rng.normal(0.0, 1.0, 600) + 0.5 * labels).astype(np.float32)
    dup_src = rng.integers(0, 600, 80)
    dup_dst = rng.integers(0, 600, 80)
    scores[dup_dst] = scores[dup_src]
    cases.append(make_case("continuous_with_duplicates", scores, labels))

    # Very imbalanced: 3 defects among 600.
    labels = np.zeros(600, dtype=bool)
    labels[rng.choice(600, 3, replace=False)] = True
    grid = np.round(rng.random(600) * 19) / 19 + labels * 0.1
    cases.append(make_case("imbalanced", grid.astype(np.float32), labels))

    # Negative scores, -0.0 and 0.0 (equal values, different bits) and ties across them.
    scores = np.array([-0.0, 0.0, -1.5, 2.0, -0.0, 0.0, -1.5, 3.25, 0.0, -2.0, 2.0, -0.0], dtype=np.float32)
    labels = np.array([1, 0, 0, 1, 0, 1, 1, 1, 0, 0, 0, 1], dtype=bool)
    cases.append(make_case("signed_zero_and_negative", scores, labels, extra_thresholds=[-0.0, 0.0]))

    # Only good samples: AUROC undefined, ROC empty, counts still defined.
    cases.append(make_case("single_class", rng.random(10), np.zeros(10, dtype=bool)))

    # Pixel-like: three 32x32 maps with 8-bit-quantised values and blob-shaped masks.
    maps, masks = [], []
    for k in range(3):
        yy, xx = np.mgrid[0:32, 0:32]
        cy, cx, r = rng.integers(6, 26), rng.integers(6, 26), rng.integers(3, 8)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        if k == 2:
            mask[:] = False  # a good image
        value = rng.normal(0.3, 0.15, (32, 32)) + 0.35 * mask
        maps.append(np.round(np.clip(value, 0, 1) * 255) / 255)
        masks.append(mask)
    pixel = make_case(
        "pixel_maps_3x32x32",
        np.concatenate([m.ravel() for m in maps]),
        np.concatenate([m.ravel() for m in masks]),
    )
    pixel["map_len"] = 32 * 32
    cases.append(pixel)

    doc = {
        "generator": "tools/golden/make_metrics_golden.py",
        "seed": SEED,
        "numpy": np.__version__,
        "cross_checked_with": None if sklearn is None else f"scikit-learn {sklearn.__version__}",
        "method": "AUROC by pairwise comparison (Mann-Whitney, ties count 1/2); ROC by counting "
        "scores >= each distinct threshold; counts with defect = score > threshold",
        "cases": cases,
    }
    out = args.out / "metrics_golden.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    total = sum(len(c["scores"]) for c in cases)
    print(f"wrote {out} ({len(cases)} cases, {total} scores, cross-check: {doc['cross_checked_with']})")


if __name__ == "__main__":
    main()
