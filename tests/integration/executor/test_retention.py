"""Checkpoints do not pile up: a completed attempt drops its job's earlier attempts'
checkpoints, and a workspace over its checkpoint quota starts no run."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc import aio

from arc.common.v1 import common_pb2
from arc.executor.v1 import executor_pb2
from arc.gpu.v1 import gpu_pb2
from tests.integration.executor.conftest import job_config, running_suite
from tests.integration.executor.test_runs import wait_done


async def test_a_completed_retry_drops_the_earlier_attempts_checkpoints(
    tmp_path: Path, data_root: Path
) -> None:
    async with running_suite(tmp_path / "ws", data_root) as suite:
        runs = tmp_path / "ws" / "runs" / "job-r"
        for attempt in (1, 2):
            # The first attempt stops after an epoch, as a crash would; the retry goes on.
            config = job_config("job-r", hyperparameters={"epochs": attempt})
            config.checkpoint_dir = f"runs/job-r/attempt-{attempt}/checkpoints"
            config.log_dir = f"runs/job-r/attempt-{attempt}/logs"
            if attempt == 2:
                config.resume_from = "runs/job-r/attempt-1/checkpoints/last.pt"
            lease = await suite.lease("job-r")
            run = (
                await suite.executor().StartRun(
                    executor_pb2.StartRunRequest(
                        config=config, lease=lease, request_id=f"r{attempt}"
                    )
                )
            ).run
            final = await wait_done(suite, run.run_id)
            assert final.state == common_pb2.JOB_STATE_COMPLETED, final.error_message
            assert (runs / f"attempt-{attempt}" / "checkpoints" / "last.pt").is_file()
            await suite.gpus().ReleaseLease(
                gpu_pb2.ReleaseLeaseRequest(
                    lease_id=lease.lease_id, fencing_token=lease.fencing_token
                )
            )
        assert not list((runs / "attempt-1" / "checkpoints").glob("*.pt*"))
        kept = {p.name for p in (runs / "attempt-2" / "checkpoints").glob("*.pt")}
        assert kept == {"best.pt", "last.pt"}
        assert (runs / "attempt-1" / "logs").is_dir()  # logs stay


async def test_a_workspace_over_its_quota_starts_no_run(tmp_path: Path, data_root: Path) -> None:
    home = tmp_path / "ws"
    old = home / "runs" / "job-old" / "checkpoints"
    old.mkdir(parents=True)
    (old / "last.pt").write_bytes(b"x" * 2000)
    async with running_suite(home, data_root, checkpoint_quota_gb=1e-6) as suite:  # 1 kB
        lease = await suite.lease("job-q")
        with pytest.raises(aio.AioRpcError) as refused:
            await suite.executor().StartRun(
                executor_pb2.StartRunRequest(config=job_config("job-q"), lease=lease)
            )
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "checkpoint quota" in (refused.value.details() or "")
        assert not (home / "runs" / "job-q").exists()
