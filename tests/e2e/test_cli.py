"""The suite as a person starts it (``arc up``), driven through the ``arc`` command and
grpcurl; and the compose file checked against the compose specification."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from arc_common.auth import Role, TokenStore
from arc_common.models import JobEvent, MetricResult
from arc_common.packed import unpack
from clients.arc_client import Addresses, ArcClient
from tests.conftest import REPO_ROOT
from tests.e2e.test_code_experiments import BREAK, NETS, WIDEN
from tests.helpers import sandbox_reachable_home
from tests.security.suite import git

BIN = Path(sys.executable).parent
ARC = str(BIN / "arc")
SERVICES = {
    0: "arc.scheduler.v1.SchedulerService",
    1: "arc.gpu.v1.GpuManagerService",
    2: "arc.governance.v1.GovernanceService",
    3: "arc.executor.v1.ExecutorService",
}


def free_port_base() -> int:
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base: int = probe.getsockname()[1]
        if base > 60000:
            continue
        sockets = []
        try:
            for offset in range(4):
                s = socket.socket()
                s.bind(("127.0.0.1", base + offset))
                sockets.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no four free consecutive ports")


class Suite:
    def __init__(self, home: Path, base: int, process: subprocess.Popen[str]) -> None:
        self.home = home
        self.base = base
        self.process = process

    def arc(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [ARC, "--home", str(self.home), "--port-base", str(self.base), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO_ROOT,
            check=False,
        )


@pytest.fixture(scope="module")
def suite() -> Iterator[Suite]:
    home = sandbox_reachable_home("arc-up-")  # code-defined runs read it as another user
    base = free_port_base()
    process = subprocess.Popen(
        [ARC, "--home", str(home), "--port-base", str(base), "up"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "ARC_GPU_MANAGER_BACKEND": "simulated"},
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 120
    lines = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        lines.append(line)
        if "Ctrl-C stops everything" in line or not line:
            break
    assert any("ARC suite up" in line for line in lines), "".join(lines)
    yield Suite(home, base, process)
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=60)
        print(rest)
    process.stdout.close()
    shutil.rmtree(home, ignore_errors=True)


async def watched_both_ways(suite: Suite, job_id: str) -> tuple[list[JobEvent], list[JobEvent]]:
    async with ArcClient(Addresses.from_port_base(suite.base), home=suite.home) as client:
        singles = [e async for e in client.watch(job_id)]
        batched = [e async for e in client.watch(job_id, batch_metrics=True)]
    return singles, batched


def expanded(events: list[JobEvent]) -> list[tuple[int, MetricResult | JobEvent]]:
    """Each metric under its own number; other events as they are."""
    out: list[tuple[int, MetricResult | JobEvent]] = []
    for event in events:
        if event.metrics is not None:
            batch = unpack(event.metrics)
            first = event.sequence - len(batch) + 1
            out.extend((first + i, metric) for i, metric in enumerate(batch))
        elif event.metric is not None:
            out.append((event.sequence, event.metric))
        else:
            out.append((event.sequence, event))
    return out


def test_cli_runs_a_tiny_experiment(suite: Suite) -> None:
    made = suite.arc("data", "synth", "--count", "24", "--size", "32", "--seed", "2")
    assert made.returncode == 0, made.stderr
    spec = {
        "name": "cli-tiny",
        "model": "resnet18",
        "lr": 0.001,
        "batch": 8,
        "epochs": 1,
        "data_path": "datasets/fundus",
        "image_size": 32,
        "priority": 6,
    }
    (suite.home / "spec.yaml").write_text(yaml.safe_dump(spec))
    submitted = suite.arc("--json", "submit", str(suite.home / "spec.yaml"))
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)[0]["job"]
    watched = suite.arc("watch", job_id)
    assert watched.returncode == 0, watched.stdout + watched.stderr
    assert "epoch 1" in watched.stdout and "completed" in watched.stdout
    # What the client library gives a program: the same metrics under the same numbers,
    # one event per metric or one per batch the trainer sent.
    singles, batched = asyncio.run(watched_both_ways(suite, job_id))
    assert all(e.metric is None for e in batched)
    assert len(batched) < len(singles) and expanded(batched) == expanded(singles)
    assert any(isinstance(m, MetricResult) and m.name == "val_auc" for _, m in expanded(batched))
    results = json.loads(suite.arc("--json", "results").stdout)
    assert [r["job"] for r in results] == [job_id]
    [row] = results
    assert row["ranked_by"] == "val_auc" and 0.0 <= row["val"] <= 1.0
    assert row["auc_ci_lower"] <= row["auc"] <= row["auc_ci_upper"]
    table = suite.arc("results").stdout
    assert "AUC [95% CI]" in table and f"{row['auc']:.3f} [" in table
    # The same checkpoint on the same images, evaluated as its own job: its own row.
    evaluated = suite.arc(
        "--json", "evaluate", job_id, "--data", "datasets/fundus", "--dataset-id", "again"
    )
    assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
    # ... and the same figures under the same names, zeros included (a dropped 0.0 would
    # be a missing key here).
    figures = [
        json.loads(suite.arc("--json", "status", job).stdout)["result"]["best_metrics"]
        for job in (job_id, json.loads(evaluated.stdout)[0]["job"])
    ]
    trained = {k: v for k, v in figures[0].items() if k.startswith("test_") and k != "test_loss"}
    assert sorted(figures[1]) == sorted(trained)
    assert figures[1] == pytest.approx(trained, abs=1e-9, nan_ok=True)
    rows = json.loads(suite.arc("--json", "results", "--evaluations").stdout)
    assert [(r["job"] == job_id, r["on"]) for r in rows] == [
        (True, "acuvue/test"),
        (False, "again/test"),
    ]
    assert rows[1]["auc"] == pytest.approx(row["auc"], abs=1e-9)
    # A model against itself on val and test: the same AUC, no difference.
    compared = suite.arc("--json", "compare", job_id, job_id)
    assert compared.returncode == 0, compared.stdout + compared.stderr
    pairs = json.loads(compared.stdout)
    assert [r["split"] for r in pairs] == ["val", "test"]
    assert pairs[1]["auc_a"] == pytest.approx(row["auc"], abs=1e-9)
    assert all(r["difference"] == 0.0 for r in pairs)
    assert "B - A [95% CI]" in suite.arc("compare", job_id, job_id, "--splits", "test").stdout
    refused = suite.arc("evaluate", job_id, "--data", "datasets/fundus", "--bootstrap", "0")
    assert refused.returncode != 0 and "evaluation.bootstrap_samples" in refused.stderr
    status = suite.arc("status", job_id)
    assert "completed" in status.stdout and "test_auc" in status.stdout
    gpus = suite.arc("gpus")
    assert "simulated" in gpus.stdout and "True" in gpus.stdout  # GPU2 reserved
    queue = json.loads(suite.arc("--json", "queue").stdout)
    assert queue["queue_length"] == 0
    assert suite.arc("queue", "--limit", "5").returncode == 0
    too_many = suite.arc("queue", "--limit", "1001")
    assert too_many.returncode != 0 and "queued_limit" in too_many.stdout + too_many.stderr
    verify = suite.arc("audit", "verify")
    assert verify.returncode == 0 and "OK" in verify.stdout
    audit = suite.arc("--json", "audit", "list")
    assert any(r["action"] == "validate" for r in json.loads(audit.stdout))
    assert "autonomous" in suite.arc("mode").stdout
    exported = suite.arc("audit", "export").stdout.splitlines()
    assert exported and all(json.loads(line)["hash"] for line in exported)


def test_a_sealed_experiment_is_released_by_the_operator(suite: Suite) -> None:
    """Its test figures are out of an agent's leaderboard until ``--reveal-test``."""
    if not (suite.home / "datasets" / "fundus").is_dir():
        assert suite.arc("data", "synth", "--count", "24", "--size", "32").returncode == 0
    spec = {"name": "cli-sealed", "model": "resnet18", "epochs": 1, "batch": 8}
    (suite.home / "sealed.yaml").write_text(
        yaml.safe_dump({**spec, "image_size": 32, "seal_test": True})
    )
    submitted = suite.arc("--json", "submit", str(suite.home / "sealed.yaml"))
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)[0]["job"]
    assert suite.arc("watch", job_id).returncode == 0
    agent = TokenStore.load(suite.home).token_for(Role.AGENT)
    mine = ("--json", "results", "--experiment", "cli-sealed")

    def row(*token: str) -> dict[str, Any]:
        shown = suite.arc(*token, *mine)
        assert shown.returncode == 0, shown.stderr
        [only] = json.loads(shown.stdout)
        assert isinstance(only, dict)
        return only

    sealed = row("--token", agent)
    assert sealed["test_sealed"] and "test sealed" in sealed["flag"] and sealed["auc"] is None
    assert sealed["val"] is not None  # ranked by validation all the same
    operator = row()
    assert operator["auc"] is not None and not operator["test_sealed"]
    refused = suite.arc("--token", agent, "results", "--reveal-test", "cli-sealed")
    assert refused.returncode != 0 and "operator" in refused.stderr
    released = suite.arc("results", "--reveal-test", "cli-sealed", "--reason", "final")
    assert released.returncode == 0, released.stderr
    assert row("--token", agent)["auc"] == operator["auc"]


def test_cli_exit_codes_tell_errors_apart(suite: Suite) -> None:
    missing = suite.arc("status", "job-does-not-exist")
    assert missing.returncode == 3 and "NOT_FOUND" in missing.stderr
    (suite.home / "bad.yaml").write_text("model: resnet18\nlr: 7\n")
    bad = suite.arc("submit", str(suite.home / "bad.yaml"))
    assert bad.returncode == 4 and "learning_rate" in bad.stderr and "Suggestion" in bad.stderr
    forbidden = suite.arc("--token", "wrong-token", "queue")
    assert forbidden.returncode == 5 and "UNAUTHENTICATED" in forbidden.stderr
    down = subprocess.run(
        [ARC, "--port-base", "1", "--home", str(suite.home), "queue"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert down.returncode == 6 and "arc up" in down.stderr


def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "grpcurl"), *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_a_sweep_from_the_command_line(suite: Suite) -> None:
    made = suite.arc("data", "synth", "--out", "datasets/sweep", "--count", "24", "--size", "32")
    assert made.returncode == 0, made.stderr
    sweep = {
        "name": "cli-sweep",
        "base": {
            "model": "resnet18",
            "batch": 8,
            "epochs": 2,
            "image_size": 32,
            "data_path": "datasets/sweep",
        },
        "sampler": "random",
        "max_trials": 3,
        "max_parallel": 2,
        "parameters": {
            "hyperparameters.optimizer.learning_rate": {"log_uniform": [1.0e-4, 1.0e-2]},
            "hyperparameters.batch_size": {"categorical": [4, 8]},
        },
    }
    (suite.home / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    watched = suite.arc("sweep", "create", str(suite.home / "sweep.yaml"), "--watch")
    assert watched.returncode == 0, watched.stdout + watched.stderr
    assert "completed: 3/3 trials" in watched.stdout and "best " in watched.stdout
    assert "[##########] 2/2" in watched.stdout  # a trial's progress bar, full
    listed = json.loads(suite.arc("--json", "sweep", "list").stdout)
    [row] = [r for r in listed if r["name"] == "cli-sweep"]
    assert row["state"] == "completed" and row["created_by"] == "operator"
    results = json.loads(suite.arc("--json", "sweep", "results", row["sweep"]).stdout)
    trials = results["trials"]
    assert [t["rank"] for t in trials] == [1, 2, 3]
    assert [t["value"] for t in trials] == sorted((t["value"] for t in trials), reverse=True)
    assert all(t["params"]["hyperparameters.batch_size"] in (4, 8) for t in trials)
    for trial in trials:
        status = json.loads(suite.arc("--json", "status", trial["job"]).stdout)
        assert status["state"] == "completed"
    (suite.home / "proposal.yaml").write_text(yaml.safe_dump(sweep["base"]))
    known = suite.arc("--json", "history", str(suite.home / "proposal.yaml"))
    assert known.returncode == 0, known.stderr
    history = json.loads(known.stdout)
    assert {t["job"] for t in trials} <= {n["job"] for n in history["nearest"]}
    assert history["best"][0]["value"] >= max(t["value"] for t in trials)
    again = suite.arc("sweep", "cancel", row["sweep"])
    assert again.returncode == 4 and "nothing to cancel" in again.stderr
    broken = suite.home / "broken.yaml"
    broken.write_text(yaml.safe_dump({**sweep, "max_trials": 20_000}))
    refused = suite.arc("sweep", "create", str(broken))
    assert refused.returncode == 4 and "sweep.max_trials" in refused.stderr


def test_grpcurl_smoke(suite: Suite) -> None:
    token = (suite.home / "auth_token").read_text().strip()
    for offset, service in SERVICES.items():
        address = f"127.0.0.1:{suite.base + offset}"
        listed = grpcurl("-plaintext", address, "list")
        assert listed.returncode == 0, listed.stderr
        assert service in listed.stdout and "grpc.health.v1.Health" in listed.stdout
        health = grpcurl(
            "-plaintext",
            "-d",
            json.dumps({"service": service}),
            address,
            "grpc.health.v1.Health/Check",
        )
        assert '"SERVING"' in health.stdout
    gpu = f"127.0.0.1:{suite.base + 1}"
    described = grpcurl("-plaintext", gpu, "describe", "arc.gpu.v1.GpuManagerService")
    assert "AcquireLease" in described.stdout
    without = grpcurl("-plaintext", gpu, "arc.gpu.v1.GpuManagerService/ListGpus")
    assert without.returncode != 0 and "Unauthenticated" in without.stderr
    with_token = grpcurl(
        "-plaintext",
        "-H",
        f"authorization: Bearer {token}",
        gpu,
        "arc.gpu.v1.GpuManagerService/ListGpus",
    )
    assert with_token.returncode == 0, with_token.stderr
    listing = json.loads(with_token.stdout)
    assert len(listing["gpus"]) == 3 and listing["reserved_count"] == 1


def test_patch_then_submit_that_revision(suite: Suite) -> None:
    """The agent loop as two commands: `arc patch apply` prints the commit, and
    `arc submit --revision` trains it; a broken patch reads CODE_ERROR at its line."""
    made = suite.arc("data", "synth", "--out", "datasets/code", "--count", "16", "--size", "32")
    assert made.returncode == 0, made.stderr
    repo = suite.home / "code" / "models"
    (repo / "acuvue").mkdir(parents=True)
    (repo / "acuvue" / "__init__.py").write_text("")
    (repo / "acuvue" / "nets.py").write_text(NETS)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "models")
    spec = {
        "name": "cli-code",
        "lr": 0.001,
        "batch": 8,
        "epochs": 1,
        "data_path": "datasets/code",
        "image_size": 32,
        "source": {"repository": "models", "entrypoint": "acuvue.nets:build_model"},
    }
    (suite.home / "code.yaml").write_text(yaml.safe_dump(spec))
    (suite.home / "widen.diff").write_text(WIDEN)
    (suite.home / "break.diff").write_text(BREAK)

    applied = suite.arc(
        "--json", "patch", "apply", str(suite.home / "widen.diff"), "--repo", "models"
    )
    assert applied.returncode == 0, applied.stderr
    commit = json.loads(applied.stdout)["commit_sha"]
    assert commit == git(repo, "rev-parse", "HEAD").strip()
    submitted = suite.arc("--json", "submit", str(suite.home / "code.yaml"), "--revision", commit)
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)[0]["job"]
    watched = suite.arc("watch", job_id)
    assert watched.returncode == 0, watched.stdout + watched.stderr
    status = json.loads(suite.arc("--json", "status", job_id).stdout)
    provenance = status["result"]["provenance"]
    assert provenance["source"]["commit"] == commit and provenance["parameter_count"] == 242

    broken = suite.arc("patch", "apply", str(suite.home / "break.diff"), "--message", "oops")
    assert broken.returncode == 0, broken.stderr
    bad_commit = broken.stdout.split()[0]
    spec["name"] = "cli-code-broken"
    (suite.home / "code.yaml").write_text(yaml.safe_dump(spec))
    submitted = suite.arc(
        "--json", "submit", str(suite.home / "code.yaml"), "--revision", bad_commit
    )
    job_id = json.loads(submitted.stdout)[0]["job"]
    watched = suite.arc("watch", job_id)
    assert watched.returncode == 8
    assert "CODE_ERROR at acuvue/nets.py:2" in watched.stdout, watched.stdout
    shown = suite.arc("status", job_id).stdout
    assert "CODE_ERROR at acuvue/nets.py:2" in shown and "fix it" in shown

    refused = suite.arc("submit", str(suite.home / "code.yaml"), "--revision", "no-such-ref")
    assert refused.returncode == 3 and "source.revision" in refused.stderr
    option = suite.arc("submit", str(suite.home / "code.yaml"), "--revision=--upload-pack=x")
    assert option.returncode == 4 and "source.revision" in option.stderr


def test_audit_list_is_newest_first_paginated_and_filtered(suite: Suite) -> None:
    newest = json.loads(suite.arc("--json", "audit", "list", "--limit", "3").stdout)
    sequences = [r["seq"] for r in newest]
    assert len(sequences) == 3 and sequences == sorted(sequences, reverse=True)
    page = suite.arc("audit", "list", "--limit", "2").stdout
    token = page.strip().splitlines()[-1].split("--page ")[1]
    following = json.loads(
        suite.arc("--json", "audit", "list", "--limit", "1", "--page", token).stdout
    )
    assert following[0]["seq"] == sequences[2]
    oldest = json.loads(
        suite.arc("--json", "audit", "list", "--oldest-first", "--limit", "2").stdout
    )
    assert [r["seq"] for r in oldest] == [1, 2]
    picked = json.loads(
        suite.arc(
            "--json", "audit", "list", "--tool", "run_training_job", "--decision", "allowed"
        ).stdout
    )
    assert picked and all(
        r["tool"] == "run_training_job" and r["decision"] == "allowed" for r in picked
    )


def test_the_research_tools_from_the_command_line(suite: Suite) -> None:
    """preprocess, visualize, checkpoints list/keep/delete and data sync: each an `arc`
    subcommand over the governed tool."""
    for out, splits in (("datasets/tools", "0.5,0.25,0.25"), ("datasets/tools-flat", "")):
        made = suite.arc(
            "data", "synth", "--out", out, "--count", "16", "--size", "32", "--splits", splits
        )
        assert made.returncode == 0, made.stderr
    pre = ["preprocess", "datasets/tools-flat", "datasets/tools-48", "--step", "resize:size=48"]
    first = suite.arc("--json", *pre, "--step", "green_channel")
    assert first.returncode == 0, first.stderr
    done = json.loads(first.stdout)
    assert sum(done["images_per_class"].values()) == 16 and done["image_size"] == [48, 48]
    again = json.loads(suite.arc("--json", *pre, "--step", "green_channel").stdout)
    assert again["reused"] is True
    typo = suite.arc(*pre[:-1], "resize:sise=5")
    assert typo.returncode == 4 and "resize takes size" in typo.stderr

    spec = {"name": "cli-tools", "model": "resnet18", "lr": 0.001, "batch": 8, "epochs": 2}
    spec |= {"data_path": "datasets/tools", "image_size": 32}
    (suite.home / "tools.yaml").write_text(yaml.safe_dump(spec))
    job_id = json.loads(suite.arc("--json", "submit", str(suite.home / "tools.yaml")).stdout)[0][
        "job"
    ]
    assert suite.arc("watch", job_id).returncode == 0

    listed = json.loads(suite.arc("--json", "checkpoints", "list", job_id).stdout)
    kinds = {row["kind"] for row in listed}
    assert {"best", "last"} <= kinds, listed
    shown = json.loads(
        suite.arc("--json", "visualize", job_id, "--data", "datasets/tools", "--num", "2").stdout
    )
    assert len(shown["images"]) == 2 and (suite.home / shown["index"]).is_file()

    folder = str(Path(listed[0]["path"]).parent)
    kept = suite.arc("--json", "checkpoints", "keep", folder, "--best", "1")
    assert kept.returncode == 0, kept.stderr
    remaining = json.loads(suite.arc("--json", "checkpoints", "list", folder).stdout)
    assert 1 <= len(remaining) < len(listed)
    deleted = suite.arc("--json", "checkpoints", "delete", remaining[0]["path"])
    assert deleted.returncode == 0, deleted.stderr
    assert json.loads(deleted.stdout) == [{"deleted": remaining[0]["path"]}]

    pushed = suite.arc("--json", "data", "sync", "push", "tools-flat")
    assert pushed.returncode == 0, pushed.stderr
    [transfer] = json.loads(pushed.stdout)
    assert transfer["dataset_id"] == "tools-flat" and transfer["files"] > 0


def test_arc_up_stops_cleanly_on_sigint(suite: Suite) -> None:
    suite.process.send_signal(signal.SIGINT)
    rest, _ = suite.process.communicate(timeout=90)
    assert suite.process.returncode == 0, rest
    assert "stopped" in rest


def test_compose_file_validates(tmp_path: Path) -> None:
    checker = str(BIN / "check-jsonschema")
    compose = REPO_ROOT / "docker-compose.yml"
    ok = subprocess.run(
        [checker, "--builtin-schema", "vendor.compose-spec", str(compose)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    data = yaml.safe_load(compose.read_text())
    assert set(data["services"]) == {"scheduler", "gpu-manager", "governance", "executor"}
    for name in ("gpu-manager", "executor"):
        devices = data["services"][name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia"
    broken = tmp_path / "broken.yml"
    data["services"]["scheduler"]["healthcheck"]["interval"] = ["not", "a", "duration"]
    broken.write_text(yaml.safe_dump(data))
    bad = subprocess.run(
        [checker, "--builtin-schema", "vendor.compose-spec", str(broken)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert bad.returncode != 0
