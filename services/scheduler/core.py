"""The scheduler: experiments, the priority queue, dispatch over many machines, retries,
cancellation, pruning and job events. No grpc here.

``Scheduler`` composes parts that each do one thing (admission, the queue, dispatch,
prepared runs, following runs, pruning, views) over one shared ``Context``; every change of
a job's state goes through ``Lifecycle``, which commits before anyone is told.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

from arc_common.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    PermissionDeniedError,
    UnavailableError,
)
from arc_common.eventlog import EventLog
from arc_common.models import (
    TERMINAL_STATES,
    Decision,
    Experiment,
    ExperimentSpec,
    JobEvent,
    JobState,
    NoveltyClass,
    RunEndCause,
    SchedulerStatus,
    Tool,
)
from services.scheduler import history, mirror
from services.scheduler.admission import (
    MAX_REASON_LENGTH,
    Admission,
    Submission,
    check_length,
)
from services.scheduler.checks import GovernanceGate
from services.scheduler.context import Clock, Context
from services.scheduler.dispatch import Dispatcher
from services.scheduler.experiments import ExperimentMaker, RequestBook
from services.scheduler.follow import Follower
from services.scheduler.history import MAX_LIMIT as MAX_HISTORY
from services.scheduler.history import History
from services.scheduler.jobs import content_hash
from services.scheduler.kinds import CallKind, JobKind, default_kinds
from services.scheduler.lifecycle import Lifecycle
from services.scheduler.nodes import Nodes
from services.scheduler.ports import GovernanceClient, NodeClient
from services.scheduler.prepared import PreparedRuns
from services.scheduler.pruning import MedianPruner
from services.scheduler.reveals import Reveals
from services.scheduler.settings import SchedulerSettings
from services.scheduler.store import JobRecord, Store
from services.scheduler.views import Views

__all__ = ["Caller", "Scheduler", "Submission"]

logger = logging.getLogger(__name__)
HISTORY_METRIC = re.compile(r"(train|val)_[a-z_]{1,64}")


@dataclass(frozen=True)
class Caller:
    """Who asks: the name in tokens.json and what its role may do."""

    name: str
    operator: bool = False
    service: bool = False


class Scheduler:
    def __init__(
        self,
        settings: SchedulerSettings,
        *,
        store: Store,
        events: EventLog[JobEvent],
        nodes: list[NodeClient],
        governance: GovernanceClient | None,
        clock: Clock = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.events = events
        ctx = self._ctx = Context(
            settings=settings,
            store=store,
            events=events,
            clock=clock,
            nodes=Nodes(nodes, clock),
            kinds=default_kinds(),
        )
        self.jobs = ctx.jobs
        self.nodes = ctx.nodes
        self.kinds = ctx.kinds
        self._gate = GovernanceGate(governance)
        self._prepared = PreparedRuns(ctx)
        self._life = Lifecycle(ctx, self._prepared)
        self._follower = Follower(ctx, self._life, MedianPruner())
        self._dispatcher = Dispatcher(ctx, self._life, self._prepared, self._follower, self._gate)
        self._requests = RequestBook(ctx)
        self._maker = ExperimentMaker(ctx, self._gate, self._requests)
        self._admission = Admission(
            ctx, self._life, self._gate, on_new_experiment=self._maker.spec_files.post
        )
        self._views = Views(ctx)
        self.reveals = Reveals(ctx)
        # The views, as the servicer reads them.
        self.view = self._views.view
        self.queue_position = self._views.queue_position
        self.pending_reason = self._views.pending_reason
        self.job = self._views.job
        self.list_jobs = self._views.list_jobs
        self.experiment = self._views.experiment
        self.available_gpus = ctx.nodes.available_gpus

    def register_kind(self, kind: JobKind) -> None:
        """A new kind of job; before ``open`` when stored jobs may be of it."""
        self._ctx.kinds.register(kind)

    # --- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        """Load the state; the store must be open (the event log shares its database)."""
        ctx = self._ctx
        await self.events.open()
        for spec, digest, created in await self.store.load_experiments():
            ctx.experiments.remember(spec, digest, created)
        self._requests.load(await self.store.load_requests())
        self.reveals.load(await self.store.load_reveals())
        ctx.jobs.seq = await self.store.max_seq()
        resume: list[JobRecord] = []
        orphans: list[JobRecord] = []
        for job in await self.store.load_jobs():
            ctx.jobs.add(job)
            if job.state not in TERMINAL_STATES and job.kind not in ctx.kinds:
                orphans.append(job)
                continue
            self._prepared.load(job)
            if job.state is JobState.QUEUED:
                self._life.enqueue(job)
            elif job.state in (JobState.STARTING, JobState.RUNNING):
                resume.append(job)
        for job in orphans:
            reason = f"no job kind {job.kind!r} is registered in this scheduler"
            logger.error("job %s fails at start: %s", job.job_id, reason)
            await self._life.release(job)
            await self._life.set_state(job, JobState.FAILED, reason, error_message=reason)
        for job in resume:
            last = await self.events.read_last(job.job_id)
            if last is not None:
                job.run_sequence = max(job.run_sequence, last.source_sequence)
            self._resume(job)
        logger.info(
            "scheduler state loaded: %d jobs (%d queued, %d re-attached), %d experiments",
            len(ctx.jobs),
            len(ctx.queue),
            len(resume),
            len(ctx.experiments),
        )
        ctx.tasks += [
            asyncio.create_task(self._dispatcher.loop(), name="dispatch"),
            asyncio.create_task(
                ctx.nodes.probe(self.settings.probe_interval_seconds, ctx.wake), name="node-probe"
            ),
        ]
        ctx.wake.set()

    def _resume(self, job: JobRecord) -> None:
        """A job that was leased or running when the scheduler stopped."""
        ctx = self._ctx
        if isinstance(ctx.kinds.of(job), CallKind):  # cheap to redo; its request id dedupes
            reason = f"scheduler restarted during the {job.kind} job"
            ctx.tasks.append(asyncio.create_task(self._life.requeue(job, reason)))
        elif job.run_id:
            self._follower.watch(job)
        else:
            # The lease may or may not have been granted: the request ids make the launch
            # idempotent, so simply drive it again.
            ctx.tasks.append(asyncio.create_task(self._dispatcher.relaunch(job)))

    async def close(self) -> None:
        ctx = self._ctx
        tasks = [*ctx.tasks, *ctx.watchers.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._maker.spec_files.close()
        await self.events.close()
        await self.store.close()

    async def dispatch_once(self) -> None:
        """One dispatch pass now, besides the loop's (tests, and after a manual change)."""
        await self._dispatcher.dispatch_pass()

    async def write_jsonl(self, events: list[JobEvent]) -> None:
        """The event log's commit hook: state changes mirrored to a JSONL file."""
        await mirror.write_jsonl(self.settings.home, events)

    # --- experiments and submissions ---------------------------------------------------------

    async def create_experiment(
        self, spec: ExperimentSpec, *, caller: str, request_id: str = "", request_digest: str = ""
    ) -> tuple[Experiment, str, Decision | None]:
        """The experiment, the id of an earlier one with identical content, and
        governance's decision (None for a replay)."""
        experiment_id, duplicate, decision = await self._maker.create(
            spec, caller=caller, request_id=request_id, request_digest=request_digest
        )
        return self.experiment(experiment_id), duplicate, decision

    def list_experiments(
        self, *, cycle_id: int, novelty: NoveltyClass | None, state: JobState | None
    ) -> list[Experiment]:
        return self._views.list_experiments(cycle_id=cycle_id, novelty=novelty, state=state)

    async def submit(
        self, submissions: list[Submission], *, caller: str, trusted: bool = False
    ) -> list[JobRecord]:
        return await self._admission.submit(submissions, caller=caller, trusted=trusted)

    async def audit_invalid(
        self, tool: Tool, parameters: dict[str, object], reason: str, *, caller: str
    ) -> None:
        await self._gate.audit_invalid(tool, dict(parameters), reason, caller=caller)

    async def status(self, *, queued_limit: int | None = None) -> SchedulerStatus:
        return await self._views.status(queued_limit=queued_limit)

    # --- cancel and wait ------------------------------------------------------------------

    @staticmethod
    def check_owner(job: JobRecord, caller: Caller) -> None:
        """An agent changes only the jobs it submitted; operators and services any, but a
        job stored without its submitter only an operator."""
        if caller.operator or (job.caller and (caller.service or job.caller == caller.name)):
            return
        owner = f"submitted by {job.caller!r}" if job.caller else "whose submitter is unknown"
        raise PermissionDeniedError(
            f"job {job.job_id} is {owner}; {caller.name!r} may cancel only its own jobs",
            field="job_id",
        )

    async def cancel(
        self,
        job_id: str,
        reason: str,
        *,
        caller: Caller,
        request_id: str = "",
        request_digest: str = "",
        wait: float = 60.0,
    ) -> JobRecord:
        """Ownership first (nothing changes for a caller who may not); a retry under the
        same request id gets the job back, even once it has ended, and asks the run to stop
        again while it has not (the first ask may not have reached its machine)."""
        ctx, method = self._ctx, "CancelJob"
        check_length(reason, "reason", MAX_REASON_LENGTH)
        check_length(request_id, "request_id")
        job = self.job(job_id)
        self.check_owner(job, caller)
        reason = reason or "cancelled"
        if self._requests.replayed(caller.name, method, request_id, request_digest) is None:
            async with ctx.lock:
                replayed = self._requests.replayed(caller.name, method, request_id, request_digest)
                if replayed is None:
                    if job.state in TERMINAL_STATES:
                        raise FailedPreconditionError(
                            f"job {job_id} already ended {job.state.value}; nothing to cancel",
                            field="job_id",
                        )
                    done = self._requests.record(
                        caller.name, method, request_id, request_digest, job_id
                    )
                    if job.state is JobState.QUEUED:
                        await self._life.cancel_queued(job, reason, done)
                        return job
                    job.cancel_requested, job.stop_cause = reason, RunEndCause.CANCELLED
                    await ctx.save(job, also=done)
        if job.state in TERMINAL_STATES or not job.cancel_requested:
            return job
        node = ctx.nodes.get(job.node)
        task = ctx.watchers.get(job_id)
        if isinstance(ctx.kinds.of(job), CallKind) and task is not None:
            task.cancel()
        if job.run_id and node is not None:
            try:
                await node.client.cancel_run(job.run_id, job.cancel_requested)
            except FailedPreconditionError:
                pass  # it ended just now; the follower records how
            except UnavailableError as exc:
                raise UnavailableError(
                    f"cannot reach {job.node} to cancel job {job_id}: {exc}; retry"
                ) from exc
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ctx.jobs.finished(job_id).wait(), timeout=wait)
        return job

    async def govern(
        self, tool: Tool, parameters: dict[str, Any], *, caller: str, request_id: str = ""
    ) -> None:
        """A call that is not a job (creating a sweep), checked by governance as ``tool``."""
        await self._gate.call(tool, parameters, caller=caller, request_id=request_id)

    def history(self, spec: ExperimentSpec, *, limit: int, metric: str) -> History:
        """What the engine knows about ``spec`` (services.scheduler.history)."""
        if not 0 <= limit <= MAX_HISTORY:
            raise InvalidArgumentError(
                f"limit must be 0..{MAX_HISTORY} (got {limit})", field="limit"
            )
        if not HISTORY_METRIC.fullmatch(metric):
            raise InvalidArgumentError(
                f"metric must be a train_ or val_ metric (got {metric!r})", field="metric"
            )
        return history.history(spec, self._ctx.jobs.values(), limit=limit or 10, metric=metric)

    def completed_like(self, spec: ExperimentSpec) -> JobRecord | None:
        """The latest completed training job of an experiment with ``spec``'s content (its
        id aside), or None: what a sweep's trial need not train again."""
        first = self._ctx.experiments.first_with(content_hash(spec))
        done = [
            job
            for job in (self._ctx.jobs.of_experiment(first) if first else [])
            if job.kind == "training" and job.state is JobState.COMPLETED and job.result
        ]
        return max(done, key=lambda job: job.seq, default=None)

    def completed_training(self, data_path: str) -> list[JobRecord]:
        """Completed training jobs on ``data_path``, oldest first (a sweep's priors)."""
        return [
            job
            for job in self._ctx.jobs.values()
            if job.kind == "training"
            and job.state is JobState.COMPLETED
            and job.result is not None
            and job.spec.dataset.data_path == data_path
        ]

    async def prune(self, job_id: str, reason: str) -> None:
        """A sweep's pruner stops a trial while it trains: it ends PRUNED once its run has
        ended. A job not training (queued, stopping, ended) is left as it is."""
        check_length(reason, "reason", MAX_REASON_LENGTH)
        job = self.job(job_id)
        if job.state in (JobState.STARTING, JobState.RUNNING) and not job.cancel_requested:
            await self._follower.stop(job, reason or "pruned", RunEndCause.PRUNED)

    def ended(self, job_id: str) -> bool:
        """The job is terminal and its final state change is in the event log's queue."""
        return self._ctx.jobs.finished(job_id).is_set()

    async def wait(self, job_id: str, seconds: float | None = None) -> JobRecord:
        job = self.job(job_id)
        await asyncio.wait_for(self._ctx.jobs.finished(job.job_id).wait(), timeout=seconds)
        return job
