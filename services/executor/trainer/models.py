"""torchvision classifiers by family and variant, with the head replaced.

``pretrained`` loads torchvision's weights from the local torch cache only; when the file
is missing the error names it (nothing is downloaded at run time).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision import models as tvm

from arc_common.models import ArchitectureSpec
from services.executor.trainer.checkpoint_io import load_verified


class PretrainedWeightsMissing(RuntimeError):
    pass


class UnknownVariant(ValueError):
    pass


class InitMismatch(ValueError):
    """init_from's weights cannot start this model (another shape, changed bytes)."""


def load_init(model: nn.Module, path: str, sha256: str) -> None:
    """Start ``model`` from the verified weights at ``path`` (a fine-tune)."""
    payload = load_verified(Path(path), sha256)
    if payload is None:
        raise InitMismatch(f"init_from {Path(path).name} changed since it was verified")
    try:
        model.load_state_dict(payload["model_state_dict"])
    except (RuntimeError, KeyError) as exc:
        raise InitMismatch(
            f"init_from {Path(path).name} does not fit this model (another architecture?): "
            f"{str(exc).splitlines()[0][:300]}"
        ) from None


def weights_file(variant: str) -> Path:
    """Where torchvision keeps the default weights of ``variant`` in the torch cache."""
    weights: Any = tvm.get_model_weights(variant).DEFAULT  # type: ignore[attr-defined,unused-ignore]
    filename = os.path.basename(str(weights.url))
    return Path(str(torch.hub.get_dir())) / "checkpoints" / filename


def _load_pretrained(model: nn.Module, variant: str) -> None:
    path = weights_file(variant)
    if not path.exists():
        raise PretrainedWeightsMissing(
            f"pretrained weights for {variant} are not on disk: {path} is missing. "
            f"Copy the file there (or set TORCH_HOME), or set pretrained: false; "
            "nothing is downloaded at run time."
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state)


def _replace_head(model: nn.Module, num_classes: int, dropout: float) -> None:
    """Swap the last Linear layer for one with ``num_classes`` outputs behind a Dropout."""
    name = ""
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            name = module_name
    if not name:
        raise ValueError(f"{type(model).__name__} has no linear classification head")
    parent_path, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    old = parent.get_submodule(leaf)
    assert isinstance(old, nn.Linear)
    head: nn.Module = nn.Linear(old.in_features, num_classes)
    if dropout > 0:
        head = nn.Sequential(nn.Dropout(dropout), head)
    # Sequential children are named "0", "1"...: setattr registers them all the same.
    setattr(parent, leaf, head)


def build_model(spec: ArchitectureSpec) -> nn.Module:
    try:
        model: nn.Module = tvm.get_model(spec.variant, weights=None)
    except ValueError as exc:
        raise UnknownVariant(
            f"architecture.variant {spec.variant!r} is not a torchvision model: {exc}"
        ) from None
    if spec.pretrained:
        _load_pretrained(model, spec.variant)
    _replace_head(model, spec.num_classes, spec.dropout)
    return model
