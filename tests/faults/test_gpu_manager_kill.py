"""SIGKILL the gpu-manager with leases outstanding, over and over, while a sampler watches:
the same leases with the same tokens come back, and leased + free + reserved = total in
every answer it ever gives."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

from grpc import aio

from arc.gpu.v1 import gpu_pb2, gpu_pb2_grpc
from arc_common.auth import Role, TokenStore
from tests.helpers import ServiceProcess
from tests.security.suite import free_port

KILLS = 10 if os.environ.get("ARC_TEST_LONG") else 3


async def test_leases_survive_repeated_kills_and_accounting_always_adds_up(
    tmp_path: Path,
) -> None:
    port = free_port()
    service = ServiceProcess(
        "services.gpu_manager",
        tmp_path,
        port=port,
        env={"ARC_GPU_MANAGER_BACKEND": "simulated", "ARC_GPU_MANAGER_SIMULATED_COUNT": "4"},
    )
    await service.start()
    token = TokenStore.load(tmp_path).token_for(Role.SERVICE)
    auth = [("authorization", f"Bearer {token}")]
    samples: list[gpu_pb2.ListGpusResponse] = []
    stop = asyncio.Event()
    options = [("grpc.initial_reconnect_backoff_ms", 50), ("grpc.max_reconnect_backoff_ms", 200)]
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            stub = gpu_pb2_grpc.GpuManagerServiceStub(channel)

            async def sampler() -> None:
                while not stop.is_set():
                    # Down for a moment: nothing answered, so nothing to check.
                    with contextlib.suppress(aio.AioRpcError):
                        samples.append(
                            await stub.ListGpus(gpu_pb2.ListGpusRequest(), metadata=auth, timeout=2)
                        )
                    await asyncio.sleep(0.02)

            task = asyncio.create_task(sampler())
            leases = [
                (
                    await stub.AcquireLease(
                        gpu_pb2.AcquireLeaseRequest(job_id=f"job-{n}", ttl_seconds=600),
                        metadata=auth,
                    )
                ).lease
                for n in range(2)
            ]
            for _ in range(KILLS):
                await service.signal_and_wait(signal.SIGKILL)
                await service.start()
                await asyncio.sleep(0.3)
                listing = await stub.ListGpus(
                    gpu_pb2.ListGpusRequest(), metadata=auth, wait_for_ready=True, timeout=10
                )
                held = {g.lease_id: g.lease_holder for g in listing.gpus if g.lease_id}
                assert held == {lease.lease_id: lease.job_id for lease in leases}
                for lease in leases:
                    renewed = await stub.RenewLease(
                        gpu_pb2.RenewLeaseRequest(
                            lease_id=lease.lease_id, fencing_token=lease.fencing_token
                        ),
                        metadata=auth,
                    )
                    assert renewed.lease.fencing_token == lease.fencing_token
            third = (
                await stub.AcquireLease(gpu_pb2.AcquireLeaseRequest(job_id="late"), metadata=auth)
            ).lease
            assert third.fencing_token >= 1 and third.gpu_indices[0] not in {
                i for lease in leases for i in lease.gpu_indices
            }
            stop.set()
            await task
    finally:
        service.kill()
    assert len(samples) > KILLS
    for sample in samples:
        assert sample.leased_count + sample.free_count + sample.reserved_count == (
            sample.total_count
        ), sample
