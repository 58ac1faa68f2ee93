"""Governance, a gpu-manager and an executor (real servers) over one workspace holding a
generated dataset, a trained checkpoint and a git repository of model code."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from grpc import aio

from arc.executor.v1 import executor_pb2_grpc
from arc.governance.v1 import governance_pb2_grpc
from arc_common.auth import Role, TokenStore
from arc_common.channel import create_channel
from arc_common.models import CheckpointInfo, TrainingJobConfig
from arc_common.server import ServerHandle
from arc_common.synth import generate_dataset
from services.executor import __main__ as executor_main
from services.executor.protocol import TrainerInput
from services.executor.registry import CheckpointRegistry
from services.executor.settings import ExecutorSettings
from services.governance import __main__ as governance_main
from services.governance.settings import GovernanceSettings
from services.gpu_manager import __main__ as gpu_main
from services.gpu_manager.settings import GpuManagerSettings

SIZE = 40


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace template: datasets/fundus (split folders) and runs/r1/checkpoints,
    registered as the executor registers what its trainers report."""
    from services.executor.trainer.train import Reporter, train

    root = tmp_path_factory.mktemp("tools-template")
    generate_dataset(
        root / "datasets" / "fundus", count=48, size=SIZE, seed=3, splits=(0.5, 0.25, 0.25)
    )
    config = TrainingJobConfig.model_validate(
        {
            "job_id": "r1",
            "checkpoint_dir": "runs/r1/checkpoints",
            "log_dir": "runs/r1/logs",
            "experiment_spec": {
                "experiment_id": "e1",
                "architecture": {"family": "resnet", "variant": "resnet18"},
                "hyperparameters": {
                    "batch_size": 8,
                    "epochs": 2,
                    "optimizer": {"learning_rate": 0.001},
                    "seed": 1,
                },
                "dataset": {
                    "dataset_id": "fundus",
                    "data_path": "datasets/fundus",
                    "image_size": SIZE,
                    "dataset_type": "split_folders",
                },
            },
        }
    )
    reported: dict[str, CheckpointInfo] = {}
    train(
        TrainerInput(
            run_id="r1",
            config=config,
            workspace=str(root),
            data_path=str(root / "datasets/fundus"),
            checkpoint_dir=str(root / "runs/r1/checkpoints"),
            log_dir=str(root / "runs/r1/logs"),
        ),
        Reporter(
            metric=lambda *a, **k: None,
            checkpoint=lambda c: reported.__setitem__(c.path, c),
            state=lambda s, r: None,
        ),
    )
    registry = CheckpointRegistry(root)  # its key travels with the copied workspace
    for info in reported.values():
        assert registry.register(root / info.path, info.sha256)
    registry.claim(root / "runs/r1", Role.AGENT.value)  # r1 is the agent's job
    return root


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, check=True, capture_output=True, text=True
    ).stdout


@dataclass
class Tools:
    home: Path
    tokens: TokenStore
    executor_port: int
    governance_port: int
    gpu_port: int
    channels: list[aio.Channel] = field(default_factory=list)

    def channel(self, port: int, role: Role) -> aio.Channel:
        channel = create_channel(
            f"127.0.0.1:{port}", token=self.tokens.token_for(role), default_timeout=300
        )
        self.channels.append(channel)
        return channel

    def executor(self, role: Role = Role.AGENT) -> executor_pb2_grpc.ExecutorServiceStub:
        return executor_pb2_grpc.ExecutorServiceStub(self.channel(self.executor_port, role))

    def governance(self, role: Role = Role.OPERATOR) -> governance_pb2_grpc.GovernanceServiceStub:
        return governance_pb2_grpc.GovernanceServiceStub(self.channel(self.governance_port, role))


@pytest.fixture
async def tools(tmp_path: Path, trained: Path) -> AsyncIterator[Tools]:
    home = tmp_path / "ws"
    shutil.copytree(trained, home, symlinks=True)
    repo = home / "code" / "models"
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    (repo / "net.py").write_text("import torch\n\nWIDTH = 64\n")
    (repo / "configs").mkdir()
    (repo / "configs" / "train.yaml").write_text("lr: 0.001\n")
    git(repo, "add", ".")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "initial")
    tokens = TokenStore.ensure(home)
    servers: list[ServerHandle] = []
    governance_settings = GovernanceSettings(home=home, port=0)
    servers.append(await governance_main.start(governance_settings, tokens))
    gpu_settings = GpuManagerSettings(home=home, port=0, backend="simulated")
    servers.append(await gpu_main.start(gpu_settings, tokens))
    settings = ExecutorSettings(
        home=home,
        port=0,
        gpu_manager_address=f"127.0.0.1:{servers[1].port}",
        governance_address=f"127.0.0.1:{servers[0].port}",
        approval_wait_seconds=0,
    )
    servers.append(await executor_main.start(settings, tokens))
    suite = Tools(home, tokens, servers[2].port, servers[0].port, servers[1].port)
    yield suite
    for channel in suite.channels:
        await channel.close()
    for server in reversed(servers):
        await server.stop(0)
