"""The trainer's test-only faults wrap what the loop takes; with none set, nothing changes."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from services.executor.trainer import faults


@dataclass
class Recorder:
    seen: list[tuple[str, int]] = field(default_factory=list)

    def metric(self, name: str, value: float, *, step: int, epoch: int, split: str) -> None:
        self.seen.append((name, epoch))


@dataclass
class Reporting:
    metric: Any


def loss(output: Any, target: Any) -> float:
    return 0.5


def test_no_fault_leaves_reporter_and_loss_as_they_are() -> None:
    reporter = Reporting(metric=Recorder().metric)
    assert faults.apply("", reporter, loss) == (reporter, loss)
    assert faults.flood_count("") is None


def test_nan_loss_at_the_nth_step_only() -> None:
    _, criterion = faults.apply("nan_loss_at_step:2", Reporting(metric=None), loss)
    values = [criterion(None, None) for _ in range(3)]
    assert values[0] == values[2] == 0.5 and math.isnan(values[1])


def test_stream_alternate_reports_step_losses_in_odd_epochs_only() -> None:
    recorder = Recorder()
    reporter, _ = faults.apply("stream_alternate", Reporting(metric=recorder.metric), loss)
    for epoch in (1, 2, 3):
        reporter.metric("train_step_loss", 0.1, step=epoch, epoch=epoch, split="train")
        reporter.metric("val_auc", 0.7, step=epoch, epoch=epoch, split="val")
    assert recorder.seen == [
        ("train_step_loss", 1),
        ("val_auc", 1),
        ("val_auc", 2),
        ("train_step_loss", 3),
        ("val_auc", 3),
    ]
    assert faults.flood_count("metrics_flood:500") == 500
