"""Median pruning: the pure rule, and a pruned job through the scheduler."""

from __future__ import annotations

from arc_common.models import EarlyStopping, JobState, MetricMode
from services.scheduler.pruning import MedianPruner
from tests.unit.scheduler.conftest import Factory

RULE = EarlyStopping(median_pruning=True, monitor="val_auc", warmup_epochs=2)


def test_nothing_is_pruned_during_warmup_or_alone() -> None:
    pruner = MedianPruner()
    assert pruner.observe(1, "a", 1, 0.9, RULE) == ""
    assert pruner.observe(1, "b", 1, 0.1, RULE) == ""  # epoch 1 < warmup 2
    assert pruner.observe(1, "c", 2, 0.1, RULE) == ""  # nobody else at epoch 2


def test_worse_than_the_median_of_its_cycle_is_pruned() -> None:
    pruner = MedianPruner()
    for job, value in (("a", 0.9), ("b", 0.7), ("c", 0.8)):
        assert pruner.observe(1, job, 2, value, RULE) == "" or job == "b"
    reason = pruner.observe(1, "d", 2, 0.5, RULE)
    assert reason.startswith("pruned: val_auc 0.5000 at epoch 2 is below the median 0.8000")
    assert pruner.observe(2, "e", 2, 0.1, RULE) == ""  # another cycle is another race


def test_lower_is_better_when_the_mode_is_min() -> None:
    rule = RULE.model_copy(update={"mode": MetricMode.MIN, "monitor": "val_loss"})
    pruner = MedianPruner()
    assert pruner.observe(1, "a", 3, 0.2, rule) == ""
    assert "above the median" in pruner.observe(1, "b", 3, 0.9, rule)
    assert pruner.observe(1, "c", 3, 0.1, rule) == ""


async def test_a_job_behind_the_median_is_pruned_through_the_executor(make: Factory) -> None:
    h = await make(gpus=2)
    pruning = {"early_stopping": {"median_pruning": True, "warmup_epochs": 1}}
    good = await h.submit("good", spec=pruning)
    bad = await h.submit("bad", spec={**pruning, "hyperparameters": {"seed": 2}})
    await h.running(good)
    await h.running(bad)
    h.node.metric(good.job_id, "val_auc", 1, 0.9)
    await h.until(lambda: good.run_sequence >= 2, "the good job's metric seen")
    h.node.metric(bad.job_id, "val_auc", 1, 0.4)
    await h.state(bad, JobState.PRUNED)
    reason, prune = h.node.run_of(bad.job_id).cancel_reasons[-1]
    assert prune and reason.startswith("pruned: val_auc 0.4000 at epoch 1")
    assert bad.error_message == reason
    assert good.state is JobState.RUNNING
