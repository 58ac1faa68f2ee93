"""Sealed test splits: which reads reach a sealed test folder, and what an agent's answer
leaves out (docs/decisions/0006-sealed-test-split.md).

A dataset the policy lists under ``sealed_test`` is a folder with ``train/``, ``val/`` and
``test/``. An agent may train on the dataset (the engine's own test pass reads ``test/``,
and the job's test figures are sealed) but no tool, spec or job of an agent may read the
test folder itself, nor a folder that contains it, nor one inside it. The rule works on
workspace-relative paths as written (the scheduler, at submit) and on resolved paths (the
executor, after following symlinks), alike.

Redaction is done here and only here, on the messages that leave a service: the test
metrics, the test evaluation and the ``test_*`` best metrics are dropped, inside metric
batches too, and the result says ``test_sealed``.
"""

from __future__ import annotations

from collections.abc import Iterable, MutableSequence
from pathlib import PurePath
from typing import TypeVar

from arc.common.v1 import common_pb2
from arc.executor.v1 import executor_pb2
from arc.scheduler.v1 import scheduler_pb2
from arc_common.paths import check_relative_path

TEST = "test"
TEST_PREFIX = "test_"

P = TypeVar("P", bound=PurePath)


def normalized(paths: Iterable[str]) -> list[str]:
    """Workspace-relative paths as the rule compares them (``a/./b/`` is ``a/b``)."""
    return [check_relative_path(p) for p in paths]


def breach(read: P, sealed_roots: Iterable[P], *, training: bool = False) -> str | None:
    """Why reading all of the folder ``read`` reaches a sealed test folder, or None.

    ``training``: ``read`` is a training's dataset, which may be a sealed dataset itself
    (the engine reads its test folder for its own test pass, and seals what it finds).
    """
    for root in sealed_roots:
        folder = root / TEST
        if read == folder or read.is_relative_to(folder):
            return f"it is inside the sealed test split {folder}"
        if folder.is_relative_to(read) and not (training and read == root):
            return f"it holds the sealed test split {folder}"
    return None


def read_by_split(data: P, split: str, sealed_roots: Iterable[P]) -> P:
    """The folder a tool reads for ``split`` of ``data``, as far as the paths alone tell:
    a sealed dataset's split folder, otherwise all of ``data``."""
    return data / split if data in set(sealed_roots) else data


# --- redaction ---------------------------------------------------------------------------


def _is_test(metric: common_pb2.MetricResult) -> bool:
    return metric.split == TEST or metric.name.startswith(TEST_PREFIX)


def _keep(items: MutableSequence[common_pb2.MetricResult]) -> None:
    kept = [m for m in items if not _is_test(m)]
    if len(kept) != len(items):
        del items[:]
        items.extend(kept)


def seal_result(result: common_pb2.ExperimentResult) -> None:
    """Leave out a result's test figures; an evaluation job's result is all test."""
    if result.kind == "evaluation":
        result.best_metrics.clear()
        del result.evaluations[:]
        del result.metrics[:]
    else:
        for key in [k for k in result.best_metrics if k.startswith(TEST_PREFIX)]:
            del result.best_metrics[key]
        _keep(result.metrics)
        kept = [e for e in result.evaluations if e.split != TEST]
        del result.evaluations[:]
        result.evaluations.extend(kept)
    for checkpoint in result.checkpoints:
        seal_checkpoint(checkpoint)
    result.test_sealed = True


def seal_checkpoint(checkpoint: common_pb2.CheckpointInfo) -> None:
    for key in [k for k in checkpoint.metrics if k.startswith(TEST_PREFIX)]:
        del checkpoint.metrics[key]


def seal_batch(batch: common_pb2.MetricBatch) -> bool:
    """Drop a batch's test metrics; False when nothing is left of it."""
    _keep(batch.metrics)
    return len(batch.metrics) > 0


def seal_event(event: scheduler_pb2.JobEvent | executor_pb2.RunEvent) -> bool:
    """Leave out the test figures of a job's or a run's event; False when nothing is left
    of it."""
    payload = event.WhichOneof("payload")
    if isinstance(event, scheduler_pb2.JobEvent) and payload == "metric":
        return not _is_test(event.metric)
    if payload == "metrics":
        return seal_batch(event.metrics)
    if payload == "result":
        seal_result(event.result)
    elif payload == "checkpoint":
        seal_checkpoint(event.checkpoint)
    return True
