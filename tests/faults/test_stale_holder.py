"""An executor frozen (SIGSTOP) past its lease's TTL while the GPU is leased again: when it
wakes, its writes with the old token are refused and it stops its run within a heartbeat."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from arc.common.v1 import common_pb2
from arc.executor.v1 import executor_pb2, executor_pb2_grpc
from arc.gpu.v1 import gpu_pb2, gpu_pb2_grpc
from arc_common.auth import Role, TokenStore
from services.executor.procfs import process_group_members
from tests.helpers import ServiceProcess
from tests.integration.executor.conftest import job_config

HEARTBEAT = 0.5
TTL = 3


async def test_frozen_executor_wakes_up_stale(tmp_path: Path, data_root: Path) -> None:
    home = tmp_path / "ws"
    gpu = ServiceProcess(
        "services.gpu_manager",
        home,
        env={
            "ARC_GPU_MANAGER_BACKEND": "simulated",
            "ARC_GPU_MANAGER_REAP_INTERVAL_SECONDS": "0.2",
        },
    )
    await gpu.start()
    executor = ServiceProcess(
        "services.executor",
        home,
        env={
            "ARC_EXECUTOR_GPU_MANAGER_ADDRESS": f"127.0.0.1:{gpu.port}",
            "ARC_EXECUTOR_DATA_ROOT": str(data_root),
            "ARC_EXECUTOR_HEARTBEAT_SECONDS": str(HEARTBEAT),
            "ARC_EXECUTOR_GOVERNANCE_ADDRESS": "",
        },
    )
    try:
        await executor.start()
        token = TokenStore.load(home).token_for(Role.SERVICE)
        gpu_channel = gpu.channel(token)
        leases = gpu_pb2_grpc.GpuManagerServiceStub(gpu_channel)
        lease = (
            await leases.AcquireLease(
                gpu_pb2.AcquireLeaseRequest(
                    job_id="frozen",
                    ttl_seconds=TTL,
                    preference=common_pb2.GPU_PREFERENCE_SPECIFIC,
                    gpu_indices=[0],
                )
            )
        ).lease
        channel = executor.channel(token)
        runs = executor_pb2_grpc.ExecutorServiceStub(channel)
        config = job_config("frozen")
        config.experiment_spec.hyperparameters.epochs = 300
        run = (await runs.StartRun(executor_pb2.StartRunRequest(config=config, lease=lease))).run
        for _ in range(300):
            state = (await runs.GetRun(executor_pb2.GetRunRequest(run_id=run.run_id))).run.state
            if state == common_pb2.JOB_STATE_RUNNING:
                break
            await asyncio.sleep(0.1)
        assert executor.process is not None
        executor.process.send_signal(signal.SIGSTOP)
        await asyncio.sleep(TTL + 1.5)  # the lease expires and is reaped
        newer = (
            await leases.AcquireLease(
                gpu_pb2.AcquireLeaseRequest(
                    job_id="newcomer",
                    preference=common_pb2.GPU_PREFERENCE_SPECIFIC,
                    gpu_indices=[0],
                )
            )
        ).lease
        assert newer.fencing_token > lease.fencing_token
        executor.process.send_signal(signal.SIGCONT)
        woke = asyncio.get_running_loop().time()
        while True:
            current = (await runs.GetRun(executor_pb2.GetRunRequest(run_id=run.run_id))).run
            if current.state == common_pb2.JOB_STATE_FAILED:
                break
            assert asyncio.get_running_loop().time() - woke < HEARTBEAT + 10
            await asyncio.sleep(0.05)
        assert "lease lost" in current.error_message
        assert process_group_members(run.pid) == []
        # The newcomer's lease is untouched, and the old token stays refused.
        listing = await leases.ListGpus(gpu_pb2.ListGpusRequest())
        assert listing.gpus[0].lease_holder == "newcomer"
        for _ in range(3):
            try:
                await leases.RenewLease(
                    gpu_pb2.RenewLeaseRequest(
                        lease_id=lease.lease_id, fencing_token=lease.fencing_token
                    )
                )
                raise AssertionError("a stale token renewed a lease")
            except Exception as exc:
                assert "FAILED_PRECONDITION" in str(exc)
        await channel.close()
        await gpu_channel.close()
    finally:
        if executor.process is not None and executor.process.poll() is None:
            executor.process.send_signal(signal.SIGCONT)
        executor.kill()
        gpu.kill()
