"""The whole suite in one process: governance, N machines (gpu-manager + executor) and the
scheduler, all real servers on 127.0.0.1:0 sharing one workspace."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from grpc import aio

from arc.common.v1 import common_pb2
from arc.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc, sweep_pb2_grpc
from arc_common.auth import TOKENS_FILE, Role, TokenStore
from arc_common.channel import create_channel
from arc_common.convert import dict_to_proto
from arc_common.server import ServerHandle
from arc_common.synth import generate_dataset
from services.executor import __main__ as executor_main
from services.executor.settings import ExecutorSettings
from services.governance import __main__ as governance_main
from services.governance.settings import GovernanceSettings
from services.gpu_manager import __main__ as gpu_main
from services.gpu_manager.settings import GpuManagerSettings
from services.scheduler import __main__ as scheduler_main
from services.scheduler.settings import NodeAddress, SchedulerSettings

IMAGE_SIZE = 32
TERMINAL = {
    common_pb2.JOB_STATE_COMPLETED,
    common_pb2.JOB_STATE_FAILED,
    common_pb2.JOB_STATE_CANCELLED,
    common_pb2.JOB_STATE_TIMED_OUT,
    common_pb2.JOB_STATE_PRUNED,
}


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("scheduler-data")
    generate_dataset(
        root / "data" / "fundus", count=24, size=IMAGE_SIZE, seed=5, splits=(0.5, 0.25, 0.25)
    )
    return root


def spec(
    experiment_id: str, *, epochs: int = 1, priority: int | None = None, **overrides: Any
) -> common_pb2.ExperimentSpec:
    data: dict[str, Any] = {
        "experiment_id": experiment_id,
        "architecture": {"family": "resnet", "variant": "resnet18"},
        "hyperparameters": {
            "batch_size": 8,
            "epochs": epochs,
            "optimizer": {"learning_rate": 0.001},
            "seed": 1,
        },
        "dataset": {
            "dataset_id": "fundus",
            "dataset_type": "split_folders",
            "data_path": "data/fundus",
            "image_size": IMAGE_SIZE,
        },
        "cycle_id": 1,
        "max_training_time_seconds": 600,
    }
    if priority is not None:
        data["priority"] = priority
    for key, value in overrides.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return dict_to_proto(data, common_pb2.ExperimentSpec)


@dataclass
class Suite:
    home: Path
    tokens: TokenStore
    port: int
    servers: list[ServerHandle]
    channels: list[aio.Channel] = field(default_factory=list)

    def _channel(self, who: Role | str) -> aio.Channel:
        token = self.tokens.token_for(who) if isinstance(who, Role) else self._token_of(who)
        channel = create_channel(f"127.0.0.1:{self.port}", token=token, default_timeout=120)
        self.channels.append(channel)
        return channel

    def _token_of(self, name: str) -> str:
        entries = json.loads((self.home / TOKENS_FILE).read_text())["tokens"]
        return next(str(e["token"]) for e in entries if e["name"] == name)

    def stub(self, who: Role | str = Role.AGENT) -> scheduler_pb2_grpc.SchedulerServiceStub:
        return scheduler_pb2_grpc.SchedulerServiceStub(self._channel(who))

    def sweeps(self, who: Role | str = Role.AGENT) -> sweep_pb2_grpc.SweepServiceStub:
        return sweep_pb2_grpc.SweepServiceStub(self._channel(who))

    async def submit(self, experiment: common_pb2.ExperimentSpec, **kw: Any) -> scheduler_pb2.Job:
        reply: scheduler_pb2.SubmitJobResponse = await self.stub().SubmitJob(
            scheduler_pb2.SubmitJobRequest(spec=experiment, **kw)
        )
        return reply.job

    async def job(self, job_id: str) -> scheduler_pb2.Job:
        reply: scheduler_pb2.GetJobResponse = await self.stub().GetJob(
            scheduler_pb2.GetJobRequest(job_id=job_id)
        )
        return reply.job

    async def wait(
        self,
        job_id: str,
        until: Callable[[scheduler_pb2.Job], bool] | None = None,
        seconds: float = 180,
    ) -> scheduler_pb2.Job:
        check = until or (lambda j: j.state in TERMINAL)
        deadline = asyncio.get_running_loop().time() + seconds
        while True:
            job = await self.job(job_id)
            if check(job):
                return job
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"{job_id}: {job}")
            await asyncio.sleep(0.1)


Factory = Callable[..., Awaitable[Suite]]


@pytest.fixture
async def make_suite(tmp_path: Path, tiny_data: Path) -> AsyncIterator[Factory]:
    suites: list[Suite] = []

    async def make(
        machines: int = 1,
        gpus_per_machine: int = 1,
        policy: str | None = None,
        agents: tuple[str, ...] = (),
        **scheduler_settings: Any,
    ) -> Suite:
        """``agents``: more agent identities, by name, besides the default one."""
        home = tmp_path / f"ws{len(suites)}"
        home.mkdir(parents=True)
        if policy is not None:
            (home / "policy.yaml").write_text(policy)
        tokens = TokenStore.ensure(home)
        if agents:
            data = json.loads((home / TOKENS_FILE).read_text())
            data["tokens"] += [
                {"name": name, "role": "agent", "token": secrets.token_urlsafe(32)}
                for name in agents
            ]
            (home / TOKENS_FILE).write_text(json.dumps(data))
            tokens = TokenStore.load(home)
        servers: list[ServerHandle] = []
        governance_settings = GovernanceSettings(home=home, port=0)
        servers.append(await governance_main.start(governance_settings, tokens))
        nodes = []
        for index in range(machines):
            name = f"m{index}"
            gpu_settings = GpuManagerSettings(
                home=home / "machines" / name,
                port=0,
                backend="simulated",
                simulated_count=gpus_per_machine,
                reserved_gpus=(),
                node_name=name,
            )
            TokenStore.ensure(gpu_settings.home)
            gpu_server = await gpu_main.start(gpu_settings, tokens)
            executor_settings = ExecutorSettings(
                home=gpu_settings.home,
                port=0,
                data_root=tiny_data,
                governance_address=f"127.0.0.1:{servers[0].port}",
                gpu_manager_address=f"127.0.0.1:{gpu_server.port}",
                heartbeat_seconds=1.0,
                cancel_grace_seconds=1.0,
                event_flush_ms=10,
                log_every_steps=1,
            )
            executor_server = await executor_main.start(executor_settings, tokens)
            servers += [gpu_server, executor_server]
            nodes.append(
                NodeAddress(
                    name=name,
                    gpu_manager=f"127.0.0.1:{gpu_server.port}",
                    executor=f"127.0.0.1:{executor_server.port}",
                )
            )
        settings = SchedulerSettings(
            home=home,
            port=0,
            nodes=tuple(nodes),
            governance_address=f"127.0.0.1:{servers[0].port}",
            retry_backoff_seconds=0.1,
            probe_interval_seconds=0.5,
            dispatch_interval_seconds=0.2,
            event_flush_ms=10,
            **scheduler_settings,
        )
        scheduler_server = await scheduler_main.start(settings, tokens)
        servers.append(scheduler_server)
        suite = Suite(home, tokens, scheduler_server.port, servers)
        suites.append(suite)
        return suite

    yield make
    for suite in suites:
        for channel in suite.channels:
            await channel.close()
        for server in reversed(suite.servers):
            await server.stop(0)
