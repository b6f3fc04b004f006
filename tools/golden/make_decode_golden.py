#!/usr/bin/env python3
"""Golden files for linesight's decoder: encoded images and what Pillow 13 decodes them to.

linesight must feed the model the pixels a plain Python client sees after
`PIL.Image.open(p).convert("RGB")`, so for every format linesight accepts (JPEG with each chroma
subsampling, progressive and greyscale; PNG 8/16-bit grey, RGB and RGBA; BMP; TIFF) this writes
the encoded input `<case>.<ext>` and Pillow's RGB result `<case>.rgb.png` into
testdata/golden/decode/, plus cases.json.

    python tools/golden/make_decode_golden.py                 # (re)write the goldens
    python tools/golden/make_decode_golden.py --out /tmp/dec  # write elsewhere (scripts/test diffs)

Deterministic: inputs are generated from a fixed seed.
"""
import argparse
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_OUT = Path(__file__).resolve().parents[2] / "testdata" / "golden" / "decode"


def scene(w, h, seed):
    """Smooth gradients plus texture and sharp edges: exercises IDCT and chroma upsampling."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    r = (x * 255 / max(w - 1, 1))
    g = (y * 255 / max(h - 1, 1))
    b = 128 + 100 * np.sin(x / 3.0) * np.cos(y / 5.0)
    img = np.stack([r, g, b], -1) + rng.normal(0, 12, (h, w, 3))
    img[h // 3: h // 2, w // 4: w // 2] = [250, 20, 30]  # a saturated block with hard edges
    return np.clip(img, 0, 255).astype(np.uint8)


def cases():
    rgb = scene(61, 47, 1)  # odd sizes: partial MCUs
    grey = (rgb.astype(np.float32) @ [0.299, 0.587, 0.114]).astype(np.uint8)
    grey16 = (grey.astype(np.uint16) * 257 + 3)
    out = []

    def jpeg(name, **kw):
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, "JPEG", **kw)
        out.append((name, "jpg", buf.getvalue()))

    jpeg("jpeg_420", quality=85, subsampling=2)
    jpeg("jpeg_422", quality=85, subsampling=1)
    jpeg("jpeg_444", quality=95, subsampling=0)
    jpeg("jpeg_progressive", quality=80, progressive=True)
    buf = io.BytesIO()
    Image.fromarray(grey, "L").save(buf, "JPEG", quality=90)
    out.append(("jpeg_grey", "jpg", buf.getvalue()))

    def png(name, im):
        buf = io.BytesIO()
        im.save(buf, "PNG")
        out.append((name, "png", buf.getvalue()))

    png("png_rgb", Image.fromarray(rgb))
    png("png_grey", Image.fromarray(grey, "L"))
    alpha = np.dstack([rgb, (np.arange(61)[None, :].repeat(47, 0) * 4).astype(np.uint8)])
    png("png_rgba", Image.fromarray(alpha, "RGBA"))
    png("png_grey16", Image.fromarray(grey16))  # uint16 array -> mode I;16
    rgb16 = rgb.astype(np.uint16) * 257 + np.uint16(7)
    buf = io.BytesIO()
    # Pillow cannot write 16-bit RGB PNG; build it with the stdlib's zlib (filter 0 per row).
    import struct
    import zlib
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rgb16)
    def chunk(tag, body):
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)
    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 61, 47, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
    out.append(("png_rgb16", "png", data))
    png("png_palette", Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16))
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "BMP")
    out.append(("bmp_rgb", "bmp", buf.getvalue()))
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "TIFF")
    out.append(("tiff_rgb", "tif", buf.getvalue()))
    buf = io.BytesIO()
    Image.fromarray(grey, "L").save(buf, "TIFF", compression="tiff_lzw")
    out.append(("tiff_grey_lzw", "tif", buf.getvalue()))
    return out


def expected(data):
    """Pillow's `convert("RGB")`, except for 16-bit data.

    Pillow clips 16-bit samples at 255 when converting to 8 bits (every pixel of a real 16-bit
    camera image turns white), and it opens 16-bit RGB PNGs as 8-bit. linesight scales 16-bit
    samples to 8 bits as `round(v / 257)` instead; models for 16-bit cameras must be calibrated
    on images scaled the same way. That rule is applied here to the 16-bit samples themselves,
    read with NumPy, so the golden stays independent of linesight.
    """
    im = Image.open(io.BytesIO(data))
    if im.mode in ("I;16", "I;16B", "I"):
        v = np.asarray(im).astype(np.float64)
        grey = np.floor(v / 257 + 0.5).astype(np.uint8)
        return np.dstack([grey, grey, grey])
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[24] == 16 and data[25] == 2:
        import zlib
        w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        # Single IDAT, filter type 0 on every row (as written above).
        idat_len = int.from_bytes(data[33:37], "big")
        raw = zlib.decompress(data[41:41 + idat_len])
        rows = np.frombuffer(raw, np.uint8).reshape(h, 1 + w * 6)[:, 1:]
        v = rows.copy().view(">u2").reshape(h, w, 3).astype(np.float64)
        return np.floor(v / 257 + 0.5).astype(np.uint8)
    return np.asarray(im.convert("RGB"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    index = []
    for name, ext, data in cases():
        want = expected(data)
        inp, gold = out / f"{name}.{ext}", out / f"{name}.rgb.png"
        index.append({"name": name, "input": inp.name, "expected": gold.name,
                      "width": int(want.shape[1]), "height": int(want.shape[0])})
        inp.write_bytes(data)
        Image.fromarray(want).save(gold, "PNG", optimize=True)
    (out / "cases.json").write_text(json.dumps({"pillow": Image.__version__, "cases": index}, indent=1) + "\n")
    print(f"wrote {len(index)} decode cases to {out}")


if __name__ == "__main__":
    main()
