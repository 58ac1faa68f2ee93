"""Sweeps as a resource: created (checked whole first), read, listed, cancelled, and
driven while the scheduler runs; a scheduler that starts again takes up every sweep that
was running. No grpc here: the servicer is a thin layer over this."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from optuna.exceptions import DuplicatedStudyError
from optuna.trial import TrialState

from arc_common import packed
from arc_common.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    PermissionDeniedError,
    ResourceExhaustedError,
)
from arc_common.models import ExperimentSpec, MetricResult, Tool
from services.scheduler.core import Caller, Scheduler, Submission
from services.scheduler.store import JobRecord
from services.scheduler.sweeps import space
from services.scheduler.sweeps.driver import CANCELLED, RUNNING, Jobs, SweepDriver
from services.scheduler.sweeps.ledger import Plan, SweepLedger, Trial

logger = logging.getLogger(__name__)

SERVICE = Caller(name="sweeps", service=True)  # cancels the trials of a cancelled sweep
CANCEL_WAIT = 30.0  # seconds CancelSweep waits for the trials' jobs to end


class SchedulerJobs:
    """A sweep's trials as the scheduler's jobs, submitted as the sweep's caller."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler

    async def submit(self, spec: ExperimentSpec, *, request_id: str, caller: str) -> JobRecord:
        [job] = await self.scheduler.submit(
            [Submission(spec=spec, request_id=request_id)], caller=caller
        )
        return job

    async def wait(self, job_id: str) -> JobRecord:
        return await self.scheduler.wait(job_id)

    async def cancel(self, job_id: str, reason: str) -> None:
        await self.scheduler.cancel(job_id, reason, caller=SERVICE, wait=0)

    async def metrics(self, job_id: str, name: str) -> AsyncIterator[MetricResult]:
        async for batch in self.scheduler.events.follow_batches(
            job_id, 0, is_finished=lambda: self.scheduler.ended(job_id)
        ):
            for event in batch:
                if event.metrics is not None:  # mostly step losses: opened, not validated
                    for metric in packed.open_batch(event.metrics).metrics:
                        if metric.name == name:
                            yield MetricResult(name=name, value=metric.value, epoch=metric.epoch)
                elif event.metric is not None and event.metric.name == name:
                    yield event.metric

    async def prune(self, job_id: str, reason: str) -> None:
        await self.scheduler.prune(job_id, reason)

    async def authorize(self, plan: Plan, *, caller: str, request_id: str) -> None:
        await self.scheduler.govern(
            Tool.CREATE_SWEEP, governed_parameters(plan), caller=caller, request_id=request_id
        )


def governed_parameters(plan: Plan) -> dict[str, Any]:
    """What governance's create_sweep policy sees (the trials' specs it sees one by one)."""
    assert plan.base is not None
    return {
        "name": plan.name,
        "max_trials": plan.max_trials,
        "max_parallel": plan.max_parallel,
        "sampler": plan.sampler.value,
        "objective": plan.objective,
        "parameters": [parameter.path for parameter in plan.parameters],
        "experiment_id": plan.base.experiment_id,
        "dataset": {"data_path": plan.base.dataset.data_path},
    }


@dataclass(frozen=True)
class SweepView:
    sweep_id: str
    plan: Plan
    state: str
    trials: list[Trial]
    best: Trial | None


class SweepManager:
    def __init__(self, ledger: SweepLedger, jobs: Jobs, *, max_running_per_caller: int = 8) -> None:
        self.ledger = ledger
        self.jobs = jobs
        self.max_running_per_caller = max_running_per_caller
        self._drivers: dict[str, tuple[SweepDriver, asyncio.Task[None]]] = {}
        # Per sweep, set (and replaced) at its next change: a watcher holds the one that was
        # current before it read the sweep, so no change slips between read and wait.
        self._news: dict[str, asyncio.Event] = {}

    async def open(self) -> None:
        """Take up every running sweep, and finish the cancel of each cancelled one whose
        trials had not all ended."""
        for sweep_id in await asyncio.to_thread(self.ledger.sweep_ids):
            state = await asyncio.to_thread(self.ledger.state, sweep_id)
            if state == RUNNING:
                self._drive(sweep_id)
            elif state == CANCELLED:
                pending = await asyncio.to_thread(self.ledger.pending, sweep_id)
                if pending:
                    driver, _ = self._drive(sweep_id)
                    await driver.stop("sweep cancelled")

    async def close(self) -> None:
        """The scheduler stops: the sweeps stay running in the ledger, for the next one."""
        for _, task in self._drivers.values():
            task.cancel()
        for _, task in list(self._drivers.values()):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._drivers.clear()

    def _drive(self, sweep_id: str) -> tuple[SweepDriver, asyncio.Task[None]]:
        driver = SweepDriver(self.ledger, self.jobs, sweep_id, self._changed)
        task = asyncio.create_task(driver.run(), name=f"sweep {sweep_id}")
        task.add_done_callback(lambda done: self._ended(sweep_id, done))
        self._drivers[sweep_id] = (driver, task)
        return driver, task

    def _changed(self, sweep_id: str) -> None:
        news = self._news.pop(sweep_id, None)
        if news is not None:
            news.set()

    def _next_change(self, sweep_id: str) -> asyncio.Event:
        return self._news.setdefault(sweep_id, asyncio.Event())

    async def watch(self, sweep_id: str) -> AsyncIterator[tuple[SweepView, Trial | None]]:
        """The sweep now (with no trial), then the sweep after each trial that changed,
        until it and its trials have ended."""
        news = self._next_change(sweep_id)
        view = await self.get(sweep_id)
        yield view, None
        while view.state == RUNNING or any(t.state is TrialState.RUNNING for t in view.trials):
            await news.wait()
            news = self._next_change(sweep_id)
            now = await self.get(sweep_id)
            before = {trial.number: trial for trial in view.trials}
            changed = [trial for trial in now.trials if before.get(trial.number) != trial]
            for trial in changed:
                yield now, trial
            if not changed and now.state != view.state:
                yield now, None
            view = now

    def _ended(self, sweep_id: str, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("sweep %s stopped: %r", sweep_id, task.exception())
        if self._drivers.get(sweep_id, (None, task))[1] is task:
            self._drivers.pop(sweep_id, None)

    async def create(self, plan: Plan, *, caller: str, request_id: str = "") -> str:
        """A new sweep, driven from now on; the same caller's request id again gives the
        same sweep back."""
        if plan.base is None:
            raise InvalidArgumentError("base_spec is required", field="base_spec")
        space.check(plan.base, plan.parameters)
        if request_id:
            key = hashlib.sha256(f"{caller}\n{request_id}".encode()).hexdigest()[:16]
            sweep_id = f"sweep-{key}"
        else:
            sweep_id = f"sweep-{uuid.uuid4().hex[:16]}"
        plan = plan.model_copy(update={"caller": caller})
        if sweep_id in await self.ids():  # a retry: the sweep its first call made
            if (await asyncio.to_thread(self.ledger.plan, sweep_id)) != plan:
                raise AlreadyExistsError(
                    f"request_id {request_id!r} made another sweep", field="request_id"
                )
            return sweep_id
        running = await asyncio.to_thread(self._running_of, caller)
        if running >= self.max_running_per_caller:
            raise ResourceExhaustedError(
                f"{caller!r} has {running} sweeps running, the most it may; cancel one "
                "or wait for one to end",
                field="sweep",
            )
        await self.jobs.authorize(plan, caller=caller, request_id=request_id)
        try:
            await asyncio.to_thread(self.ledger.create, sweep_id, plan)
        except DuplicatedStudyError:  # the same request twice at once: the other made it
            return sweep_id
        self._drive(sweep_id)
        return sweep_id

    async def get(self, sweep_id: str) -> SweepView:
        def read() -> SweepView:
            return SweepView(
                sweep_id,
                self.ledger.plan(sweep_id),
                self.ledger.state(sweep_id),
                self.ledger.trials(sweep_id),
                self.ledger.best(sweep_id),
            )

        return await asyncio.to_thread(read)

    def _running_of(self, caller: str) -> int:
        return sum(
            1
            for sweep_id in self.ledger.sweep_ids()
            if self.ledger.state(sweep_id) == RUNNING
            and self.ledger.plan(sweep_id).caller == caller
        )

    async def ids(self) -> list[str]:
        """Every sweep's id, oldest first."""
        return await asyncio.to_thread(self.ledger.sweep_ids)

    async def list(self) -> list[SweepView]:
        return [await self.get(sweep_id) for sweep_id in await self.ids()]

    async def cancel(self, sweep_id: str, caller: Caller, reason: str) -> SweepView:
        view = await self.get(sweep_id)
        if not (caller.operator or caller.service or caller.name == view.plan.caller):
            raise PermissionDeniedError(
                f"sweep {sweep_id} is {view.plan.caller!r}'s; {caller.name!r} may cancel only "
                "its own sweeps",
                field="sweep_id",
            )
        if view.state != RUNNING:
            raise FailedPreconditionError(
                f"sweep {sweep_id} is {view.state}; nothing to cancel", field="sweep_id"
            )
        # Written first: a scheduler that restarts now finishes the cancel (``open``).
        await asyncio.to_thread(self.ledger.set_state, sweep_id, CANCELLED)
        self._changed(sweep_id)
        driven = self._drivers.get(sweep_id)
        if driven is not None:
            driver, task = driven
            await driver.stop(reason or "sweep cancelled")
            with contextlib.suppress(TimeoutError):  # the jobs' runs stop within seconds
                await asyncio.wait_for(asyncio.shield(task), timeout=CANCEL_WAIT)
        return await self.get(sweep_id)
