#!/usr/bin/env python3
"""Python baseline for `linesight bench`: the plain Python client a model is usually calibrated with.

PIL decode -> convert("RGB") -> resize((W, H), BILINEAR) -> /255 -> NCHW float32 -> onnxruntime
`InferenceSession.run`, with the same model, images, intra-op threads and batch size as the
linesight run it is compared with (scripts/bench runs both). A graph with a fixed batch size gets
calls of that size, the last one padded, as in linesight. Prints one JSON object.

    python tools/bench_baseline.py --model models/demo --images testdata/synthetic/test \\
        --threads 2 --batch 1 --duration 10 --warmup 2
"""
import argparse
import io
import json
import time
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


def image_files(paths):
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.suffix.lower() in EXTENSIONS)
        else:
            out.append(p)
    return out


def percentiles(values):
    v = sorted(values)
    if not v:
        return {"p50": 0, "p90": 0, "p99": 0, "max": 0, "mean": 0}

    def rank(q):
        return v[min(max(int(np.ceil(q * len(v))), 1), len(v)) - 1]

    return {"p50": rank(0.5), "p90": rank(0.9), "p99": rank(0.99), "max": v[-1], "mean": sum(v) / len(v)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--images", nargs="+", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--provider", choices=sorted(PROVIDERS), default="cpu",
                    help="execution provider, as `linesight bench --provider` (CPU is the fallback)")
    args = ap.parse_args()

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = args.threads
    wanted = PROVIDERS[args.provider]
    missing = [p for p in wanted if p not in ort.get_available_providers()]
    if missing:
        raise SystemExit(f"--provider {args.provider}: this onnxruntime ({ort.__version__}) lacks {', '.join(missing)}")
    session = ort.InferenceSession(str(args.model / "model.onnx"), options, providers=wanted)
    inp = session.get_inputs()[0]
    height, width = int(inp.shape[2]), int(inp.shape[3])
    fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] >= 1 else None
    outputs = [o.name for o in session.get_outputs()]
    score_name = "pred_score" if "pred_score" in outputs else outputs[0]
    files = image_files(args.images)
    blobs = [f.read_bytes() for f in files]
    cursor = 0

    def step(record):
        nonlocal cursor
        start = time.perf_counter()
        batch = []
        for k in range(args.batch):
            data = blobs[(cursor + k) % len(blobs)]
            img = Image.open(io.BytesIO(data)).convert("RGB").resize((width, height), Image.BILINEAR)
            batch.append((np.asarray(img, dtype=np.float32) / 255.0).transpose(2, 0, 1))
        cursor = (cursor + args.batch) % len(blobs)
        x = np.stack(batch)
        # A fixed-batch graph takes calls of exactly its size; the last one is padded.
        size = fixed_batch or len(x)
        calls = []
        for first in range(0, len(x), size):
            chunk = x[first:first + size]
            if len(chunk) < size:
                chunk = np.concatenate([chunk, np.zeros((size - len(chunk), *x.shape[1:]), np.float32)])
            calls.append((chunk, min(size, len(x) - first)))
        pre = time.perf_counter()
        for chunk, real in calls:
            result = session.run(None, {inp.name: chunk})
            scores = result[outputs.index(score_name)].reshape(len(chunk), -1)[:real, 0]
            _ = scores > 0.5
        end = time.perf_counter()
        if record is not None:
            record["batch"].append((end - start) * 1e3)
            record["pre"].append((pre - start) * 1e3 / args.batch)
            record["infer"].append((end - pre) * 1e3 / args.batch)

    # At least one unmeasured batch, whatever --warmup says: the first run allocates ONNX
    # Runtime's working memory, and linesight's warm-up always runs one batch too.
    t0 = time.perf_counter()
    step(None)
    while time.perf_counter() - t0 < args.warmup:
        step(None)
    record = {"batch": [], "pre": [], "infer": []}
    t0 = time.perf_counter()
    while True:
        step(record)
        elapsed = time.perf_counter() - t0
        if elapsed >= args.duration:
            break
    images = len(record["batch"]) * args.batch
    print(json.dumps({
        "client": "python pillow + onnxruntime",
        "pillow": Image.__version__, "onnxruntime": ort.__version__, "numpy": np.__version__,
        "providers": session.get_providers(),
        "threads": args.threads, "batch": args.batch, "image_count": len(files),
        "images": images, "seconds": elapsed, "images_per_second": images / elapsed,
        "batch_latency_ms": percentiles(record["batch"]),
        "decode_and_preprocess_ms": percentiles(record["pre"]),
        "inference_ms": percentiles(record["infer"]),
    }, indent=1))


if __name__ == "__main__":
    main()
