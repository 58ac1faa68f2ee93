"""The evaluation tools' work in the tool child: one checkpoint scored by the evaluation
module, or two compared by the paired DeLong test."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from sklearn.metrics import confusion_matrix, roc_curve

from arc_common import evaluation
from arc_common.models import DatasetSpec, Grouping, OperatingPoint, Provenance
from services.executor.tools.torchwork import (
    UnsupportedRequest,
    _transform,
    load_checkpoint,
    predict,
    split_samples,
)
from services.executor.trainer.provenance import dataset_hash, engine_version


def _grouping(payload: dict[str, Any]) -> Grouping | None:
    recorded = payload.get("dataset")
    return DatasetSpec.model_validate(recorded).grouping if recorded else None


def _f1(point: OperatingPoint) -> float:
    found = 2 * point.true_positives
    total = found + point.false_positives + point.false_negatives
    return found / total if total else math.nan


def evaluate(
    checkpoint: Path,
    data_path: Path,
    split: str,
    *,
    sha256: str,
    bootstrap: int,
    seed: int,
    dataset_id: str,
    data_path_name: str,
    figures: Path | None = None,
) -> dict[str, Any]:
    """The evaluation module's report on ``split``. Operating points come from the same
    dataset's validation split and are frozen for any other split (as in training); a
    dataset without validation images lets the split choose its own, and says so."""
    model, payload, device = load_checkpoint(checkpoint, sha256)
    class_names: list[str] = payload["class_names"]
    transform = _transform(payload)
    samples, groups = split_samples(data_path, split, payload)
    frozen = None
    if split != "val":
        try:
            val_samples, val_groups = split_samples(data_path, "val", payload)
        except UnsupportedRequest:
            val_samples, val_groups = [], None
        if val_samples:
            chooser = evaluation.evaluate_split(
                *predict(model, val_samples, transform, device),
                split="val",
                class_names=class_names,
                bootstrap_samples=bootstrap,
                seed=seed,
                groups=val_groups,
            )
            frozen = chooser.operating_points or None
    labels, probs = predict(model, samples, transform, device)
    report = evaluation.evaluate_split(
        labels,
        probs,
        split=split,
        class_names=class_names,
        frozen=frozen,
        bootstrap_samples=bootstrap,
        seed=seed,
        groups=groups,
    )
    if figures is not None and np.isfinite(probs).all():
        from arc_common.evaluation.plots import write_figures  # matplotlib only here

        written = write_figures(labels, probs, report, class_names=class_names, stem=figures)
        if written is not None:
            report = report.model_copy(
                update={
                    "roc_curve_png": str(written[0]),
                    "reliability_diagram_png": str(written[1]),
                }
            )
    positive = evaluation.positive_index(class_names)
    binary = len(class_names) == 2
    scores = probs[:, positive] if binary else probs.max(1)
    positives = (labels == positive).astype(np.int64)
    fpr, tpr, thresholds = roc_curve(positives, scores)
    youden = report.point("youden") if binary else None
    flat = evaluation.flat_metrics(report)
    matrix = confusion_matrix(labels, probs.argmax(1), labels=list(range(len(class_names))))
    sens90 = report.point("spec90") if binary else None
    record = Provenance(
        seed=int(payload.get("seed", seed)),
        engine_version=engine_version(),
        torch_version=torch.__version__,
        torchvision_version=torchvision.__version__,
        device=device.type,
        precision="fp32",
        deterministic=device.type == "cpu",
        dataset_id=dataset_id,
        data_path=data_path_name,
        dataset_hash=dataset_hash(data_path, [str(p) for p, _ in samples]),
        checkpoint_path="",
        checkpoint_sha256=sha256,
        grouping=grouping.describe() if (grouping := _grouping(payload)) else "",
    )
    return {
        "checkpoint_path": "",
        "split": split,
        "num_samples": len(labels),
        "auc": report.auc,
        "auc_ci_lower": flat[f"{split}_auc_ci_lower"],
        "auc_ci_upper": flat[f"{split}_auc_ci_upper"],
        "accuracy": report.accuracy,
        # At the frozen Youden threshold, not the argmax.
        "sensitivity": youden.sensitivity if youden else math.nan,
        "specificity": youden.specificity if youden else math.nan,
        "sensitivity_at_90_specificity": sens90.sensitivity if sens90 else math.nan,
        "sensitivity_at_95_specificity": report.sensitivity_at_95_specificity,
        "f1": _f1(youden) if youden else math.nan,
        "confusion_matrix": matrix.ravel().tolist(),
        "num_classes": len(class_names),
        "roc_curve": [
            {
                "false_positive_rate": float(f),
                "true_positive_rate": float(t),
                "threshold": float(min(th, 1e300)),
            }
            for f, t, th in zip(fpr, tpr, thresholds, strict=True)
        ],
        "class_names": class_names,
        "positive_class": report.positive_class,
        "evaluation": report.model_dump(mode="json"),
        "provenance": record.model_dump(mode="json"),
        "labels": labels.tolist(),
        "scores": scores.tolist(),
    }


def _same_split(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two checkpoints' trainers split an unsplit folder the same way."""
    keys = ("train_split", "val_split", "test_split", "grouping")
    da, db = a.get("dataset") or {}, b.get("dataset") or {}
    return a.get("seed") == b.get("seed") and all(da.get(k) == db.get(k) for k in keys)


def compare(
    checkpoints: tuple[Path, Path],
    digests: tuple[str, str],
    data_path: Path,
    split: str,
) -> dict[str, Any]:
    """Both checkpoints scored on the same images (each through its own preprocessing)
    and the paired DeLong test of their AUCs."""
    model_a, payload_a, device = load_checkpoint(checkpoints[0], digests[0])
    model_b, payload_b, _ = load_checkpoint(checkpoints[1], digests[1])
    class_names: list[str] = payload_a["class_names"]
    if payload_b["class_names"] != class_names:
        raise UnsupportedRequest(
            f"the checkpoints tell apart different classes ({class_names} and "
            f"{payload_b['class_names']})",
            field="checkpoint_path_b",
        )
    if len(class_names) != 2:
        raise UnsupportedRequest(
            "a paired DeLong comparison needs a binary task", field="checkpoint_path_a"
        )
    if not (data_path / split).is_dir() and not _same_split(payload_a, payload_b):
        raise UnsupportedRequest(
            f"{data_path.name} has no {split}/ folder and the two checkpoints were trained on "
            "different splits of it (seed, fractions or grouping): one's test images may be "
            "the other's training images; compare on a dataset with split folders",
            field="checkpoint_path_b",
        )
    samples, _ = split_samples(data_path, split, payload_a)
    labels, probs_a = predict(model_a, samples, _transform(payload_a), device)
    _, probs_b = predict(model_b, samples, _transform(payload_b), device)
    positive = evaluation.positive_index(class_names)
    labels01 = (labels == positive).astype(np.int64)
    found = evaluation.paired_delong(labels01, probs_a[:, positive], probs_b[:, positive])
    return {
        "split": split,
        "num_samples": len(labels),
        "num_positives": int(labels01.sum()),
        "auc_a": found.auc_a,
        "auc_b": found.auc_b,
        "difference": found.difference,
        "difference_ci": found.ci.model_dump(mode="json"),
        "z": found.z,
        "p_value": found.p_value,
        "dataset_hash": dataset_hash(data_path, [str(p) for p, _ in samples]),
        "labels": labels01.tolist(),
        "scores_a": probs_a[:, positive].tolist(),
        "scores_b": probs_b[:, positive].tolist(),
    }
