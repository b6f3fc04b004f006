#!/usr/bin/env python3
"""Golden files for `src/preprocess/resize.rs`.

Writes into `testdata/golden/resize/` (relative to the repository root):

* `<case>.in.png`   - deterministic 8-bit RGB input (seeded noise or a smooth pattern),
* `<case>.pil.png`  - `Image.resize((w, h), Image.BILINEAR)` from the installed Pillow (13.0.0),
* `<case>.tv16.png` - (some cases) torchvision `Resize(antialias=True)` on float [0, 1] input,
                      computed here in float64 NumPy from the documented algorithm, stored as a
                      16-bit greyscale PNG of the three planes stacked vertically (CHW),
                      value = round(v * 65535),
* `cases.json`      - the list of cases with sizes and the facts checked below.

Independent checks done here before anything is written (the script fails otherwise):

1. A NumPy re-implementation of Pillow's two-pass fixed-point resampler reproduces Pillow's
   output byte for byte, with the pass order given by Pillow 13's rule (vertical first when
   `dh > 0 and dh > 2 * dw`, `dh = h_in - h_out`, `dw = w_in - w_out`); `order_matters` records
   whether the other order would have given different bytes, so a case list that exercises the
   rule both ways is guaranteed.
2. The float reference agrees with Pillow's real output within 1/255 (the two use the same
   weights; Pillow rounds to 8 bits after each pass, the float path does not).

Run with only Pillow and NumPy installed:
    python tools/golden/make_resize_golden.py [--out testdata/golden/resize]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import PIL
from PIL import Image

PRECISION_BITS = 22  # Pillow: 32 - 8 (result) - 2 (headroom)


# --------------------------------------------------------------------------------------------
# Shared filter geometry (Pillow `precompute_coeffs`; torch `_upsample_bilinear2d_aa` uses the
# same box/center/support rule with interp_size 2).
# --------------------------------------------------------------------------------------------
def triangle_windows(in_size: int, out_size: int) -> list[tuple[int, np.ndarray]]:
    """Per output index: (first input index, normalised float64 weights)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = filterscale  # triangle filter support 1.0, stretched when shrinking
    windows = []
    for i in range(out_size):
        center = (i + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)  # int() truncates toward zero, like C
        hi = min(int(center + support + 0.5), in_size)
        taps = np.arange(lo, hi, dtype=np.float64)
        t = np.abs((taps - center + 0.5) / filterscale)
        w = np.where(t < 1.0, 1.0 - t, 0.0)
        total = w.sum()
        if total != 0.0:
            w = w / total
        windows.append((lo, w))
    return windows


# --------------------------------------------------------------------------------------------
# Check 1: Pillow's 8-bit algorithm in NumPy.
# --------------------------------------------------------------------------------------------
def pillow_pass(a: np.ndarray, out_size: int, axis: int) -> np.ndarray:
    a = np.moveaxis(a, axis, 0).astype(np.int64)
    out = np.empty((out_size,) + a.shape[1:], np.int64)
    for i, (lo, w) in enumerate(triangle_windows(a.shape[0], out_size)):
        k = np.floor(0.5 + w * (1 << PRECISION_BITS)).astype(np.int64)  # weights are >= 0
        acc = np.full(a.shape[1:], 1 << (PRECISION_BITS - 1), np.int64)
        for j, kj in enumerate(k):
            acc += a[lo + j] * kj
        out[i] = np.clip(acc >> PRECISION_BITS, 0, 255)
    return np.moveaxis(out, 0, axis).astype(np.uint8)


def pillow13_vertical_first(w_in: int, h_in: int, w_out: int, h_out: int) -> bool:
    dh, dw = h_in - h_out, w_in - w_out
    return dh > 0 and dh > 2 * dw


def pillow_numpy(a: np.ndarray, w: int, h: int, vertical_first: bool) -> np.ndarray:
    h_in, w_in = a.shape[:2]
    passes = [(h, 0, h != h_in), (w, 1, w != w_in)]
    if not vertical_first:
        passes.reverse()
    for size, axis, needed in passes:
        if needed:
            a = pillow_pass(a, size, axis)
    return a.copy()


# --------------------------------------------------------------------------------------------
# Check 2 / torchvision reference: separable antialiased bilinear in float64, width first.
# --------------------------------------------------------------------------------------------
def tv_antialias(a_u8: np.ndarray, w: int, h: int) -> np.ndarray:
    x = a_u8.astype(np.float64) / 255.0  # HWC
    if x.shape[:2] == (h, w):
        return np.transpose(x, (2, 0, 1))

    def one_axis(x: np.ndarray, out_size: int, axis: int) -> np.ndarray:
        if x.shape[axis] == out_size:
            return x
        x = np.moveaxis(x, axis, 0)
        # Accumulated tap by tap in a fixed order, not with np.tensordot: BLAS picks its
        # summation order by CPU, which moved a few values by one 16-bit step between machines.
        def window(lo: int, wts: np.ndarray) -> np.ndarray:
            acc = np.zeros_like(x[0])
            for k, wt in enumerate(wts):
                acc = acc + wt * x[lo + k]
            return acc

        out = np.stack([window(lo, wts) for lo, wts in triangle_windows(x.shape[0], out_size)])
        return np.moveaxis(out, 0, axis)

    x = one_axis(x, w, 1)
    x = one_axis(x, h, 0)
    return np.transpose(x, (2, 0, 1))  # CHW


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------
def noise(w: int, h: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def smooth(w: int, h: int, seed: int) -> np.ndarray:
    """Gradients and a slow ripple per channel, plus a sparse sprinkle of noise so that rounding
    paths are exercised while the PNG stays small."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    chans = []
    for c in range(3):
        fx, fy = rng.uniform(0.01, 0.08, 2)
        v = 127.5 + 60 * np.sin(fx * xx + fy * yy + c) + 60 * ((xx / max(w - 1, 1)) - (yy / max(h - 1, 1))) * (c - 1)
        chans.append(v)
    img = np.stack(chans, axis=-1)
    sprinkle = rng.random((h, w, 1)) < 0.005
    img = np.where(sprinkle, rng.integers(0, 256, (h, w, 3)), img)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# name, generator, seed, (w_in, h_in), (w_out, h_out), write the float reference
CASES = [
    ("noise_7x5_to_3x11", noise, 1, (7, 5), (3, 11), True),
    ("noise_37x23_to_16x16", noise, 2, (37, 23), (16, 16), True),
    ("noise_23x37_to_61x29", noise, 3, (23, 37), (61, 29), True),
    ("smooth_64x48_to_256x256", smooth, 4, (64, 48), (256, 256), False),
    ("smooth_300x200_to_256x256", smooth, 5, (300, 200), (256, 256), False),
    ("smooth_200x300_to_256x256", smooth, 6, (200, 300), (256, 256), False),
    ("smooth_257x255_to_128x64", smooth, 8, (257, 255), (128, 64), True),
    # Pillow 13 rule: 60 rows dropped > 2 * 4 columns dropped -> vertical pass first.
    ("noise_40x90_to_36x30_vfirst", noise, 9, (40, 90), (36, 30), True),
    # 4 rows dropped, not > 2 * 60 columns dropped -> horizontal pass first.
    ("noise_90x40_to_30x36_hfirst", noise, 10, (90, 40), (30, 36), True),
    # Boundary: 20 rows dropped == 2 * 10 columns dropped -> still horizontal first.
    ("noise_50x60_to_40x40_boundary", noise, 11, (50, 60), (40, 40), False),
    ("noise_31x33_to_31x20_height_only", noise, 12, (31, 33), (31, 20), True),
    ("noise_13x9_same_size", noise, 13, (13, 9), (13, 9), True),
    ("noise_1x1_to_5x3", noise, 14, (1, 1), (5, 3), True),
]


def main() -> None:
    repo = Path(__file__).resolve().parents[2]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=repo / "testdata/golden/resize")
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    records = []
    for name, gen, seed, (w_in, h_in), (w_out, h_out), with_tv in CASES:
        src = gen(w_in, h_in, seed)
        pil = np.asarray(Image.fromarray(src).resize((w_out, h_out), Image.BILINEAR))

        vfirst = pillow13_vertical_first(w_in, h_in, w_out, h_out)
        mine = pillow_numpy(src, w_out, h_out, vfirst)
        if not np.array_equal(mine, pil):
            raise SystemExit(f"{name}: NumPy port of Pillow's resampler disagrees with Pillow {PIL.__version__}")
        order_matters = not np.array_equal(pillow_numpy(src, w_out, h_out, not vfirst), pil)

        tv = tv_antialias(src, w_out, h_out)
        tv_vs_pil = float(np.abs(tv * 255.0 - np.transpose(pil, (2, 0, 1)).astype(np.float64)).max())
        if tv_vs_pil > 1.0 + 1e-6:
            raise SystemExit(f"{name}: float reference is {tv_vs_pil:.4f}/255 away from Pillow, expected <= 1")

        Image.fromarray(src).save(out / f"{name}.in.png", optimize=True)
        Image.fromarray(pil).save(out / f"{name}.pil.png", optimize=True)
        record = {
            "name": name,
            "input": f"{name}.in.png",
            "in_size": [w_in, h_in],
            "out_size": [w_out, h_out],
            "pillow": f"{name}.pil.png",
            "vertical_first": vfirst,
            "order_matters": order_matters,
            "tv_vs_pillow_max_abs_255": round(tv_vs_pil, 4),
            "tv16": None,
        }
        if with_tv:
            q = np.rint(tv.reshape(3 * h_out, w_out) * 65535.0).astype(np.uint16)
            Image.fromarray(q).save(out / f"{name}.tv16.png", optimize=True)
            record["tv16"] = f"{name}.tv16.png"
        records.append(record)
        print(f"{name}: vertical_first={vfirst} order_matters={order_matters} tv_vs_pil={tv_vs_pil:.3f}/255")

    meta = {
        "generator": "tools/golden/make_resize_golden.py",
        "pillow_version": PIL.__version__,
        "numpy_version": np.__version__,
        "tv16_scale": 65535,
        "cases": records,
    }
    (out / "cases.json").write_text(json.dumps(meta, indent=2) + "\n")
    total = sum(p.stat().st_size for p in out.iterdir())
    print(f"wrote {len(records)} cases, {total / 1024:.0f} KiB in {out}")


if __name__ == "__main__":
    main()
