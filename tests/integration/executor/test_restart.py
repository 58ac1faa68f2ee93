"""Executor restart: live runs are killed and reported lost, never left orphaned."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from arc.common.v1 import common_pb2
from arc.executor.v1 import executor_pb2, executor_pb2_grpc
from arc.gpu.v1 import gpu_pb2, gpu_pb2_grpc
from arc_common.auth import Role, TokenStore
from services.executor.procfs import process_group_members
from tests.helpers import ServiceProcess
from tests.integration.executor.conftest import job_config


def _state(pid: int) -> str:
    """The process's state letter from /proc ("" once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return ""


@pytest.mark.parametrize("frozen", [False, True], ids=["trainer-stops", "trainer-frozen"])
async def test_sigkill_executor_then_restart_reports_run_lost(
    tmp_path: Path, data_root: Path, frozen: bool
) -> None:
    """A trainer sees its executor die (its metrics pipe breaks) and stops with its whole
    process group. One that cannot (here: stopped with SIGSTOP) is killed by the restarted
    executor. Either way the run is reported lost."""
    home = tmp_path / "ws"
    gpu = ServiceProcess("services.gpu_manager", home, env={"ARC_GPU_MANAGER_BACKEND": "simulated"})
    await gpu.start()
    env = {
        "ARC_EXECUTOR_GPU_MANAGER_ADDRESS": f"127.0.0.1:{gpu.port}",
        "ARC_EXECUTOR_DATA_ROOT": str(data_root),
        "ARC_EXECUTOR_HEARTBEAT_SECONDS": "0.5",
    }
    executor = ServiceProcess("services.executor", home, env=env)
    try:
        await executor.start()
        token = TokenStore.load(home).token_for(Role.SERVICE)
        gpu_channel = gpu.channel(token)
        lease = (
            await gpu_pb2_grpc.GpuManagerServiceStub(gpu_channel).AcquireLease(
                gpu_pb2.AcquireLeaseRequest(job_id="job-long", ttl_seconds=120)
            )
        ).lease
        channel = executor.channel(token)
        stub = executor_pb2_grpc.ExecutorServiceStub(channel)
        config = job_config("job-long")
        config.experiment_spec.hyperparameters.epochs = 500
        run = (await stub.StartRun(executor_pb2.StartRunRequest(config=config, lease=lease))).run
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60  # a cold trainer on a loaded 2-core machine is slow
        current = run
        while current.state != common_pb2.JOB_STATE_RUNNING and loop.time() < deadline:
            await asyncio.sleep(0.1)
            current = (await stub.GetRun(executor_pb2.GetRunRequest(run_id=run.run_id))).run
        assert current.state == common_pb2.JOB_STATE_RUNNING, executor.log()[-3000:]
        await channel.close()
        if frozen:
            os.killpg(run.pid, signal.SIGSTOP)
            members = process_group_members(run.pid)
            for _ in range(50):  # SIGSTOP lands asynchronously
                if members and all(_state(pid) in ("T", "t", "") for pid in members):
                    break
                await asyncio.sleep(0.02)
            assert members and all(_state(pid) in ("T", "t", "") for pid in members)
        assert await executor.signal_and_wait(signal.SIGKILL) == -signal.SIGKILL
        if frozen:
            await asyncio.sleep(1.0)
            assert process_group_members(run.pid), (
                f"a stopped trainer cannot stop itself; log:\n{executor.log()[-3000:]}"
            )
        else:
            for _ in range(100):
                if not process_group_members(run.pid):
                    break
                await asyncio.sleep(0.1)
            assert process_group_members(run.pid) == [], "the trainer outlived its executor"

        await executor.start()
        channel = executor.channel(token)
        stub = executor_pb2_grpc.ExecutorServiceStub(channel)
        after = (await stub.GetRun(executor_pb2.GetRunRequest(run_id=run.run_id))).run
        assert after.state == common_pb2.JOB_STATE_FAILED
        assert after.end_cause == common_pb2.RUN_END_CAUSE_EXECUTOR_SHUTDOWN
        assert "lost" in after.error_message
        assert (f"process group {run.pid}" in after.error_message) == frozen
        assert process_group_members(run.pid) == []
        events = [
            r.event
            async for r in stub.StreamRunEvents(
                executor_pb2.StreamRunEventsRequest(run_id=run.run_id)
            )
        ]
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))
        assert events[-1].state_change.state == common_pb2.JOB_STATE_FAILED
        assert events[-1].state_change.cause == common_pb2.RUN_END_CAUSE_EXECUTOR_SHUTDOWN
        await channel.close()
        await gpu_channel.close()
    finally:
        executor.kill()
        gpu.kill()
