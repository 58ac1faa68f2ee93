"""AcuVue-like synthetic fundus photographs, deterministic by seed.

Each image is a retina (an orange-red disc on black) with vessels branching from the optic
disc and a brighter optic cup inside it. The label is ``glaucoma`` when the cup-to-disc
ratio passes the threshold, ``normal`` otherwise; the ratio, the position of the disc, the
vessels, the illumination and the noise all vary with the seed. Written as an ImageFolder
of PNGs (``<out>/<class>/<name>.png``), optionally split into train/val/test folders.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("glaucoma", "normal")
CDR_THRESHOLD = 0.6


@dataclass(frozen=True)
class FundusSample:
    image: Image.Image
    label: str
    cup_to_disc_ratio: float


def make_fundus(rng: np.random.Generator, *, size: int = 128, glaucoma: bool) -> FundusSample:
    scale = 4  # draw large, then downsample for smooth edges
    big = size * scale
    img = Image.new("RGB", (big, big), (0, 0, 0))
    draw = ImageDraw.Draw(img)
    center = big / 2
    radius = big * rng.uniform(0.44, 0.48)
    base = np.array([rng.uniform(150, 200), rng.uniform(55, 85), rng.uniform(20, 40)])
    # The retina: concentric rings darkening towards the rim (vignetting).
    for step in range(40, 0, -1):
        r = radius * step / 40
        shade = base * (0.55 + 0.45 * (1 - (step / 40) ** 2))
        draw.ellipse(
            [center - r, center - r, center + r, center + r], fill=tuple(int(c) for c in shade)
        )
    # The optic disc sits left or right of the centre (left/right eye).
    side = 1 if rng.random() < 0.5 else -1
    disc_x = center + side * radius * rng.uniform(0.25, 0.4)
    disc_y = center + radius * rng.uniform(-0.12, 0.12)
    disc_r = radius * rng.uniform(0.16, 0.2)
    # Vessels: dark red curves leaving the disc in every direction.
    for _ in range(int(rng.integers(6, 10))):
        angle = rng.uniform(0, 2 * math.pi)
        length = radius * rng.uniform(0.7, 1.2)
        width = int(big * rng.uniform(0.006, 0.012)) + 1
        points = []
        bend = rng.uniform(-0.8, 0.8)
        for t in np.linspace(0, 1, 24):
            a = angle + bend * t
            points.append((disc_x + math.cos(a) * length * t, disc_y + math.sin(a) * length * t))
        draw.line(points, fill=(int(base[0] * 0.55), 20, 18), width=width, joint="curve")
    # Disc (yellow-orange) and cup (pale, bright); the cup-to-disc ratio is the label.
    if glaucoma:
        ratio = rng.uniform(CDR_THRESHOLD + 0.08, 0.85)
    else:
        ratio = rng.uniform(0.2, CDR_THRESHOLD - 0.12)
    disc_color = (int(rng.uniform(225, 250)), int(rng.uniform(150, 185)), int(rng.uniform(70, 100)))
    draw.ellipse(
        [disc_x - disc_r, disc_y - disc_r, disc_x + disc_r, disc_y + disc_r], fill=disc_color
    )
    cup_r = disc_r * ratio
    cup_color = (255, int(rng.uniform(225, 245)), int(rng.uniform(185, 215)))
    cup_x = disc_x + rng.uniform(-0.08, 0.08) * disc_r * (1 - ratio)
    draw.ellipse([cup_x - cup_r, disc_y - cup_r, cup_x + cup_r, disc_y + cup_r], fill=cup_color)
    img = img.filter(ImageFilter.GaussianBlur(radius=scale * 0.6)).resize(
        (size, size), Image.Resampling.LANCZOS
    )
    pixels = np.asarray(img).astype(np.float32)
    pixels *= rng.uniform(0.85, 1.15)  # exposure
    pixels += rng.normal(0, 4.0, pixels.shape)
    yy, xx = np.mgrid[0:size, 0:size]
    mask = (xx - size / 2) ** 2 + (yy - size / 2) ** 2 <= (radius / scale) ** 2
    pixels[~mask] = 0
    out = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return FundusSample(out, "glaucoma" if glaucoma else "normal", float(ratio))


def generate_dataset(
    out: Path,
    *,
    count: int = 200,
    size: int = 128,
    seed: int = 0,
    glaucoma_fraction: float = 0.5,
    splits: tuple[float, float, float] | None = None,
    images_per_patient: int = 1,
) -> dict[str, int]:
    """Write ``count`` images as an ImageFolder; with ``splits``, as train/val/test folders.

    With ``images_per_patient`` over 1, consecutive images belong to one patient (same
    label, named ``p<patient>_<k>.png``) and splits keep each patient on one side.
    Returns images per class. A ``dataset.json`` beside the images records the recipe.
    """
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    patients = -(-count // images_per_patient)
    sick = np.array([i < round(patients * glaucoma_fraction) for i in range(patients)])
    rng.shuffle(sick)
    labels = np.array([sick[i // images_per_patient] for i in range(count)])
    split_names: list[str] = [""] * count
    if splits is not None:
        # Stratified: every split gets both classes in the same proportion.
        for value in (True, False):
            members = [i for i in range(patients) if bool(sick[i]) is value]
            n_train = round(len(members) * splits[0])
            n_val = round(len(members) * splits[1])
            for rank, patient in enumerate(members):
                name = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
                for index in range(
                    patient * images_per_patient, min(count, (patient + 1) * images_per_patient)
                ):
                    split_names[index] = name
    per_class: dict[str, int] = dict.fromkeys(CLASSES, 0)
    for index, glaucoma in enumerate(labels):
        sample = make_fundus(rng, size=size, glaucoma=bool(glaucoma))
        folder = out / split_names[index] if split_names[index] else out
        target = folder / sample.label
        target.mkdir(parents=True, exist_ok=True)
        name = (
            f"p{index // images_per_patient:04d}_{index % images_per_patient}.png"
            if images_per_patient > 1
            else f"fundus_{index:05d}.png"
        )
        sample.image.save(target / name, optimize=False)
        per_class[sample.label] += 1
    (out / "dataset.json").write_text(
        json.dumps(
            {
                "generator": "arc synthetic fundus v1",
                "count": count,
                "size": size,
                "seed": seed,
                "glaucoma_fraction": glaucoma_fraction,
                "cdr_threshold": CDR_THRESHOLD,
                "splits": list(splits) if splits else None,
                "images_per_patient": images_per_patient,
                "images_per_class": per_class,
            },
            indent=2,
        )
    )
    return per_class
