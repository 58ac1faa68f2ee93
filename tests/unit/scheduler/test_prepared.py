"""A job waiting for GPUs that a running job holds has its trainer prepared ahead, and
that prepared run is the one that trains once the GPUs come."""

from __future__ import annotations

from arc_common.models import JobState
from services.scheduler.core import Caller
from tests.unit.scheduler.conftest import Factory


async def test_the_first_waiting_job_is_prepared_ahead_and_activated(make: Factory) -> None:
    h = await make(gpus=1)
    running = await h.submit("running")
    await h.running(running)
    waiting = await h.submit("waiting")
    behind = await h.submit("behind")
    await h.until(lambda: bool(waiting.prepared_run_id), "prepared ahead")
    assert [c.job_id for c in h.node.prepared] == [waiting.job_id]  # one per machine
    assert h.node.prepared[0].gpu_ids == []  # no GPU touched yet
    assert "its trainer is prepared on node-0" in h.scheduler.pending_reason(waiting)
    prepared_run = waiting.prepared_run_id

    h.node.end(running.job_id)
    await h.running(waiting)
    assert waiting.run_id == prepared_run and waiting.prepared_run_id == ""
    assert behind.state is JobState.QUEUED


async def test_a_cancelled_job_takes_its_prepared_run_with_it(make: Factory) -> None:
    h = await make(gpus=1)
    running = await h.submit("running")
    await h.running(running)
    waiting = await h.submit("waiting")
    await h.until(lambda: bool(waiting.prepared_run_id), "prepared ahead")
    prepared = h.node.runs[waiting.prepared_run_id]
    await h.scheduler.cancel(waiting.job_id, "not needed", caller=Caller("agent"))
    assert waiting.state is JobState.CANCELLED and waiting.prepared_run_id == ""
    assert prepared.cancel_reasons == [("prepared run not used", False)]
