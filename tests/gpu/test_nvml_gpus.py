"""Real GPUs through NVML (run on a GPU machine: ``pytest -m gpu tests/gpu``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from arc.gpu.v1 import gpu_pb2, gpu_pb2_grpc
from arc_common.auth import Role, TokenStore
from arc_common.channel import create_channel
from arc_common.models import GpuBackend
from services.gpu_manager import __main__ as gpu_main
from services.gpu_manager.backends import create_backend
from services.gpu_manager.settings import GpuManagerSettings

pytestmark = pytest.mark.gpu


async def test_nvml_lists_the_real_gpus() -> None:
    backend = create_backend("nvml", simulated_count=0, simulated_memory_mib=1024)
    try:
        assert backend.kind is GpuBackend.NVML
        samples = await backend.sample(leased=())
        assert len(samples) == torch.cuda.device_count()
        for sample in samples:
            print(
                f"GPU{sample.index}: {sample.name} {sample.uuid} "
                f"{sample.memory_total_bytes / 2**30:.0f} GiB, {sample.utilization_percent}% "
                f"{sample.temperature_celsius} C {sample.power_watts:.0f} W"
            )
            assert sample.uuid.startswith("GPU-")
            assert sample.memory_total_bytes > 0
            assert sample.memory_used_bytes + sample.memory_free_bytes <= sample.memory_total_bytes
    finally:
        backend.close()


async def test_gpu_manager_leases_a_real_gpu(tmp_path: Path) -> None:
    settings = GpuManagerSettings(home=tmp_path, port=0, backend="nvml", reserved_gpus=())
    tokens = TokenStore.ensure(tmp_path)
    handle = await gpu_main.start(settings, tokens)
    try:
        async with create_channel(
            f"127.0.0.1:{handle.port}", token=tokens.token_for(Role.SERVICE)
        ) as channel:
            stub = gpu_pb2_grpc.GpuManagerServiceStub(channel)
            listing = await stub.ListGpus(gpu_pb2.ListGpusRequest())
            assert listing.backend == gpu_pb2.GPU_BACKEND_NVML
            assert listing.total_count == torch.cuda.device_count()
            lease = (await stub.AcquireLease(gpu_pb2.AcquireLeaseRequest(job_id="gpu-check"))).lease
            assert list(lease.gpu_indices) == [0]
            assert (
                await stub.ReleaseLease(
                    gpu_pb2.ReleaseLeaseRequest(
                        lease_id=lease.lease_id, fencing_token=lease.fencing_token
                    )
                )
            ).released
    finally:
        await handle.stop(0)
