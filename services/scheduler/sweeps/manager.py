"""Sweeps as a resource: created (checked whole first), read, listed, cancelled, and
driven while the scheduler runs; a scheduler that starts again takes up every sweep that
was running. No grpc here: the servicer is a thin layer over this."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from optuna.exceptions import DuplicatedStudyError
from optuna.trial import TrialState

from arc_common import packed
from arc_common.errors import (
    AlreadyExistsError,
    ArcError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
)
from arc_common.models import ExperimentSpec, MetricResult, Tool
from services.scheduler.core import Caller, Scheduler, Submission
from services.scheduler.jobs import content_hash
from services.scheduler.store import JobRecord
from services.scheduler.sweeps import space
from services.scheduler.sweeps.driver import (
    CANCELLED,
    COMPLETED,
    RUNNING,
    Jobs,
    SweepDriver,
    outcome,
)
from services.scheduler.sweeps.ledger import SweepLedger, Trial, best_of
from services.scheduler.sweeps.plan import Plan

logger = logging.getLogger(__name__)

SERVICE = Caller(name="sweeps", service=True)  # cancels the trials of a cancelled sweep
CANCEL_WAIT = 30.0  # seconds CancelSweep waits for the trials' jobs to end
MAX_SUGGESTIONS = 64
MAX_PLAN_BYTES = 64 * 1024  # each trial's record repeats the space: a bound on the journal
MAX_EPOCH = 10_000


class SchedulerJobs:
    """A sweep's trials as the scheduler's jobs, submitted as the sweep's caller."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler

    async def submit(self, spec: ExperimentSpec, *, request_id: str, caller: str) -> JobRecord:
        [job] = await self.scheduler.submit(
            [Submission(spec=spec, request_id=request_id, sweep_trial=True)], caller=caller
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

    def completed_like(self, spec: ExperimentSpec) -> JobRecord | None:
        return self.scheduler.completed_like(spec)

    def completed_training(self, data_path: str) -> list[JobRecord]:
        return self.scheduler.completed_training(data_path)

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


def _check_owner(view: SweepView, caller: Caller, what: str) -> None:
    if not (caller.operator or caller.service or caller.name == view.plan.caller):
        raise PermissionDeniedError(
            f"sweep {view.sweep_id} is {view.plan.caller!r}'s; {caller.name!r} may {what} "
            "only its own sweeps",
            field="sweep_id",
        )


def _any_running(view: SweepView) -> bool:
    return any(t.state is TrialState.RUNNING for t in view.trials)


@dataclass(frozen=True)
class SweepView:
    sweep_id: str
    plan: Plan
    state: str
    trials: list[Trial]
    best: Trial | None
    reason: str = ""  # why it was cancelled or failed
    importance: dict[str, float] = field(default_factory=dict)  # once it has ended


class SweepManager:
    def __init__(self, ledger: SweepLedger, jobs: Jobs, *, max_running_per_caller: int = 8) -> None:
        self.ledger = ledger
        self.jobs = jobs
        self.max_running_per_caller = max_running_per_caller
        self._drivers: dict[str, tuple[SweepDriver, asyncio.Task[None]]] = {}
        # Per sweep, set (and replaced) at its next change: a watcher holds the one that was
        # current before it read the sweep, so no change slips between read and wait.
        self._news: dict[str, asyncio.Event] = {}
        self._creating = asyncio.Lock()  # one create at a time: the per-caller count holds
        self._importance: dict[str, dict[str, float]] = {}  # of ended sweeps: they stay so

    async def open(self) -> None:
        """Take up every running sweep, and finish the cancel of each cancelled one whose
        trials had not all ended."""
        for sweep_id in await asyncio.to_thread(self.ledger.sweep_ids):
            state = await asyncio.to_thread(self.ledger.state, sweep_id)
            if (await asyncio.to_thread(self.ledger.plan, sweep_id)).by_caller:
                continue  # its caller runs the trials: nothing to take up
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
        # Popped: a sweep nobody watches keeps nothing here.
        news = self._news.pop(sweep_id, None)
        if news is not None:
            news.set()

    def _next_change(self, sweep_id: str) -> asyncio.Event:
        return self._news.setdefault(sweep_id, asyncio.Event())

    async def watch(self, sweep_id: str) -> AsyncIterator[tuple[SweepView, Trial | None]]:
        """The sweep now (with no trial), then the sweep after each trial that changed,
        until it and its trials have ended."""
        news = self._next_change(sweep_id)
        try:
            view = await self.get(sweep_id)
        except NotFoundError:  # nothing is kept for a sweep that does not exist
            if self._news.get(sweep_id) is news:
                del self._news[sweep_id]
            raise
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
        space.check(plan.base, plan.search())
        for index, arm in enumerate(plan.arms):
            space.apply(
                plan.base,
                arm.changes,
                experiment_id=plan.base.experiment_id,
                field=f"arms[{index}].changes",
            )
        if request_id:
            key = hashlib.sha256(f"{caller}\n{request_id}".encode()).hexdigest()[:16]
            sweep_id = f"sweep-{key}"
        else:
            sweep_id = f"sweep-{uuid.uuid4().hex[:16]}"
        plan = plan.model_copy(update={"caller": caller})
        size = len(plan.dump())
        if size > MAX_PLAN_BYTES:
            raise InvalidArgumentError(
                f"sweep: {size} bytes as stored; at most {MAX_PLAN_BYTES}", field="sweep"
            )
        async with self._creating:
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
            if plan.warm_start and not plan.arms:
                added = await asyncio.to_thread(
                    self.ledger.add_priors, sweep_id, self._priors(plan)
                )
                logger.info("sweep %s starts from %d earlier results", sweep_id, added)
        if not plan.by_caller:
            self._drive(sweep_id)
        return sweep_id

    def _priors(self, plan: Plan) -> list[tuple[dict[str, Any], float, str]]:
        """Completed jobs that are points of the plan's space: the same spec as its base
        but at the parameters' paths, where their values are the point."""
        assert plan.base is not None
        out = []
        paths = [parameter.path for parameter in plan.parameters]
        for job in self.jobs.completed_training(plan.base.dataset.data_path):
            params = {path: space.value_at(job.spec, path) for path in paths}
            value, state = outcome(job, plan.objective)
            if value is None or state is not TrialState.COMPLETE or None in params.values():
                continue
            try:
                same = space.apply(plan.base, params, experiment_id=job.spec.experiment_id)
            except InvalidArgumentError:
                continue
            if content_hash(same) == content_hash(job.spec):
                out.append((params, value, job.job_id))
        return out

    # --- sweeps their caller drives: ask and tell ------------------------------------

    async def _caller_sweep(self, sweep_id: str, caller: Caller, what: str) -> SweepView:
        view = await self.get(sweep_id)
        _check_owner(view, caller, what)
        if not view.plan.by_caller:
            raise FailedPreconditionError(
                f"sweep {sweep_id} runs its own trials; SuggestTrials and ReportTrial are for "
                "sweeps created with driven_by_caller",
                field="sweep_id",
            )
        return view

    async def suggest(
        self, sweep_id: str, count: int, caller: Caller, *, request_id: str = ""
    ) -> list[Trial]:
        """``count`` new trials for the caller to run; the same request id again gives the
        same trials. At most ``max_parallel`` trials are out unreported at once."""
        if not 1 <= count <= MAX_SUGGESTIONS:
            raise InvalidArgumentError(
                f"count must be 1..{MAX_SUGGESTIONS} (got {count})", field="count"
            )
        view = await self._caller_sweep(sweep_id, caller, "ask for trials of")
        tag = f"suggest:{request_id}" if request_id else ""
        if tag and (earlier := [t for t in view.trials if t.tag == tag]):
            return earlier
        if view.state != RUNNING:
            raise FailedPreconditionError(f"sweep {sweep_id} is {view.state}", field="sweep_id")
        out = sum(t.state is TrialState.RUNNING for t in view.trials)
        if out + count > view.plan.max_parallel:
            raise ResourceExhaustedError(
                f"sweep {sweep_id} has {out} trials out and max_parallel "
                f"{view.plan.max_parallel}: report some first",
                field="count",
            )

        def ask() -> list[Trial]:
            made: list[Trial] = []
            with contextlib.suppress(ResourceExhaustedError):  # max_trials: what is left
                for _ in range(count):
                    made.append(self.ledger.ask(sweep_id, tag=tag))
            return made

        made = await asyncio.to_thread(ask)
        if not made:
            raise ResourceExhaustedError(
                f"sweep {sweep_id} has made its {view.plan.max_trials} trials", field="count"
            )
        self._changed(sweep_id)
        return made

    async def report(
        self,
        sweep_id: str,
        number: int,
        caller: Caller,
        *,
        state: TrialState,
        value: float | None,
        epoch: int = 0,
    ) -> tuple[Trial, str]:
        """A trial's value at ``epoch`` (state RUNNING: why the pruner would stop it, or
        "") or its end (COMPLETE with its value, PRUNED or FAIL). Reporting the same end
        again changes nothing."""
        view = await self._caller_sweep(sweep_id, caller, "report trials of")
        trial = next((t for t in view.trials if t.number == number), None)
        if trial is None:
            raise NotFoundError(f"sweep {sweep_id} has no trial {number}", field="number")
        if value is not None and not math.isfinite(value):
            raise InvalidArgumentError(f"value must be finite (got {value})", field="value")
        if not 0 <= epoch <= MAX_EPOCH:
            raise InvalidArgumentError(f"epoch must be 0..{MAX_EPOCH} (got {epoch})", field="epoch")
        if state is TrialState.COMPLETE and value is None:
            raise InvalidArgumentError("a COMPLETE trial needs its value", field="value")
        if trial.state is not TrialState.RUNNING:
            if trial.state is state and (state is not TrialState.COMPLETE or trial.value == value):
                return trial, ""
            raise FailedPreconditionError(
                f"trial {number} already ended {trial.state.name}", field="number"
            )
        reason = ""
        if state is TrialState.RUNNING:
            if value is None:
                raise InvalidArgumentError("an intermediate report needs its value", field="value")
            reason = await asyncio.to_thread(self.ledger.report, sweep_id, number, epoch, value)
        else:
            await asyncio.to_thread(self.ledger.tell, sweep_id, number, value, state)
            now = await self.get(sweep_id)
            if len(now.trials) >= now.plan.max_trials and not _any_running(now):
                await asyncio.to_thread(self.ledger.set_state, sweep_id, COMPLETED)
        self._changed(sweep_id)
        now = await self.get(sweep_id)
        return next(t for t in now.trials if t.number == number), reason

    async def get(self, sweep_id: str) -> SweepView:
        def read() -> SweepView:
            state = self.ledger.state(sweep_id)
            if state != RUNNING and sweep_id not in self._importance:  # an ended one's
                self._importance[sweep_id] = self.ledger.importance(sweep_id)
            plan, trials = self.ledger.plan(sweep_id), self.ledger.trials(sweep_id)
            return SweepView(
                sweep_id,
                plan,
                state,
                trials,
                best_of(trials, plan.direction),
                self.ledger.reason(sweep_id),
                self._importance.get(sweep_id, {}),
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

    async def cancel(self, sweep_id: str, caller: Caller, reason: str) -> SweepView:
        view = await self.get(sweep_id)
        _check_owner(view, caller, "cancel")
        if view.state != RUNNING:
            raise FailedPreconditionError(
                f"sweep {sweep_id} is {view.state}; nothing to cancel", field="sweep_id"
            )
        # Written first: a scheduler that restarts now finishes the cancel (``open``).
        reason = reason or "sweep cancelled"
        await asyncio.to_thread(self.ledger.set_state, sweep_id, CANCELLED, reason)
        self._changed(sweep_id)
        if view.plan.by_caller:  # the caller's trials not reported fail
            for trial in await asyncio.to_thread(self.ledger.pending, sweep_id):
                await asyncio.to_thread(
                    self.ledger.tell, sweep_id, trial.number, None, TrialState.FAIL
                )
            self._changed(sweep_id)
        driven = self._drivers.get(sweep_id)
        if driven is not None:
            driver, task = driven
            await driver.stop(reason)
            with contextlib.suppress(TimeoutError):  # the jobs' runs stop within seconds
                await asyncio.wait_for(asyncio.shield(task), timeout=CANCEL_WAIT)
        elif not view.plan.by_caller:  # no driver (it died): its trials' jobs, by hand
            for trial in await asyncio.to_thread(self.ledger.pending, sweep_id):
                if trial.job_id:
                    with contextlib.suppress(ArcError):
                        await self.jobs.cancel(trial.job_id, reason)
                await asyncio.to_thread(
                    self.ledger.tell, sweep_id, trial.number, None, TrialState.FAIL
                )
            self._changed(sweep_id)
        return await self.get(sweep_id)
