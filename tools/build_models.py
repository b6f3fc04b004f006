#!/usr/bin/env python3
"""Build linesight's own synthetic dataset, demo model and test models, deterministically.

What it builds (paths relative to ``--out``, which defaults to the repository root):

- ``testdata/synthetic/``: a small MVTec-layout dataset of synthetic machined washers
  (``tools/synth_washer.py``): ``test/good`` (10), ``test/{scratch,spot,chip}`` (5 each),
  ``ground_truth/<defect>/<stem>_mask.png`` (0/255), plus ``reference_scores.csv``: the demo
  model's outputs on the test split as a plain Python client gets them (onnxruntime + Pillow
  bilinear resize), for the Rust integration tests to match.
- ``models/demo/model.onnx`` (+ ``model.toml``, ``fit_meta.json``): a small PaDiM-style model
  with the exact anomalib 2.x ONNX contract (input ``input`` float32 [batch_size, 3, 256, 256]
  RGB in [0, 1]; outputs ``pred_score`` [B, 1], ``pred_label`` [B, 1] bool, ``anomaly_map``
  [B, 1, 256, 256], ``pred_mask`` [B, 1, 256, 256] bool).
- ``testdata/models/<name>/``: variants of the same fitted model for contract-detection tests
  (map-only, score-only, fixed-batch, external-data, dynamic-size) and tiny graphs that no
  contract accepts (bad-input-rank, bad-input-type, no-known-outputs); see ``tools/README.md``.

Training images (``train/good``) are generated in memory; ``--train-dir DIR`` also writes them
as PNGs in MVTec layout (e.g. to try ``linesight evaluate`` or a real anomalib fit on them).

How the demo model works (and why):

PaDiM models each patch position of a normal part as a multivariate Gaussian over CNN features
and scores a patch by its Mahalanobis distance. A real PaDiM uses an ImageNet backbone (tens of
MB); here the "backbone" is a fixed, hand-made filter bank so the model is small, needs no
downloaded weights and is fully reproducible, yet the graph has the same shape as anomalib's:

1. ``Sub``/``Div`` ImageNet normalisation inside the graph (as anomalib exports do).
2. Features on a 32x32 patch grid (8x8-pixel patches at 256x256):
   - mean colour of the patch (3 channels, ``AveragePool``): stains and missing metal;
   - log local energy of Gaussian-derivative filters on luminance (``Conv`` 9x9, sigma 1.2:
     d/dx, d/dy, d2/dx2, d2/dy2, d2/dxdy; squared, ``AveragePool``, ``Log``): texture and edges;
   - log of the strongest response of each of those filters in the patch (``MaxPool``): thin
     scratches that an average would dilute.
   13 features per patch.
3. Per-patch Gaussian fitted with NumPy on the synthetic good training images: a mean per patch
   and an inverse covariance shared by each 2x2 block of patches (pooled samples: a better
   estimate from few images, and a 4x smaller file), regularised with ``REG * I``.
4. Mahalanobis distance map (``MatMul``/``ReduceSum``/``Sqrt``), bilinear ``Resize`` to 256x256
   and a sigma-4 Gaussian blur with reflect padding (as anomalib's PaDiM post-processing).
5. anomalib's normalisation ``clamp((raw - t) / (max - min) + 0.5, 0, 1)`` for the image score
   (max of the raw map) and for the map, with ``t`` / ``min`` / ``max`` learned on a validation
   split (held-out good images + synthetic defects from the same generator, never the test
   images). ``t`` is the F1-optimal threshold (as anomalib's F1AdaptiveThreshold), placed midway
   between the two neighbouring validation scores so that the strict ``> 0.5`` does not hinge on
   one image's exact score. ``pred_label = pred_score > 0.5``, ``pred_mask = anomaly_map > 0.5``.

Evaluation: the demo model is scored on the 25 checked-in test images (written to
``reference_scores.csv``) and on a larger held-out "eval" split (100 good + 30 per defect,
never written); the figures go to ``models/demo/fit_meta.json`` and are printed at the end.

Determinism: every random number comes from seeded ``numpy.random.default_rng`` streams, the
fit is NumPy float64 on features computed by onnxruntime with one thread, PNGs and ONNX files
are written without timestamps. With the pinned packages (``tools/requirements.txt``) a rerun on
the same machine gives byte-identical outputs; the script prints the sha256 of each file.

Usage: ``python tools/build_models.py [--out DIR] [--train-dir DIR]``
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import sys
from pathlib import Path

# Single-threaded BLAS: the fit's summation order must not depend on the machine's core count.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import synth_washer  # noqa: E402

SEED = 20251123
N_TRAIN = 240
N_VAL_GOOD = 60
N_VAL_PER_DEFECT = 20
N_TEST_GOOD = 10
N_TEST_PER_DEFECT = 5
# A larger held-out split, only scored (never written): the 25 checked-in test images are too few
# to measure AUROC with any confidence.
N_EVAL_GOOD = 100
N_EVAL_PER_DEFECT = 30

SIZE = 256  # model input height = width, like anomalib's default export
PATCH = 8  # patch stride in pixels -> GRID x GRID patches
GRID = SIZE // PATCH
COV_BLOCK = 2  # one inverse covariance per COV_BLOCK x COV_BLOCK patches
DERIV_SIGMA = 1.2
DERIV_KSIZE = 9
BLUR_SIGMA = 4.0  # anomalib PaDiM's Gaussian blur of the anomaly map
LOG_EPS = 1e-3
REG = 0.01  # covariance regularisation, as anomalib PaDiM
OPSET = 18
IR_VERSION = 10  # what anomalib/torch exports carry; onnxruntime 1.31 reads it

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
LUMA = np.array([0.299, 0.587, 0.114])

REPO = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------


def png_bytes(arr: np.ndarray) -> bytes:
    """Encode an image as PNG, losslessly and reproducibly (no metadata chunks)."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def to_input(rgb: np.ndarray) -> np.ndarray:
    """The plain Python client's preprocessing: Pillow bilinear to SIZE x SIZE, /255, CHW."""
    img = Image.fromarray(rgb).convert("RGB").resize((SIZE, SIZE), Image.BILINEAR)
    return (np.asarray(img, dtype=np.float32) / 255.0).transpose(2, 0, 1)


def mask_to_model(mask: np.ndarray) -> np.ndarray:
    """Ground-truth mask at model resolution (nearest neighbour keeps it binary)."""
    return np.asarray(Image.fromarray(mask).resize((SIZE, SIZE), Image.NEAREST)) > 127


def split_items(split: str, n_good: int, n_per_defect: int):
    """``(stem, defect_or_None, index)`` for one split, in a fixed order."""
    items = [(f"{i:03d}", None, i) for i in range(n_good)]
    for defect in synth_washer.DEFECTS:
        items += [(f"{i:03d}", defect, i) for i in range(n_per_defect)]
    return items


# ----------------------------------------------------------------------------------------
# Graph construction
# ----------------------------------------------------------------------------------------


def gaussian_1d(sigma: float, ksize: int, order: int) -> np.ndarray:
    """Sampled Gaussian (order 0) or its first / second derivative, zero-mean for order > 0."""
    x = np.arange(ksize) - ksize // 2
    g = np.exp(-0.5 * (x / sigma) ** 2)
    g /= g.sum()
    if order == 0:
        return g
    if order == 1:
        d = -x / sigma**2 * g
        return d / np.abs((d * x).sum())  # unit response to a unit ramp
    d = (x**2 / sigma**4 - 1 / sigma**2) * g
    d -= d.mean()
    return d / np.abs((d * x**2).sum() / 2)  # unit response to x^2 / 2


def derivative_bank() -> np.ndarray:
    """Conv weights [5, 3, k, k]: Gaussian derivatives of luminance (x, y, xx, yy, xy)."""
    g0, g1, g2 = (gaussian_1d(DERIV_SIGMA, DERIV_KSIZE, o) for o in (0, 1, 2))
    kernels = [
        np.outer(g0, g1),  # d/dx (rows = y, columns = x)
        np.outer(g1, g0),  # d/dy
        np.outer(g0, g2),  # d2/dx2
        np.outer(g2, g0),  # d2/dy2
        np.outer(g1, g1),  # d2/dxdy
    ]
    bank = np.stack(kernels)[:, None, :, :] * LUMA[None, :, None, None]
    return bank.astype(np.float32)


def blur_kernel() -> np.ndarray:
    """anomalib's blur: sigma 4, kernel size 2 * int(4 * sigma + 0.5) + 1 = 33."""
    ksize = 2 * int(4.0 * BLUR_SIGMA + 0.5) + 1
    return gaussian_1d(BLUR_SIGMA, ksize, 0).astype(np.float32)


class Graph:
    """Tiny helper over ``onnx.helper``: named nodes and initialisers in insertion order."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def const(self, name: str, value) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], out: str | None = None, **attrs) -> str:
        self.count += 1
        out = out or f"{op_type.lower()}_{self.count}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=f"n{self.count}_{op_type}", **attrs))
        return out


def feature_nodes(g: Graph, x: str) -> str:
    """Input [B, 3, S, S] in [0, 1] -> features [B, D, GRID, GRID]."""
    xn = g.op("Sub", [x, g.const("imagenet_mean", IMAGENET_MEAN.reshape(1, 3, 1, 1))])
    xn = g.op("Div", [xn, g.const("imagenet_std", IMAGENET_STD.reshape(1, 3, 1, 1))])
    pool = dict(kernel_shape=[PATCH, PATCH], strides=[PATCH, PATCH])
    colour = g.op("AveragePool", [xn], **pool)
    pad = DERIV_KSIZE // 2
    deriv = g.op("Conv", [xn, g.const("deriv_bank", derivative_bank())], pads=[pad] * 4)
    energy = g.op("Mul", [deriv, deriv])
    eps = g.const("log_eps", np.array(LOG_EPS, dtype=np.float32))
    mean_energy = g.op("Log", [g.op("Add", [g.op("AveragePool", [energy], **pool), eps])])
    # The strongest response in the patch, per filter: a 1-2 px scratch barely moves an 8x8
    # average, but it sets the maximum (and in the filter of its own orientation).
    max_energy = g.op("Log", [g.op("Add", [g.op("MaxPool", [energy], **pool), eps])])
    return g.op("Concat", [colour, mean_energy, max_energy], axis=1, out="features")


N_FEATURES = 3 + 5 + 5  # colour, mean energy, max energy


def distance_nodes(
    g: Graph, feats: str, mean: np.ndarray, inv_cov: np.ndarray, size_from: str | None = None
) -> str:
    """Features -> raw anomaly map [B, 1, S, S] (Mahalanobis, upsampled, blurred).

    ``size_from``: take the upsampled size from this tensor's shape (the dynamic-size variant)
    instead of a fixed scale, so the graph declares no fixed output size.
    """
    d = N_FEATURES
    p = GRID * GRID
    flat = g.op("Reshape", [feats, g.const("shape_bdp", np.array([0, d, p], dtype=np.int64))])
    flat = g.op("Transpose", [flat], perm=[0, 2, 1])  # [B, P, D]
    diff = g.op("Sub", [flat, g.const("patch_mean", mean.astype(np.float32))])
    # One inverse covariance per block of COV_BLOCK x COV_BLOCK patches, expanded to every patch;
    # this only touches initialisers, so onnxruntime folds it once at load time.
    nb = GRID // COV_BLOCK
    icov = g.const("block_inv_cov", inv_cov.astype(np.float32).reshape(nb, 1, nb, 1, d, d))
    expand = g.const("cov_expand", np.array([nb, COV_BLOCK, nb, COV_BLOCK, d, d], dtype=np.int64))
    icov = g.op("Expand", [icov, expand])
    icov = g.op("Reshape", [icov, g.const("shape_pdd", np.array([p, d, d], dtype=np.int64))])
    axis2 = g.const("axis_2", np.array([2], dtype=np.int64))
    left = g.op("MatMul", [g.op("Unsqueeze", [diff, axis2]), icov])  # [B, P, 1, D]
    left = g.op("Squeeze", [left, axis2])
    sq = g.op("ReduceSum", [g.op("Mul", [left, diff]), axis2], keepdims=0)  # [B, P]
    dist = g.op("Sqrt", [g.op("Relu", [sq])])
    dist = g.op("Reshape", [dist, g.const("shape_grid", np.array([0, 1, GRID, GRID], dtype=np.int64))])
    if size_from is None:
        scales, sizes = g.const("up_scales", np.array([1, 1, PATCH, PATCH], dtype=np.float32)), ""
    else:
        bc = g.op("Shape", [dist], start=0, end=2)
        hw = g.op("Shape", [size_from], start=2, end=4)
        scales, sizes = "", g.op("Concat", [bc, hw], axis=0)
    up = g.op("Resize", [dist, "", scales, sizes], mode="linear", coordinate_transformation_mode="half_pixel")
    k = blur_kernel()
    half = len(k) // 2
    pads = g.const("blur_pads", np.array([0, 0, half, half, 0, 0, half, half], dtype=np.int64))
    padded = g.op("Pad", [up, pads], mode="reflect")
    bx = g.op("Conv", [padded, g.const("blur_x", k.reshape(1, 1, 1, -1))])
    return g.op("Conv", [bx, g.const("blur_y", k.reshape(1, 1, -1, 1))])


def normalise_nodes(g: Graph, raw: str, prefix: str, t: float, lo: float, hi: float, out: str) -> str:
    """anomalib's ``clamp((raw - t) / (max - min) + 0.5, 0, 1)``."""
    x = g.op("Sub", [raw, g.const(f"{prefix}_threshold", np.array(t, dtype=np.float32))])
    x = g.op("Div", [x, g.const(f"{prefix}_range", np.array(hi - lo, dtype=np.float32))])
    x = g.op("Add", [x, g.const(f"{prefix}_half", np.array(0.5, dtype=np.float32))])
    zero = g.const(f"{prefix}_zero", np.array(0.0, dtype=np.float32))
    one = g.const(f"{prefix}_one", np.array(1.0, dtype=np.float32))
    return g.op("Clip", [x, zero, one], out=out)


def tensor_info(name: str, elem: int, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def finish(g: Graph, inputs, outputs, name: str, doc: str) -> onnx.ModelProto:
    graph = helper.make_graph(g.nodes, name, inputs, outputs, initializer=g.inits)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="linesight tools/build_models.py",
        producer_version="1",
        doc_string=doc,
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def image_input(batch="batch_size", elem=TensorProto.FLOAT, h=SIZE, w=SIZE):
    return tensor_info("input", elem, [batch, 3, h, w])


def features_model() -> onnx.ModelProto:
    g = Graph()
    feature_nodes(g, "input")
    d = N_FEATURES
    return finish(g, [image_input()], [tensor_info("features", TensorProto.FLOAT, ["batch_size", d, GRID, GRID])],
                  "features", "feature extractor (fit only)")


def anomalib_model(
    fit: dict, *, batch="batch_size", score_shape=None, dynamic_size=False, doc=""
) -> onnx.ModelProto:
    """The full anomalib-contract graph (also the fixed-batch and dynamic-size variants)."""
    g = Graph()
    size_from = "input" if dynamic_size else None
    raw_map = distance_nodes(g, feature_nodes(g, "input"), fit["mean"], fit["inv_cov"], size_from)
    axes = g.const("axes_hw", np.array([2, 3], dtype=np.int64))
    raw_score = g.op("ReduceMax", [raw_map, axes], keepdims=0)  # [B, 1]
    if score_shape == "flat":
        raw_score = g.op("Reshape", [raw_score, g.const("shape_flat", np.array([-1], dtype=np.int64))])
    score = normalise_nodes(
        g, raw_score, "image", fit["image_threshold"], fit["image_min"], fit["image_max"], "pred_score"
    )
    amap = normalise_nodes(
        g, raw_map, "pixel", fit["pixel_threshold"], fit["pixel_min"], fit["pixel_max"], "anomaly_map"
    )
    half = g.const("decision_threshold", np.array(0.5, dtype=np.float32))
    g.op("Greater", [score, half], out="pred_label")
    g.op("Greater", [amap, half], out="pred_mask")
    h, w = ("height", "width") if dynamic_size else (SIZE, SIZE)
    sshape = [batch] if score_shape == "flat" else [batch, 1]
    outputs = [
        tensor_info("pred_score", TensorProto.FLOAT, sshape),
        tensor_info("pred_label", TensorProto.BOOL, sshape),
        tensor_info("anomaly_map", TensorProto.FLOAT, [batch, 1, h, w]),
        tensor_info("pred_mask", TensorProto.BOOL, [batch, 1, h, w]),
    ]
    return finish(g, [image_input(batch, h=h, w=w)], outputs, "linesight_demo_padim", doc)


def map_only_model(fit: dict) -> onnx.ModelProto:
    """Single output: the raw (un-normalised) anomaly map."""
    g = Graph()
    raw = distance_nodes(g, feature_nodes(g, "input"), fit["mean"], fit["inv_cov"])
    g.op("Identity", [raw], out="anomaly_map")
    out = [tensor_info("anomaly_map", TensorProto.FLOAT, ["batch_size", 1, SIZE, SIZE])]
    return finish(g, [image_input()], out, "map_only", "raw Mahalanobis anomaly map only")


def score_only_model(fit: dict) -> onnx.ModelProto:
    """Single output ``score`` [B]: the normalised image score."""
    g = Graph()
    raw = distance_nodes(g, feature_nodes(g, "input"), fit["mean"], fit["inv_cov"])
    raw_score = g.op("ReduceMax", [raw, g.const("axes_chw", np.array([1, 2, 3], dtype=np.int64))], keepdims=0)
    normalise_nodes(g, raw_score, "image", fit["image_threshold"], fit["image_min"], fit["image_max"], "score")
    out = [tensor_info("score", TensorProto.FLOAT, ["batch_size"])]
    return finish(g, [image_input()], out, "score_only", "normalised image score only, shape [B]")


def bad_input_rank_model() -> onnx.ModelProto:
    """Rank-2 input (a flattened image); anomalib-named outputs so only the input is wrong."""
    g = Graph()
    axes = g.const("axes_1", np.array([1], dtype=np.int64))
    s = g.op("ReduceMax", ["input", axes], keepdims=1, out="pred_score")
    g.op("Greater", [s, g.const("half", np.array(0.5, dtype=np.float32))], out="pred_label")
    inp = tensor_info("input", TensorProto.FLOAT, ["batch_size", 3 * SIZE * SIZE])
    out = [tensor_info("pred_score", TensorProto.FLOAT, ["batch_size", 1]),
           tensor_info("pred_label", TensorProto.BOOL, ["batch_size", 1])]
    return finish(g, [inp], out, "bad_input_rank", "rank-2 input: no supported contract")


def bad_input_type_model() -> onnx.ModelProto:
    """int64 image input; anomalib-named outputs so only the input type is wrong."""
    g = Graph()
    x = g.op("Cast", ["input"], to=TensorProto.FLOAT)
    x = g.op("Div", [x, g.const("c255", np.array(255.0, dtype=np.float32))])
    s = g.op("ReduceMax", [x, g.const("axes_chw", np.array([1, 2, 3], dtype=np.int64))], keepdims=0)
    s = g.op("Unsqueeze", [s, g.const("axes_1", np.array([1], dtype=np.int64))], out="pred_score")
    g.op("Greater", [s, g.const("half", np.array(0.5, dtype=np.float32))], out="pred_label")
    out = [tensor_info("pred_score", TensorProto.FLOAT, ["batch_size", 1]),
           tensor_info("pred_label", TensorProto.BOOL, ["batch_size", 1])]
    return finish(g, [image_input(elem=TensorProto.INT64)], out, "bad_input_type", "int64 input: unsupported")


def no_known_outputs_model() -> onnx.ModelProto:
    """A valid image input but two [B, 10] outputs that match no anomaly-detection contract."""
    g = Graph()
    pooled = g.op("GlobalAveragePool", ["input"])
    flat = g.op("Flatten", [pooled], axis=1)  # [B, 3]
    w = np.linspace(-1.0, 1.0, 30, dtype=np.float32).reshape(3, 10)
    logits = g.op("MatMul", [flat, g.const("head_w", w)], out="logits")
    g.op("Sigmoid", [logits], out="probabilities")
    out = [tensor_info("logits", TensorProto.FLOAT, ["batch_size", 10]),
           tensor_info("probabilities", TensorProto.FLOAT, ["batch_size", 10])]
    return finish(g, [image_input()], out, "no_known_outputs", "classifier-like outputs: no anomaly contract")


# ----------------------------------------------------------------------------------------
# Fit and calibration
# ----------------------------------------------------------------------------------------


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # one thread: reproducible summation order
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def run_batched(sess: ort.InferenceSession, x: np.ndarray, names: list[str], batch: int = 16):
    outs = [sess.run(names, {"input": x[i : i + batch]}) for i in range(0, len(x), batch)]
    return [np.concatenate([o[k] for o in outs]) for k in range(len(names))]


def fit_gaussians(feats: np.ndarray) -> dict:
    """Per-patch mean, and a regularised inverse covariance per COV_BLOCK x COV_BLOCK block.

    ``feats`` is [N, D, GRID, GRID]. Each block's covariance pools the deviations of its patches
    from their own means (so it only models within-patch variation).
    """
    x = feats.astype(np.float64)
    n, d = x.shape[:2]
    mean = x.mean(axis=0)  # [D, G, G]
    dev = x - mean[None]
    nb = GRID // COV_BLOCK
    dev = dev.reshape(n, d, nb, COV_BLOCK, nb, COV_BLOCK).transpose(2, 4, 0, 3, 5, 1).reshape(nb * nb, -1, d)
    cov = np.einsum("bki,bkj->bij", dev, dev) / (dev.shape[1] - 1)
    cov += REG * np.eye(d)[None]
    inv_cov = np.linalg.inv(cov)
    inv_cov = 0.5 * (inv_cov + inv_cov.transpose(0, 2, 1))
    return {"mean": mean.reshape(d, -1).T.copy(), "inv_cov": inv_cov}


def f1_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """F1-optimal threshold for ``score > t``, midway between neighbouring distinct scores."""
    order = np.argsort(-scores, kind="stable")
    s = scores[order].astype(np.float64)
    y = labels[order].astype(np.int64)
    tp = np.cumsum(y)
    fp = np.cumsum(1 - y)
    total_pos = y.sum()
    # Only cut between distinct values: everything at or above index i is predicted positive.
    last = np.r_[s[1:] != s[:-1], True]
    f1 = np.where(last, 2 * tp / (tp + fp + total_pos), -1.0)
    i = int(np.argmax(f1))
    t = s[i] if i + 1 == len(s) else 0.5 * (s[i] + s[i + 1])
    return float(t), float(f1[i])


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties count one half)."""
    pos = scores[labels == 1][:, None]
    neg = scores[labels == 0][None, :]
    return float(((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size))


def pixel_auroc(maps: np.ndarray, masks: np.ndarray) -> float:
    """Pixel AUROC via ranks (fine for a few million pixels)."""
    s = maps.ravel().astype(np.float64)
    y = masks.ravel()
    order = np.argsort(s, kind="stable")
    ranks = np.empty(len(s))
    ranks[order] = np.arange(1, len(s) + 1)
    # Average ranks over ties.
    ss = s[order]
    starts = np.r_[0, np.flatnonzero(ss[1:] != ss[:-1]) + 1]
    ends = np.r_[starts[1:], len(ss)]
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


# ----------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------


class Writer:
    """Writes files under ``root`` and remembers their sha256 for the summary."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.written: dict[str, str] = {}

    def bytes(self, rel: str, data: bytes) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.written[rel] = hashlib.sha256(data).hexdigest()

    def text(self, rel: str, text: str) -> None:
        self.bytes(rel, text.encode("utf-8"))

    def model(self, rel: str, model: onnx.ModelProto) -> None:
        self.bytes(rel, model.SerializeToString())

    def external_model(self, rel: str, model: onnx.ModelProto) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        data = path.parent / "model.onnx.data"
        if data.exists():
            data.unlink()  # save_model appends to an existing data file
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location="model.onnx.data", size_threshold=1024)
        for p in (path, data):
            self.written[str(p.relative_to(self.root))] = hashlib.sha256(p.read_bytes()).hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO, help="root to write into (default: the repository)")
    ap.add_argument("--train-dir", type=Path, help="also write the training images here (MVTec layout)")
    args = ap.parse_args()
    w = Writer(args.out)

    # --- images -------------------------------------------------------------------------
    train = [synth_washer.render(SEED, "train", i)[0] for i in range(N_TRAIN)]
    if args.train_dir:
        for i, rgb in enumerate(train):
            p = args.train_dir / "train" / "good" / f"{i:03d}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(png_bytes(rgb))
    val_items = split_items("val", N_VAL_GOOD, N_VAL_PER_DEFECT)
    val = [(d, *synth_washer.render(SEED, "val", i, d)) for _, d, i in val_items]
    test_items = split_items("test", N_TEST_GOOD, N_TEST_PER_DEFECT)
    test = []
    for stem, defect, i in test_items:
        rgb, mask = synth_washer.render(SEED, "test", i, defect)
        cls = defect or "good"
        rel = f"test/{cls}/{stem}.png"
        data = png_bytes(rgb)
        w.bytes(f"testdata/synthetic/{rel}", data)
        if defect:
            w.bytes(f"testdata/synthetic/ground_truth/{cls}/{stem}_mask.png", png_bytes(mask))
        # Score what a client reads back from disk, not the in-memory array.
        decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        test.append((rel, defect, decoded, mask))

    # --- fit ----------------------------------------------------------------------------
    feat_sess = session(features_model())
    x_train = np.stack([to_input(rgb) for rgb in train])
    (feats,) = run_batched(feat_sess, x_train, ["features"])
    fit = fit_gaussians(feats)

    # --- calibrate on the validation split ----------------------------------------------
    raw_sess = session(map_only_model(fit))
    x_val = np.stack([to_input(rgb) for _, rgb, _ in val])
    (val_maps,) = run_batched(raw_sess, x_val, ["anomaly_map"])
    val_maps = val_maps[:, 0]
    val_scores = val_maps.reshape(len(val), -1).max(axis=1)
    val_labels = np.array([d is not None for d, _, _ in val], dtype=np.int64)
    val_masks = np.stack([mask_to_model(m) for _, _, m in val])
    fit["image_threshold"], val_f1 = f1_threshold(val_scores, val_labels)
    fit["image_min"], fit["image_max"] = float(val_scores.min()), float(val_scores.max())
    fit["pixel_threshold"], val_pix_f1 = f1_threshold(val_maps.ravel(), val_masks.ravel().astype(np.int64))
    fit["pixel_min"], fit["pixel_max"] = float(val_maps.min()), float(val_maps.max())
    # The graph stores float32: make the recorded values exactly what the graph holds.
    for k in ("image_threshold", "image_min", "image_max", "pixel_threshold", "pixel_min", "pixel_max"):
        fit[k] = float(np.float32(fit[k]))

    # --- models -------------------------------------------------------------------------
    demo = anomalib_model(fit, doc="linesight demo: PaDiM-style washer model (anomalib 2.x ONNX contract)")
    w.model("models/demo/model.onnx", demo)
    w.model("testdata/models/map-only/model.onnx", map_only_model(fit))
    w.model("testdata/models/score-only/model.onnx", score_only_model(fit))
    w.model("testdata/models/fixed-batch/model.onnx",
            anomalib_model(fit, batch=2, score_shape="flat",
                           doc="fixed batch 2, pred_score [B] (PatchCore style)"))
    w.external_model("testdata/models/external-data/model.onnx",
                     anomalib_model(fit, doc="anomalib contract, weights in model.onnx.data"))
    w.model("testdata/models/dynamic-size/model.onnx",
            anomalib_model(fit, dynamic_size=True, doc="dynamic H/W input; model.toml gives the size"))
    w.model("testdata/models/bad-input-rank/model.onnx", bad_input_rank_model())
    w.model("testdata/models/bad-input-type/model.onnx", bad_input_type_model())
    w.model("testdata/models/no-known-outputs/model.onnx", no_known_outputs_model())

    # --- evaluate the demo model on the test split, as a plain Python client ------------
    demo_sess = session(demo)
    names = ["pred_score", "pred_label", "anomaly_map", "pred_mask"]
    rows = []
    maps, gts = [], []
    for rel, defect, rgb, mask in test:
        score, label, amap, pmask = demo_sess.run(names, {"input": to_input(rgb)[None]})
        rows.append((rel, int(defect is not None), float(score[0, 0]), int(label[0, 0]),
                     float(amap.max()), int(pmask.sum())))
        maps.append(amap[0, 0])
        gts.append(mask_to_model(mask))
    labels = np.array([r[1] for r in rows])
    scores = np.array([r[2] for r in rows])
    verdicts = np.array([r[3] for r in rows])
    metrics = {
        "test_image_auroc": round(auroc(scores, labels), 4),
        "test_accuracy_at_0.5": round(float((verdicts == labels).mean()), 4),
        "test_pixel_auroc": round(pixel_auroc(np.stack(maps), np.stack(gts)), 4),
        "validation_image_f1": round(val_f1, 4),
        "validation_pixel_f1": round(val_pix_f1, 4),
        "validation_image_auroc": round(auroc(val_scores, val_labels), 4),
    }
    eval_items = split_items("eval", N_EVAL_GOOD, N_EVAL_PER_DEFECT)
    x_eval = np.stack([to_input(synth_washer.render(SEED, "eval", i, d)[0]) for _, d, i in eval_items])
    (eval_scores,) = run_batched(demo_sess, x_eval, ["pred_score"])
    eval_scores = eval_scores[:, 0]
    eval_labels = np.array([d is not None for _, d, _ in eval_items], dtype=np.int64)
    metrics["eval_image_auroc"] = round(auroc(eval_scores, eval_labels), 4)
    metrics["eval_accuracy_at_0.5"] = round(float(((eval_scores > 0.5) == eval_labels).mean()), 4)
    for defect in synth_washer.DEFECTS:
        sel = np.array([d in (None, defect) for _, d, _ in eval_items])
        metrics[f"eval_image_auroc_{defect}"] = round(auroc(eval_scores[sel], eval_labels[sel]), 4)

    buf = io.StringIO()
    cw = csv.writer(buf, lineterminator="\n")
    cw.writerow(["image", "label", "pred_score", "pred_label", "anomaly_map_max", "pred_mask_pixels"])
    for rel, lab, s, pl, amax, npix in rows:
        cw.writerow([rel, lab, f"{s:.9g}", pl, f"{amax:.9g}", npix])
    w.text("testdata/synthetic/reference_scores.csv", buf.getvalue())

    # --- manifests and metadata ---------------------------------------------------------
    demo_description = ("PaDiM-style model of linesight's synthetic washers (fixed filter bank + "
                        "per-patch Gaussians); anomalib 2.x ONNX contract.")
    w.text("models/demo/model.toml", manifest("demo-washer", demo_description))
    w.text("testdata/models/dynamic-size/model.toml",
           manifest("dynamic-size", "Test model: dynamic input height/width; this manifest gives 256x256."))
    meta = {
        "seed": SEED,
        "images": {"train_good": N_TRAIN, "val_good": N_VAL_GOOD, "val_per_defect": N_VAL_PER_DEFECT,
                   "test_good": N_TEST_GOOD, "test_per_defect": N_TEST_PER_DEFECT,
                   "eval_good": N_EVAL_GOOD, "eval_per_defect": N_EVAL_PER_DEFECT},
        "input_size": [SIZE, SIZE],
        "patch_grid": [GRID, GRID],
        "features": N_FEATURES,
        "post_processor_state": {k: fit[k] for k in ("image_threshold", "image_min", "image_max",
                                                     "pixel_threshold", "pixel_min", "pixel_max")},
        "metrics": metrics,
        "packages": {"numpy": np.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__,
                     "pillow": Image.__version__},
    }
    w.text("models/demo/fit_meta.json", json.dumps(meta, indent=2) + "\n")

    for rel in sorted(w.written):
        size = (args.out / rel).stat().st_size
        print(f"{w.written[rel]}  {size:>8}  {rel}")
    print(json.dumps(metrics))
    return 0


def manifest(name: str, description: str) -> str:
    return (
        f'name = "{name}"\n'
        'version = "1.0.0"\n'
        f'description = "{description}"\n'
        "\n"
        "[input]\n"
        f"width = {SIZE}\n"
        f"height = {SIZE}\n"
        'channel_order = "rgb"\n'
        'normalisation = "none"        # ImageNet normalisation is inside the graph\n'
        'resize = "pillow-bilinear"\n'
        "\n"
        "[decision]\n"
        "threshold = 0.5\n"
        "pixel_threshold = 0.5\n"
    )


if __name__ == "__main__":
    sys.exit(main())
