"""Real gpu-manager and executor servers (one workspace) and a generated fundus dataset."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from grpc import aio

from arc.common.v1 import common_pb2
from arc.executor.v1 import executor_pb2, executor_pb2_grpc
from arc.gpu.v1 import gpu_pb2, gpu_pb2_grpc
from arc_common.auth import Role, TokenStore
from arc_common.channel import create_channel
from arc_common.convert import dict_to_proto
from arc_common.synth import generate_dataset
from services.executor import __main__ as executor_main
from services.executor.settings import ExecutorSettings
from services.gpu_manager import __main__ as gpu_main
from services.gpu_manager.settings import GpuManagerSettings

IMAGE_SIZE = 48


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("datasets")
    generate_dataset(root / "fundus", count=96, size=IMAGE_SIZE, seed=7, splits=(0.5, 0.25, 0.25))
    return root


def job_config(job_id: str, **spec_overrides: Any) -> common_pb2.TrainingJobConfig:
    spec: dict[str, Any] = {
        "experiment_id": f"exp-{job_id}",
        "architecture": {"family": "resnet", "variant": "resnet18", "num_classes": 2},
        "hyperparameters": {
            "batch_size": 16,
            "epochs": 2,
            "optimizer": {"type": "adam", "learning_rate": 0.001},
            "seed": 3,
        },
        "dataset": {
            "dataset_id": "fundus",
            "dataset_type": "split_folders",
            "data_path": "fundus",
            "image_size": IMAGE_SIZE,
        },
    }
    for key, value in spec_overrides.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    return dict_to_proto(
        {
            "job_id": job_id,
            "experiment_spec": spec,
            "checkpoint_dir": f"runs/{job_id}/checkpoints",
            "log_dir": f"runs/{job_id}/logs",
            "timeout_seconds": 600,
        },
        common_pb2.TrainingJobConfig,
    )


@dataclass
class Suite:
    home: Path
    tokens: TokenStore
    gpu_port: int
    executor_port: int
    channels: list[aio.Channel] = field(default_factory=list)

    def _channel(self, port: int, role: Role) -> aio.Channel:
        channel = create_channel(
            f"127.0.0.1:{port}", token=self.tokens.token_for(role), default_timeout=60
        )
        self.channels.append(channel)
        return channel

    def executor(self, role: Role = Role.SERVICE) -> executor_pb2_grpc.ExecutorServiceStub:
        return executor_pb2_grpc.ExecutorServiceStub(self._channel(self.executor_port, role))

    def gpus(self, role: Role = Role.SERVICE) -> gpu_pb2_grpc.GpuManagerServiceStub:
        return gpu_pb2_grpc.GpuManagerServiceStub(self._channel(self.gpu_port, role))

    async def lease(self, job_id: str, ttl: int = 60) -> gpu_pb2.Lease:
        reply: gpu_pb2.AcquireLeaseResponse = await self.gpus().AcquireLease(
            gpu_pb2.AcquireLeaseRequest(job_id=job_id, ttl_seconds=ttl)
        )
        return reply.lease

    async def start(self, job_id: str, **spec: Any) -> executor_pb2.Run:
        lease = await self.lease(job_id)
        reply: executor_pb2.StartRunResponse = await self.executor().StartRun(
            executor_pb2.StartRunRequest(config=job_config(job_id, **spec), lease=lease)
        )
        return reply.run

    async def events(self, run_id: str, after: int = 0) -> list[executor_pb2.RunEvent]:
        stream = self.executor(Role.AGENT).StreamRunEvents(
            executor_pb2.StreamRunEventsRequest(run_id=run_id, from_sequence=after)
        )
        return [reply.event async for reply in stream]


@asynccontextmanager
async def running_suite(
    home: Path, data_root: Path, *, backend: str = "simulated", **executor: Any
) -> AsyncIterator[Suite]:
    """A gpu-manager (``backend``) and an executor on ``home``, served in this process."""
    tokens = TokenStore.ensure(home)
    gpu_settings = GpuManagerSettings(home=home, port=0, backend=backend)
    gpu = await gpu_main.start(gpu_settings, tokens)
    settings = ExecutorSettings(
        home=home,
        port=0,
        gpu_manager_address=f"127.0.0.1:{gpu.port}",
        data_root=data_root,
        **executor,
    )
    server = await executor_main.start(settings, tokens)
    suite = Suite(home, tokens, gpu.port, server.port)
    try:
        yield suite
    finally:
        for channel in suite.channels:
            await channel.close()
        await server.stop(0)
        await gpu.stop(0)


@pytest.fixture
async def suite(tmp_path: Path, data_root: Path) -> AsyncIterator[Suite]:
    async with running_suite(
        tmp_path / "ws",
        data_root,
        heartbeat_seconds=0.3,
        cancel_grace_seconds=2.0,
        event_flush_ms=10,
        log_every_steps=2,
    ) as suite:
        yield suite
