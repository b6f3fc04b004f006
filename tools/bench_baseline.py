#!/usr/bin/env python3
"""Python baseline for `linesight bench`: the plain Python client a model is usually calibrated with.

PIL decode -> convert("RGB") -> the preprocessing the package's model.toml declares, read as
linesight reads it (ROI crop; resize: Pillow bilinear by default, torchvision's antialiased resize
through torch when the manifest asks for it; /255; channel order; normalisation) -> NCHW float32
-> onnxruntime `InferenceSession.run`, with the same model, images, intra-op threads and batch
size as the linesight run it is compared with (scripts/bench runs both). A graph with a fixed
batch size gets calls of that size, the last one padded, as in linesight. Prints one JSON object.

    python tools/bench_baseline.py --model models/demo --images testdata/synthetic/test \\
        --threads 2 --batch 1 --duration 10 --warmup 2
"""
import argparse
import io
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
# What linesight's manifest accepts (src/model/manifest.rs, src/preprocess/).
RESIZE_MODES = ("pillow-bilinear", "torchvision-antialias", "torchvision-antialias-float")
IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def walk(folder):
    """Image files under `folder`, in the order linesight lists them (entries sorted by name
    within each folder, depth first)."""
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.is_dir():
            yield from walk(entry)
        elif entry.is_file() and entry.suffix.lower() in EXTENSIONS:
            yield entry


def image_files(paths):
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            found = list(walk(p))
            if not found:
                raise SystemExit(f"no images (jpg, jpeg, png, bmp, tif, tiff) under {p}")
            out += found
        elif p.exists():
            out.append(p)
        else:
            raise SystemExit(f"{p} does not exist")
    return out


def percentiles(values):
    v = sorted(values)
    if not v:
        return {"p50": 0, "p90": 0, "p99": 0, "max": 0, "mean": 0}

    def rank(q):
        return v[min(max(int(np.ceil(q * len(v))), 1), len(v)) - 1]

    return {"p50": rank(0.5), "p90": rank(0.9), "p99": rank(0.99), "max": v[-1], "mean": sum(v) / len(v)}


def package_paths(model):
    """(model.onnx, model.toml) of a package: a directory, or a .onnx file whose directory is the
    package, as linesight accepts."""
    if model.is_dir():
        onnx, folder = model / "model.onnx", model
    elif model.is_file():
        onnx, folder = model, model.parent
    else:
        raise SystemExit(f"model package {model} does not exist")
    if not onnx.is_file():
        raise SystemExit(f"model package {folder} has no model.onnx")
    return onnx, folder / "model.toml"


def load_manifest(path):
    if not path.is_file():
        return {}
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise SystemExit(f"{path}: reading model.toml needs Python 3.11 (tomllib) or the tomli package")
    with open(path, "rb") as f:
        return tomllib.load(f)


@dataclass
class InputSpec:
    width: int
    height: int
    resize: str
    channel_order: str
    mean: np.ndarray | None  # model channel order, float32
    std: np.ndarray | None
    roi: tuple[int, int, int, int] | None  # x, y, width, height in original-image pixels

    def describe(self):
        def values(v):
            return "[" + ", ".join(f"{x:g}" for x in v.tolist()) + "]"

        norm = "none" if self.mean is None else f"mean {values(self.mean)} std {values(self.std)}"
        roi = "" if self.roi is None else f", ROI x={self.roi[0]} y={self.roi[1]} {self.roi[2]}x{self.roi[3]}"
        return f"{self.resize} to {self.width}x{self.height}, {self.channel_order}, /255, normalisation {norm}{roi}"


def input_spec(inp, manifest, manifest_path):
    """The preprocessing linesight applies: graph sizes, else the manifest's; manifest settings,
    else linesight's defaults (Pillow bilinear, RGB, no normalisation, no ROI)."""
    section = manifest.get("input", {})

    def setting(key):
        return f"{manifest_path}: input.{key}"

    def dim(name, graph):
        declared = section.get(name)
        if isinstance(graph, int) and graph > 0:
            if declared is not None and declared != graph:
                raise SystemExit(f"{setting(name)} = {declared}, but the graph's input {inp.name} has {name} {graph}")
            return graph
        if declared is None:
            raise SystemExit(f"the graph's input {inp.name} has a dynamic {name} ({inp.shape}); "
                             f"set input.{name} in {manifest_path}")
        return int(declared)

    if len(inp.shape) != 4:
        raise SystemExit(f"the graph's input {inp.name} is {inp.shape}; linesight expects [N, 3, H, W]")
    height, width = dim("height", inp.shape[2]), dim("width", inp.shape[3])
    resize = section.get("resize", "pillow-bilinear")
    if resize not in RESIZE_MODES:
        raise SystemExit(f"{setting('resize')} = {resize!r}: not one of {', '.join(RESIZE_MODES)}")
    order = section.get("channel_order", "rgb")
    if order not in ("rgb", "bgr"):
        raise SystemExit(f"{setting('channel_order')} = {order!r}: not rgb or bgr")
    norm = section.get("normalisation", "none")
    if norm == "none":
        mean = std = None
    elif norm == "imagenet":
        mean, std = IMAGENET
    elif isinstance(norm, dict) and set(norm) == {"mean", "std"}:
        mean, std = norm["mean"], norm["std"]
    else:
        raise SystemExit(f"{setting('normalisation')} = {norm!r}: not \"none\", \"imagenet\" or {{ mean = [..], std = [..] }}")
    if mean is not None:
        # In the model's channel order, as linesight applies them.
        mean, std = np.array(mean, np.float32), np.array(std, np.float32)
    roi = section.get("roi")
    if roi is not None:
        roi = (int(roi["x"]), int(roi["y"]), int(roi["width"]), int(roi["height"]))
    return InputSpec(width, height, resize, order, mean, std, roi)


def torch_for(spec, manifest_path):
    """torch and its functional API when the manifest asks for torchvision's resize; refuses when
    this Python has no torch rather than measuring another preprocessing."""
    if not spec.resize.startswith("torchvision"):
        return None
    try:
        import torch
        import torch.nn.functional
    except ImportError:
        raise SystemExit(
            f"{manifest_path}: input.resize = \"{spec.resize}\" needs PyTorch (torchvision's antialiased "
            f"resize), and {sys.executable} has no torch; install torch there, or point PYTHON at an "
            "interpreter that has it")
    # One thread prepares the images, as in linesight; ONNX Runtime gets --threads.
    torch.set_num_threads(1)
    return torch


def prepare(img, spec, torch):
    """A decoded RGB image -> CHW float32 model input, as src/preprocess/mod.rs `prepare`."""
    if spec.roi is not None:
        x, y, w, h = spec.roi
        if x + w > img.width or y + h > img.height:
            raise ValueError(f"ROI {spec.roi} does not fit inside the {img.width}x{img.height} image")
        img = img.crop((x, y, x + w, y + h))
    size = (spec.width, spec.height)
    if spec.resize == "pillow-bilinear":
        if img.size != size:
            img = img.resize(size, Image.BILINEAR)
        chw = (np.asarray(img, dtype=np.float32) / np.float32(255)).transpose(2, 0, 1)
    else:
        # torchvision `Resize((h, w), antialias=True)`: on the uint8 tensor, or on [0, 1] floats.
        t = torch.from_numpy(np.array(img)).permute(2, 0, 1).unsqueeze(0)
        if spec.resize == "torchvision-antialias-float":
            t = t.float() / 255
        if img.size != size:
            t = torch.nn.functional.interpolate(t, size=(spec.height, spec.width), mode="bilinear",
                                                align_corners=False, antialias=True)
        chw = t[0].numpy()
        if chw.dtype == np.uint8:
            chw = chw.astype(np.float32) / np.float32(255)
    if spec.channel_order == "bgr":
        chw = chw[::-1]
    if spec.mean is not None:
        chw = (chw - spec.mean[:, None, None]) / spec.std[:, None, None]
    return np.ascontiguousarray(chw, dtype=np.float32)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, type=Path, help="model package directory or its .onnx file")
    ap.add_argument("--images", nargs="+", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=2.0,
                    help="seconds of warm-up; at least one batch runs unmeasured, as in linesight")
    ap.add_argument("--provider", choices=sorted(PROVIDERS), default="cpu",
                    help="execution provider, as `linesight bench --provider` (CPU is the fallback)")
    args = ap.parse_args()
    if args.batch < 1:
        raise SystemExit(f"--batch {args.batch}: must be at least 1")

    onnx_path, manifest_path = package_paths(args.model)
    manifest = load_manifest(manifest_path)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = args.threads
    wanted = PROVIDERS[args.provider]
    missing = [p for p in wanted if p not in ort.get_available_providers()]
    if missing:
        raise SystemExit(f"--provider {args.provider}: this onnxruntime ({ort.__version__}) lacks {', '.join(missing)}")
    session = ort.InferenceSession(str(onnx_path), options, providers=wanted)
    inp = session.get_inputs()[0]
    spec = input_spec(inp, manifest, manifest_path)
    torch = torch_for(spec, manifest_path)
    fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] >= 1 else None
    outputs = [o.name for o in session.get_outputs()]
    score_index = outputs.index("pred_score") if "pred_score" in outputs else 0
    files = image_files(args.images)
    blobs = [f.read_bytes() for f in files]
    cursor = 0

    def step(record):
        nonlocal cursor
        start = time.perf_counter()
        rows = []
        for k in range(args.batch):
            i = (cursor + k) % len(blobs)
            t0 = time.perf_counter()
            img = Image.open(io.BytesIO(blobs[i])).convert("RGB")
            t1 = time.perf_counter()
            try:
                rows.append(prepare(img, spec, torch))
            except ValueError as e:
                raise SystemExit(f"{files[i]}: {e}")
            t2 = time.perf_counter()
            if record is not None:
                record["decode"].append((t1 - t0) * 1e3)
                record["pre"].append((t2 - t1) * 1e3)
                record["decode_pre"].append((t2 - t0) * 1e3)
        cursor = (cursor + args.batch) % len(blobs)
        x = np.stack(rows)
        # A fixed-batch graph takes calls of exactly its size; the last one is padded.
        size = fixed_batch or len(x)
        calls = []
        for first in range(0, len(x), size):
            chunk = x[first:first + size]
            if len(chunk) < size:
                chunk = np.concatenate([chunk, np.zeros((size - len(chunk), *x.shape[1:]), np.float32)])
            calls.append((chunk, min(size, len(x) - first)))
        infer = time.perf_counter()
        for chunk, real in calls:
            result = session.run(None, {inp.name: chunk})
            scores = result[score_index].reshape(len(chunk), -1)[:real, 0]
            _ = scores > 0.5
        end = time.perf_counter()
        if record is not None:
            record["batch"].append((end - start) * 1e3)
            record["infer"].append((end - infer) * 1e3 / args.batch)
        return (end - start) * 1e3

    # At least one unmeasured batch, whatever --warmup says: the first run allocates ONNX
    # Runtime's working memory, and linesight's warm-up always runs one batch too.
    t0 = time.perf_counter()
    first_batch_ms = step(None)
    warmup_batches = 1
    while time.perf_counter() - t0 < args.warmup:
        step(None)
        warmup_batches += 1
    warmup_seconds = time.perf_counter() - t0
    record = {"batch": [], "decode": [], "pre": [], "decode_pre": [], "infer": []}
    t0 = time.perf_counter()
    while True:
        step(record)
        elapsed = time.perf_counter() - t0
        if elapsed >= args.duration:
            break
    images = len(record["batch"]) * args.batch
    versions = {"pillow": Image.__version__, "onnxruntime": ort.__version__, "numpy": np.__version__}
    if torch is not None:
        versions["torch"] = torch.__version__
    print(json.dumps({
        "client": "python pillow + onnxruntime" + (" + torch" if torch is not None else ""),
        **versions,
        "providers": session.get_providers(),
        "threads": args.threads, "batch": args.batch, "image_count": len(files),
        "preprocessing": spec.describe(),
        "warm_up": {"seconds": warmup_seconds, "batches": warmup_batches, "first_batch_ms": first_batch_ms},
        "images": images, "seconds": elapsed, "images_per_second": images / elapsed,
        "batch_latency_ms": percentiles(record["batch"]),
        "decode_ms": percentiles(record["decode"]),
        "preprocess_ms": percentiles(record["pre"]),
        "decode_and_preprocess_ms": percentiles(record["decode_pre"]),
        "inference_ms": percentiles(record["infer"]),
    }, indent=1))


if __name__ == "__main__":
    main()
