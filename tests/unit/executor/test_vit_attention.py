"""Attention maps for ViT models: Grad-CAM over the patch tokens of the last encoder block."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from arc_common.models import ArchitectureSpec
from arc_common.synth import generate_dataset
from services.executor.tools.torchwork import gradcam
from services.executor.trainer.models import build_model
from services.executor.trainer.train import save_checkpoint


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
