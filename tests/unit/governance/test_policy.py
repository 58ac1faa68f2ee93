"""Policy parsing and every kind of constraint."""

from __future__ import annotations

import pytest

from arc_common.models import Tool
from services.governance.policy import DEFAULT_POLICY_PATH, Policy, PolicyError, patch_stats

POLICY = """
version: test
callers:
  default: {gpu_hours_per_cycle: 10, max_concurrent_jobs: 2, calls_per_minute: 100}
  architect: {gpu_hours_per_cycle: 2}
tools:
  run_training_job:
    constraints:
      hyperparameters.optimizer.learning_rate: {min: 1.0e-5, max: 0.01}
      hyperparameters.batch_size: {min: 4, max: 128}
      architecture.family: {one_of: [resnet, densenet]}
      dataset.data_path: {path_prefixes: ["datasets/"]}
      description: {max_length: 10}
      dataset_ids: {one_of: [acuvue_v1, acuvue_v2]}
  sync_datasets:
    allowed: false
  apply_code_patch:
    patch: {max_files: 2, max_lines: 4, path_globs: ["models/*.py"]}
"""


@pytest.fixture
def policy() -> Policy:
    return Policy.parse(POLICY)


def test_default_policy_loads() -> None:
    policy = Policy.load(DEFAULT_POLICY_PATH)
    assert policy.version.startswith("2026.1+")
    assert policy.tool(Tool.RUN_TRAINING_JOB) is not None


def test_every_violation_with_a_suggestion(policy: Policy) -> None:
    violations = policy.evaluate(
        Tool.RUN_TRAINING_JOB,
        {
            "hyperparameters": {"optimizer": {"learning_rate": 0.5}, "batch_size": 1},
            "architecture": {"family": "vit"},
            "dataset": {"data_path": "tmp/raw"},
            "description": "far too long a description",
            "dataset_ids": ["acuvue_v1", "kaggle"],
        },
    )
    by_field = {v.field: v for v in violations}
    assert set(by_field) == {
        "hyperparameters.optimizer.learning_rate",
        "hyperparameters.batch_size",
        "architecture.family",
        "dataset.data_path",
        "description",
        "dataset_ids[1]",
    }
    lr = by_field["hyperparameters.optimizer.learning_rate"]
    assert (lr.constraint, lr.actual, lr.suggested) == ("<= 0.01", "0.5", "0.01")
    assert by_field["hyperparameters.batch_size"].suggested == "4"
    assert by_field["architecture.family"].suggested == "resnet"
    assert by_field["dataset.data_path"].suggested == "datasets/raw"
    assert by_field["description"].suggested == "far too lo"


def test_valid_parameters_pass(policy: Policy) -> None:
    assert (
        policy.evaluate(
            Tool.RUN_TRAINING_JOB,
            {
                "hyperparameters": {"optimizer": {"learning_rate": 0.001}, "batch_size": 32},
                "architecture": {"family": "resnet"},
                "dataset": {"data_path": "datasets/acuvue"},
            },
        )
        == []
    )


def test_non_finite_and_non_numeric(policy: Policy) -> None:
    violations = policy.evaluate(
        Tool.RUN_TRAINING_JOB,
        {"hyperparameters": {"optimizer": {"learning_rate": float("nan")}, "batch_size": "x"}},
    )
    assert {v.constraint for v in violations} == {"must be finite", "must be a number"}


def test_denied_and_unlisted_tools(policy: Policy) -> None:
    assert policy.evaluate(Tool.SYNC_DATASETS, {})[0].constraint == "tool is denied by the policy"
    assert policy.evaluate(Tool.GENERATE_VISUALIZATIONS, {})[0].constraint == (
        "tool is not listed in the policy"
    )


PATCH = """diff --git a/models/net.py b/models/net.py
--- a/models/net.py
+++ b/models/net.py
@@ -1,2 +1,3 @@
 import torch
-x = 1
+x = 2
+y = 3
diff --git a/train.py b/train.py
--- a/train.py
+++ /dev/null
@@ -1 +0,0 @@
-print('hi')
diff --git a/models/new.py b/models/new.py
--- /dev/null
+++ b/models/new.py
@@ -0,0 +1 @@
+z = 1
"""


def test_patch_limits(policy: Policy) -> None:
    stats = patch_stats(PATCH)
    assert stats.files == ["models/net.py", "train.py", "models/new.py"]
    assert (stats.added, stats.removed) == (3, 2)
    violations = policy.evaluate(Tool.APPLY_CODE_PATCH, {"patch": PATCH})
    constraints = {v.constraint for v in violations}
    assert "at most 2 files" in constraints
    assert "at most 4 changed lines" in constraints
    outside = [v for v in violations if v.field == "patch.files"]
    assert [v.actual for v in outside] == ["train.py"]


def test_caller_limits_fall_back_to_default(policy: Policy) -> None:
    assert policy.limits("architect").gpu_hours_per_cycle == 2
    assert policy.limits("architect").max_concurrent_jobs == 2
    assert policy.limits("someone").gpu_hours_per_cycle == 10


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("version: 1\ntools:\n  run_training_job:\n    allowed: maybe\n", 4, "allowed"),
        ("version: 1\ntools:\n  run_training_job:\n    constraints:\n      x: {mini: 1}\n", 5, "x"),
        ("version: 1\ntools:\n  fly_to_moon: {}\n", 3, "fly_to_moon"),
        ("version: 1\ntools: [\n", 3, "not valid YAML"),
        ("- a list\n", 1, "mapping"),
        ("tools:\n  run_training_job:\n    constraints:\n      lr: {min: 2, max: 1}\n", 4, "min 2"),
    ],
)
def test_broken_policy_names_line_and_reason(text: str, line: int, reason: str) -> None:
    with pytest.raises(PolicyError) as info:
        Policy.parse(text)
    assert info.value.line == line
    assert reason in str(info.value)
