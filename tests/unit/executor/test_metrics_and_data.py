"""Metrics against scikit-learn, the synthetic fundus generator, CLAHE, checkpoints."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn import metrics as skm

from arc_common.models import PreprocessingChain
from arc_common.synth import CDR_THRESHOLD, generate_dataset, make_fundus
from services.executor.protocol import CHECKSUM_SUFFIX, checkpoint_is_intact
from services.executor.trainer import metrics as M
from services.executor.trainer.transforms import Clahe, build_transforms, clahe_channel


@pytest.mark.parametrize("seed", range(5))
def test_binary_metrics_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 200)
    scores = np.clip(labels * 0.3 + rng.normal(0.4, 0.25, 200), 0, 1).round(2)  # with ties
    probs = np.stack([1 - scores, scores], axis=1)
    assert M.auc(labels, probs) == pytest.approx(skm.roc_auc_score(labels, scores))
    summary = M.summarize(labels, probs)
    predictions = probs.argmax(1)
    assert summary.accuracy == pytest.approx(skm.accuracy_score(labels, predictions))
    assert summary.sensitivity == pytest.approx(skm.recall_score(labels, predictions))
    assert summary.specificity == pytest.approx(skm.recall_score(1 - labels, 1 - predictions))
    assert summary.f1 == pytest.approx(skm.f1_score(labels, predictions))
    fpr, tpr, _ = M.roc_curve(labels, scores)
    sk_fpr, sk_tpr, _ = skm.roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    expected = max(t for f, t in zip(sk_fpr, sk_tpr, strict=True) if 1 - f >= 0.9)
    assert M.sensitivity_at_specificity(labels, scores, 0.9) == pytest.approx(expected)


def test_multiclass_auc_matches_sklearn_macro_ovr() -> None:
    rng = np.random.default_rng(11)
    labels = rng.integers(0, 3, 300)
    logits = rng.normal(size=(300, 3)) + np.eye(3)[labels] * 1.5
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert M.auc(labels, probs) == pytest.approx(
        skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro")
    )


def test_positive_class_is_the_disease() -> None:
    assert M.positive_index(["glaucoma", "normal"]) == 0
    assert M.positive_index(["cats", "dogs"]) == 1
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])
    assert M.summarize(labels, probs, positive=0).sensitivity == 1.0
    assert M.auc(labels, probs, positive=0) == 1.0


def test_single_class_auc_is_nan() -> None:
    assert np.isnan(M.binary_auc(np.ones(5, dtype=np.int64), np.linspace(0, 1, 5)))


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
    evaluation = build_transforms(chain, 32, train=False)
    assert "RandomHorizontalFlip" in repr(train) and "RandomHorizontalFlip" not in repr(evaluation)
    image = make_fundus(np.random.default_rng(1), size=40, glaucoma=False).image
    tensor = evaluation(image)
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
