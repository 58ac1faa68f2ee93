"""A sweep at work: it keeps ``max_parallel`` trials in flight as ordinary jobs of its
caller, tells each trial's end to the ledger, and stops when the ledger has made all its
trials and the last one ended, or when the sweep is cancelled. A restarted driver first
takes up the trials the ledger lists as pending: each is submitted again under its own
request id, which gives back the job it already has (or makes the one a crash lost)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from optuna.trial import TrialState

from arc_common.errors import (
    ArcError,
    DeadlineExceededError,
    ResourceExhaustedError,
    UnavailableError,
)
from arc_common.models import ExperimentSpec, JobState, MetricResult
from services.scheduler.store import JobRecord
from services.scheduler.sweeps import space
from services.scheduler.sweeps.ledger import SweepLedger, Trial
from services.scheduler.sweeps.plan import ARM, SEED, Plan

logger = logging.getLogger(__name__)

RUNNING, COMPLETED, CANCELLED, FAILED = "running", "completed", "cancelled", "failed"
MAX_REFUSALS = 5  # trials refused in a row that end the sweep (FAILED)
MAX_REASON = 1000
MAX_SUBMIT_WAIT = 30.0  # seconds between a trial's submissions while over quota


class Jobs(Protocol):
    """What a sweep needs of the scheduler (``SchedulerJobs`` over the real one)."""

    async def submit(self, spec: ExperimentSpec, *, request_id: str, caller: str) -> JobRecord: ...

    async def wait(self, job_id: str) -> JobRecord: ...

    async def cancel(self, job_id: str, reason: str) -> None: ...

    def metrics(self, job_id: str, name: str) -> AsyncIterator[MetricResult]:
        """The job's metrics called ``name`` as it trains, from its first; ends when the
        job has."""
        ...

    async def prune(self, job_id: str, reason: str) -> None: ...

    def completed_like(self, spec: ExperimentSpec) -> JobRecord | None:
        """A completed training job of the same content as ``spec``, if any."""
        ...

    def completed_training(self, data_path: str) -> list[JobRecord]: ...

    async def authorize(self, plan: Plan, *, caller: str, request_id: str) -> None:
        """Governance's check of the sweep itself (its trials are checked as jobs)."""
        ...


def outcome(job: JobRecord, objective: str) -> tuple[float | None, TrialState]:
    """The trial's value and state from how its job ended."""
    if job.state is JobState.PRUNED:
        return None, TrialState.PRUNED
    value = job.result.best_metrics.get(objective) if job.result is not None else None
    if job.state is JobState.COMPLETED and value is not None and math.isfinite(value):
        return value, TrialState.COMPLETE
    return None, TrialState.FAIL


def gpu_seconds(job: JobRecord) -> float:
    """The GPU time an ended job took (its last attempt's start to its end)."""
    if job.start_time is None or job.end_time is None:
        return 0.0
    seconds = (job.end_time - job.start_time).total_seconds()
    return max(0.0, seconds) * job.spec.gpu_allocation.count


class SweepDriver:
    def __init__(
        self,
        ledger: SweepLedger,
        jobs: Jobs,
        sweep_id: str,
        changed: Callable[[str], None] = lambda _: None,
    ) -> None:
        """``changed``: called with the sweep's id after each change written to the ledger."""
        self.ledger = ledger
        self.jobs = jobs
        self.sweep_id = sweep_id
        self._changed = changed
        self._active: dict[int, asyncio.Task[None]] = {}
        self._job_of: dict[int, str] = {}  # the trials' jobs not ended yet
        self._stop = asyncio.Event()
        self._reason = ""
        self._gpu_seconds = 0.0  # of the trials told
        self._budget = ""  # which budget stopped the sweep, if one did
        self._refusals = 0  # trials refused at submit in a row
        self._refused = ""  # the last refusal

    async def run(self) -> None:
        """Drive the sweep until its trials have all ended; after ``stop``, until the
        trials running then have ended (their jobs cancelled). A sweep that cannot go on
        (its trials refused again and again, an error of the engine) ends FAILED with
        the reason, its running trials' jobs cancelled: never RUNNING with no driver."""
        try:
            reason = await self._run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.exception("sweep %s failed", self.sweep_id)
            reason = f"{type(exc).__name__}: {exc}"
        if reason:
            await self.stop(f"sweep failed: {reason}"[:MAX_REASON])
            await asyncio.gather(*self._active.values(), return_exceptions=True)
            for trial in await asyncio.to_thread(self.ledger.pending, self.sweep_id):
                await self._write(self.ledger.tell, trial.number, None, TrialState.FAIL)
            await self._write(self.ledger.set_state, FAILED, reason[:MAX_REASON])
        elif not self._stop.is_set() or self._budget:
            await self._write(self.ledger.set_state, COMPLETED, self._budget)
            logger.info("sweep %s completed %s", self.sweep_id, self._budget)

    async def _run(self) -> str:
        """Why the sweep failed, or "" once its trials have ended (or it was stopped)."""
        plan = await asyncio.to_thread(self.ledger.plan, self.sweep_id)
        self._gpu_seconds = await asyncio.to_thread(self.ledger.gpu_seconds, self.sweep_id)
        for trial in await asyncio.to_thread(self.ledger.pending, self.sweep_id):
            self._start(trial, plan)
        stopped = asyncio.create_task(self._stop.wait())
        wall = asyncio.create_task(self._wall_budget(plan))
        exhausted = False
        try:
            while True:
                if self._refusals >= MAX_REFUSALS:
                    return f"its last {self._refusals} trials were refused: {self._refused}"
                hours = self._gpu_seconds / 3600
                if not exhausted and plan.max_gpu_hours and hours >= plan.max_gpu_hours:
                    exhausted = True
                    self._budget = (
                        f"its GPU-hour budget is spent ({hours:.3g} of {plan.max_gpu_hours:g})"
                    )
                while (
                    not (exhausted or self._stop.is_set() or self._refusals >= MAX_REFUSALS)
                    and len(self._active) < plan.max_parallel
                ):
                    try:
                        trial = await asyncio.to_thread(self.ledger.ask, self.sweep_id)
                    except ResourceExhaustedError:
                        exhausted = True
                        break
                    self._changed(self.sweep_id)
                    self._start(trial, plan)
                if not self._active:
                    return ""
                waiting: list[asyncio.Future[Any]] = list(self._active.values())
                if not self._stop.is_set():
                    waiting.append(stopped)
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            wall.cancel()

    async def _wall_budget(self, plan: Plan) -> None:
        """At the end of its wall-time budget the sweep stops, its running trials cancelled."""
        if plan.max_wall_seconds is None:
            return
        created = await asyncio.to_thread(self.ledger.created, self.sweep_id)
        await asyncio.sleep(max(0.0, created + plan.max_wall_seconds - time.time()))
        self._budget = f"its wall-time budget of {plan.max_wall_seconds} s is spent"
        await self.stop(f"sweep stopped: {self._budget}")

    async def stop(self, reason: str) -> None:
        """Make no more trials, and cancel the jobs of the running ones (each trial fails
        once its job has ended; a trial still being submitted cancels its job itself)."""
        self._reason = reason
        self._stop.set()
        for job_id in list(self._job_of.values()):
            with contextlib.suppress(ArcError):
                await self.jobs.cancel(job_id, reason)

    async def _write(self, call: Callable[..., object], *args: object) -> None:
        await asyncio.to_thread(call, self.sweep_id, *args)
        self._changed(self.sweep_id)

    def _start(self, trial: Trial, plan: Plan) -> None:
        task = asyncio.create_task(self._trial(trial, plan), name=trial.request_id)
        self._active[trial.number] = task
        task.add_done_callback(lambda _: self._active.pop(trial.number, None))

    async def _trial(self, trial: Trial, plan: Plan) -> None:
        assert plan.base is not None
        # Named by the sweep (TRIAL_PREFIX: no one else can hold the name first); an
        # ablation's trial by its arm and seed.
        if ARM in trial.params:
            experiment_id = f"{self.sweep_id}-{trial.params[ARM]}-s{trial.params[SEED]}"
        else:
            experiment_id = f"{self.sweep_id}-t{trial.number}"
        try:
            made = space.apply(plan.base, plan.changes(trial.params), experiment_id=experiment_id)
            earlier = None if plan.repeat or trial.job_id else self.jobs.completed_like(made)
            if earlier is not None:  # trained before: its result, not a second training
                logger.info(
                    "sweep %s trial %d is %s again", self.sweep_id, trial.number, earlier.job_id
                )
                await self._write(self.ledger.attach, trial.number, earlier.job_id)
                value, state = outcome(earlier, plan.objective)
                await self._write(self.ledger.tell, trial.number, value, state)
                return
            job = await self._submit(made, trial, plan)
        except ArcError as exc:  # refused by governance: the trial failed
            logger.warning("sweep %s trial %d refused: %s", self.sweep_id, trial.number, exc)
            self._refusals += 1
            self._refused = str(exc)
            await self._write(self.ledger.tell, trial.number, None, TrialState.FAIL)
            return
        self._refusals = 0
        self._job_of[trial.number] = job.job_id
        try:
            if not trial.job_id:
                await self._write(self.ledger.attach, trial.number, job.job_id)
            if self._stop.is_set():  # stopped while it was being submitted
                with contextlib.suppress(ArcError):
                    await self.jobs.cancel(job.job_id, self._reason)
            await self._follow(trial, plan, job.job_id)
            ended = await self.jobs.wait(job.job_id)
            value, state = outcome(ended, plan.objective)
            used = gpu_seconds(ended)
            self._gpu_seconds += used
            await self._write(self.ledger.tell, trial.number, value, state, used)
        finally:
            self._job_of.pop(trial.number, None)

    async def _submit(self, spec: ExperimentSpec, trial: Trial, plan: Plan) -> JobRecord:
        """The trial's job. While the caller runs as many jobs as it may, or governance
        cannot be reached, the trial waits and asks again under its request id; any
        other refusal (a policy, a budget) fails it."""
        delay = 1.0
        while True:
            try:
                return await self.jobs.submit(spec, request_id=trial.request_id, caller=plan.caller)
            except (ResourceExhaustedError, UnavailableError, DeadlineExceededError) as exc:
                waits = (
                    not isinstance(exc, ResourceExhaustedError) or exc.field == "concurrent_jobs"
                )
                if self._stop.is_set() or not waits:
                    raise
                logger.info("sweep %s trial %d waits: %s", self.sweep_id, trial.number, exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=delay)
                delay = min(delay * 2, MAX_SUBMIT_WAIT)

    async def _follow(self, trial: Trial, plan: Plan, job_id: str) -> None:
        """Each epoch's objective to the ledger; a pruned trial's job is stopped."""
        async for metric in self.jobs.metrics(job_id, plan.objective):
            # A NaN is the trainer's divergence rule's to stop, not the pruner's.
            if not math.isfinite(metric.value):
                continue
            reason = await asyncio.to_thread(
                self.ledger.report, self.sweep_id, trial.number, metric.epoch, metric.value
            )
            self._changed(self.sweep_id)
            if reason:
                logger.info("sweep %s trial %d %s", self.sweep_id, trial.number, reason)
                await self.jobs.prune(job_id, reason)
                return
