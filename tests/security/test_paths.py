"""Every field that takes a path, in every service, against '..', absolute paths and
symlinks out of the workspace: all refused, nothing outside touched, no shell ever run."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message

from arc.common.v1 import common_pb2
from arc.executor.v1 import executor_pb2
from arc.governance.v1 import governance_pb2
from arc.scheduler.v1 import scheduler_pb2
from arc_common.auth import Role, TokenStore
from arc_common.convert import dict_to_proto
from tests.security.suite import ProcessSuite
from tests.security.test_fuzz import STUBS

SPEC: dict[str, Any] = {
    "experiment_id": "paths",
    "architecture": {"family": "resnet", "variant": "resnet18"},
    "hyperparameters": {"batch_size": 4, "epochs": 1, "optimizer": {"learning_rate": 0.001}},
    "dataset": {"dataset_id": "d", "data_path": "datasets/fundus"},
}


def with_spec_path(value: str) -> common_pb2.ExperimentSpec:
    spec = dict_to_proto(SPEC, common_pb2.ExperimentSpec)
    spec.dataset.data_path = value
    return spec


def job_config(field: str, value: str) -> common_pb2.TrainingJobConfig:
    config = dict_to_proto(
        {
            "job_id": "j",
            "experiment_spec": SPEC,
            "checkpoint_dir": "runs/j/c",
            "log_dir": "runs/j/l",
        },
        common_pb2.TrainingJobConfig,
    )
    if field == "data_path":
        config.experiment_spec.dataset.data_path = value
    else:
        setattr(config, field, value)
    return config


# (service, rpc, build the request around one hostile path value)
CASES: dict[str, tuple[str, str, Callable[[str], Message]]] = {
    "CreateExperiment.spec.dataset.data_path": (
        "scheduler",
        "CreateExperiment",
        lambda v: scheduler_pb2.CreateExperimentRequest(spec=with_spec_path(v)),
    ),
    "SubmitJob.spec.dataset.data_path": (
        "scheduler",
        "SubmitJob",
        lambda v: scheduler_pb2.SubmitJobRequest(spec=with_spec_path(v)),
    ),
    "StartRun.config.checkpoint_dir": (
        "executor",
        "StartRun",
        lambda v: executor_pb2.StartRunRequest(config=job_config("checkpoint_dir", v)),
    ),
    "StartRun.config.log_dir": (
        "executor",
        "StartRun",
        lambda v: executor_pb2.StartRunRequest(config=job_config("log_dir", v)),
    ),
    "StartRun.dataset.data_path": (
        "executor",
        "StartRun",
        lambda v: executor_pb2.StartRunRequest(config=job_config("data_path", v)),
    ),
    "PrepareRun.config.checkpoint_dir": (
        "executor",
        "PrepareRun",
        lambda v: executor_pb2.PrepareRunRequest(config=job_config("checkpoint_dir", v)),
    ),
    "PrepareRun.config.log_dir": (
        "executor",
        "PrepareRun",
        lambda v: executor_pb2.PrepareRunRequest(config=job_config("log_dir", v)),
    ),
    "PrepareRun.dataset.data_path": (
        "executor",
        "PrepareRun",
        lambda v: executor_pb2.PrepareRunRequest(config=job_config("data_path", v)),
    ),
    "PreprocessDataset.input_path": (
        "executor",
        "PreprocessDataset",
        lambda v: executor_pb2.PreprocessDatasetRequest(
            dataset_id="d", input_path=v, output_path="datasets/out"
        ),
    ),
    "PreprocessDataset.output_path": (
        "executor",
        "PreprocessDataset",
        lambda v: executor_pb2.PreprocessDatasetRequest(
            dataset_id="d", input_path="datasets/in", output_path=v
        ),
    ),
    "EvaluateCheckpoint.checkpoint_path": (
        "executor",
        "EvaluateCheckpoint",
        lambda v: executor_pb2.EvaluateCheckpointRequest(
            checkpoint_path=v, data_path="datasets/in"
        ),
    ),
    "EvaluateCheckpoint.data_path": (
        "executor",
        "EvaluateCheckpoint",
        lambda v: executor_pb2.EvaluateCheckpointRequest(
            checkpoint_path="runs/x/best.pt", data_path=v
        ),
    ),
    "ListCheckpoints.checkpoint_dir": (
        "executor",
        "ListCheckpoints",
        lambda v: executor_pb2.ListCheckpointsRequest(checkpoint_dir=v),
    ),
    "DeleteCheckpoint.path": (
        "executor",
        "DeleteCheckpoint",
        lambda v: executor_pb2.DeleteCheckpointRequest(path=v),
    ),
    "DeleteCheckpoint.retention.checkpoint_dir": (
        "executor",
        "DeleteCheckpoint",
        lambda v: executor_pb2.DeleteCheckpointRequest(
            retention=executor_pb2.RetentionRule(checkpoint_dir=v, keep_best=0)
        ),
    ),
    "GenerateVisualizations.output_dir": (
        "executor",
        "GenerateVisualizations",
        lambda v: executor_pb2.GenerateVisualizationsRequest(
            checkpoint_path="runs/x/best.pt", data_path="datasets/in", output_dir=v
        ),
    ),
    "SyncDatasets.dataset_ids": (
        "executor",
        "SyncDatasets",
        lambda v: executor_pb2.SyncDatasetsRequest(
            direction=executor_pb2.SYNC_DIRECTION_PULL, dataset_ids=[v]
        ),
    ),
    "BeginTransaction.paths": (
        "governance",
        "BeginTransaction",
        lambda v: governance_pb2.BeginTransactionRequest(
            tool=governance_pb2.TOOL_MANAGE_CHECKPOINTS, paths=[v]
        ),
    ),
}

ATTACKS = ["../../outside", "/etc/passwd", "escape/secret.txt", "escape", "escape/../../x"]
REFUSED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
}


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessSuite]:
    root = tmp_path_factory.mktemp("paths")
    outside = root / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("keep me")
    home = root / "ws"
    home.mkdir()
    (home / "escape").symlink_to(outside)
    processes = ProcessSuite(home)
    asyncio.run(processes.start())
    yield processes
    processes.stop()


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("attack", ATTACKS)
def test_hostile_path_refused(suite: ProcessSuite, case: str, attack: str) -> None:
    service, method, build = CASES[case]
    outside = suite.home.parent / "outside"
    before = digest(outside)
    token = TokenStore.load(suite.home).token_for(Role.OPERATOR)
    with (
        grpc.insecure_channel(f"127.0.0.1:{suite.ports()[service]}") as channel,
        pytest.raises(grpc.RpcError) as info,
    ):
        getattr(STUBS[service](channel), method)(
            build(attack), metadata=[("authorization", f"Bearer {token}")], timeout=30
        )
    assert info.value.code() in REFUSED, f"{case} with {attack!r}: {info.value.code()}"
    assert digest(outside) == before
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert all(suite.alive().values())


def test_shell_metacharacters_reach_nothing_but_literals(
    suite: ProcessSuite, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    hostile = f"x; touch {marker}; $(touch {marker}) `touch {marker}` | touch {marker}"
    token = TokenStore.load(suite.home).token_for(Role.OPERATOR)
    spec = dict_to_proto(
        {**SPEC, "description": hostile, "experiment_id": "meta-1"}, common_pb2.ExperimentSpec
    )
    with grpc.insecure_channel(f"127.0.0.1:{suite.ports()['scheduler']}") as channel:
        reply = STUBS["scheduler"](channel).CreateExperiment(
            scheduler_pb2.CreateExperimentRequest(spec=spec),
            metadata=[("authorization", f"Bearer {token}")],
            timeout=30,
        )
    assert reply.experiment.spec.description == hostile
    stored = (suite.home / "experiments" / "meta-1" / "spec.json").read_text()
    assert "touch" in stored
    with (
        grpc.insecure_channel(f"127.0.0.1:{suite.ports()['executor']}") as channel,
        pytest.raises(grpc.RpcError),
    ):
        STUBS["executor"](channel).ApplyCodePatch(
            executor_pb2.ApplyCodePatchRequest(repository="models", patch=hostile, message=hostile),
            metadata=[("authorization", f"Bearer {token}")],
            timeout=30,
        )
    assert not marker.exists()
