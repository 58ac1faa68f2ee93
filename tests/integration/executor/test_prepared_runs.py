"""Runs prepared ahead of their GPUs (PrepareRun, then ActivateRun with a lease): the
trainer waits with its data open and its model built, holds no lease meanwhile, and trains
as an ordinary run once activated; bad activations are refused with the field named."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc import aio

from arc.common.v1 import common_pb2
from arc.executor.v1 import executor_pb2
from arc.gpu.v1 import gpu_pb2
from services.executor.procfs import process_group_members
from tests.integration.executor.conftest import Suite, job_config
from tests.integration.executor.test_runs import states, wait_done


async def prepared(suite: Suite, job_id: str) -> executor_pb2.Run:
    """PrepareRun, then wait until the trainer says it is ready (a log line)."""
    reply: executor_pb2.PrepareRunResponse = await suite.executor().PrepareRun(
        executor_pb2.PrepareRunRequest(request_id=f"{job_id}:prepare", config=job_config(job_id))
    )
    run = reply.run
    assert run.state == common_pb2.JOB_STATE_QUEUED and not run.HasField("lease")
    stream = suite.executor().StreamRunEvents(
        executor_pb2.StreamRunEventsRequest(run_id=run.run_id)
    )
    async for item in stream:
        if any("prepared: data opened" in line for line in item.event.log.lines):
            stream.cancel()
            break
    return run


async def test_prepared_run_waits_without_a_lease_then_trains_once_activated(
    suite: Suite,
) -> None:
    run = await prepared(suite, "job-ahead")
    again = await suite.executor().PrepareRun(  # a retried call gets the same run
        executor_pb2.PrepareRunRequest(request_id="job-ahead:prepare", config=job_config("x"))
    )
    assert again.run.run_id == run.run_id
    assert process_group_members(run.pid), "the prepared trainer waits"
    await asyncio.sleep(1.0)
    waiting = (await suite.executor().GetRun(executor_pb2.GetRunRequest(run_id=run.run_id))).run
    assert waiting.state == common_pb2.JOB_STATE_QUEUED  # no GPU, so no training

    lease = await suite.lease("job-ahead")
    activation = executor_pb2.ActivateRunRequest(
        request_id="job-ahead:activate", run_id=run.run_id, lease=lease
    )
    active = (await suite.executor().ActivateRun(activation)).run
    assert active.state == common_pb2.JOB_STATE_STARTING
    assert list(active.config.gpu_ids) == list(lease.gpu_indices)
    replayed = await suite.executor().ActivateRun(activation)  # its request_id: the first answer
    assert replayed.run == active
    retried = await suite.executor().ActivateRun(  # the same lease again: the same run
        executor_pb2.ActivateRunRequest(run_id=run.run_id, lease=lease)
    )
    assert retried.run.run_id == run.run_id
    other_body = executor_pb2.ActivateRunRequest()
    other_body.CopyFrom(activation)
    other_body.run_id = "another-run"
    with pytest.raises(aio.AioRpcError) as info:  # the id is bound to its first body
        await suite.executor().ActivateRun(other_body)
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    final = await wait_done(suite, run.run_id)
    assert final.state == common_pb2.JOB_STATE_COMPLETED, final.error_message
    events = await suite.events(run.run_id)
    assert states(events) == [
        common_pb2.JOB_STATE_QUEUED,
        common_pb2.JOB_STATE_STARTING,
        common_pb2.JOB_STATE_RUNNING,
        common_pb2.JOB_STATE_COMPLETED,
    ]
    assert final.result.best_metrics["test_auc"] >= 0.0
    await suite.gpus().ReleaseLease(
        gpu_pb2.ReleaseLeaseRequest(lease_id=lease.lease_id, fencing_token=lease.fencing_token)
    )


async def test_bad_activations_are_refused_and_a_cancelled_prepared_run_leaves_nothing(
    suite: Suite,
) -> None:
    run = await prepared(suite, "job-wait")
    executor = suite.executor()
    with pytest.raises(aio.AioRpcError) as info:
        await executor.ActivateRun(executor_pb2.ActivateRunRequest(run_id=run.run_id))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "lease" in (info.value.details() or "")

    other = await suite.lease("someone-else")
    with pytest.raises(aio.AioRpcError) as info:
        await executor.ActivateRun(executor_pb2.ActivateRunRequest(run_id=run.run_id, lease=other))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "belongs to job someone-else" in (info.value.details() or "")
    await suite.gpus().ReleaseLease(
        gpu_pb2.ReleaseLeaseRequest(lease_id=other.lease_id, fencing_token=other.fencing_token)
    )

    with pytest.raises(aio.AioRpcError) as info:
        await executor.ActivateRun(
            executor_pb2.ActivateRunRequest(run_id="no-such-run", lease=other)
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND

    ordinary = await suite.start("job-plain")
    with pytest.raises(aio.AioRpcError) as info:
        await executor.ActivateRun(
            executor_pb2.ActivateRunRequest(run_id=ordinary.run_id, lease=other)
        )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not a prepared run" in (info.value.details() or "")
    await executor.CancelRun(executor_pb2.CancelRunRequest(run_id=ordinary.run_id))

    cancelled = (
        await executor.CancelRun(executor_pb2.CancelRunRequest(run_id=run.run_id, reason="no"))
    ).run
    assert cancelled.state == common_pb2.JOB_STATE_CANCELLED
    assert process_group_members(run.pid) == []
    with pytest.raises(aio.AioRpcError) as info:
        await executor.ActivateRun(executor_pb2.ActivateRunRequest(run_id=run.run_id, lease=other))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "nothing to activate" in (info.value.details() or "")
