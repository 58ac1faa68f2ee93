"""Trainers prepared ahead: the first queued job of its shape waiting for GPUs that running
jobs hold gets its trainer started on the machine (data opened, model built in host
memory, no GPU touched), so it trains the moment the GPUs come."""

from __future__ import annotations

import contextlib
import logging
import math

from arc_common.errors import (
    AbortedError,
    ArcError,
    DeadlineExceededError,
    ResourceExhaustedError,
    UnavailableError,
)
from arc_common.models import JobState, Run
from services.scheduler.context import Context
from services.scheduler.kinds import RunKind
from services.scheduler.nodes import NodeState
from services.scheduler.store import JobRecord

logger = logging.getLogger(__name__)


class PreparedRuns:
    """Which queued job has a prepared run on which machine (mirrors the jobs'
    ``prepared_run_id``/``prepared_node``, changed only here), and when PrepareRun may be
    asked again for a job (inf: it was refused)."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._on: dict[str, str] = {}
        self._after: dict[str, float] = {}

    def load(self, job: JobRecord) -> None:
        if job.prepared_run_id:
            self._on[job.job_id] = job.prepared_node

    def unqueued(self, job: JobRecord) -> None:
        """The job left the queue: its next PrepareRun, if any, waits for nothing."""
        self._after.pop(job.job_id, None)

    async def prepare(self, job: JobRecord) -> None:
        ctx = self._ctx
        limit = ctx.settings.prepared_per_node
        kind = ctx.kinds.of(job)
        if (
            limit <= 0
            or not ctx.jobs.active_count
            or job.prepared_run_id
            or not isinstance(kind, RunKind)
            or job.approval
            or self._after.get(job.job_id, 0.0) > ctx.clock()
        ):
            return
        node = next(iter(ctx.nodes.up()), None)
        if node is None or list(self._on.values()).count(node.name) >= limit:
            return
        try:
            run = await node.client.prepare_run(
                kind.run_config(job, []),
                request_id=f"{job.job_id}:attempt-{job.attempt}:prepared",
            )
        except (
            UnavailableError,
            DeadlineExceededError,
            ResourceExhaustedError,
            AbortedError,
        ) as exc:
            # Perhaps prepared all the same (a lost reply): asked again with the same
            # request id, the executor answers with that run.
            retry = ctx.settings.prepare_retry_seconds
            self._after[job.job_id] = ctx.clock() + retry
            logger.warning(
                "job %s: PrepareRun unanswered (%s); asked again in %.0f s", job.job_id, exc, retry
            )
            return
        except ArcError as exc:
            self._after[job.job_id] = math.inf
            logger.warning("job %s: no prepared run (%s); it will start cold", job.job_id, exc)
            return
        self._after.pop(job.job_id, None)
        job.prepared_run_id, job.prepared_node = run.run_id, node.name
        self._on[job.job_id] = node.name
        if job.state is not JobState.QUEUED:  # placed or cancelled meanwhile
            await self.drop(job)
            return
        await ctx.save(job)
        logger.info("job %s: trainer prepared ahead on %s", job.job_id, node.name)

    def forget(self, job: JobRecord) -> tuple[str, str]:
        """Clear the job's prepared run (used or not): its run id and machine."""
        taken = job.prepared_run_id, job.prepared_node
        job.prepared_run_id = job.prepared_node = ""
        self._on.pop(job.job_id, None)
        return taken

    async def drop(self, job: JobRecord) -> None:
        """Cancel the job's prepared run (it was not used) and forget it."""
        run_id, name = self.forget(job)
        node = self._ctx.nodes.get(name)
        if run_id and node is not None:
            with contextlib.suppress(ArcError):  # gone already (an executor restart)
                await node.client.cancel_run(run_id, "prepared run not used")

    async def activate(self, job: JobRecord, node: NodeState) -> Run | None:
        """The job's prepared run, given its lease; None when there is none to use (the
        caller starts one cold)."""
        assert job.lease is not None
        if job.prepared_run_id and job.prepared_node == node.name:
            run_id = job.prepared_run_id
            try:
                run = await node.client.activate_run(
                    run_id, job.lease, request_id=f"{job.job_id}:attempt-{job.attempt}:activate"
                )
            except ArcError as exc:
                logger.warning("job %s: prepared run %s not used: %s", job.job_id, run_id, exc)
            else:
                self.forget(job)
                return run
        if job.prepared_run_id:
            await self.drop(job)
        return None
