"""Attacks on the executor's tools through the four services as processes, with an agent's
token, the default policy, AUTONOMOUS mode (issue 19, findings 1, 4, 5, 8, 9 and 12).
Each attack is refused and has no effect. Nothing here trains."""

from __future__ import annotations

import asyncio
import hashlib
import os
import pickle
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from arc.common.v1 import common_pb2
from arc.executor.v1 import executor_pb2, executor_pb2_grpc
from arc_common.auth import Role, TokenStore
from arc_common.convert import dict_to_proto
from arc_common.synth import generate_dataset
from services.governance.policy import DEFAULT_POLICY_PATH
from tests.security.suite import ProcessSuite, git

REFUSED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.NOT_FOUND,
}
DATA = "datasets/fundus"


class Mkdir:
    """Unpickling this creates ``marker`` (what a hostile checkpoint would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
        return (os.mkdir, (str(self.marker),))


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessSuite]:
    root = tmp_path_factory.mktemp("attacks-executor")
    home = root / "ws"
    generate_dataset(home / DATA, count=8, size=32, seed=5, splits=(0.5, 0.25, 0.25))
    repo = home / "code" / "models"
    (repo / "configs").mkdir(parents=True)
    (repo / "model.py").write_text("WIDTH = 64\n")
    (repo / "x y.py").write_text("A = 1\n")
    (repo / "configs" / "train.yaml").write_text("lr: 0.001\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "initial")
    (root / "outside").mkdir()
    shutil.copyfile(DEFAULT_POLICY_PATH, home / "policy.yaml")  # an operator's own policy
    processes = ProcessSuite(home)
    asyncio.run(processes.start())
    yield processes
    processes.stop()


def call(suite: ProcessSuite, method: str, request: Any, role: Role = Role.AGENT) -> Any:
    token = TokenStore.load(suite.home).token_for(role)
    with grpc.insecure_channel(f"127.0.0.1:{suite.ports()['executor']}") as channel:
        stub = executor_pb2_grpc.ExecutorServiceStub(channel)
        return getattr(stub, method)(
            request, metadata=[("authorization", f"Bearer {token}")], timeout=60
        )


def refused(
    suite: ProcessSuite, method: str, request: Any, role: Role = Role.AGENT
) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(suite, method, request, role)
    assert info.value.code() in REFUSED, (method, info.value.code(), info.value.details())
    assert all(suite.alive().values())
    return info.value


def marker(suite: ProcessSuite, name: str) -> Path:
    return suite.home.parent / "outside" / name


# --- finding 1: no code runs from a checkpoint ------------------------------------------


def patch_adding(name: str, text: str) -> str:
    lines = text.splitlines()
    body = "".join(f"+{line}\n" for line in lines)
    return (
        f"diff --git a/{name} b/{name}\nnew file mode 100644\n--- /dev/null\n+++ b/{name}\n"
        f"@@ -0,0 +1,{len(lines)} @@\n{body}"
    )


def test_pickle_planted_by_patches_never_runs(suite: ProcessSuite) -> None:
    target = marker(suite, "pwned-by-patch")
    payload = pickle.dumps(Mkdir(target), protocol=0).decode()  # text: fits in a patch
    digest = hashlib.sha256(payload.encode() + b"\n").hexdigest()
    repo = suite.home / "code" / "models"
    # The payload and its digest as .py files (allowed by the globs), then renamed.
    for number, (name, text) in enumerate([("p.py", payload), ("d.py", f"{digest}  x.pt\n")]):
        call(
            suite,
            "ApplyCodePatch",
            executor_pb2.ApplyCodePatchRequest(
                request_id=f"plant-{number}", repository="models", patch=patch_adding(name, text)
            ),
        )
    head = git(repo, "rev-parse", "HEAD")
    rename = (
        "diff --git a/p.py b/x.pt\nsimilarity index 100%\nrename from p.py\nrename to x.pt\n"
        "diff --git a/d.py b/x.pt.sha256\nsimilarity index 100%\nrename from d.py\n"
        "rename to x.pt.sha256\n"
    )
    error = refused(
        suite,
        "ApplyCodePatch",
        executor_pb2.ApplyCodePatchRequest(repository="models", patch=rename),
    )
    assert "x.pt" in (error.details() or "")
    assert git(repo, "rev-parse", "HEAD") == head and not (repo / "x.pt").exists()
    # Planted anyway (a stand-in for any other way in): still never loaded.
    (repo / "x.pt").write_text(payload + "\n")
    (repo / "x.pt.sha256").write_text(f"{digest}  x.pt\n")
    for method, request in [
        ("EvaluateCheckpoint", executor_pb2.EvaluateCheckpointRequest),
        ("GenerateVisualizations", executor_pb2.GenerateVisualizationsRequest),
    ]:
        error = refused(suite, method, request(checkpoint_path="code/models/x.pt", data_path=DATA))
        assert "checkpoint_path" in (error.details() or "")
    assert not target.exists()
    (repo / "x.pt").unlink()
    (repo / "x.pt.sha256").unlink()


def test_pickle_with_a_checksum_in_a_run_folder_never_runs(suite: ProcessSuite) -> None:
    target = marker(suite, "pwned-in-runs")
    folder = suite.home / "runs" / "evil" / "checkpoints"
    folder.mkdir(parents=True)
    data = pickle.dumps(Mkdir(target))
    digest = hashlib.sha256(data).hexdigest()
    (folder / "best.pt").write_bytes(data)
    (folder / "best.pt.sha256").write_text(f"{digest}  best.pt\n")
    (folder / "best.pt.mac").write_text(digest)  # a MAC without the key is a guess
    for method, request in [
        ("EvaluateCheckpoint", executor_pb2.EvaluateCheckpointRequest),
        ("GenerateVisualizations", executor_pb2.GenerateVisualizationsRequest),
    ]:
        error = refused(
            suite, method, request(checkpoint_path="runs/evil/checkpoints/best.pt", data_path=DATA)
        )
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "checkpoint_path" in (error.details() or "")
    assert not target.exists()


# --- finding 4: the services' own files are out of every tool's reach ----------------------

RESERVED = [
    "tokens.json",
    "auth_token",
    "policy.yaml",
    "executor.sqlite3",
    "governance",
    "governance/x.pt",
    ".secrets/checkpoints.key",
    "runs/.hidden.pt",
    "runs/keys",  # a symlink to .secrets
    "datasets/keys",  # a symlink to .secrets
    "runs/tokens",  # a symlink to tokens.json
]


def _cases() -> dict[str, Callable[[str], tuple[str, Any, Role]]]:
    chain = common_pb2.PreprocessingChain(chain_id="c")
    e = executor_pb2
    agent = Role.AGENT
    return {
        "PreprocessDataset.input_path": lambda v: (
            "PreprocessDataset",
            e.PreprocessDatasetRequest(
                dataset_id="d", input_path=v, output_path="datasets/o", chain=chain
            ),
            agent,
        ),
        "PreprocessDataset.output_path": lambda v: (
            "PreprocessDataset",
            e.PreprocessDatasetRequest(dataset_id="d", input_path=DATA, output_path=v, chain=chain),
            agent,
        ),
        "EvaluateCheckpoint.checkpoint_path": lambda v: (
            "EvaluateCheckpoint",
            e.EvaluateCheckpointRequest(checkpoint_path=v, data_path=DATA),
            agent,
        ),
        "EvaluateCheckpoint.data_path": lambda v: (
            "EvaluateCheckpoint",
            e.EvaluateCheckpointRequest(
                checkpoint_path="runs/evil/checkpoints/best.pt", data_path=v
            ),
            agent,
        ),
        "ListCheckpoints.checkpoint_dir": lambda v: (
            "ListCheckpoints",
            e.ListCheckpointsRequest(checkpoint_dir=v),
            agent,
        ),
        "DeleteCheckpoint.path": lambda v: (
            "DeleteCheckpoint",
            e.DeleteCheckpointRequest(path=v),
            agent,
        ),
        "DeleteCheckpoint.retention.checkpoint_dir": lambda v: (
            "DeleteCheckpoint",
            e.DeleteCheckpointRequest(retention=e.RetentionRule(checkpoint_dir=v, keep_best=0)),
            Role.OPERATOR,  # retention is an operator's; even they cannot reach these
        ),
        "GenerateVisualizations.checkpoint_path": lambda v: (
            "GenerateVisualizations",
            e.GenerateVisualizationsRequest(checkpoint_path=v, data_path=DATA),
            agent,
        ),
        "GenerateVisualizations.data_path": lambda v: (
            "GenerateVisualizations",
            e.GenerateVisualizationsRequest(
                checkpoint_path="runs/evil/checkpoints/best.pt", data_path=v
            ),
            agent,
        ),
        "GenerateVisualizations.output_dir": lambda v: (
            "GenerateVisualizations",
            e.GenerateVisualizationsRequest(
                checkpoint_path="runs/evil/checkpoints/best.pt", data_path=DATA, output_dir=v
            ),
            agent,
        ),
        "SyncDatasets.dataset_ids": lambda v: (
            "SyncDatasets",
            e.SyncDatasetsRequest(direction=e.SYNC_DIRECTION_PUSH, dataset_ids=[v]),
            agent,
        ),
        "SyncDatasets.remote": lambda v: (
            "SyncDatasets",
            e.SyncDatasetsRequest(
                direction=e.SYNC_DIRECTION_PUSH, dataset_ids=["fundus"], remote=v
            ),
            agent,
        ),
    }


CASES = _cases()


def _protected(home: Path) -> dict[str, str]:
    """The services' files: the bytes of credentials, policy and keys, which no tool call
    may change; the presence of the rest (databases and the audit change by themselves)."""
    fixed = {"tokens.json", "auth_token", "policy.yaml"}
    out = {}
    for path in [*home.glob("*"), *(home / ".secrets").glob("*")]:
        if path.is_file() and not path.name.endswith(("-wal", "-shm", "-journal")):
            rel = str(path.relative_to(home))
            hashed = rel in fixed or path.suffix == ".key"
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest() if hashed else "present"
    return out


@pytest.fixture(scope="module")
def planted(suite: ProcessSuite) -> ProcessSuite:
    for name, target in [("runs/keys", "../.secrets"), ("datasets/keys", "../.secrets")]:
        (suite.home / name).parent.mkdir(parents=True, exist_ok=True)
        (suite.home / name).symlink_to(target)
    (suite.home / "runs" / "tokens").symlink_to("../tokens.json")
    return suite


@pytest.mark.parametrize(
    ("case", "reserved"),
    [
        (case, reserved)
        for case in sorted(CASES)
        for reserved in RESERVED
        # A dataset id names datasets/<id>: datasets/governance is no reserved place.
        if not (case == "SyncDatasets.dataset_ids" and reserved == "governance")
    ],
)
def test_no_tool_reaches_the_services_files(
    planted: ProcessSuite, case: str, reserved: str
) -> None:
    before = _protected(planted.home)
    assert {"tokens.json", "auth_token", ".secrets/checkpoints.key"} <= set(before)
    method, request, role = CASES[case](reserved)
    error = refused(planted, method, request, role)
    assert case.split(".", 1)[1] in (error.details() or ""), error.details()
    assert _protected(planted.home) == before


@pytest.mark.parametrize("path", ["tokens.json", "policy.yaml", "auth_token"])
def test_delete_checkpoint_cannot_delete_keys_or_policy(suite: ProcessSuite, path: str) -> None:
    target = suite.home / path
    assert target.exists()
    content = target.read_bytes()
    error = refused(
        suite, "DeleteCheckpoint", executor_pb2.DeleteCheckpointRequest(request_id=path, path=path)
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "path" in (error.details() or "")
    assert target.read_bytes() == content


# --- finding 5: patches parsed by git ---------------------------------------------------

PATCHES = {
    "rename-to-run.sh": (
        "diff --git a/model.py b/run.sh\nsimilarity index 100%\nrename from model.py\n"
        "rename to run.sh\n",
        "run.sh",
    ),
    "copy-to-Makefile": (
        "diff --git a/model.py b/Makefile\nsimilarity index 100%\ncopy from model.py\n"
        "copy to Makefile\n",
        "Makefile",
    ),
    "empty-executable-riding-along": (
        "diff --git a/model.py b/model.py\n--- a/model.py\n+++ b/model.py\n@@ -1 +1 @@\n"
        "-WIDTH = 64\n+WIDTH = 32\ndiff --git a/evil.py b/evil.py\nnew file mode 100755\n"
        "index 0000000..e69de29\n",
        "evil.py",
    ),
    "mode-change": (
        "diff --git a/model.py b/model.py\nold mode 100644\nnew mode 100755\n",
        "",
    ),
    "symlink-0120000": (
        "diff --git a/link.py b/link.py\nnew file mode 0120000\n--- /dev/null\n+++ b/link.py\n"
        "@@ -0,0 +1 @@\n+/etc/passwd\n\\ No newline at end of file\n",
        "link.py",
    ),
    "symlink-two-spaces": (
        "diff --git a/link.py b/link.py\nnew file mode  120000\n--- /dev/null\n+++ b/link.py\n"
        "@@ -0,0 +1 @@\n+/etc/passwd\n\\ No newline at end of file\n",
        "link.py",
    ),
    "quoted-through-a-symlink": (
        'diff --git "a/lnk/q\\tz.py" "b/lnk/q\\tz.py"\nnew file mode 100644\n--- /dev/null\n'
        '+++ "b/lnk/q\\tz.py"\n@@ -0,0 +1 @@\n+X = 1\n',
        "lnk",
    ),
    "rename-to-x.pt": (
        "diff --git a/model.py b/x.pt\nsimilarity index 100%\nrename from model.py\n"
        "rename to x.pt\n",
        "x.pt",
    ),
}


@pytest.mark.parametrize("shape", sorted(PATCHES))
def test_patch_shapes_are_refused_and_commit_nothing(suite: ProcessSuite, shape: str) -> None:
    repo = suite.home / "code" / "models"
    if not (repo / "lnk").is_symlink():
        (repo / "lnk").symlink_to(suite.home.parent / "outside")
    patch, created = PATCHES[shape]
    log = git(repo, "log", "--format=%H")
    model = (repo / "model.py").read_bytes()
    refused(
        suite,
        "ApplyCodePatch",
        executor_pb2.ApplyCodePatchRequest(request_id=shape, repository="models", patch=patch),
    )
    assert git(repo, "log", "--format=%H") == log
    assert git(repo, "status", "--porcelain", "--untracked-files=no") == ""
    assert (repo / "model.py").read_bytes() == model
    assert not (repo / "model.py").stat().st_mode & 0o111
    if created and created != "lnk":
        assert not (repo / created).exists() and not (repo / created).is_symlink()
    assert sorted(p.name for p in (suite.home.parent / "outside").iterdir()) == []


def test_files_changed_comes_from_git(suite: ProcessSuite) -> None:
    repo = suite.home / "code" / "models"
    patch = (
        "diff --git a/x y.py b/x y.py\n--- a/x y.py\n+++ b/x y.py\n@@ -1 +1 @@\n-A = 1\n+A = 2\n"
    )
    reply = call(
        suite,
        "ApplyCodePatch",
        executor_pb2.ApplyCodePatchRequest(request_id="spaced", repository="models", patch=patch),
    )
    assert list(reply.files_changed) == ["x y.py"]
    assert (reply.lines_added, reply.lines_removed) == (1, 1)
    assert git(repo, "rev-parse", "HEAD").strip() == reply.commit_sha
    assert (repo / "x y.py").read_text() == "A = 2\n"


# --- finding 9: the executor's ledger binds a request id to its body ---------------------


def test_request_id_replay_and_reuse(suite: ProcessSuite) -> None:
    repo = suite.home / "code" / "models"
    first = executor_pb2.ApplyCodePatchRequest(
        request_id="once", repository="models", patch=patch_adding("once.py", "ONCE = 1")
    )
    reply = call(suite, "ApplyCodePatch", first)
    log = git(repo, "log", "--format=%H")
    assert call(suite, "ApplyCodePatch", first) == reply  # a replay: the first answer
    other = executor_pb2.ApplyCodePatchRequest(
        request_id="once", repository="models", patch=patch_adding("twice.py", "TWICE = 1")
    )
    with pytest.raises(grpc.RpcError) as info:
        call(suite, "ApplyCodePatch", other)
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "request_id" in (info.value.details() or "")
    assert git(repo, "log", "--format=%H") == log
    assert not (repo / "twice.py").exists()


# --- findings 8 and 12: bounds, never INTERNAL, nothing long on the loop ------------------


@pytest.mark.parametrize(
    ("step", "name"),
    [
        ({"type": "clahe", "params": {"grid": 0}}, "grid"),
        ({"type": "resize", "params": {"size": 2**31}}, "size"),
    ],
)
def test_unbounded_preprocessing_is_invalid_argument(
    suite: ProcessSuite, step: dict[str, Any], name: str
) -> None:
    chain = dict_to_proto({"chain_id": "c", "steps": [step]}, common_pb2.PreprocessingChain)
    error = refused(
        suite,
        "PreprocessDataset",
        executor_pb2.PreprocessDatasetRequest(
            dataset_id="b", input_path=DATA, output_path="datasets/bounded", chain=chain
        ),
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "chain.steps.0.params" in (error.details() or "") and name in (error.details() or "")
    assert not (suite.home / "datasets" / "bounded").exists()


def test_malformed_checkpoint_metadata_is_no_internal_error(suite: ProcessSuite) -> None:
    folder = suite.home / "runs" / "meta" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "last.pt").write_bytes(b"weights")
    (folder / "last.pt.json").write_text('{"epoch": "not a number", ')
    reply = call(
        suite, "ListCheckpoints", executor_pb2.ListCheckpointsRequest(checkpoint_dir="runs/meta")
    )
    assert [(c.path, dict(c.metrics)) for c in reply.checkpoints] == [
        ("runs/meta/checkpoints/last.pt", {})
    ]


def test_many_dataset_ids_are_refused_at_once_and_block_no_one(suite: ProcessSuite) -> None:
    others: list[float] = []

    def meanwhile() -> None:
        for _ in range(5):
            started = time.monotonic()
            call(
                suite, "ListCheckpoints", executor_pb2.ListCheckpointsRequest(checkpoint_dir="runs")
            )
            others.append(time.monotonic() - started)

    thread = threading.Thread(target=meanwhile)
    started = time.monotonic()
    thread.start()
    error = refused(
        suite,
        "SyncDatasets",
        executor_pb2.SyncDatasetsRequest(
            direction=executor_pb2.SYNC_DIRECTION_PULL,
            dataset_ids=[f"d{i}" for i in range(100_000)],
        ),
    )
    elapsed = time.monotonic() - started
    thread.join()
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "dataset_ids" in (error.details() or "")
    assert elapsed < 5 and max(others) < 5  # refused before any work
    assert not (suite.home / ".dvc").exists()
