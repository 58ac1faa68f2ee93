"""preprocess_dataset: a deterministic preprocessing chain applied to an ImageFolder.

The output is an ImageFolder of PNGs plus ``manifest.json``: images per class, image size,
checksums, per-channel statistics (for NORMALIZE), the chain and its hash, and a
fingerprint of the input. The same chain over the same input is not redone. Augmentations
belong to training and are skipped here (listed in the manifest).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from arc_common.models import PreprocessingChain, PreprocessingStepType
from arc_common.paths import IMAGE_SUFFIXES
from arc_common.untrusted import save_png_no_follow, write_no_follow
from services.executor.protocol import file_sha256

MANIFEST = "manifest.json"
AUGMENTATIONS = {
    PreprocessingStepType.HORIZONTAL_FLIP,
    PreprocessingStepType.VERTICAL_FLIP,
    PreprocessingStepType.ROTATION,
    PreprocessingStepType.COLOR_JITTER,
    PreprocessingStepType.RANDOM_RESIZED_CROP,
}


def chain_hash(chain: PreprocessingChain) -> str:
    steps = [s.model_dump(mode="json") for s in chain.steps]
    return hashlib.sha256(json.dumps(steps, sort_keys=True).encode()).hexdigest()


def input_fingerprint(files: list[Path], root: Path) -> str:
    digest = hashlib.sha256()
    for path in files:
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


@dataclass
class PreprocessResult:
    manifest: dict[str, Any]
    failed: list[str] = field(default_factory=list)
    reused: bool = False


def _apply(image: Image.Image, chain: PreprocessingChain) -> Image.Image:
    from services.executor.trainer.transforms import Clahe, GreenChannel

    image = image.convert("RGB")
    for step in chain.steps:
        p = step.params
        if step.type is PreprocessingStepType.RESIZE:
            size = int(p.get("size", 224))
            image = image.resize((size, size), Image.Resampling.BILINEAR)
        elif step.type is PreprocessingStepType.CENTER_CROP:
            size = int(p.get("size", 224))
            left = max(0, (image.width - size) // 2)
            top = max(0, (image.height - size) // 2)
            image = image.crop((left, top, left + size, top + size))
        elif step.type is PreprocessingStepType.CLAHE:
            image = Clahe(float(p.get("clip_limit", 2.0)), int(p.get("grid", 8)))(image)
        elif step.type is PreprocessingStepType.GREEN_CHANNEL:
            image = GreenChannel()(image)
    return image


def preprocess(
    dataset_id: str, source: Path, output: Path, output_rel: str, chain: PreprocessingChain
) -> PreprocessResult:
    files = sorted(
        p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    fingerprint = input_fingerprint(files, source)
    digest = chain_hash(chain)
    manifest_path = output / MANIFEST
    if manifest_path.exists():
        previous = json.loads(manifest_path.read_text())
        if (
            previous.get("chain_hash") == digest
            and previous.get("input_fingerprint") == fingerprint
        ):
            return PreprocessResult(previous, previous.get("failed_images", []), reused=True)
    output.mkdir(parents=True, exist_ok=True)
    counts: Counter[str] = Counter()
    checksums: dict[str, str] = {}
    failed: list[str] = []
    sums = np.zeros(3)
    squares = np.zeros(3)
    pixels = 0
    size: tuple[int, int] = (0, 0)
    for path in files:
        rel = path.relative_to(source)
        try:
            with Image.open(path) as raw:
                raw.load()
                image = _apply(raw, chain)
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            failed.append(f"{rel}: {type(exc).__name__}: {exc}")
            continue
        target = (output / rel).with_suffix(".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        save_png_no_follow(functools.partial(image.save, format="PNG"), target)
        array = np.asarray(image, dtype=np.float64) / 255.0
        sums += array.reshape(-1, 3).sum(0)
        squares += (array.reshape(-1, 3) ** 2).sum(0)
        pixels += array.shape[0] * array.shape[1]
        size = image.size
        counts[rel.parts[0] if len(rel.parts) > 1 else "."] += 1
        checksums[str(target.relative_to(output))] = file_sha256(target)
    mean = sums / max(pixels, 1)
    std = np.sqrt(np.maximum(squares / max(pixels, 1) - mean**2, 0))
    manifest = {
        "dataset_id": dataset_id,
        "output_path": output_rel,
        "images_per_class": dict(sorted(counts.items())),
        "image_width": size[0],
        "image_height": size[1],
        "chain": chain.model_dump(mode="json"),
        "chain_hash": digest,
        "skipped_augmentations": [s.type.value for s in chain.steps if s.type in AUGMENTATIONS],
        "normalize": {"mean": mean.round(6).tolist(), "std": std.round(6).tolist()},
        "input_fingerprint": fingerprint,
        "failed_images": failed,
        "checksums": checksums,
    }
    tmp = output / f".{MANIFEST}.tmp"
    write_no_follow(tmp, json.dumps(manifest, indent=2))
    tmp.replace(manifest_path)
    return PreprocessResult(manifest, failed)
