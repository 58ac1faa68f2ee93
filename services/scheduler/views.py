"""What callers see: jobs and experiments as public models, why a job waits, the status."""

from __future__ import annotations

from arc_common.errors import NotFoundError
from arc_common.models import (
    TERMINAL_STATES,
    Experiment,
    Job,
    JobState,
    NoveltyClass,
    SchedulerStatus,
)
from services.scheduler.admission import check_length
from services.scheduler.context import Context
from services.scheduler.lifecycle import result_of
from services.scheduler.store import JobRecord


class Views:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def queue_position(self, job: JobRecord) -> int:
        if job.state is not JobState.QUEUED:
            return 0
        return self._ctx.queue.position(job)

    def pending_reason(self, job: JobRecord) -> str:
        ctx = self._ctx
        if job.state is JobState.STARTING:
            return f"starting on {job.node}"
        if job.state is not JobState.QUEUED:
            return ""
        position = self.queue_position(job)
        parts = [f"position {position} in the queue"]
        if position > 1:
            top, bottom = ctx.queue.priorities_ahead(position)
            priorities = f"priority {top}" if top == bottom else f"priorities {bottom} to {top}"
            parts[0] = f"position {position}, behind {position - 1} job(s) of {priorities}"
        current = ctx.clock()
        if job.not_before > current:
            parts.append(
                f"retry {job.retries_used} of {job.max_retries} after backoff, "
                f"in {job.not_before - current:.0f} s"
            )
        if job.approval:
            parts.append(f"waiting for an operator to approve (governance request {job.approval})")
        down = ctx.nodes.down()
        if down and len(down) == len(ctx.nodes):
            parts.append(f"every machine is down ({', '.join(down)})")
        blocked = ctx.queue.blocked_reason(job)
        if blocked:
            parts.append(f"waiting for a GPU: {blocked}")
        if job.prepared_run_id:
            parts.append(f"its trainer is prepared on {job.prepared_node} ({job.prepared_run_id})")
        return "; ".join(parts)

    def view(self, job: JobRecord) -> Job:
        return Job(
            job_id=job.job_id,
            experiment_id=job.experiment_id,
            state=job.state,
            priority=job.priority,
            attempt=job.attempt,
            max_retries=job.max_retries,
            pending_reason=self.pending_reason(job),
            queue_position=self.queue_position(job),
            create_time=job.create_time,
            start_time=job.start_time,
            end_time=job.end_time,
            result=result_of(job) if job.state in TERMINAL_STATES or job.result else None,
            gpu_indices=list(job.lease.gpu_indices) if job.lease else [],
            node=job.node,
            run_id=job.run_id,
            timeout_seconds=job.timeout_seconds,
            error_message=job.error_message,
            submitted_by=job.caller,
            failure=job.failure,
        )

    def job(self, job_id: str) -> JobRecord:
        check_length(job_id, "job_id")
        job = self._ctx.jobs.get(job_id)
        if job is None:
            raise NotFoundError(f"no job {job_id!r}", field="job_id")
        return job

    def list_jobs(self, *, state: JobState | None, experiment_id: str) -> list[JobRecord]:
        check_length(experiment_id, "experiment_id")
        jobs = (
            self._ctx.jobs.of_experiment(experiment_id)
            if experiment_id
            else self._ctx.jobs.values()
        )
        return [j for j in jobs if state is None or j.state is state]

    def experiment(self, experiment_id: str) -> Experiment:
        check_length(experiment_id, "experiment_id")
        known = self._ctx.experiments.get(experiment_id)
        if known is None:
            raise NotFoundError(f"no experiment {experiment_id!r}", field="experiment_id")
        spec, digest, created = known
        jobs = self._ctx.jobs.of_experiment(experiment_id)
        results = [result_of(j) for j in reversed(jobs) if j.state in TERMINAL_STATES]
        return Experiment(
            spec=spec,
            state=jobs[-1].state if jobs else None,
            create_time=created,
            results=results,
            content_hash=digest,
            job_ids=[j.job_id for j in jobs],
        )

    def list_experiments(
        self, *, cycle_id: int, novelty: NoveltyClass | None, state: JobState | None
    ) -> list[Experiment]:
        out = []
        for experiment_id in self._ctx.experiments.ids():
            known = self._ctx.experiments.get(experiment_id)
            assert known is not None
            spec = known[0]
            if cycle_id and spec.cycle_id != cycle_id:
                continue
            if novelty is not None and spec.novelty_class is not novelty:
                continue
            experiment = self.experiment(experiment_id)
            if state is not None and experiment.state is not state:
                continue
            out.append(experiment)
        return out

    async def status(self, *, queued_limit: int | None = None) -> SchedulerStatus:
        """Counts and the head of the queue: the cost does not grow with the queue."""
        ctx = self._ctx
        gpus = await ctx.nodes.gpus()
        limit = ctx.settings.status_queued_limit if queued_limit is None else queued_limit
        return SchedulerStatus(
            queue_length=len(ctx.queue),
            running_jobs=ctx.jobs.active_count,
            available_gpus=ctx.nodes.free(gpus),
            gpus=gpus,
            queued_jobs=[self.view(ctx.jobs[job_id]) for job_id in ctx.queue.head(limit)],
            down_nodes=ctx.nodes.down(),
        )
