"""Placement: the dispatch pass over the queue, leases, and starting each kind's work.

A job that cannot be placed does not block smaller ones behind it from using a GPU that
fits them (backfill): a pass looks at one job per shape of GPU request, in queue order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from arc_common.errors import (
    AlreadyExistsError,
    ArcError,
    FailedPreconditionError,
    ResourceExhaustedError,
    UnavailableError,
)
from arc_common.models import DecisionOutcome, JobState
from services.scheduler.checks import GovernanceGate
from services.scheduler.context import Context
from services.scheduler.follow import Follower
from services.scheduler.kinds import CallKind, RunKind
from services.scheduler.lifecycle import Lifecycle, now, result_of
from services.scheduler.nodes import NodeState
from services.scheduler.prepared import PreparedRuns
from services.scheduler.queue import Shape, shape
from services.scheduler.store import JobRecord

logger = logging.getLogger(__name__)


class Dispatcher:
    def __init__(
        self,
        ctx: Context,
        lifecycle: Lifecycle,
        prepared: PreparedRuns,
        follower: Follower,
        gate: GovernanceGate,
    ) -> None:
        self._ctx = ctx
        self._life = lifecycle
        self._prepared = prepared
        self._follower = follower
        self._gate = gate
        # One pass at a time: two would race for the same job's lease.
        self._pass = asyncio.Lock()

    async def loop(self) -> None:
        ctx = self._ctx
        while True:
            # asyncio.timeout, not wait_for: wait_for can swallow a cancel that comes as
            # the wake does, and close() would wait on this loop forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ctx.settings.dispatch_interval_seconds):
                    await ctx.wake.wait()
            ctx.wake.clear()
            try:
                await self.dispatch_pass()
            except Exception:
                logger.exception("dispatch pass failed")

    async def dispatch_pass(self) -> None:
        async with self._pass:
            await self._dispatch_pass()

    async def _dispatch_pass(self) -> None:
        ctx = self._ctx
        blocked: dict[Shape, str] = {}
        current = ctx.clock()
        if not ctx.nodes.up():
            return
        # In dispatch order, until every shape still queued is blocked: a long queue of
        # jobs that cannot start costs one look per shape, not one per job.
        for job_id in ctx.queue.in_order():
            if len(blocked) >= ctx.queue.shape_count:
                break
            job = ctx.jobs[job_id]
            if job.state is not JobState.QUEUED or job.not_before > current:
                continue
            wanted = shape(job)
            if wanted in blocked:
                continue
            if job.approval and not await self._approved(job):
                continue
            reason = await self._try_place(job)
            if reason:
                blocked[wanted] = reason
                await self._prepared.prepare(job)
        ctx.queue.set_blocked(blocked)

    async def _approved(self, job: JobRecord) -> bool:
        """A job waiting for an operator: asked again under its pending request id."""
        if not self._gate.enabled:
            return True
        try:
            decision = await self._gate.check(
                self._ctx.kinds.of(job),
                job.spec,
                job.payload,
                caller=job.caller,
                dry_run=False,
                request_id=job.approval,
            )
        except UnavailableError:
            return False
        except ArcError as exc:
            await self._life.set_state(
                job, JobState.FAILED, f"not approved: {exc}", error_message=str(exc)
            )
            return False
        if decision.outcome is DecisionOutcome.ALLOWED:
            job.approval = ""
            await self._ctx.save(job)
            return True
        return False

    async def _try_place(self, job: JobRecord) -> str:
        """Launch ``job`` on the first machine with room; otherwise say why it waits."""
        ctx = self._ctx
        reasons = []
        request_id = f"{job.job_id}:attempt-{job.attempt}"
        for node in ctx.nodes.up():
            try:
                lease = await node.client.acquire(
                    job.job_id,
                    job.spec.gpu_allocation,
                    ttl_seconds=ctx.settings.lease_ttl_seconds,
                    request_id=request_id,
                )
            except ResourceExhaustedError as exc:
                reasons.append(f"{node.name}: {exc.message}")
                continue
            except UnavailableError as exc:
                ctx.nodes.failed(node, exc)
                continue
            except AlreadyExistsError as exc:
                # The machine holds this attempt's id for another body (its lease TTL
                # setting changed across a restart, say): the next attempt has a new id.
                await self._life.requeue(job, f"{node.name} refused the attempt's id: {exc}")
                return ""
            except ArcError as exc:
                await self._life.set_state(
                    job, JobState.FAILED, f"cannot be placed: {exc}", error_message=str(exc)
                )
                return ""
            node.gpus_time = 0.0
            async with ctx.lock:
                if job.state is not JobState.QUEUED:  # cancelled meanwhile
                    with contextlib.suppress(ArcError):
                        await node.client.release(lease)
                    return ""
                self._life.dequeue(job)
                await self._life.set_state(
                    job,
                    JobState.STARTING,
                    f"GPUs {lease.gpu_indices} leased on {node.name}",
                    node=node.name,
                    lease=lease,
                    start_time=now(),
                    run_id="",
                    run_sequence=0,
                )
            await self.launch(job, node)
            return ""
        if len(reasons) == 1:
            return reasons[0].split(": ", 1)[1] if len(ctx.nodes) == 1 else reasons[0]
        return " | ".join(reasons) or "no machine is up"

    async def launch(self, job: JobRecord, node: NodeState) -> None:
        """The leased job's work starts as its kind says."""
        kind = self._ctx.kinds.of(job)
        if isinstance(kind, CallKind):
            task = asyncio.create_task(self._call(kind, job, node), name=f"call-{job.job_id}")
            self._ctx.watchers[job.job_id] = task
        else:
            await self._start_run(job, node)

    async def relaunch(self, job: JobRecord) -> None:
        """After a restart, a job that was leased but whose run had not begun."""
        node = self._ctx.nodes.get(job.node)
        if node is None or job.lease is None:
            await self._life.requeue(job, "restarted before its run began")
            return
        await self._start_run(job, node)

    async def _start_run(self, job: JobRecord, node: NodeState) -> None:
        assert job.lease is not None
        kind = self._ctx.kinds.of(job)
        assert isinstance(kind, RunKind)
        config = kind.run_config(job, list(job.lease.gpu_indices))
        try:
            run = await self._prepared.activate(job, node) or await node.client.start_run(
                config, job.lease, request_id=f"{job.job_id}:attempt-{job.attempt}"
            )
        except UnavailableError as exc:
            self._ctx.nodes.failed(node, exc)
            await self._life.requeue(job, f"{node.name} unreachable while starting: {exc}")
            return
        except FailedPreconditionError as exc:
            await self._life.requeue(job, f"lease went stale before the start: {exc}")
            return
        except ArcError as exc:
            await self._life.release(job)
            await self._life.set_state(
                job,
                JobState.FAILED,
                f"the executor refused the job: {exc}",
                error_message=str(exc),
            )
            return
        job.run_id = run.run_id
        await self._ctx.save(job)
        if job.cancel_requested:
            with contextlib.suppress(ArcError):
                await node.client.cancel_run(run.run_id, job.cancel_requested)
        self._follower.watch(job)

    async def _call(self, kind: CallKind, job: JobRecord, node: NodeState) -> None:
        """A kind whose work is one call: running while it is awaited."""
        assert job.lease is not None
        await self._life.set_state(job, JobState.RUNNING, f"{kind.name} on {node.name}")
        started = self._ctx.clock()
        try:
            result = await kind.execute(
                job, node.client, job.lease, request_id=f"{job.job_id}:attempt-{job.attempt}"
            )
        except asyncio.CancelledError:
            # CancelJob asked first; otherwise the scheduler is closing, and the job stays
            # RUNNING in the store so that the next start does it again.
            if job.cancel_requested:
                await self._life.release(job)
                reason = job.cancel_requested
                await self._life.set_state(job, JobState.CANCELLED, reason, error_message=reason)
                self._ctx.event(job, result=result_of(job))
            raise
        except ArcError as exc:
            await self._life.run_ended(job, JobState.FAILED, str(exc), None, None)
            return
        finally:
            if self._ctx.watchers.get(job.job_id) is asyncio.current_task():
                del self._ctx.watchers[job.job_id]
        if not result.duration_seconds:
            result = result.model_copy(update={"duration_seconds": self._ctx.clock() - started})
        await self._life.run_ended(job, JobState.COMPLETED, "completed", result, None)
