"""SIGKILL the executor while a job writes checkpoints: no torn checkpoint is ever loaded,
and the retry resumes from the last complete one."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest
from grpc import aio

from arc.common.v1 import common_pb2
from arc.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from arc_common.auth import Role, TokenStore
from tests.integration.scheduler.conftest import spec
from tests.security.suite import ProcessSuite


@pytest.mark.parametrize("tear", [False, True], ids=["intact", "torn"])
async def test_executor_killed_mid_training_resumes_from_last_good_checkpoint(
    tmp_path: Path, tiny_data: Path, tear: bool
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
            experiment = spec("resume", epochs=8, dataset={"image_size": 96})
            job = (
                await stub.SubmitJob(
                    scheduler_pb2.SubmitJobRequest(spec=experiment, max_retries=1), metadata=auth
                )
            ).job
            epochs_seen = 0
            async for reply in stub.WatchJob(
                scheduler_pb2.WatchJobRequest(job_id=job.job_id), metadata=auth
            ):
                checkpoint = reply.event.checkpoint
                if checkpoint.kind == common_pb2.CHECKPOINT_KIND_LAST:
                    epochs_seen = checkpoint.epoch
                    if epochs_seen >= 2:
                        break
            await suite.executor.signal_and_wait(signal.SIGKILL)
            last = home / "runs" / job.job_id / "attempt-1" / "checkpoints" / "last.pt"
            assert last.exists()
            if tear:  # what a kill in the middle of a write would leave without atomic rename
                data = last.read_bytes()
                last.write_bytes(data[: len(data) // 2])
            await suite.executor.start()
            for _ in range(900):
                current = (
                    await stub.GetJob(scheduler_pb2.GetJobRequest(job_id=job.job_id), metadata=auth)
                ).job
                if current.state in (common_pb2.JOB_STATE_COMPLETED, common_pb2.JOB_STATE_FAILED):
                    break
                await asyncio.sleep(0.2)
            assert current.state == common_pb2.JOB_STATE_COMPLETED, current.error_message
            assert current.attempt == 2
            reasons = [
                r.event.state_change.reason
                async for r in stub.WatchJob(
                    scheduler_pb2.WatchJobRequest(job_id=job.job_id), metadata=auth
                )
                if r.event.WhichOneof("payload") == "state_change"
            ]
            log = (home / "runs" / job.job_id / "attempt-2" / "logs" / "stderr.log").read_text()
            metrics = [m for m in current.result.metrics if m.name == "val_auc"]
            if tear:
                assert not any("resumed" in r for r in reasons)
                assert metrics[0].epoch == 1  # started over
            else:
                assert any(f"resumed from epoch {epochs_seen}" in r for r in reasons), reasons
                assert metrics[0].epoch == epochs_seen + 1
            assert "Traceback" not in log
    finally:
        suite.stop()
