"""The positive class, the synthetic fundus generator, CLAHE, checkpoints."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from arc_common import evaluation
from arc_common.models import PreprocessingChain
from arc_common.synth import CDR_THRESHOLD, generate_dataset, make_fundus
from services.executor.protocol import CHECKSUM_SUFFIX, checkpoint_is_intact
from services.executor.trainer.transforms import Clahe, build_transforms, clahe_channel


def test_positive_class_is_the_disease() -> None:
    assert evaluation.positive_index(["glaucoma", "normal"]) == 0
    assert evaluation.positive_index(["cats", "dogs"]) == 1
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])
    assert evaluation.auc(labels, probs, 0) == 1.0


def test_generator_is_deterministic_and_labelled_by_cup_to_disc_ratio(tmp_path: Path) -> None:
    a = make_fundus(np.random.default_rng(5), size=64, glaucoma=True)
    b = make_fundus(np.random.default_rng(5), size=64, glaucoma=True)
    assert a.image.tobytes() == b.image.tobytes()
    assert a.label == "glaucoma" and a.cup_to_disc_ratio > CDR_THRESHOLD
    normal = make_fundus(np.random.default_rng(6), size=64, glaucoma=False)
    assert normal.cup_to_disc_ratio < CDR_THRESHOLD
    counts = generate_dataset(tmp_path / "d", count=20, size=32, seed=1, splits=(0.5, 0.25, 0.25))
    assert counts == {"glaucoma": 10, "normal": 10}
    files = sorted((tmp_path / "d").rglob("*.png"))
    assert len(files) == 20
    assert {p.parent.parent.name for p in files} == {"train", "val", "test"}
    again = generate_dataset(tmp_path / "e", count=20, size=32, seed=1, splits=(0.5, 0.25, 0.25))
    assert again == counts
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in files]
    assert digest == [
        hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((tmp_path / "e").rglob("*.png"))
    ]


def test_clahe_raises_local_contrast_and_keeps_shape() -> None:
    rng = np.random.default_rng(0)
    flat = (100 + rng.integers(0, 10, (64, 64))).astype(np.uint8)
    out = clahe_channel(flat, clip_limit=4.0, grid=4)
    assert out.shape == flat.shape and out.dtype == np.uint8
    assert out.std() > flat.std()
    image = Image.fromarray(np.stack([flat] * 3, axis=-1))
    assert Clahe()(image).size == image.size


def test_transforms_follow_the_chain_and_augment_only_training() -> None:
    chain = PreprocessingChain.model_validate(
        {
            "steps": [
                {"type": "clahe"},
                {"type": "green_channel"},
                {"type": "horizontal_flip", "params": {"p": 1.0}},
            ]
        }
    )
    train = build_transforms(chain, 32, train=True)
    at_eval = build_transforms(chain, 32, train=False)
    assert "RandomHorizontalFlip" in repr(train) and "RandomHorizontalFlip" not in repr(at_eval)
    image = make_fundus(np.random.default_rng(1), size=40, glaucoma=False).image
    tensor = at_eval(image)
    assert tuple(tensor.shape) == (3, 32, 32)
    assert np.allclose(
        tensor[0].numpy() * 0.229 + 0.485, tensor[1].numpy() * 0.224 + 0.456, atol=1e-5
    )


def test_checkpoint_integrity_check(tmp_path: Path) -> None:
    path = tmp_path / "best.pt"
    path.write_bytes(b"weights")
    assert not checkpoint_is_intact(path)  # no checksum: treated as torn
    sidecar = path.with_name(path.name + CHECKSUM_SUFFIX)
    sidecar.write_text(hashlib.sha256(b"weights").hexdigest() + "  best.pt\n")
    assert checkpoint_is_intact(path)
    path.write_bytes(b"weigh")  # torn write
    assert not checkpoint_is_intact(path)


def test_a_split_that_cannot_be_known_names_the_field(tmp_path: Path) -> None:
    from services.executor.tools.torchwork import UnsupportedRequest, split_samples

    generate_dataset(tmp_path / "flat", count=8, size=16, seed=1)
    # A checkpoint that does not record how its trainer split an unsplit folder.
    with pytest.raises(UnsupportedRequest) as info:
        split_samples(tmp_path / "flat", "test", {"class_names": ["glaucoma", "normal"]})
    assert info.value.field == "split"
