"""Maps for ViT models: Grad-CAM over the patch tokens of the last encoder block, and
attention rollout (method ATTENTION), which CNNs refuse."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from arc_common.models import ArchitectureSpec
from arc_common.synth import generate_dataset
from services.executor.tools.torchwork import UnsupportedRequest, attention, gradcam
from services.executor.trainer.checkpoint_io import save_checkpoint
from services.executor.trainer.models import build_model


def test_vit_attention_maps_are_written(tmp_path: Path) -> None:
    torch.manual_seed(0)
    generate_dataset(tmp_path / "data", count=4, size=64, seed=1, splits=(0.0, 0.0, 1.0))
    spec = ArchitectureSpec(family="vit", variant="vit_b_16", num_classes=2)
    model = build_model(spec)
    checkpoint = tmp_path / "best.pt"
    digest = save_checkpoint(
        checkpoint,
        {
            "model_state_dict": model.state_dict(),
            "architecture": spec.model_dump(mode="json"),
            "epoch": 1,
            "metrics": {},
            "class_names": ["glaucoma", "normal"],
            "image_size": 224,
            "preprocessing": {"chain_id": "", "steps": []},
        },
    )
    images = gradcam(
        checkpoint, tmp_path / "data", "test", tmp_path / "maps", sha256=digest, count=2
    )
    assert len(images) == 2
    assert {i["true_class"] for i in images} == {"glaucoma", "normal"}
    index = json.loads((tmp_path / "maps" / "index.json").read_text())
    assert [i["path"] for i in index["images"]] == [i["path"] for i in images]
    first, second = (np.asarray(Image.open(tmp_path / "maps" / i["path"])) for i in images)
    assert first.shape == (64, 64, 3)
    assert not np.array_equal(first, second)


def _checkpoint(tmp_path: Path, family: str, variant: str) -> tuple[Path, str]:
    spec = ArchitectureSpec(family=family, variant=variant, num_classes=2)
    checkpoint = tmp_path / f"{variant}.pt"
    digest = save_checkpoint(
        checkpoint,
        {
            "model_state_dict": build_model(spec).state_dict(),
            "architecture": spec.model_dump(mode="json"),
            "epoch": 1,
            "metrics": {},
            "class_names": ["glaucoma", "normal"],
            "image_size": 224,
            "preprocessing": {"chain_id": "", "steps": []},
        },
    )
    return checkpoint, digest


def test_vit_attention_rollout_maps_differ_from_grad_cam(tmp_path: Path) -> None:
    torch.manual_seed(0)
    generate_dataset(tmp_path / "data", count=4, size=64, seed=1, splits=(0.0, 0.0, 1.0))
    checkpoint, digest = _checkpoint(tmp_path, "vit", "vit_b_16")
    rolled = attention(
        checkpoint, tmp_path / "data", "test", tmp_path / "rollout", sha256=digest, count=2
    )
    cams = gradcam(checkpoint, tmp_path / "data", "test", tmp_path / "cams", sha256=digest, count=2)
    assert [i["source_image"] for i in rolled] == [i["source_image"] for i in cams]
    assert all(i["path"].startswith("attention_") for i in rolled)
    index = json.loads((tmp_path / "rollout" / "index.json").read_text())
    assert [i["path"] for i in index["images"]] == [i["path"] for i in rolled]
    rollout = np.asarray(Image.open(tmp_path / "rollout" / rolled[0]["path"]))
    cam = np.asarray(Image.open(tmp_path / "cams" / cams[0]["path"]))
    assert rollout.shape == cam.shape == (64, 64, 3)
    assert not np.array_equal(rollout, cam)  # ATTENTION is not Grad-CAM under another name


def test_attention_of_a_cnn_is_refused_naming_method(tmp_path: Path) -> None:
    generate_dataset(tmp_path / "data", count=2, size=32, seed=1, splits=(0.0, 0.0, 1.0))
    checkpoint, digest = _checkpoint(tmp_path, "resnet", "resnet18")
    with pytest.raises(UnsupportedRequest) as info:
        attention(checkpoint, tmp_path / "data", "test", tmp_path / "out", sha256=digest, count=1)
    assert info.value.field == "method"
    assert not (tmp_path / "out").exists()
