"""A sealed test split: what an agent token may not see of a run until an operator releases
it. The scheduler and the executor apply the same rule to every view they give an agent."""

from __future__ import annotations

from arc_common.models import CheckpointInfo, ExperimentResult, MetricResult, PackedMetrics
from arc_common.packed import pack, unpack

TEST_SPLIT = "test"


def is_test_metric(metric: MetricResult) -> bool:
    return metric.split == TEST_SPLIT or metric.name.startswith(f"{TEST_SPLIT}_")


def seal_map(values: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in values.items() if not k.startswith(f"{TEST_SPLIT}_")}


def seal_metrics(metrics: list[MetricResult]) -> list[MetricResult]:
    return [m for m in metrics if not is_test_metric(m)]


def seal_packed(packed: PackedMetrics) -> PackedMetrics | None:
    """The batch without its test metrics; None when nothing is left of it."""
    metrics = unpack(packed)
    kept = seal_metrics(metrics)
    if len(kept) == len(metrics):
        return packed
    return pack(kept) if kept else None


def seal_checkpoint(info: CheckpointInfo) -> CheckpointInfo:
    return info.model_copy(update={"metrics": seal_map(info.metrics)})


def seal_result(result: ExperimentResult) -> ExperimentResult:
    """The result as an agent sees it while the test split is sealed. An evaluation job's
    result on a sealed split loses its figures the same way (its split is "test")."""
    return result.model_copy(
        update={
            "metrics": seal_metrics(result.metrics),
            "best_metrics": seal_map(result.best_metrics),
            "checkpoints": [seal_checkpoint(c) for c in result.checkpoints],
            "evaluations": [e for e in result.evaluations if e.split != TEST_SPLIT],
            "test_sealed": True,
        }
    )
