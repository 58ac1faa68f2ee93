"""Following a job's executor run: its events become the job's, its end the job's end."""

from __future__ import annotations

import asyncio
import contextlib
import functools

from arc_common import packed
from arc_common.errors import ArcError, NotFoundError, Status, UnavailableError
from arc_common.models import (
    TERMINAL_STATES,
    CheckpointInfo,
    ExperimentResult,
    JobState,
    PackedMetrics,
    RunEndCause,
    RunEvent,
)
from services.scheduler.context import Context
from services.scheduler.lifecycle import Lifecycle
from services.scheduler.pruning import MedianPruner
from services.scheduler.store import JobRecord


def merge_checkpoints(
    result: ExperimentResult | None, checkpoint: CheckpointInfo
) -> list[CheckpointInfo]:
    kept = [c for c in (result.checkpoints if result else []) if c.kind is not checkpoint.kind]
    return [*kept, checkpoint]


class Follower:
    def __init__(self, ctx: Context, lifecycle: Lifecycle, pruner: MedianPruner) -> None:
        self._ctx = ctx
        self._life = lifecycle
        self._pruner = pruner

    def watch(self, job: JobRecord) -> None:
        task = asyncio.create_task(self._follow(job, job.run_id), name=f"watch-{job.job_id}")
        self._ctx.watchers[job.job_id] = task
        task.add_done_callback(functools.partial(self._unwatch, job.job_id))

    def _unwatch(self, job_id: str, task: asyncio.Task[None]) -> None:
        if self._ctx.watchers.get(job_id) is task:
            del self._ctx.watchers[job_id]

    async def _follow(self, job: JobRecord, run_id: str) -> None:
        ctx = self._ctx
        delay = 0.2
        while job.run_id == run_id and job.state not in TERMINAL_STATES:
            node = ctx.nodes.get(job.node)
            if node is None:
                await self._life.requeue(job, f"its machine {job.node} is no longer configured")
                return
            try:
                async for event in node.client.events(run_id, job.run_sequence):
                    await self._on_event(job, event)
                    delay = 0.2
                    if job.run_id != run_id or job.state in TERMINAL_STATES:
                        return
                run = await node.client.get_run(run_id)
                if run.state in TERMINAL_STATES:  # the stream ended before we saw the end
                    await self._life.run_ended(
                        job,
                        run.state,
                        run.error_message,
                        run.result,
                        run.end_cause,
                        failure=run.failure,
                    )
                    return
            except NotFoundError:
                await self._life.requeue(job, f"{job.node} lost run {run_id}")
                return
            except ArcError as exc:
                if isinstance(exc, UnavailableError) or exc.status == Status.UNAVAILABLE:
                    ctx.nodes.failed(node, exc)
                if ctx.nodes.down_longer_than(node, ctx.settings.node_down_seconds):
                    await self._life.requeue(job, f"{job.node} stopped answering: {exc}")
                    return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _on_event(self, job: JobRecord, event: RunEvent) -> None:
        ctx = self._ctx
        job.run_sequence = event.sequence
        source = event.sequence
        if event.metrics is not None:
            if event.metrics.count:  # one stored event, numbered as its metrics
                ctx.event(
                    job, span=event.metrics.count, metrics=event.metrics, source_sequence=source
                )
                await self._maybe_prune(job, event.metrics)
        elif event.checkpoint is not None:
            ctx.event(job, checkpoint=event.checkpoint, source_sequence=source)
            job.result = (job.result or ExperimentResult()).model_copy(
                update={"checkpoints": merge_checkpoints(job.result, event.checkpoint)}
            )
        elif event.result is not None:
            job.result = event.result
        elif event.devices_released is not None and job.state is JobState.RUNNING:
            # Only its last checkpoint write is left: the GPUs go to the next job now.
            await self._life.release(job)
            job.lease_released = True
            await ctx.save(job)
            ctx.wake.set()
        elif event.state_change is not None and event.state_change.state is not None:
            change = event.state_change
            if change.state is JobState.RUNNING and job.state is JobState.STARTING:
                await self._life.set_state(job, JobState.RUNNING, change.reason)
            elif change.state in TERMINAL_STATES:
                await self._life.run_ended(
                    job,
                    change.state,
                    change.reason,
                    job.result,
                    change.cause,
                    failure=change.failure,
                )

    async def _maybe_prune(self, job: JobRecord, metrics: PackedMetrics) -> None:
        rule = job.spec.early_stopping
        if not rule.median_pruning:
            return  # the batch is not even opened
        for metric in packed.open_batch(metrics).metrics:
            if metric.name != rule.monitor or job.cancel_requested:
                continue
            reason = self._pruner.observe(
                job.spec.cycle_id, job.job_id, metric.epoch, metric.value, rule
            )
            if reason:
                await self.stop(job, reason, RunEndCause.PRUNED)

    async def stop(self, job: JobRecord, reason: str, cause: RunEndCause) -> None:
        """Ask the job's run to stop; it ends as ``cause`` says once the run has ended."""
        job.cancel_requested, job.stop_cause = reason, cause
        await self._ctx.save(job)
        node = self._ctx.nodes.get(job.node)
        if node is not None and job.run_id:
            with contextlib.suppress(ArcError):
                await node.client.cancel_run(job.run_id, reason, prune=cause is RunEndCause.PRUNED)
