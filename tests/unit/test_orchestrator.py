"""The orchestrator adapter turns loose or wrong proposals into specs or actionable feedback."""

from __future__ import annotations

from arc_common.models import ArchitectureFamily, GpuPreference, NoveltyClass, OptimizerType
from clients.orchestrator import interpret


def test_loose_proposal_becomes_a_spec() -> None:
    result = interpret(
        {
            "model": "ResNet-50",
            "lr": 3e-4,
            "batch": 16,
            "optimizer": "AdamW",
            "priority": "high",
            "novelty": "Explore",
            "gpu": "GPU1",
            "epochs": 20,
        }
    )
    assert result.spec is not None, result.feedback()
    spec = result.spec
    assert spec.architecture.family is ArchitectureFamily.RESNET
    assert spec.architecture.variant == "resnet50"
    assert spec.hyperparameters.optimizer.type is OptimizerType.ADAMW
    assert spec.hyperparameters.optimizer.learning_rate == 3e-4
    assert spec.priority == 8
    assert spec.novelty_class is NoveltyClass.EXPLORE
    assert spec.gpu_allocation.preference is GpuPreference.SPECIFIC
    assert spec.gpu_allocation.gpu_indices == [1]
    assert any("dataset.data_path" in a for a in result.assumed)
    assert "assumed" in result.feedback()


def test_every_problem_reported_with_a_suggestion() -> None:
    result = interpret(
        {
            "model": "resnet50",
            "lr": 5,
            "batch": 0,
            "epochs": "ten",
            "optimiser": "adam",
            "priority": 42,
            "novelty": "wild",
        }
    )
    assert result.spec is None
    by_field = {p.field: p for p in result.problems}
    assert set(by_field) >= {
        "hyperparameters.optimizer.learning_rate",
        "hyperparameters.batch_size",
        "hyperparameters.epochs",
        "priority",
        "novelty_class",
        "optimiser",
    }
    assert "1" in by_field["hyperparameters.optimizer.learning_rate"].suggestion
    assert "10" in by_field["priority"].suggestion
    assert "'wildcat'" in by_field["novelty_class"].suggestion
    assert "'optimizer'" in by_field["optimiser"].suggestion
    assert "e.g. 10" in by_field["hyperparameters.epochs"].suggestion
    feedback = result.feedback()
    assert feedback.startswith("The proposal cannot run yet")
    assert all(p.suggestion and p.suggestion in feedback for p in result.problems)


def test_misspelt_model_and_bad_id_get_suggestions() -> None:
    result = interpret({"id": "my experiment!", "arch": "densnet121"})
    assert result.spec is None
    fields = {p.field: p.suggestion for p in result.problems}
    assert fields["architecture.variant"] == "use 'densenet121'"
    assert "my-experiment" in fields["experiment_id"]


def test_splits_that_do_not_sum_get_a_valid_suggestion() -> None:
    result = interpret(
        {
            "model": "resnet18",
            "dataset": {"dataset_id": "a", "data_path": "data/a", "train_split": 0.9},
        }
    )
    assert result.spec is None
    assert any("train_split 0.8" in p.suggestion for p in result.problems)
