"""A spec's preprocessing chain as torchvision transforms.

Deterministic steps (resize, crop, CLAHE, green channel, normalize) apply to every split;
random augmentations (flips, rotation, colour jitter, random resized crop) to the training
split only. The image always ends at the spec's ``image_size`` and as a normalized tensor.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from torchvision import transforms as T

from arc_common.models import PreprocessingChain, PreprocessingStepType

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

AUGMENTATIONS = {
    PreprocessingStepType.HORIZONTAL_FLIP,
    PreprocessingStepType.VERTICAL_FLIP,
    PreprocessingStepType.ROTATION,
    PreprocessingStepType.COLOR_JITTER,
    PreprocessingStepType.RANDOM_RESIZED_CROP,
}


def clahe_channel(channel: NDArray[np.uint8], *, clip_limit: float, grid: int) -> NDArray[np.uint8]:
    """Contrast-limited adaptive histogram equalization of one 8-bit channel."""
    height, width = channel.shape
    grid_y, grid_x = min(grid, height), min(grid, width)
    ys = np.linspace(0, height, grid_y + 1).astype(int)
    xs = np.linspace(0, width, grid_x + 1).astype(int)
    maps = np.zeros((grid_y, grid_x, 256), dtype=np.float64)
    for i in range(grid_y):
        for j in range(grid_x):
            tile = channel[ys[i] : ys[i + 1], xs[j] : xs[j + 1]]
            hist = np.bincount(tile.ravel(), minlength=256).astype(np.float64)
            limit = max(1.0, clip_limit * tile.size / 256.0)
            excess = np.maximum(hist - limit, 0).sum()
            hist = np.minimum(hist, limit) + excess / 256.0
            cdf = hist.cumsum()
            maps[i, j] = (cdf - cdf[0]) / max(cdf[-1] - cdf[0], 1.0) * 255.0
    tile_h, tile_w = height / grid_y, width / grid_x
    fy = np.clip((np.arange(height) + 0.5) / tile_h - 0.5, 0, grid_y - 1)
    fx = np.clip((np.arange(width) + 0.5) / tile_w - 0.5, 0, grid_x - 1)
    y0 = np.floor(fy).astype(int)
    x0 = np.floor(fx).astype(int)
    y1 = np.minimum(y0 + 1, grid_y - 1)
    x1 = np.minimum(x0 + 1, grid_x - 1)
    wy = (fy - y0)[:, None]
    wx = (fx - x0)[None, :]
    v = channel.astype(int)
    top = maps[y0[:, None], x0[None, :], v] * (1 - wx) + maps[y0[:, None], x1[None, :], v] * wx
    bottom = maps[y1[:, None], x0[None, :], v] * (1 - wx) + maps[y1[:, None], x1[None, :], v] * wx
    out: NDArray[np.uint8] = np.clip(top * (1 - wy) + bottom * wy, 0, 255).astype(np.uint8)
    return out


class Clahe:
    """CLAHE on the luminance, colours kept (as clinicians use it on fundus photos)."""

    def __init__(self, clip_limit: float = 2.0, grid: int = 8) -> None:
        self.clip_limit = clip_limit
        self.grid = grid

    def __call__(self, image: Image.Image) -> Image.Image:
        y, cb, cr = image.convert("YCbCr").split()
        equalized = clahe_channel(np.asarray(y), clip_limit=self.clip_limit, grid=self.grid)
        return Image.merge("YCbCr", (Image.fromarray(equalized), cb, cr)).convert("RGB")

    def __repr__(self) -> str:
        return f"Clahe(clip_limit={self.clip_limit}, grid={self.grid})"


class GreenChannel:
    """The green channel, where vessels and the cup contrast best, copied to all three."""

    def __call__(self, image: Image.Image) -> Image.Image:
        green = image.convert("RGB").split()[1]
        return Image.merge("RGB", (green, green, green))

    def __repr__(self) -> str:
        return "GreenChannel()"


def _size(params: dict[str, Any], default: int) -> int:
    return int(params.get("size", default))


def build_transforms(chain: PreprocessingChain, image_size: int, *, train: bool) -> T.Compose:
    steps: list[Any] = []
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    sized = False
    for step in chain.steps:
        p = step.params
        kind = step.type
        if kind in AUGMENTATIONS and not train:
            if kind is PreprocessingStepType.RANDOM_RESIZED_CROP:
                steps += [T.Resize(_size(p, image_size)), T.CenterCrop(_size(p, image_size))]
                sized = True
            continue
        if kind is PreprocessingStepType.RESIZE:
            steps.append(T.Resize((_size(p, image_size), _size(p, image_size))))
            sized = True
        elif kind is PreprocessingStepType.CENTER_CROP:
            steps.append(T.CenterCrop(_size(p, image_size)))
            sized = True
        elif kind is PreprocessingStepType.CLAHE:
            steps.append(Clahe(float(p.get("clip_limit", 2.0)), int(p.get("grid", 8))))
        elif kind is PreprocessingStepType.GREEN_CHANNEL:
            steps.append(GreenChannel())
        elif kind is PreprocessingStepType.HORIZONTAL_FLIP:
            steps.append(T.RandomHorizontalFlip(float(p.get("p", 0.5))))
        elif kind is PreprocessingStepType.VERTICAL_FLIP:
            steps.append(T.RandomVerticalFlip(float(p.get("p", 0.5))))
        elif kind is PreprocessingStepType.ROTATION:
            steps.append(T.RandomRotation(float(p.get("degrees", 15))))
        elif kind is PreprocessingStepType.COLOR_JITTER:
            steps.append(
                T.ColorJitter(
                    brightness=float(p.get("brightness", 0.2)),
                    contrast=float(p.get("contrast", 0.2)),
                    saturation=float(p.get("saturation", 0.0)),
                )
            )
        elif kind is PreprocessingStepType.RANDOM_RESIZED_CROP:
            steps.append(
                T.RandomResizedCrop(
                    _size(p, image_size), scale=(float(p.get("min_scale", 0.8)), 1.0)
                )
            )
            sized = True
        elif kind is PreprocessingStepType.NORMALIZE:
            mean = tuple(float(v) for v in p.get("mean", IMAGENET_MEAN))  # type: ignore[assignment]
            std = tuple(float(v) for v in p.get("std", IMAGENET_STD))  # type: ignore[assignment]
    if sized:
        steps.append(T.Resize((image_size, image_size)))  # whatever the chain did, end there
    else:
        steps.insert(0, T.Resize((image_size, image_size)))  # early: CLAHE on fewer pixels
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)
