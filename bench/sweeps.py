"""Measures 11 and 12: a sweep's bookkeeping and its sampler.

11: trials through the real scheduler, sweep driver and Optuna ledger, on machines whose
runs train for exactly ``trial_seconds`` (``tests.unit.scheduler.replay``: what is
measured is the engine around the trainings, not the trainings). The sweep's wall time
against the ideal, sum of trial times / parallel trials (2 GPUs, 2 at a time); and, with
4 at a time on 2 GPUs so that trials wait queued, how much of the time each GPU was
training (the stand-in's own start and end stamps) against 1.0.

12: a TPE suggestion (the ledger's ask) with 1,000 completed trials, p50 and CPU,
against the same ask of the random sampler on as many trials.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from pathlib import Path
from typing import Any

from optuna.trial import TrialState

from services.scheduler.settings import SchedulerSettings
from services.scheduler.sweeps.ledger import SweepLedger
from services.scheduler.sweeps.manager import SchedulerJobs, SweepManager
from services.scheduler.sweeps.plan import Plan, Sampler
from services.scheduler.sweeps.space import Parameter
from tests.unit.scheduler.conftest import Harness, experiment
from tests.unit.scheduler.fakes import FakeClock, FakeGovernance
from tests.unit.scheduler.replay import ReplayNode

SPACE = [
    Parameter(path="hyperparameters.optimizer.learning_rate", log_uniform=(1e-5, 1e-1)),
    Parameter(path="hyperparameters.optimizer.weight_decay", uniform=(0.0, 0.1)),
    Parameter(path="hyperparameters.batch_size", categorical=[8, 16, 32, 64]),
]


async def bookkeeping(
    home: Path, *, trials: int, trial_seconds: float, gpus: int = 2, parallel: int = 2
) -> dict[str, Any]:
    """A sweep of ``trials`` on ``gpus``, ``parallel`` at a time (more than ``gpus``: the
    rest wait in the scheduler's queue)."""
    home.mkdir(parents=True, exist_ok=True)

    class Timed(ReplayNode):
        epoch_seconds = trial_seconds

    node = Timed("bench", gpus=gpus)
    harness = Harness(
        home=home,
        settings=SchedulerSettings(home=home, governance_address=""),
        nodes=[node],
        governance=FakeGovernance(),
        clock=FakeClock(),  # the scheduler's own timers; the stand-in stamps real time
    )
    scheduler = await harness.open()
    manager = SweepManager(SweepLedger(home / "sweeps.journal"), SchedulerJobs(scheduler))
    await manager.open()
    try:
        plan = Plan(
            parameters=SPACE,
            max_trials=trials,
            max_parallel=parallel,
            base=experiment("bench", hyperparameters={"epochs": 1}),
        )
        began = time.monotonic()
        sweep_id = await manager.create(plan, caller="bench")
        async for view, _ in manager.watch(sweep_id):
            final = view
        wall = time.monotonic() - began
    finally:
        await manager.close()
        await harness.close()
    assert final.state == "completed", final.state
    busy = sum(end - start for start, end in node.busy)
    ideal = busy / min(gpus, parallel)
    # While trials are queued: from the first start to the last (then fewer trials than
    # GPUs are left, and an idle GPU is not the engine's doing).
    first = min(start for start, _ in node.busy)
    last = max(start for start, _ in node.busy)
    queued_busy = sum(max(0.0, min(end, last) - max(start, first)) for start, end in node.busy)
    return {
        "trials": trials,
        "gpus": gpus,
        "parallel": parallel,
        "trial_seconds": trial_seconds,
        "wall_s": wall,
        "ideal_s": ideal,
        "wall_ratio": wall / ideal,
        "busy_fraction": queued_busy / (gpus * (last - first)) if last > first else 0.0,
        "complete": sum(t.state is TrialState.COMPLETE for t in final.trials),
    }


def suggestion_cost(home: Path, *, completed: int = 1000, asks: int = 30) -> dict[str, Any]:
    out: dict[str, Any] = {"completed": completed}
    for sampler in (Sampler.TPE, Sampler.RANDOM):
        ledger = SweepLedger(home / f"{sampler.value}.journal")
        plan = Plan(
            parameters=SPACE, sampler=sampler, max_trials=completed + asks, base=experiment("s")
        )
        ledger.create("s", plan)
        for n in range(completed):
            trial = ledger.ask("s")
            ledger.tell("s", trial.number, 0.7 + 0.1 * math.sin(n), TrialState.COMPLETE)
        walls, cpus = [], []
        for _ in range(asks):
            wall, cpu = time.perf_counter(), time.process_time()
            trial = ledger.ask("s")
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
            ledger.tell("s", trial.number, 0.7, TrialState.COMPLETE)
        out[sampler.value] = {
            "p50_ms": statistics.median(walls) * 1000,
            "cpu_ms": statistics.median(cpus) * 1000,
        }
    out["tpe_p50_ms"] = out["tpe"]["p50_ms"]
    out["ratio"] = out["tpe"]["p50_ms"] / out["random"]["p50_ms"]
    return out


async def measure(home: Path, *, quick: bool) -> dict[str, Any]:
    trials, seconds = (20, 0.5) if quick else (200, 1.0)
    return {
        "bookkeeping": await bookkeeping(home / "book", trials=trials, trial_seconds=seconds),
        "busy": await bookkeeping(
            home / "busy", trials=trials, trial_seconds=seconds, gpus=2, parallel=4
        ),
        "suggest": await asyncio.to_thread(suggestion_cost, home, completed=200 if quick else 1000),
    }
