"""A run while the executor supervises it, and how it ends."""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass, field

from arc_common.models import (
    ExperimentResult,
    Failure,
    JobState,
    MetricResult,
    Run,
    RunEndCause,
)
from services.executor.launcher import Launched
from services.executor.procfs import oom_kills
from services.executor.run_inputs import RunPaths


@dataclass(frozen=True)
class Ending:
    state: JobState
    reason: str
    cause: RunEndCause
    # What the trainer said of its failure (services.executor.failures bounds it).
    failure: Failure | None = None


@dataclass
class LiveRun:
    run: Run
    launched: Launched | None = None
    stopping: Ending | None = None  # the executor stops it (cancel, timeout, lost lease...)
    trainer_end: Ending | None = None  # what the trainer said: pruned, or failed and why
    result: ExperimentResult | None = None
    epoch_metrics: list[MetricResult] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    heartbeat: asyncio.Task[None] | None = None  # renews the lease while the GPUs are used
    prepared: bool = False  # waiting for its GPUs (``RunManager.activate``)
    activated: asyncio.Event = field(default_factory=asyncio.Event)
    # The kernel's OOM kills in our memory cgroup when the trainer started (procfs).
    oom_kills_at_start: int | None = None
    paths: RunPaths | None = None  # what it was given; its sandbox is released at its end

    @property
    def sandboxed(self) -> bool:
        """It runs repository code: what its pipe says is the code's word, not the engine's."""
        return self.paths is not None and self.paths.sandbox is not None


def _oom_killed(live: LiveRun) -> bool:
    before = live.oom_kills_at_start
    now = oom_kills()
    return before is not None and now is not None and now > before


def ending(live: LiveRun, returncode: int, tail: list[str]) -> Ending:
    """How a run whose trainer exited with ``returncode`` ended; ``tail`` its last stderr
    lines. A stop the executor asked for wins; then what the trainer said; without a
    result or a word of its failure, the trainer died (killed, or crashed hard)."""
    if live.stopping is not None:
        return live.stopping
    said = live.trainer_end
    if said is not None and said.state is JobState.PRUNED:
        return said
    if returncode == 0 and live.result is not None:
        return Ending(JobState.COMPLETED, "training finished", RunEndCause.COMPLETED)
    cause = said.cause if said is not None else RunEndCause.CRASHED
    reason = "\n".join([f"trainer exited with {returncode}", *tail])
    if said is None and returncode == -signal.SIGKILL and _oom_killed(live):
        cause = RunEndCause.OOM
        reason = f"trainer killed by the kernel's out-of-memory killer (host memory)\n{reason}"
    return Ending(JobState.FAILED, reason, cause, said.failure if said is not None else None)


def final_result(live: LiveRun, end: Ending) -> ExperimentResult:
    """The run's result as it ends: the trainer's (if it sent one) with the epoch
    metrics, the state and, unless it completed, why."""
    config = live.run.config
    return (live.result or ExperimentResult()).model_copy(
        update={
            "experiment_id": config.experiment_spec.experiment_id if config else "",
            "job_id": live.run.job_id,
            "state": end.state,
            "metrics": list(live.epoch_metrics),
            "error_message": "" if end.state is JobState.COMPLETED else end.reason,
        }
    )
