"""Faults and probes for the tests and the benchmark only; never set in production.

The executor passes them from its test-only setting ``trainer_faults`` (as
``TrainerInput.inject``); nothing here reads the environment. Each one wraps what the
training loop takes anyway (its ``Reporter``, its loss function), so the loop itself
holds no test hook:

- ``nan_loss_at_step:N``: the loss of this attempt's Nth training step is NaN (the run
  must end PRUNED, as a diverging one does);
- ``stream_alternate``: step losses are reported in odd epochs only, so one process times
  its steps with streaming on and off in turn (the benchmark's streaming cost);
- ``metrics_flood:N``: no training at all; N step losses as fast as the channel takes
  them, then a result (the benchmark's metrics path).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from arc_common.models import ExperimentResult, JobState
from services.executor.protocol import TrainerInput, TrainerMessage

STEP_LOSS = "train_step_loss"

Criterion = Callable[[Any, Any], Any]


def _nan_at(step: int, criterion: Criterion) -> Criterion:
    calls = 0

    def loss(output: Any, target: Any) -> Any:
        nonlocal calls
        calls += 1
        value = criterion(output, target)
        return value * float("nan") if calls == step else value

    return loss


def _odd_epochs_only(metric: Callable[..., None]) -> Callable[..., None]:
    def report(name: str, value: float, *, step: int, epoch: int, split: str) -> None:
        if name != STEP_LOSS or epoch % 2:
            metric(name, value, step=step, epoch=epoch, split=split)

    return report


def apply(inject: str, reporter: Any, criterion: Criterion) -> tuple[Any, Criterion]:
    """``reporter`` (a dataclass with a ``metric`` field) and ``criterion``, with the
    fault ``inject`` names wrapped around them ("" leaves them as they are)."""
    if inject.startswith("nan_loss_at_step:"):
        return reporter, _nan_at(int(inject.split(":")[1]), criterion)
    if inject == "stream_alternate":
        return dataclasses.replace(reporter, metric=_odd_epochs_only(reporter.metric)), criterion
    return reporter, criterion


def flood_count(inject: str) -> int | None:
    """N of ``metrics_flood:N``, else None."""
    return int(inject.split(":")[1]) if inject.startswith("metrics_flood:") else None


def metrics_flood(inp: TrainerInput, channel: Any, count: int) -> int:
    """``count`` step losses as fast as ``channel`` takes them, then a result."""
    channel.state(JobState.RUNNING.value, "metrics flood (benchmark probe)")
    now = time.time_ns()
    for step in range(1, count + 1):
        channel.metric(STEP_LOSS, 1.0 / step, step=step, epoch=1, time_ns=now)
    channel.send(
        TrainerMessage(
            kind="result",
            result=ExperimentResult(
                experiment_id=inp.config.experiment_spec.experiment_id,
                job_id=inp.config.job_id,
                state=JobState.COMPLETED,
                best_metrics={"metrics_sent": float(count)},
            ),
        )
    )
    channel.flush()
    return 0
