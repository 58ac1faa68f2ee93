"""Queue order (priority, then submission), backfill, and why a job waits."""

from __future__ import annotations

from arc_common.models import DecisionOutcome, JobState
from tests.unit.scheduler.conftest import Factory


async def test_higher_priority_first_then_submission_order(make: Factory) -> None:
    h = await make(gpus=1)
    blocker = await h.submit("blocker")
    await h.running(blocker)
    low = await h.submit("low", priority=2)
    first_high = await h.submit("high-1", priority=8)
    second_high = await h.submit("high-2", priority=8)
    middle = await h.submit("middle", priority=5)

    assert [h.scheduler.queue_position(j) for j in (first_high, second_high, middle, low)] == [
        1,
        2,
        3,
        4,
    ]
    assert h.scheduler.pending_reason(middle).startswith(
        "position 3, behind 2 job(s) of priority 8"
    )
    assert "behind 3 job(s) of priorities 5 to 8" in h.scheduler.pending_reason(low)

    order = [first_high, second_high, middle, low]
    h.node.end(blocker.job_id)
    for job in order:
        await h.running(job)
        h.node.end(job.job_id)
        await h.state(job, JobState.COMPLETED)
    assert h.node.started_jobs() == [blocker.job_id] + [j.job_id for j in order]


async def test_a_small_job_fills_a_gpu_a_big_one_cannot_use(make: Factory) -> None:
    h = await make(gpus=2)
    running = await h.submit("one-gpu")
    await h.running(running)
    big = await h.submit("two-gpus", priority=9, spec={"gpu_allocation": {"gpu_count": 2}})
    small = await h.submit("small", priority=1)

    await h.running(small)  # behind the big job, yet started: backfill
    assert big.state is JobState.QUEUED
    await h.dispatch()
    assert "waiting for a GPU: 2 GPU(s) wanted, 0 free" in h.scheduler.pending_reason(big)

    h.node.end(running.job_id)
    h.node.end(small.job_id)
    await h.running(big)
    lease = h.node.run_of(big.job_id).run.lease
    assert lease is not None and lease.gpu_indices == [0, 1]


async def test_pending_reasons_name_approval_and_machines_down(make: Factory) -> None:
    h = await make(gpus=1)
    h.governance.outcome = DecisionOutcome.PENDING_APPROVAL
    waiting = await h.submit("needs-approval")
    await h.dispatch()
    assert waiting.state is JobState.QUEUED
    assert "waiting for an operator to approve" in h.scheduler.pending_reason(waiting)
    assert h.node.started_jobs() == []

    h.governance.outcome = DecisionOutcome.ALLOWED  # the operator approved
    await h.running(waiting)
    assert waiting.approval == ""

    queued = await h.submit("behind")
    h.node.down = True
    await h.until(lambda: not h.scheduler.nodes.up(), "the probe marks the machine down")
    assert "every machine is down (node-0)" in h.scheduler.pending_reason(queued)


async def test_status_counts_and_lists_the_head_of_the_queue(make: Factory) -> None:
    h = await make(gpus=1, status_queued_limit=2)
    first = await h.submit("first")
    await h.running(first)
    queued = [await h.submit(f"q{n}") for n in range(3)]
    status = await h.scheduler.status()
    assert status.queue_length == 3
    assert status.running_jobs == 1
    assert status.available_gpus == 0
    assert [j.job_id for j in status.queued_jobs] == [j.job_id for j in queued[:2]]
