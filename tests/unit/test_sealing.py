"""The seal's rule on paths and what redaction leaves in a result (arc_common.sealing)."""

from __future__ import annotations

from pathlib import PurePosixPath as P

import pytest

from arc.common.v1 import common_pb2
from arc.executor.v1 import executor_pb2
from arc.scheduler.v1 import scheduler_pb2
from arc_common import sealing
from arc_common.errors import PermissionDeniedError
from arc_common.models import ExperimentSpec
from services.governance.policy import DEFAULT_POLICY_PATH, Policy, PolicyError
from services.scheduler.seals import seal

ROOTS = [P("datasets/fundus")]


@pytest.mark.parametrize(
    ("read", "training", "sealed"),
    [
        ("datasets/fundus/test", False, True),
        ("datasets/fundus/test/glaucoma", False, True),
        ("datasets/fundus", False, True),  # all of it, test included
        ("datasets/fundus", True, False),  # the engine's own test pass
        ("datasets", True, True),
        ("datasets/fundus/train", False, False),
        ("datasets/fundus-2/test", False, False),  # a name that only starts the same
        ("datasets/other", False, False),
    ],
)
def test_breach_refuses_reads_in_or_around_the_test_folder(
    read: str, training: bool, sealed: bool
) -> None:
    assert (sealing.breach(P(read), ROOTS, training=training) is not None) is sealed


def test_a_split_of_a_sealed_dataset_is_its_folder_and_anything_else_all_of_it() -> None:
    assert sealing.read_by_split(P("datasets/fundus"), "val", ROOTS) == P("datasets/fundus/val")
    assert sealing.read_by_split(P("datasets/x"), "val", ROOTS) == P("datasets/x")


def result(kind: str = "training") -> common_pb2.ExperimentResult:
    out = common_pb2.ExperimentResult(kind=kind, job_id="j")
    out.best_metrics.update({"val_auc": 0.8, "test_auc": 0.7, "test_loss": 0.5, "best_epoch": 2})
    out.metrics.add(name="val_auc", value=0.8, split="val")
    out.metrics.add(name="test_auc", value=0.7, split="test")
    out.metrics.add(name="auc", value=0.7, split="test")
    out.evaluations.add(split="val", auc=0.8)
    out.evaluations.add(split="test", auc=0.7)
    out.checkpoints.add(path="best.pt").metrics.update({"val_auc": 0.8, "test_auc": 0.7})
    return out


def test_a_sealed_training_result_keeps_validation_only() -> None:
    sealed = result()
    sealing.seal_result(sealed)
    assert sealed.test_sealed
    assert dict(sealed.best_metrics) == {"val_auc": 0.8, "best_epoch": 2}
    assert [m.name for m in sealed.metrics] == ["val_auc"]
    assert [e.split for e in sealed.evaluations] == ["val"]
    assert dict(sealed.checkpoints[0].metrics) == {"val_auc": 0.8}


def test_a_sealed_evaluation_result_keeps_nothing_it_measured() -> None:
    sealed = result("evaluation")
    sealing.seal_result(sealed)
    assert sealed.test_sealed and not sealed.best_metrics and not sealed.evaluations


def test_a_batch_of_test_metrics_only_is_dropped_whole() -> None:
    batch = common_pb2.MetricBatch()
    batch.metrics.add(name="test_auc", split="test")
    assert not sealing.seal_batch(batch)
    batch.metrics.add(name="train_loss", split="train")
    assert sealing.seal_batch(batch) and [m.name for m in batch.metrics] == ["train_loss"]


@pytest.mark.parametrize("root", ["/abs/fundus", "../fundus", ""])
def test_a_policy_sealing_a_path_outside_the_workspace_is_refused(root: str) -> None:
    text = DEFAULT_POLICY_PATH.read_text().replace("sealed_test: []", f"sealed_test: [{root!r}]")
    with pytest.raises(PolicyError, match="sealed_test"):
        Policy.parse(text)


def test_the_default_policy_seals_nothing_and_a_seal_is_normalized() -> None:
    assert Policy.parse(DEFAULT_POLICY_PATH.read_text()).document.sealed_test == []
    text = DEFAULT_POLICY_PATH.read_text().replace("sealed_test: []", "sealed_test: [a/./b/]")
    assert Policy.parse(text).document.sealed_test == ["a/b"]


def spec(data_path: str, **more: object) -> ExperimentSpec:
    return ExperimentSpec.model_validate(
        {
            "experiment_id": "e",
            "architecture": {"family": "resnet", "variant": "resnet18"},
            "hyperparameters": {
                "batch_size": 8,
                "epochs": 1,
                "optimizer": {"learning_rate": 0.001},
            },
            "dataset": {"dataset_id": "d", "data_path": data_path},
            **more,
        }
    )


def test_a_training_on_a_sealed_dataset_is_sealed_whoever_submits_it() -> None:
    for trusted in (False, True):
        made = seal("training", spec("datasets/./fundus"), {}, ["datasets/fundus"], trusted=trusted)
        assert made.spec.seal_test and made.test_sealed
        assert made.sealed_test_datasets == ([] if trusted else ["datasets/fundus"])


def test_an_agent_may_not_train_on_the_test_folder_and_an_operator_may() -> None:
    with pytest.raises(PermissionDeniedError) as info:
        seal("training", spec("datasets/fundus/test"), {}, ["datasets/fundus"], trusted=False)
    assert info.value.field == "spec.dataset.data_path"
    made = seal("training", spec("datasets/fundus/test"), {}, ["datasets/fundus"], trusted=True)
    assert not made.test_sealed


def test_an_evaluation_of_a_flagged_experiment_on_its_own_test_split_is_refused() -> None:
    flagged = spec("datasets/open", seal_test=True)
    own = {"data_path": "datasets/open", "split": "test"}
    with pytest.raises(PermissionDeniedError, match="seals its test split"):
        seal("evaluation", flagged, own, [], trusted=False, prefix="jobs[2].")
    assert seal("evaluation", flagged, own, [], trusted=True).test_sealed
    val = seal("evaluation", flagged, {**own, "split": "val"}, [], trusted=False)
    assert not val.test_sealed


def test_an_event_of_either_service_loses_its_test_figures_or_goes() -> None:
    test_metric = scheduler_pb2.JobEvent(
        metric=common_pb2.MetricResult(name="test_auc", split="test")
    )
    assert not sealing.seal_event(test_metric)
    val_metric = scheduler_pb2.JobEvent(metric=common_pb2.MetricResult(name="val_auc"))
    assert sealing.seal_event(val_metric)
    run_event = executor_pb2.RunEvent(result=result())
    assert sealing.seal_event(run_event) and run_event.result.test_sealed
    assert "test_auc" not in run_event.result.best_metrics
