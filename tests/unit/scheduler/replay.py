"""A machine whose runs replay a tabulated learning curve in milliseconds, the way Syne
Tune's simulator backend replays benchmarks: hundreds of sweep trials go through the real
scheduler and sweep driver in seconds. Registered by tests only (a ``node_type``)."""

from __future__ import annotations

import asyncio
import math
import time

from arc_common import packed
from arc_common.models import (
    JobState,
    Lease,
    MetricResult,
    TrainingJobConfig,
)
from tests.unit.scheduler.fakes import FakeNode, FakeRun

BEST_LEARNING_RATE = 1e-2


def final_auc(learning_rate: float) -> float:
    """Where a trial's curve ends: best (0.95) at BEST_LEARNING_RATE, worse either side."""
    return 0.95 - 0.1 * abs(math.log10(learning_rate) - math.log10(BEST_LEARNING_RATE))


def curve(learning_rate: float, epoch: int) -> float:
    """Val AUC after ``epoch`` epochs: rises towards final_auc, in the same order at every
    epoch (what successive halving relies on)."""
    return final_auc(learning_rate) - 0.3 * math.exp(-epoch / 3)


class ReplayNode(FakeNode):
    """Each run reports its curve's value once per epoch, then completes with its best;
    a run cancelled or pruned stops replaying at once."""

    epoch_seconds = 0.001

    def __init__(self, name: str = "local", gpus: int = 1) -> None:
        super().__init__(name, gpus)
        self.epochs_trained = 0
        self.most_at_once = 0  # runs replaying at the same time
        self.busy: list[tuple[float, float]] = []  # (first epoch began, last ended), per run
        self._tasks: set[asyncio.Task[None]] = set()

    def _begin(self, fake: FakeRun, lease: Lease) -> None:
        super()._begin(fake, lease)
        assert fake.run.config is not None
        task = asyncio.get_running_loop().create_task(self._replay(fake, fake.run.config))
        self._tasks.add(task)
        self.most_at_once = max(self.most_at_once, len(self._tasks))
        task.add_done_callback(self._tasks.discard)

    async def _replay(self, fake: FakeRun, config: TrainingJobConfig) -> None:
        spec = config.experiment_spec
        learning_rate = spec.hyperparameters.optimizer.learning_rate
        best = -math.inf
        began = time.monotonic()
        for epoch in range(1, spec.hyperparameters.epochs + 1):
            await asyncio.sleep(self.epoch_seconds)
            if fake.run.state is not JobState.RUNNING:
                return
            self.epochs_trained += 1
            value = curve(learning_rate, epoch)
            best = max(best, value)
            metric = MetricResult(name="val_auc", value=value, epoch=epoch, split="val")
            fake.emit(metrics=packed.pack([metric]))
        self.busy.append((began, time.monotonic()))
        if fake.run.state is JobState.RUNNING:
            self._complete(fake, {"val_auc": best})
