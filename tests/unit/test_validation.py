"""Every bound of the experiment spec is enforced, and the error names the field path."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest

from arc.common.v1 import common_pb2
from arc_common import convert, models
from arc_common.errors import InvalidArgumentError
from arc_common.paths import resolve_in_root


def valid_spec() -> dict[str, Any]:
    return {
        "experiment_id": "exp_resnet50_lr001",
        "description": "ResNet50 baseline with Adam",
        "architecture": {"family": "resnet", "variant": "resnet50", "num_classes": 2},
        "hyperparameters": {
            "batch_size": 32,
            "epochs": 10,
            "optimizer": {"type": "adam", "learning_rate": 0.001},
        },
        "dataset": {"dataset_id": "acuvue_v1", "data_path": "data/acuvue"},
        "cycle_id": 10,
        "novelty_class": "exploit",
        "priority": 7,
    }


def with_value(path: str, value: Any) -> dict[str, Any]:
    spec = copy.deepcopy(valid_spec())
    target = spec
    *parents, leaf = path.split(".")
    for part in parents:
        target = target.setdefault(part, {})
    target[leaf] = value
    return spec


def test_valid_spec_passes() -> None:
    spec = models.parse_model(models.ExperimentSpec, valid_spec())
    assert spec.effective_priority == 7
    assert spec.dataset.train_split == pytest.approx(0.8)


BOUNDS = [
    ("hyperparameters.optimizer.learning_rate", 0.0, "greater than 0"),
    ("hyperparameters.optimizer.learning_rate", 1.5, "less than or equal to 1"),
    ("hyperparameters.optimizer.learning_rate", math.nan, "finite number"),
    ("hyperparameters.optimizer.learning_rate", math.inf, "finite number"),
    ("hyperparameters.optimizer.weight_decay", -0.1, "greater than or equal to 0"),
    ("hyperparameters.optimizer.momentum", 1.0, "less than 1"),
    ("hyperparameters.batch_size", 0, "greater than or equal to 1"),
    ("hyperparameters.batch_size", 100_000, "less than or equal to 4096"),
    ("hyperparameters.epochs", 0, "greater than or equal to 1"),
    ("hyperparameters.seed", -1, "greater than or equal to 0"),
    ("hyperparameters.lr_schedule.gamma", 0.0, "greater than 0"),
    ("priority", 11, "less than or equal to 10"),
    ("priority", -1, "greater than or equal to 0"),
    ("cycle_id", -3, "greater than or equal to 0"),
    ("max_training_time_seconds", 0, "greater than or equal to 1"),
    ("architecture.num_classes", 1, "greater than or equal to 2"),
    ("architecture.dropout", 1.0, "less than 1"),
    ("architecture.variant", "Resnet 50", "should match pattern"),
    ("architecture.family", "transformerx", "Input should be"),
    ("dataset.image_size", 8, "greater than or equal to 16"),
    ("dataset.train_split", 0.0, "greater than 0"),
    ("dataset.val_split", 1.0, "less than 1"),
    ("dataset.data_path", "/etc/passwd", "not absolute"),
    ("dataset.data_path", "data/../../etc", "'..'"),
    ("dataset.data_path", "", "must not be empty"),
    ("dataset.dataset_id", "../x", "should match pattern"),
    ("experiment_id", "has space", "should match pattern"),
    ("experiment_id", "", "should match pattern"),
    ("gpu_allocation.gpu_count", 0, "greater than or equal to 1"),
    ("gpu_allocation.gpu_indices", [-1], "greater than or equal to 0"),
    ("early_stopping.patience", 0, "greater than or equal to 1"),
    ("early_stopping.divergence_factor", 1.0, "greater than 1"),
    ("description", "x" * 5000, "at most 4096"),
]


@pytest.mark.parametrize(
    ("path", "value", "bound"), BOUNDS, ids=[f"{p}={v!r}"[:60] for p, v, _ in BOUNDS]
)
def test_bound_rejected_with_field_named(path: str, value: Any, bound: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        models.parse_model(models.ExperimentSpec, with_value(path, value), prefix="spec")
    fields = [field for field, _ in info.value.violations]
    assert any(field.startswith(f"spec.{path}") for field in fields), fields
    assert bound in str(info.value)


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("dataset.test_split", 0.3, "must sum to 1"),
        ("architecture.variant", "densenet121", "is not a resnet model"),
        ("gpu_allocation.gpu_indices", [0, 0], "must not repeat"),
    ],
)
def test_cross_field_rules(path: str, value: Any, message: str) -> None:
    spec = with_value(path, value)
    if path.startswith("gpu_allocation"):
        spec["gpu_allocation"]["preference"] = "specific"
    with pytest.raises(InvalidArgumentError) as info:
        models.parse_model(models.ExperimentSpec, spec, prefix="spec")
    section = path.split(".", maxsplit=1)[0]
    assert info.value.field == f"spec.{section}"
    assert message in str(info.value)


def test_all_problems_reported_at_once() -> None:
    spec = with_value("hyperparameters.batch_size", 0)
    spec["priority"] = 42
    spec["hyperparameters"]["optimizer"]["learning_rate"] = 3.0
    with pytest.raises(InvalidArgumentError) as info:
        models.parse_model(models.ExperimentSpec, spec)
    fields = {field for field, _ in info.value.violations}
    assert fields == {
        "hyperparameters.batch_size",
        "hyperparameters.optimizer.learning_rate",
        "priority",
    }


def test_missing_required_fields_named_from_proto() -> None:
    with pytest.raises(InvalidArgumentError) as info:
        convert.to_model(common_pb2.ExperimentSpec(experiment_id="e"), models.ExperimentSpec)
    fields = {field for field, _ in info.value.violations}
    assert {"architecture", "hyperparameters", "dataset"} <= fields


def test_training_job_config_paths_must_stay_in_workspace() -> None:
    base = {"job_id": "j1", "experiment_spec": valid_spec(), "log_dir": "runs/j1/logs"}
    with pytest.raises(InvalidArgumentError) as info:
        models.parse_model(models.TrainingJobConfig, {**base, "checkpoint_dir": "../outside"})
    assert info.value.field == "checkpoint_dir"


def test_symlink_out_of_workspace_is_refused(tmp_path: Any) -> None:
    root = tmp_path / "ws"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "link").symlink_to(outside)
    assert resolve_in_root(root, "data/x", field="data_path") == (root / "data/x").resolve()
    with pytest.raises(InvalidArgumentError, match="resolves outside"):
        resolve_in_root(root, "link/secrets", field="data_path")
    with pytest.raises(InvalidArgumentError, match="data_path"):
        resolve_in_root(root, "../x", field="data_path")
