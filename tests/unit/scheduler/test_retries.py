"""A failed attempt is retried after a growing backoff; a timed-out one counts as failed;
a run lost through no fault of its own (its lease, its executor) is requeued uncounted.
The decision is the run's typed cause, never its message."""

from __future__ import annotations

import pytest

from arc_common.models import NOT_RETRIED, FailureClass, JobState, RunEndCause
from tests.unit.scheduler.conftest import Factory


async def test_a_failure_is_retried_after_backoff_from_the_last_checkpoint(
    make: Factory,
) -> None:
    h = await make(gpus=1, retry_backoff_seconds=10.0, retry_backoff_max_seconds=15.0)
    job = await h.submit("flaky", max_retries=2)
    await h.running(job)

    h.node.end(job.job_id, JobState.FAILED, RunEndCause.FAILED, "loss is NaN")
    await h.state(job, JobState.QUEUED)
    assert (job.attempt, job.retries_used) == (2, 1)
    assert job.not_before == h.clock.now + 10.0
    assert "retry 1 of 2 after backoff, in 10 s" in h.scheduler.pending_reason(job)
    await h.dispatch()
    assert job.state is JobState.QUEUED  # not before its backoff ends

    h.clock.advance(10.0)
    await h.running(job)
    config = h.node.started[-1]
    assert config.resume_from == f"runs/{job.job_id}/attempt-1/checkpoints/last.pt"
    assert config.checkpoint_dir == f"runs/{job.job_id}/attempt-2/checkpoints"

    h.node.end(job.job_id, JobState.FAILED, RunEndCause.FAILED, "loss is NaN")
    await h.state(job, JobState.QUEUED)
    assert job.not_before == h.clock.now + 15.0  # 20 s, capped
    h.clock.advance(15.0)
    await h.running(job)
    h.node.end(job.job_id, JobState.FAILED, RunEndCause.FAILED, "loss is NaN again")
    await h.state(job, JobState.FAILED)
    assert job.error_message == "loss is NaN again"
    assert h.scheduler.view(job).result is not None


async def test_a_timed_out_run_fails_the_attempt(make: Factory) -> None:
    h = await make(gpus=1, retry_backoff_seconds=0.0)
    job = await h.submit("slow", max_retries=1, timeout_seconds=90)
    await h.running(job)
    assert h.node.started[-1].timeout_seconds == 90  # the executor enforces it

    h.node.end(job.job_id, JobState.FAILED, RunEndCause.TIMED_OUT, "ran past 90 s")
    await h.until(lambda: job.attempt == 2, "a second attempt")
    assert job.retries_used == 1
    await h.running(job)
    h.node.end(job.job_id, JobState.FAILED, RunEndCause.TIMED_OUT, "ran past 90 s")
    await h.state(job, JobState.FAILED)


async def test_the_spec_bounds_the_time_when_the_submission_does_not(make: Factory) -> None:
    h = await make(gpus=1)
    job = await h.submit("bounded", spec={"max_training_time_seconds": 120})
    await h.running(job)
    assert job.timeout_seconds == 120
    assert h.node.started[-1].timeout_seconds == 120


@pytest.mark.parametrize("cause", [RunEndCause.LOST_LEASE, RunEndCause.EXECUTOR_SHUTDOWN])
async def test_a_lost_run_is_requeued_without_using_a_retry(
    make: Factory, cause: RunEndCause
) -> None:
    h = await make(gpus=1)
    job = await h.submit("lost", max_retries=0)
    await h.running(job)
    h.node.end(job.job_id, JobState.FAILED, cause, "whatever the executor says")
    await h.until(lambda: job.attempt == 2, "a second attempt")
    assert (job.retries_used, job.not_before) == (0, h.clock.now)
    await h.running(job)
    h.node.end(job.job_id)
    await h.state(job, JobState.COMPLETED)


async def test_a_message_that_reads_lost_does_not_requeue(make: Factory) -> None:
    h = await make(gpus=1)
    job = await h.submit("wording", max_retries=0)
    await h.running(job)
    h.node.end(job.job_id, JobState.FAILED, RunEndCause.CRASHED, "lost: lease lost")
    await h.state(job, JobState.FAILED)
    assert job.attempt == 1


async def test_a_machine_that_stops_answering_has_its_jobs_requeued(make: Factory) -> None:
    h = await make(gpus=1, nodes=2, node_down_seconds=30.0)
    job = await h.submit("on-a-dying-machine")
    await h.state(job, JobState.RUNNING)
    where, other = (h.nodes[0], h.nodes[1]) if job.node == "node-0" else (h.nodes[1], h.nodes[0])
    where.down = True
    where.run_of(job.job_id).changed.set()  # the stream breaks
    await h.until(lambda: not where_up(h, where.name), "marked down")
    h.clock.advance(31.0)
    await h.until(lambda: job.attempt == 2, "requeued", seconds=10.0)
    assert job.retries_used == 0
    await h.running(job, other)


def where_up(h: object, name: str) -> bool:
    node = h.scheduler.nodes.get(name)  # type: ignore[attr-defined]
    return bool(node is not None and node.up)


@pytest.mark.parametrize("failure", sorted(NOT_RETRIED))
async def test_a_failure_that_would_repeat_is_not_retried(
    make: Factory, failure: FailureClass
) -> None:
    h = await make(gpus=1, retry_backoff_seconds=0.0)
    job = await h.submit(f"repeats-{failure.value}", max_retries=3)
    await h.running(job)
    h.node.end(job.job_id, JobState.FAILED, RunEndCause.FAILED, "the same again", failure)
    await h.state(job, JobState.FAILED)
    assert (job.attempt, job.retries_used) == (1, 0)
    view = h.scheduler.view(job)
    assert view.failure is not None and view.failure.failure_class is failure


async def test_an_infrastructure_failure_is_retried_and_a_success_clears_it(
    make: Factory,
) -> None:
    h = await make(gpus=1, retry_backoff_seconds=0.0)
    job = await h.submit("infra", max_retries=1)
    await h.running(job)
    h.node.end(
        job.job_id, JobState.FAILED, RunEndCause.CRASHED, "exited -9", FailureClass.INFRASTRUCTURE
    )
    await h.until(lambda: job.attempt == 2, "a second attempt")
    await h.running(job)
    h.node.end(job.job_id)
    await h.state(job, JobState.COMPLETED)
    view = h.scheduler.view(job)
    assert view.error_message == "" and view.failure is None


async def test_out_of_memory_is_tried_once_more_at_half_the_batch_when_allowed(
    make: Factory,
) -> None:
    h = await make(gpus=1, retry_backoff_seconds=0.0)
    hyper = {"batch_size": 32, "halve_batch_on_oom": True}
    job = await h.submit("big-batch", spec={"hyperparameters": hyper})
    await h.running(job)
    assert h.node.started[-1].experiment_spec.hyperparameters.batch_size == 32
    oom = FailureClass.OUT_OF_MEMORY
    h.node.end(job.job_id, JobState.FAILED, RunEndCause.OOM, "CUDA out of memory", oom)
    await h.until(lambda: job.attempt == 2, "a second attempt")
    await h.running(job)
    assert h.node.started[-1].experiment_spec.hyperparameters.batch_size == 16
    assert job.spec.hyperparameters.batch_size == 32  # the experiment is unchanged
    h.node.end(job.job_id, JobState.FAILED, RunEndCause.OOM, "again", oom)
    await h.state(job, JobState.FAILED)
    assert job.attempt == 2


async def test_out_of_memory_is_not_retried_unless_allowed(make: Factory) -> None:
    h = await make(gpus=1, retry_backoff_seconds=0.0)
    job = await h.submit("big-batch", max_retries=2)
    await h.running(job)
    oom = FailureClass.OUT_OF_MEMORY
    h.node.end(job.job_id, JobState.FAILED, RunEndCause.OOM, "CUDA out of memory", oom)
    await h.state(job, JobState.FAILED)
    assert job.attempt == 1
