"""A job's changes of state: each is committed before anyone hears of it, and how a run's
end becomes the job's end, a retry or a requeue is decided on its typed cause."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from arc_common.errors import ArcError
from arc_common.models import (
    NOT_RETRIED,
    TERMINAL_STATES,
    ExperimentResult,
    Failure,
    FailureClass,
    JobState,
    JobStateChange,
    RunEndCause,
)
from services.scheduler.context import Context
from services.scheduler.prepared import PreparedRuns
from services.scheduler.store import JobRecord, Write

logger = logging.getLogger(__name__)

# A run that ended for one of these did nothing wrong: the attempt is redone, not counted.
LOST_CAUSES = frozenset({RunEndCause.LOST_LEASE, RunEndCause.EXECUTOR_SHUTDOWN})


def now() -> datetime:
    return datetime.now(UTC)


def result_of(job: JobRecord) -> ExperimentResult:
    base = job.result or ExperimentResult()
    return base.model_copy(
        update={
            "experiment_id": job.experiment_id,
            "job_id": job.job_id,
            "state": job.state,
            "error_message": job.error_message or base.error_message,
        }
    )


class Lifecycle:
    def __init__(self, ctx: Context, prepared: PreparedRuns) -> None:
        self._ctx = ctx
        self._prepared = prepared

    def enqueue(self, job: JobRecord) -> None:
        self._ctx.queue.add(job)

    def dequeue(self, job: JobRecord) -> None:
        self._prepared.unqueued(job)
        self._ctx.queue.remove(job)

    async def set_state(
        self,
        job: JobRecord,
        state: JobState,
        reason: str,
        *,
        also: list[Write] | None = None,
        **updates: Any,
    ) -> None:
        ctx = self._ctx
        previous = job.state
        job.state = state
        for key, value in updates.items():
            setattr(job, key, value)
        ctx.jobs.track(job)
        if state in TERMINAL_STATES:
            job.end_time = now()
            self.dequeue(job)
            if job.prepared_run_id:  # ended while queued: its prepared run goes too
                await self._prepared.drop(job)
        await ctx.save(job, also=also)
        ctx.event(
            job,
            state_change=JobStateChange(
                previous_state=previous, state=state, reason=reason, attempt=job.attempt
            ),
        )
        if state in TERMINAL_STATES:
            ctx.jobs.finished(job.job_id).set()
            ctx.wake.set()

    async def release(self, job: JobRecord) -> None:
        node = self._ctx.nodes.get(job.node)
        if job.lease is None or node is None or job.lease_released:
            return
        try:
            await node.client.release(job.lease)
        except ArcError as exc:  # it expires by itself: the holder stopped renewing it
            logger.warning("could not release lease of %s: %s", job.job_id, exc)
        node.gpus_time = 0.0  # the cached listing is stale now

    async def requeue(self, job: JobRecord, reason: str, *, counts: bool = False) -> None:
        """Back into the queue as a new attempt (a retry with backoff when ``counts``)."""
        settings = self._ctx.settings
        await self.release(job)
        delay = 0.0
        if counts:
            job.retries_used += 1
            delay = min(
                settings.retry_backoff_max_seconds,
                settings.retry_backoff_seconds * 2 ** (job.retries_used - 1),
            )
        job.attempt += 1
        await self.set_state(
            job,
            JobState.QUEUED,
            reason,
            node="",
            run_id="",
            lease=None,
            lease_released=False,
            run_sequence=0,
            not_before=self._ctx.clock() + delay,
        )
        self.enqueue(job)
        self._ctx.wake.set()

    async def cancel_queued(self, job: JobRecord, reason: str, also: list[Write]) -> None:
        await self.set_state(job, JobState.CANCELLED, reason, error_message=reason, also=also)
        self._ctx.event(job, result=result_of(job))

    @staticmethod
    def _halves(job: JobRecord, failure: Failure | None) -> bool:
        """Out of memory, and the spec allows one more try at half the batch size."""
        hyper = job.spec.hyperparameters
        return (
            failure is not None
            and failure.failure_class is FailureClass.OUT_OF_MEMORY
            and hyper.halve_batch_on_oom
            and not job.batch_halved
            and hyper.batch_size > 1
        )

    async def run_ended(
        self,
        job: JobRecord,
        state: JobState,
        reason: str,
        result: ExperimentResult | None,
        cause: RunEndCause | None,
        *,
        failure: Failure | None = None,
    ) -> None:
        """The attempt's run ended in ``state`` for ``cause``: the job ends, is retried or
        (its run lost through no fault of its own) is requeued. A failure that would come
        back the same (``NOT_RETRIED``: spec, data, code, divergence) is not retried."""
        if job.state in TERMINAL_STATES or job.state is JobState.QUEUED:
            return
        await self.release(job)
        error = (result.error_message if result else "") or reason
        if result is not None:
            job.result = result
        job.failure = failure
        repeats = failure is not None and failure.failure_class in NOT_RETRIED
        if job.cancel_requested:
            stopped = (
                JobState.PRUNED if job.stop_cause is RunEndCause.PRUNED else JobState.CANCELLED
            )
            await self.set_state(
                job, stopped, job.cancel_requested, error_message=job.cancel_requested
            )
        elif state is JobState.COMPLETED:  # an earlier attempt's error is no longer the job's
            await self.set_state(job, JobState.COMPLETED, reason or "completed", error_message="")
        elif state is JobState.FAILED and self._halves(job, failure):
            job.batch_halved, job.error_message = True, error
            await self.requeue(
                job, f"attempt {job.attempt} ran out of memory; again at half the batch size"
            )
        elif state is JobState.FAILED and cause in LOST_CAUSES:
            await self.requeue(job, f"attempt {job.attempt} lost ({error}); requeued")
        elif state is JobState.FAILED and job.retries_used < job.max_retries and not repeats:
            job.error_message = error
            await self.requeue(
                job, f"attempt {job.attempt} failed: {error.splitlines()[0]}", counts=True
            )
        else:
            await self.set_state(job, state, reason, error_message=error)
        if job.state in TERMINAL_STATES:
            self._ctx.event(job, result=result_of(job))
