"""The tools that need torch: evaluation, Grad-CAM and attention rollout. They run in a
child process (``python -m services.executor.tools.worker``) so the executor never loads
torch and a tool on a leased GPU gets ``CUDA_VISIBLE_DEVICES`` of its own."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision.datasets import ImageFolder

from arc_common.models import (
    ArchitectureFamily,
    ArchitectureSpec,
    DatasetSpec,
    PreprocessingChain,
)
from arc_common.paths import IMAGE_SUFFIXES
from arc_common.untrusted import save_png_no_follow, write_no_follow
from services.executor.trainer.checkpoint_io import load_verified
from services.executor.trainer.data import SPLITS, patient_ids, unsplit
from services.executor.trainer.models import build_model
from services.executor.trainer.transforms import build_transforms


def load_checkpoint(path: Path, sha256: str) -> tuple[nn.Module, dict[str, Any], torch.device]:
    """The model of a checkpoint whose bytes hash to ``sha256`` (the digest the executor
    verified as registered): tensors and plain data only, so loading it runs no code."""
    payload = load_verified(path, sha256)
    if payload is None:
        raise ValueError(f"checkpoint {path.name} changed since it was verified; not loaded")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if payload.get("source") or payload["architecture"].get("family") == ArchitectureFamily.CUSTOM:
        raise UnsupportedRequest(
            f"{path.name} holds a model built by repository code: the tools do not run "
            "that code (it runs only in a training run's sandbox)",
            field="checkpoint_path",
        )
    spec = ArchitectureSpec.model_validate({**payload["architecture"], "pretrained": False})
    model = build_model(spec)
    model.load_state_dict(payload["model_state_dict"])
    return model.to(device).eval(), payload, device


def split_samples(
    data_path: Path, split: str, payload: dict[str, Any]
) -> tuple[list[tuple[Path, int]], list[str] | None]:
    """Images of ``split`` and, when the checkpoint's dataset is grouped, each one's patient:
    its folder when the dataset has one; on an unsplit folder, the images the trainer put
    on that split (the checkpoint's seed, fractions and grouping), never the whole folder,
    which holds the training images too."""
    class_names: list[str] = payload["class_names"]
    recorded = payload.get("dataset")
    dataset = DatasetSpec.model_validate(recorded) if recorded else None
    grouping = dataset.grouping if dataset else None
    if (data_path / split).is_dir():
        root = data_path / split
        samples = []
        for index, name in enumerate(class_names):
            folder = root / name
            if folder.is_dir():
                samples += [
                    (p, index)
                    for p in sorted(folder.rglob("*"))
                    if p.suffix.lower() in IMAGE_SUFFIXES
                ]
        if not samples:
            raise UnsupportedRequest(
                f"no images of classes {class_names} under {split}/", field="data_path"
            )
        try:
            groups = (
                patient_ids([str(p) for p, _ in samples], data_path, grouping) if grouping else None
            )
        except ValueError as exc:
            raise UnsupportedRequest(str(exc), field="data_path") from None
        return samples, groups
    if dataset is None or "seed" not in payload:
        raise UnsupportedRequest(
            f"{data_path.name} has no {split}/ folder and the checkpoint does not record how "
            "its trainer split an unsplit folder; evaluate a dataset with split folders",
            field="split",
        )
    folder = ImageFolder(str(data_path))
    if folder.classes != class_names:
        raise UnsupportedRequest(
            f"{data_path.name} has classes {folder.classes}, the checkpoint {class_names}",
            field="data_path",
        )
    try:
        parts, groups = unsplit(folder, dataset, data_path, int(payload["seed"]))
    except ValueError as exc:
        raise UnsupportedRequest(str(exc), field="data_path") from None
    chosen = parts[SPLITS.index(split)]
    return (
        [(Path(folder.samples[i][0]), folder.samples[i][1]) for i in chosen],
        [groups[i] for i in chosen] if groups else None,
    )


def _transform(payload: dict[str, Any]) -> Any:
    chain = PreprocessingChain.model_validate(payload.get("preprocessing") or {})
    return build_transforms(chain, int(payload.get("image_size", 224)), train=False)


@torch.no_grad()
def predict(
    model: nn.Module, samples: list[tuple[Path, int]], transform: Any, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    labels, probs = [], []
    for start in range(0, len(samples), 32):
        chunk = samples[start : start + 32]
        batch = torch.stack([transform(Image.open(p).convert("RGB")) for p, _ in chunk])
        logits = model(batch.to(device)).float()
        probs.append(torch.softmax(logits, 1).cpu().numpy())
        labels += [label for _, label in chunk]
    return np.array(labels), np.concatenate(probs)


# --- Grad-CAM ---------------------------------------------------------------------------------


MIN_CAM_SIDE = 7


@torch.no_grad()
def _target_layer(
    model: nn.Module, family: ArchitectureFamily, example: torch.Tensor
) -> tuple[nn.Module, bool]:
    """The layer whose activations explain the prediction; True when it yields tokens (ViT).

    For CNNs: the last convolution whose map is still at least 7x7 at this input size (on
    small images the very last one is 2x2 and shows nothing), else the largest one.
    """
    if family is ArchitectureFamily.VIT:
        encoder: Any = getattr(model, "encoder")  # noqa: B009
        return encoder.layers[-1].ln_1, True
    sides: list[tuple[nn.Module, int]] = []
    hooks = [
        module.register_forward_hook(lambda m, _i, out: sides.append((m, min(out.shape[-2:]))))
        for module in model.modules()
        if isinstance(module, nn.Conv2d)
    ]
    try:
        model(example)
    finally:
        for hook in hooks:
            hook.remove()
    if not sides:
        raise ValueError("the model has no convolution to explain")
    large = [m for m, side in sides if side >= MIN_CAM_SIDE]
    if large:
        return large[-1], False
    return max(sides, key=lambda item: item[1])[0], False


def _heatmap(values: np.ndarray) -> np.ndarray:
    """A blue-cyan-yellow-red colour map for values in [0, 1] (no matplotlib needed)."""
    v = np.clip(values, 0, 1)
    r = np.clip(1.5 - np.abs(4 * v - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
    return (np.stack([r, g, b], axis=-1) * 255).astype(np.uint8)


class UnsupportedRequest(ValueError):
    """The request asks for what this model cannot give; ``field`` names what to change."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


def _even_pick(samples: list[tuple[Path, int]], count: int) -> list[tuple[Path, int]]:
    """An even pick across classes, so the maps of each class can be compared."""
    by_class: dict[int, list[tuple[Path, int]]] = {}
    for sample in samples:
        by_class.setdefault(sample[1], []).append(sample)
    chosen: list[tuple[Path, int]] = []
    while len(chosen) < min(count, len(samples)):
        for items in by_class.values():
            if items and len(chosen) < count:
                chosen.append(items.pop(0))
    return chosen


def _overlay(original: Image.Image, cam: torch.Tensor, output: Path, name: str) -> None:
    """``cam`` (a 2-D map, any scale) coloured over ``original``, saved as ``name``."""
    cam = cam / cam.max() if float(cam.max()) > 0 else cam
    cam_image = Image.fromarray((cam.cpu().numpy() * 255).astype(np.uint8)).resize(
        original.size, Image.Resampling.BILINEAR
    )
    heat = _heatmap(np.asarray(cam_image, dtype=np.float64) / 255.0)
    overlay = (0.55 * np.asarray(original) + 0.45 * heat).astype(np.uint8)
    image = Image.fromarray(overlay)
    # The folder is one an agent named: a link planted at the name is not followed.
    save_png_no_follow(functools.partial(image.save, format="PNG"), output / name)


def _entry(
    name: str, sample: tuple[Path, int], predicted: int, probs: torch.Tensor, classes: list[str]
) -> dict[str, Any]:
    path, label = sample
    return {
        "path": name,
        "source_image": str(path),
        "true_class": classes[label],
        "predicted_class": classes[predicted],
        "probability": float(probs[predicted]),
    }


def gradcam(
    checkpoint: Path, data_path: Path, split: str, output: Path, *, sha256: str, count: int
) -> list[dict[str, Any]]:
    model, payload, device = load_checkpoint(checkpoint, sha256)
    class_names: list[str] = payload["class_names"]
    family = ArchitectureFamily(payload["architecture"]["family"])
    transform = _transform(payload)
    chosen = _even_pick(split_samples(data_path, split, payload)[0], count)
    first = transform(Image.open(chosen[0][0]).convert("RGB")).unsqueeze(0).to(device)
    layer, tokens = _target_layer(model, family, first)
    store: dict[str, torch.Tensor] = {}

    def keep(_module: nn.Module, _inputs: Any, out: torch.Tensor) -> None:
        store["activation"] = out
        out.register_hook(lambda grad: store.__setitem__("gradient", grad))  # type: ignore[no-untyped-call]

    handle = layer.register_forward_hook(keep)
    output.mkdir(parents=True, exist_ok=True)
    entries = []
    try:
        for number, (path, label) in enumerate(chosen):
            original = Image.open(path).convert("RGB")
            batch = transform(original).unsqueeze(0).to(device).requires_grad_(True)
            model.zero_grad(set_to_none=True)
            logits = model(batch)
            probs = torch.softmax(logits.float(), 1)[0].detach()
            predicted = int(probs.argmax())
            logits[0, predicted].backward()
            activation, gradient = store["activation"].detach(), store["gradient"].detach()
            if tokens:  # ViT: drop the class token, lay the patch tokens out on their grid
                activation, gradient = activation[:, 1:, :], gradient[:, 1:, :]
                side = round(activation.shape[1] ** 0.5)
                activation = activation.reshape(1, side, side, -1).permute(0, 3, 1, 2)
                gradient = gradient.reshape(1, side, side, -1).permute(0, 3, 1, 2)
            weights = gradient.mean(dim=(2, 3), keepdim=True)
            cam = torch.relu((weights * activation).sum(1))[0]
            name = f"gradcam_{number:03d}_{class_names[label]}_as_{class_names[predicted]}.png"
            _overlay(original, cam, output, name)
            entries.append(_entry(name, (path, label), predicted, probs, class_names))
    finally:
        handle.remove()
    write_no_follow(output / "index.json", json.dumps({"images": entries}, indent=2))
    return entries


# --- attention rollout ---------------------------------------------------------------------


def _keep_attention(block: nn.MultiheadAttention, store: list[torch.Tensor]) -> list[Any]:
    """Hooks that make ``block`` return its head-averaged attention weights (torchvision's
    encoder asks for none) and keep them in ``store``."""

    def ask(_m: nn.Module, args: Any, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        return args, {**kwargs, "need_weights": True, "average_attn_weights": True}

    def keep(_m: nn.Module, _args: Any, _kwargs: Any, out: Any) -> None:
        store.append(out[1].detach())

    return [
        block.register_forward_pre_hook(ask, with_kwargs=True),
        block.register_forward_hook(keep, with_kwargs=True),
    ]


@torch.no_grad()
def attention(
    checkpoint: Path, data_path: Path, split: str, output: Path, *, sha256: str, count: int
) -> list[dict[str, Any]]:
    """Attention rollout (Abnar and Zuidema, 2020) for ViT models: the class token's
    attention to each patch through every layer, residual connections counted in."""
    model, payload, device = load_checkpoint(checkpoint, sha256)
    family = ArchitectureFamily(payload["architecture"]["family"])
    if family is not ArchitectureFamily.VIT:
        raise UnsupportedRequest(
            f"method ATTENTION needs a ViT model; this checkpoint is {family.value} (use GRAD_CAM)",
            field="method",
        )
    class_names: list[str] = payload["class_names"]
    transform = _transform(payload)
    chosen = _even_pick(split_samples(data_path, split, payload)[0], count)
    encoder: Any = getattr(model, "encoder")  # noqa: B009
    store: list[torch.Tensor] = []
    hooks = [h for layer in encoder.layers for h in _keep_attention(layer.self_attention, store)]
    output.mkdir(parents=True, exist_ok=True)
    entries = []
    try:
        for number, (path, label) in enumerate(chosen):
            original = Image.open(path).convert("RGB")
            store.clear()
            logits = model(transform(original).unsqueeze(0).to(device))
            probs = torch.softmax(logits.float(), 1)[0]
            predicted = int(probs.argmax())
            rollout: torch.Tensor | None = None
            for weights in store:  # (1, tokens, tokens) per layer
                eye = torch.eye(weights.shape[-1], device=weights.device)
                step = 0.5 * weights[0].float() + 0.5 * eye
                step = step / step.sum(dim=-1, keepdim=True)
                rollout = step if rollout is None else step @ rollout
            assert rollout is not None
            patches = rollout[0, 1:]  # the class token's row, without itself
            side = round(patches.shape[0] ** 0.5)
            name = f"attention_{number:03d}_{class_names[label]}_as_{class_names[predicted]}.png"
            _overlay(original, patches.reshape(side, side), output, name)
            entries.append(_entry(name, (path, label), predicted, probs, class_names))
    finally:
        for hook in hooks:
            hook.remove()
    write_no_follow(output / "index.json", json.dumps({"images": entries}, indent=2))
    return entries
