"""What the prepared-run fault tests do with the scheduler: submit two jobs that want the
same GPU, read a job, wait until it is in some state."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from arc.common.v1 import common_pb2
from arc.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from tests.integration.scheduler.conftest import spec

GPU0 = {"preference": "specific", "gpu_indices": [0]}  # both jobs want the same GPU
DONE = (common_pb2.JOB_STATE_COMPLETED, common_pb2.JOB_STATE_FAILED)
PREPARED = "its trainer is prepared on"  # GetJob's pending_reason, naming the run last


@dataclass
class Jobs:
    stub: scheduler_pb2_grpc.SchedulerServiceStub
    auth: list[tuple[str, str]]

    async def get(self, job_id: str) -> scheduler_pb2.Job:
        request = scheduler_pb2.GetJobRequest(job_id=job_id)
        reply: scheduler_pb2.GetJobResponse = await self.stub.GetJob(request, metadata=self.auth)
        return reply.job

    async def until(
        self, job_id: str, check: Callable[[scheduler_pb2.Job], bool], seconds: float = 300
    ) -> scheduler_pb2.Job:
        for _ in range(int(seconds * 5)):
            job = await self.get(job_id)
            if check(job):
                return job
            await asyncio.sleep(0.2)
        raise TimeoutError(f"{job_id}: {await self.get(job_id)}")

    async def submit_on_gpu0(self, name: str, *, epochs: int, priority: int) -> str:
        request = scheduler_pb2.SubmitJobRequest(
            spec=spec(name, epochs=epochs, gpu_allocation=GPU0), priority=priority
        )
        reply = await self.stub.SubmitJob(request, metadata=self.auth)
        return str(reply.job.job_id)
