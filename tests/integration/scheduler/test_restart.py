"""SIGKILL a real scheduler process with a full queue and a running job, then restart it."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from arc.common.v1 import common_pb2
from arc.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from arc_common.auth import Role, TokenStore
from tests.helpers import one_machine
from tests.integration.scheduler.conftest import spec


async def test_sigkill_with_queue_and_running_job(tmp_path: Path, tiny_data: Path) -> None:
    await sigkill_and_restart(tmp_path, tiny_data, queued=200, running=1)


async def sigkill_and_restart(
    tmp_path: Path, tiny_data: Path, *, queued: int, running: int
) -> None:
    """``running`` long jobs on as many GPUs, ``queued`` more waiting; SIGKILL, restart,
    then the queue is back in the same order and the running jobs are re-attached."""
    home = tmp_path / "ws"
    async with one_machine(home, tiny_data, gpus=running) as suite:
        scheduler = suite.scheduler
        token = TokenStore.load(home).token_for(Role.AGENT)
        channel = scheduler.channel(token)
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        long_jobs = [
            (
                await stub.SubmitJob(
                    scheduler_pb2.SubmitJobRequest(
                        spec=spec(f"long-{n}", epochs=300, dataset={"image_size": 192}),
                        priority=10,
                    )
                )
            ).job
            for n in range(running)
        ]
        run_ids = {}
        for long_job in long_jobs:
            for _ in range(600):
                job = (await stub.GetJob(scheduler_pb2.GetJobRequest(job_id=long_job.job_id))).job
                if job.state == common_pb2.JOB_STATE_RUNNING:
                    break
                await asyncio.sleep(0.1)
            assert job.state == common_pb2.JOB_STATE_RUNNING
            run_ids[job.job_id] = job.run_id
        accepted: list[str] = []
        for first in range(0, queued, 500):
            batch = scheduler_pb2.SubmitJobsRequest(
                jobs=[
                    scheduler_pb2.SubmitJobRequest(
                        spec=spec(f"q{n}", max_training_time_seconds=60), priority=n % 11
                    )
                    for n in range(first, min(queued, first + 500))
                ]
            )
            reply = await stub.SubmitJobs(batch, timeout=300)
            accepted += [r.job.job_id for r in reply.results]
        before = (
            await stub.GetSchedulerStatus(
                scheduler_pb2.GetSchedulerStatusRequest(queued_limit=1000)
            )
        ).status
        order = [j.job_id for j in before.queued_jobs]
        assert sorted(order) == sorted(accepted) and before.queue_length == queued
        watched = long_jobs[0].job_id
        seen = []
        async for reply in stub.WatchJob(scheduler_pb2.WatchJobRequest(job_id=watched)):
            seen.append(reply.event)
            if len(seen) == 3:
                break
        await channel.close()
        assert await scheduler.signal_and_wait(signal.SIGKILL) == -signal.SIGKILL

        await scheduler.start()
        channel = scheduler.channel(token)
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        after = (
            await stub.GetSchedulerStatus(
                scheduler_pb2.GetSchedulerStatusRequest(queued_limit=1000)
            )
        ).status
        assert [j.job_id for j in after.queued_jobs] == order  # 0 lost, same order
        for job_id, run_id in run_ids.items():
            job = (await stub.GetJob(scheduler_pb2.GetJobRequest(job_id=job_id))).job
            assert job.state == common_pb2.JOB_STATE_RUNNING and job.run_id == run_id
        # The re-attached stream goes on: new metrics arrive, numbered without gaps.
        events = []
        async for reply in stub.WatchJob(scheduler_pb2.WatchJobRequest(job_id=watched)):
            events.append(reply.event)
            if len(events) > len(seen) + 40:
                break
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))
        sources = [e.source_sequence for e in events if e.source_sequence]
        assert sources == sorted(sources)  # nothing replayed twice after the re-attach
        for job_id in run_ids:
            await stub.CancelJob(scheduler_pb2.CancelJobRequest(job_id=job_id))
        await channel.close()
