"""SIGKILL the executor while a job waits with its trainer prepared ahead: the prepared
trainer dies with its executor, and when the job's GPU comes the scheduler finds the
prepared run gone and starts the job cold; nothing is lost and both jobs complete."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from grpc import aio

from arc.common.v1 import common_pb2
from arc.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from arc_common.auth import Role, TokenStore
from tests.integration.scheduler.conftest import spec
from tests.security.suite import ProcessSuite

GPU0 = {"preference": "specific", "gpu_indices": [0]}  # both jobs want the same GPU
DONE = (common_pb2.JOB_STATE_COMPLETED, common_pb2.JOB_STATE_FAILED)


async def test_a_prepared_run_lost_with_its_executor_is_replaced_by_a_cold_start(
    tmp_path: Path, tiny_data: Path
) -> None:
    home = tmp_path / "ws"
    suite = ProcessSuite(home, data_root=tiny_data, fixed_ports=True)
    await suite.start()
    assert suite.executor is not None and suite.scheduler is not None
    token = TokenStore.load(home).token_for(Role.AGENT)
    auth = [("authorization", f"Bearer {token}")]
    try:
        async with aio.insecure_channel(f"127.0.0.1:{suite.scheduler.port}") as channel:
            stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)

            async def job(job_id: str) -> scheduler_pb2.Job:
                request = scheduler_pb2.GetJobRequest(job_id=job_id)
                reply: scheduler_pb2.GetJobResponse = await stub.GetJob(request, metadata=auth)
                return reply.job

            async def until(job_id: str, check: object, seconds: float = 180) -> None:
                for _ in range(int(seconds * 5)):
                    if check(await job(job_id)):  # type: ignore[operator]
                        return
                    await asyncio.sleep(0.2)
                raise TimeoutError(f"{job_id}: {await job(job_id)}")

            first = (
                await stub.SubmitJob(
                    scheduler_pb2.SubmitJobRequest(
                        spec=spec("long", epochs=8, gpu_allocation=GPU0), priority=9
                    ),
                    metadata=auth,
                )
            ).job
            await until(first.job_id, lambda j: j.state == common_pb2.JOB_STATE_RUNNING)
            second = (
                await stub.SubmitJob(
                    scheduler_pb2.SubmitJobRequest(
                        spec=spec("behind", epochs=1, gpu_allocation=GPU0), priority=5
                    ),
                    metadata=auth,
                )
            ).job
            await until(second.job_id, lambda j: "its trainer is prepared on" in j.pending_reason)
            prepared_run = (await job(second.job_id)).pending_reason.rsplit("(", 1)[1][:-1]

            await suite.executor.signal_and_wait(signal.SIGKILL)
            await suite.executor.start()

            await until(first.job_id, lambda j: j.state in DONE, seconds=300)
            await until(second.job_id, lambda j: j.state in DONE, seconds=300)
            finished = await job(second.job_id)
            assert finished.state == common_pb2.JOB_STATE_COMPLETED, finished.error_message
            assert finished.run_id and finished.run_id != prepared_run  # started cold
            assert (await job(first.job_id)).state == common_pb2.JOB_STATE_COMPLETED
    finally:
        suite.stop()
