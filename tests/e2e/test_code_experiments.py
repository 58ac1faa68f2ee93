"""Experiments as code (issue 22), through the four services as processes and the agent's
token: a registered repository's ``build_model`` trains at revision A; a patch through
ApplyCodePatch changes the model; revision B trains the patched model; both results name
their commits. A patch that breaks the import fails once with CODE_ERROR at its file and
line. The trainer of repository code runs as the sandbox user without the executor's
environment. Each failure class the trainer can tell is produced for real."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
import pytest_asyncio
from grpc import aio

from arc.common.v1 import common_pb2
from arc.executor.v1 import executor_pb2, executor_pb2_grpc
from arc.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from arc_common.auth import Role, TokenStore
from arc_common.channel import create_channel
from arc_common.synth import generate_dataset
from clients.arc_client import Addresses, ArcClient
from clients.orchestrator import Orchestrator
from services.executor.procfs import alive
from services.executor.sandbox_users import parse_range
from services.executor.settings import ExecutorSettings
from tests.helpers import sandbox_reachable_home
from tests.integration.scheduler.conftest import spec
from tests.security.suite import ProcessSuite, git

pytestmark = pytest.mark.asyncio(loop_scope="module")

DATA = "datasets/fundus"
SERVICE_ORDER = ("scheduler", "gpu_manager", "governance", "executor")
TERMINAL = {
    common_pb2.JOB_STATE_COMPLETED,
    common_pb2.JOB_STATE_FAILED,
    common_pb2.JOB_STATE_CANCELLED,
    common_pb2.JOB_STATE_TIMED_OUT,
    common_pb2.JOB_STATE_PRUNED,
}
NETS = """from torch import nn

WIDTH = 4


def build_model(num_classes, dropout=0.0):
    return nn.Sequential(
        nn.Conv2d(3, WIDTH, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(dropout),
        nn.Linear(WIDTH, num_classes),
    )


def wrong_shape(num_classes):
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes + 1))


def greedy(num_classes):
    return bytearray(1 << 46)
"""
PROBE = """import json
import os
import subprocess
from pathlib import Path

from acuvue.nets import build_model as _build


def build_model(num_classes, **_):
    token = Path("TOKENS_PATH")
    try:
        token.read_text()
        readable = True
    except OSError:
        readable = False
    try:
        Path("LIVE_REPO").joinpath("acuvue", "evil.py").write_text("x = 1")
        wrote_repo = True
    except OSError:
        wrote_repo = False
    # A daemon in a session of its own: no signal to the trainer's group reaches it.
    daemon = subprocess.Popen(["sleep", "600"], start_new_session=True, close_fds=True)
    Path("daemon.pid").write_text(str(daemon.pid))
    # The engine's pipe is open in this process: say the GPUs are free, and train on.
    forged = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            os.write(int(fd), b'{"kind": "released"}\\n')
            forged += os.readlink(f"/proc/self/fd/{fd}").startswith("pipe:")
        except OSError:
            pass
    status = Path("/proc/self/status").read_text()
    Path("probe.json").write_text(json.dumps({
        "no_new_privs": "NoNewPrivs:\\t1" in status,
        "forged": forged,
        "uid": os.getuid(),
        "env": sorted(os.environ),
        "home": os.environ.get("HOME"),
        "cwd": os.getcwd(),
        "tokens_readable": readable,
        "wrote_repo": wrote_repo,
    }))
    return _build(num_classes)
"""
LOSSES = """import torch


def nan_loss():
    def loss(logits, targets):
        return (logits * torch.tensor(float("nan"))).sum()

    return loss
"""
# Unified diffs: a blank context line is a single space.
WIDEN = "\n".join(
    [
        "--- a/acuvue/nets.py",
        "+++ b/acuvue/nets.py",
        "@@ -1,5 +1,5 @@",
        " from torch import nn",
        " ",
        "-WIDTH = 4",
        "+WIDTH = 8",
        " ",
        " ",
        "",
    ]
)
BREAK = "\n".join(
    [
        "--- a/acuvue/nets.py",
        "+++ b/acuvue/nets.py",
        "@@ -1,4 +1,5 @@",
        " from torch import nn",
        "+import acuvue_missing_helper",
        " ",
        " WIDTH = 8",
        " ",
        "",
    ]
)


@pytest.fixture(scope="module")
def suite() -> Iterator[ProcessSuite]:
    home = sandbox_reachable_home("arc-code-")
    generate_dataset(home / DATA, count=16, size=32, seed=3, splits=(0.5, 0.25, 0.25))
    corrupt = home / "datasets" / "corrupt"
    shutil.copytree(home / DATA, corrupt)
    first = sorted((corrupt / "train" / "normal").iterdir())[0]
    first.write_bytes(b"not an image at all")
    repo = home / "code" / "models"
    (repo / "acuvue").mkdir(parents=True)
    (repo / "acuvue" / "__init__.py").write_text("")
    (repo / "acuvue" / "nets.py").write_text(NETS)
    probe = PROBE.replace("TOKENS_PATH", str(home / "tokens.json"))
    (repo / "acuvue" / "probe.py").write_text(probe.replace("LIVE_REPO", str(repo)))
    (repo / "acuvue" / "losses.py").write_text(LOSSES)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "models")
    env = {"AWS_SECRET_ACCESS_KEY": "leaked-if-seen", "TORCH_HOME": str(home / "torch")}
    processes = ProcessSuite(home, env=env)
    asyncio.run(processes.start())
    yield processes
    processes.stop()
    shutil.rmtree(home, ignore_errors=True)


class Clients:
    def __init__(self, suite: ProcessSuite, channels: list[aio.Channel]) -> None:
        self.home = suite.home
        self.scheduler = scheduler_pb2_grpc.SchedulerServiceStub(channels[0])
        self.executor = executor_pb2_grpc.ExecutorServiceStub(channels[1])


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def clients(suite: ProcessSuite) -> AsyncIterator[Clients]:
    token = TokenStore.load(suite.home).token_for(Role.AGENT)
    assert suite.scheduler is not None and suite.executor is not None
    channels = [
        create_channel(f"127.0.0.1:{suite.scheduler.port}", token=token, default_timeout=30),
        create_channel(f"127.0.0.1:{suite.executor.port}", token=token, default_timeout=60),
    ]
    yield Clients(suite, channels)
    for channel in channels:
        await channel.close()


def code_spec(name: str, *, revision: str = "main", **source: Any) -> common_pb2.ExperimentSpec:
    made = spec(name, epochs=1)
    made.dataset.data_path = source.pop("data_path", DATA)
    made.dataset.dataset_id = "fundus"
    made.source.CopyFrom(
        common_pb2.CodeSource(
            repository=source.pop("repository", "models"),
            revision=revision,
            entrypoint=source.pop("entrypoint", "acuvue.nets:build_model"),
            **source,
        )
    )
    return made


async def finished(c: Clients, job_id: str, seconds: float = 240) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        job = (await c.scheduler.GetJob(scheduler_pb2.GetJobRequest(job_id=job_id))).job
        if job.state in TERMINAL:
            return job
        assert loop.time() < deadline, f"{job_id} still {job.state}"
        await asyncio.sleep(0.3)


async def submit(c: Clients, made: common_pb2.ExperimentSpec, retries: int = 0) -> str:
    reply = await c.scheduler.SubmitJob(
        scheduler_pb2.SubmitJobRequest(spec=made, max_retries=retries)
    )
    return str(reply.job.job_id)


def head(c: Clients) -> str:
    return git(c.home / "code" / "models", "rev-parse", "HEAD").strip()


async def test_patch_then_train_the_patch_names_both_commits(clients: Clients) -> None:
    c = clients
    commit_a = head(c)
    first = await finished(c, await submit(c, code_spec("code-a", revision="main")))
    assert first.state == common_pb2.JOB_STATE_COMPLETED, first.error_message
    patched = await c.executor.ApplyCodePatch(
        executor_pb2.ApplyCodePatchRequest(
            request_id="widen", repository="models", patch=WIDEN, message="wider"
        )
    )
    commit_b = patched.commit_sha
    assert commit_b == head(c) != commit_a
    second = await finished(c, await submit(c, code_spec("code-b", revision=commit_b)))
    assert second.state == common_pb2.JOB_STATE_COMPLETED, second.error_message
    a, b = first.result.provenance, second.result.provenance
    assert (a.source.commit, b.source.commit) == (commit_a, commit_b)
    assert a.source.revision == "main" and b.source.entrypoint == "acuvue.nets:build_model"
    # conv 3->W (27W + W), linear W->2 (2W + 2): 30W + 2 parameters.
    assert (a.parameter_count, b.parameter_count) == (30 * 4 + 2, 30 * 8 + 2)


async def test_a_fine_tune_starts_from_an_experiments_best_checkpoint(clients: Clients) -> None:
    """init_from an experiment id: its best checkpoint, resolved at submit; weights of
    another shape are SPEC_INVALID, not retried."""
    c = clients
    log = git(c.home / "code" / "models", "log", "--format=%H %s")
    wider = {subject: sha for sha, subject in (line.split(" ", 1) for line in log.splitlines())}
    made = code_spec("code-b-tuned", revision=wider["wider"])
    made.init_from = "code-b"
    tuned = await finished(c, await submit(c, made))
    assert tuned.state == common_pb2.JOB_STATE_COMPLETED, tuned.error_message
    narrow = code_spec(
        "code-a-from-b",
        revision=git(c.home / "code" / "models", "rev-list", "--max-parents=0", "HEAD").strip(),
    )
    narrow.init_from = "code-b"  # width 8 into width 4
    mismatch = await finished(c, await submit(c, narrow, retries=2))
    assert mismatch.failure.failure_class == common_pb2.FAILURE_CLASS_SPEC_INVALID
    assert "does not fit this model" in mismatch.failure.message and mismatch.attempt == 1
    for bad, code in (
        ("no-such-experiment", grpc.StatusCode.NOT_FOUND),
        ("runs/x/attempt-1/checkpoints/best.pt", grpc.StatusCode.NOT_FOUND),
        ("../tokens.pt", grpc.StatusCode.INVALID_ARGUMENT),
    ):
        wrong = code_spec(f"code-init-{code.name.lower()}-{len(bad)}", revision="main~0")
        wrong.init_from = bad
        with pytest.raises(aio.AioRpcError) as refused:
            await submit(c, wrong)
        assert refused.value.code() == code and "init_from" in (refused.value.details() or "")


async def test_the_tools_do_not_run_repository_code(clients: Clients) -> None:
    """Evaluating a code-defined checkpoint would import the repository outside the
    sandbox: refused with INVALID_ARGUMENT naming the checkpoint."""
    c = clients
    listed = await c.scheduler.ListJobs(scheduler_pb2.ListJobsRequest(page_size=100))
    [job] = [j for j in listed.jobs if j.experiment_id == "code-a"]
    [best] = [x for x in job.result.checkpoints if x.kind == common_pb2.CHECKPOINT_KIND_BEST]
    with pytest.raises(aio.AioRpcError) as refused:
        await c.executor.EvaluateCheckpoint(
            executor_pb2.EvaluateCheckpointRequest(
                checkpoint_path=best.path, data_path=DATA, split="val"
            )
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "repository code" in (refused.value.details() or "")


async def test_a_patch_that_breaks_the_import_is_a_code_error_not_a_retry(
    clients: Clients,
) -> None:
    c = clients
    broken = await c.executor.ApplyCodePatch(
        executor_pb2.ApplyCodePatchRequest(
            request_id="break", repository="models", patch=_break_patch(c), message="oops"
        )
    )
    made = code_spec("code-broken", revision=broken.commit_sha)
    job = await finished(c, await submit(c, made, retries=3))
    assert job.state == common_pb2.JOB_STATE_FAILED
    assert job.attempt == 1, "a code error would fail the same way: no retry"
    failure = job.failure
    assert failure.failure_class == common_pb2.FAILURE_CLASS_CODE_ERROR
    assert (failure.file, failure.line) == ("acuvue/nets.py", 2)
    assert failure.exception_type == "ModuleNotFoundError"
    assert "acuvue_missing_helper" in failure.message
    assert "acuvue/nets.py" in failure.summary and "fix it" in failure.summary
    assert "acuvue_missing_helper" in failure.stderr_tail


def _break_patch(c: Clients) -> str:
    nets = (c.home / "code" / "models" / "acuvue" / "nets.py").read_text()
    if "WIDTH = 8" in nets:
        return BREAK
    return BREAK.replace("WIDTH = 8", "WIDTH = 4")


async def test_repository_code_runs_as_a_uid_of_its_own_without_credentials(
    clients: Clients,
) -> None:
    c = clients
    # The live repository is broken by now: probe the first commit.
    root = git(c.home / "code" / "models", "rev-list", "--max-parents=0", "HEAD").strip()
    made = code_spec("code-probe", revision=root, entrypoint="acuvue.probe:build_model")
    job = await finished(c, await submit(c, made))
    assert job.state == common_pb2.JOB_STATE_COMPLETED, job.error_message
    work = c.home / "runs" / job.job_id / "attempt-1" / "work"
    probe = json.loads((work / "probe.json").read_text())
    assert "AWS_SECRET_ACCESS_KEY" not in probe["env"]
    assert not [name for name in probe["env"] if name.startswith("ARC_")]
    assert probe["home"] == str(work) and probe["cwd"] == str(work)
    source = c.home / "runs" / job.job_id / "attempt-1" / "source"
    assert (source / "acuvue" / "probe.py").is_file()
    assert not os.stat(source / "acuvue" / "probe.py").st_mode & 0o222  # read-only
    if os.geteuid() == 0:
        assert probe["uid"] in parse_range(ExecutorSettings().sandbox_uids)  # its own uid
        assert probe["tokens_readable"] is False
        assert probe["wrote_repo"] is False
        assert work.stat().st_uid == 0  # handed back to the executor when the run ended
        assert probe["no_new_privs"] is True  # no setuid binary gives it root back
    # Nothing it started outlives it, and its word that the GPUs were free was not taken.
    assert not alive(int((work / "daemon.pid").read_text()))
    assert probe["forged"] >= 1
    stream = c.executor.StreamRunEvents(executor_pb2.StreamRunEventsRequest(run_id=job.run_id))
    payloads = [reply.event.WhichOneof("payload") async for reply in stream]
    assert "devices_released" not in payloads and "result" in payloads


async def test_each_trainer_failure_has_its_class(clients: Clients) -> None:
    c = clients
    root = git(c.home / "code" / "models", "rev-list", "--max-parents=0", "HEAD").strip()
    cases = {
        "diverged": code_spec("code-nan", revision=root, loss="acuvue.losses:nan_loss"),
        "shape": code_spec("code-shape", revision=root, entrypoint="acuvue.nets:wrong_shape"),
        "oom": code_spec("code-oom", revision=root, entrypoint="acuvue.nets:greedy"),
        "data": code_spec("code-data", revision=root, data_path="datasets/corrupt"),
    }
    ids = {name: await submit(c, made, retries=2) for name, made in cases.items()}
    jobs = {name: await finished(c, job_id) for name, job_id in ids.items()}
    classes = {name: job.failure.failure_class for name, job in jobs.items()}
    assert classes == {
        "diverged": common_pb2.FAILURE_CLASS_DIVERGED,
        "shape": common_pb2.FAILURE_CLASS_CODE_ERROR,
        "oom": common_pb2.FAILURE_CLASS_OUT_OF_MEMORY,
        "data": common_pb2.FAILURE_CLASS_DATA_ERROR,
    }, {name: job.failure.summary for name, job in jobs.items()}
    assert jobs["diverged"].state == common_pb2.JOB_STATE_PRUNED
    assert "expected logits of shape (2, 2)" in jobs["shape"].failure.message
    assert jobs["shape"].failure.file == "acuvue/nets.py"
    assert jobs["data"].attempt == 1 and jobs["shape"].attempt == 1


@pytest.mark.parametrize(
    ("source", "field"),
    [
        ({"repository": "elsewhere"}, "source.repository"),
        ({"revision": "no-such-branch"}, "source.revision"),
        ({"entrypoint": "acuvue.absent:build_model"}, "source.entrypoint"),
        ({"loss": "acuvue.nolosses:focal"}, "source.loss"),
    ],
)
async def test_a_source_that_does_not_resolve_is_refused_at_submit(
    clients: Clients, source: dict[str, str], field: str
) -> None:
    c = clients
    before = len((await c.scheduler.ListJobs(scheduler_pb2.ListJobsRequest(page_size=100))).jobs)
    revision = source.pop("revision", "main")
    made = code_spec(f"code-bad-{field}", revision=revision, **source)
    with pytest.raises(aio.AioRpcError) as refused:
        await submit(c, made)
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    assert field in (refused.value.details() or "")
    after = len((await c.scheduler.ListJobs(scheduler_pb2.ListJobsRequest(page_size=100))).jobs)
    assert after == before, "a refused spec makes no job (and never leases a GPU)"


async def test_an_option_for_git_is_no_revision(clients: Clients) -> None:
    made = code_spec("code-option", revision="main")
    made.source.revision = "--output=/tmp/x"
    with pytest.raises(aio.AioRpcError) as refused:
        await submit(clients, made)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "source.revision" in (refused.value.details() or "")


async def test_agent_code_may_not_train_on_a_sealed_split(clients: Clients) -> None:
    made = code_spec("code-sealed", revision="main")
    made.seal_test = True
    with pytest.raises(aio.AioRpcError) as refused:
        await submit(clients, made)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "spec.source" in (refused.value.details() or "")


def new_file_patch(path: str, text: str) -> str:
    lines = text.splitlines()
    return "\n".join(
        [
            f"diff --git a/{path} b/{path}",
            "new file mode 100644",
            "--- /dev/null",
            f"+++ b/{path}",
            f"@@ -0,0 +1,{len(lines)} @@",
            *(f"+{line}" for line in lines),
            "",
        ]
    )


async def test_the_orchestrator_trains_a_proposal_carrying_a_patch(
    suite: ProcessSuite, clients: Clients
) -> None:
    ports = suite.ports()
    client = ArcClient(
        Addresses(*(f"127.0.0.1:{ports[n]}" for n in SERVICE_ORDER)),
        token=TokenStore.load(suite.home).token_for(Role.AGENT),
        home=suite.home,
    )
    base = {"lr": 0.001, "batch": 8, "epochs": 1, "data_path": DATA, "image_size": 32}
    wide = NETS.replace("WIDTH = 4", "WIDTH = 16")
    proposals = [
        base
        | {
            "name": "orch-wide",
            "patch": new_file_patch("acuvue/orch.py", wide),
            "patch_message": "a wider net",
            "source": {"entrypoint": "acuvue.orch:build_model"},
        },
        base
        | {
            "name": "orch-bad",
            "patch": new_file_patch("acuvue/orch_bad.py", 'raise RuntimeError("boom")\n'),
            "source": {"entrypoint": "acuvue.orch_bad:build_model"},
        },
    ]
    async with client:
        wide_result, bad_result = await Orchestrator(client).run(proposals, request_id="orch")
    assert wide_result.provenance is not None, wide_result.error_message
    assert wide_result.provenance.source is not None
    log = git(suite.home / "code" / "models", "log", "--format=%H %s")
    commits = {subject: sha for sha, subject in (line.split(" ", 1) for line in log.splitlines())}
    assert wide_result.provenance.source.commit == commits["a wider net"]
    assert wide_result.provenance.parameter_count == 30 * 16 + 2
    assert bad_result.error_message.startswith("CODE_ERROR at acuvue/orch_bad.py:1")


async def test_a_spec_that_cannot_run_is_refused_at_submit(clients: Clients) -> None:
    """Through the real executor: no such folder, one class only, a GPU no machine has,
    pretrained weights not on disk. None of them makes a job, so none leases a GPU."""
    c = clients
    one_class = c.home / "datasets" / "one-class"
    shutil.copytree(c.home / DATA / "train" / "normal", one_class / "normal")
    listed = await c.scheduler.ListJobs(scheduler_pb2.ListJobsRequest(page_size=100))
    cases: list[tuple[common_pb2.ExperimentSpec, grpc.StatusCode, str]] = []
    missing = spec("no-folder", epochs=1)
    missing.dataset.data_path = "datasets/nowhere"
    cases.append((missing, grpc.StatusCode.NOT_FOUND, "dataset.data_path"))
    single = spec("one-class", epochs=1)
    single.dataset.data_path = "datasets/one-class"
    single.dataset.dataset_type = common_pb2.DATASET_TYPE_IMAGE_FOLDER
    cases.append((single, grpc.StatusCode.FAILED_PRECONDITION, "at least two"))
    seven = spec("gpu-seven", epochs=1)
    seven.dataset.data_path = DATA
    seven.gpu_allocation.preference = common_pb2.GPU_PREFERENCE_SPECIFIC
    seven.gpu_allocation.gpu_indices.append(200)
    cases.append((seven, grpc.StatusCode.FAILED_PRECONDITION, "gpu_allocation.gpu_indices"))
    # The suite's TORCH_HOME is empty: the error names the file and where it goes.
    weights = spec("pretrained", epochs=1)
    weights.dataset.data_path = DATA
    weights.architecture.pretrained = True
    cases.append((weights, grpc.StatusCode.FAILED_PRECONDITION, "resnet18-f37072fd.pth to "))
    for made, code, named in cases:
        with pytest.raises(aio.AioRpcError) as refused:
            await submit(c, made)
        assert refused.value.code() == code, refused.value.details()
        assert named in (refused.value.details() or "")
    after = await c.scheduler.ListJobs(scheduler_pb2.ListJobsRequest(page_size=100))
    assert len(after.jobs) == len(listed.jobs)
