"""The run state machine over a fake launcher (no process, no torch, no socket): every way
a run ends sets its state and its typed cause, on the Run and on the terminal event.

The fake is what a launcher that runs trainers elsewhere would be: one more class with the
``launcher.Launcher`` methods, and nothing else changes."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from arc_common import sqlite
from arc_common.errors import FailedPreconditionError
from arc_common.eventlog import EventLog
from arc_common.models import (
    ExperimentResult,
    FailureClass,
    JobState,
    Lease,
    Run,
    RunEndCause,
    RunEvent,
    TrainingJobConfig,
)
from services.executor.launcher import Locator, ToolCall, ToolExit, TrainerLaunch
from services.executor.procfs import oom_kills
from services.executor.protocol import TrainerMessage, dump
from services.executor.run_store import SqliteRunStore
from services.executor.runs import RunManager
from services.executor.settings import ExecutorSettings


class FakeTrainer:
    def __init__(self, launch: TrainerLaunch) -> None:
        self.launch = launch
        self.gpus: list[int] | None = list(launch.gpu_indices or []) or None
        self.stderr: list[str] = []
        self._lines: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._exit: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    @property
    def pid(self) -> int:
        return 0

    @property
    def locator(self) -> Locator:
        return Locator()

    async def messages(self) -> AsyncIterator[bytes]:
        while (line := await self._lines.get()) is not None:
            yield line

    def say(self, **message: Any) -> None:
        self._lines.put_nowait(dump(TrainerMessage(**message)).encode() + b"\n")

    def exit(self, code: int) -> None:
        if not self._exit.done():
            self._lines.put_nowait(None)
            self._exit.set_result(code)


class FakeLauncher:
    def __init__(self) -> None:
        self.trainers: list[FakeTrainer] = []
        self.leftovers: set[str] = set()  # runs whose launch outlived a dead executor

    async def start(self, launch: TrainerLaunch) -> FakeTrainer:
        trainer = FakeTrainer(launch)
        self.trainers.append(trainer)
        return trainer

    async def activate(self, launched: Any, gpu_indices: Sequence[int]) -> None:
        launched.gpus = list(gpu_indices)

    async def signal(self, launched: Any, *, grace: float) -> None:
        launched.exit(-15)

    async def wait(self, launched: Any) -> int:
        code: int = await launched._exit
        return code

    async def error_tail(self, launched: Any, lines: int) -> list[str]:
        return list(launched.stderr[-lines:])

    async def recover(self, run_id: str, locator: Locator, *, grace: float) -> bool:
        return run_id in self.leftovers

    async def run_tool(self, call: ToolCall) -> ToolExit:
        raise NotImplementedError

    async def close(self) -> None:
        pass


class FakeLeases:
    def __init__(self) -> None:
        self.stale = False

    async def renew(self, lease: Lease) -> Lease:
        if self.stale:
            raise FailedPreconditionError("stale fencing token", field="lease")
        return lease


LEASE = Lease(lease_id="l1", job_id="j1", gpu_indices=[0], fencing_token=1)


def config(timeout: int = 600) -> TrainingJobConfig:
    return TrainingJobConfig.model_validate(
        {
            "job_id": "j1",
            "experiment_spec": {
                "experiment_id": "e1",
                "architecture": {"family": "resnet", "variant": "resnet18", "num_classes": 2},
                "hyperparameters": {
                    "batch_size": 4,
                    "epochs": 1,
                    "optimizer": {"type": "adam", "learning_rate": 0.001},
                },
                "dataset": {"dataset_id": "d", "data_path": "datasets/d", "image_size": 32},
            },
            "checkpoint_dir": "runs/j1/checkpoints",
            "log_dir": "runs/j1/logs",
            "timeout_seconds": timeout,
        }
    )


class Bench:
    def __init__(self, manager: RunManager, launcher: FakeLauncher, leases: FakeLeases) -> None:
        self.manager = manager
        self.launcher = launcher
        self.leases = leases

    async def start(self, timeout: int = 600) -> tuple[Run, FakeTrainer]:
        run = await self.manager.start(config(timeout), LEASE, request_id="")
        return run, self.launcher.trainers[-1]

    async def ended(self, run_id: str) -> tuple[Run, RunEndCause | None]:
        """The run once it ended, and the cause on its last StateChange event."""
        run = await asyncio.wait_for(self.manager.wait(run_id), timeout=10)
        await self.manager.events.flush()
        changes = [
            e.state_change for e in await self.manager.events.read(run_id, 0) if e.state_change
        ]
        assert all(c.cause is None for c in changes[:-1])  # only the end has a cause
        return run, changes[-1].cause


@pytest.fixture
async def bench(tmp_path: Path) -> AsyncIterator[Bench]:
    (tmp_path / "datasets" / "d").mkdir(parents=True)
    db = await sqlite.connect(tmp_path / "executor.sqlite3")
    events = EventLog(db, model=RunEvent, table="run_events", key_field="run_id", flush_ms=5)
    await events.open()
    store = SqliteRunStore(db)
    await store.open()
    settings = ExecutorSettings(home=tmp_path, heartbeat_seconds=0.02)
    launcher, leases = FakeLauncher(), FakeLeases()
    yield Bench(RunManager(settings, store, events, leases, launcher), launcher, leases)
    await events.close()
    await db.close()


def result() -> ExperimentResult:
    return ExperimentResult(job_id="j1", state=JobState.COMPLETED, best_metrics={"auc": 0.9})


async def test_a_run_that_completes(bench: Bench) -> None:
    run, trainer = await bench.start()
    trainer.say(kind="state", state="running", reason="training")
    trainer.say(kind="result", result=result())
    trainer.exit(0)
    ended, cause = await bench.ended(run.run_id)
    assert (ended.state, ended.end_cause, cause) == (
        JobState.COMPLETED,
        RunEndCause.COMPLETED,
        RunEndCause.COMPLETED,
    )
    assert ended.result is not None and ended.result.best_metrics == {"auc": 0.9}


@pytest.mark.parametrize(
    ("said", "cause"), [("oom", RunEndCause.OOM), ("failed", RunEndCause.FAILED)]
)
async def test_a_trainer_that_reports_its_error(bench: Bench, said: str, cause: str) -> None:
    run, trainer = await bench.start()
    trainer.stderr = ["Traceback", "torch.OutOfMemoryError: CUDA out of memory"]
    trainer.say(kind="state", state="failed", reason="boom", cause=said)
    trainer.exit(1)
    ended, event_cause = await bench.ended(run.run_id)
    assert (ended.state, ended.end_cause, event_cause) == (JobState.FAILED, cause, cause)
    assert ended.error_message.startswith("trainer exited with 1\nTraceback")


async def test_a_trainer_that_dies_without_a_word_crashed(bench: Bench) -> None:
    run, trainer = await bench.start()
    trainer.say(kind="state", state="running", reason="training")
    trainer.exit(-9)
    ended, cause = await bench.ended(run.run_id)
    assert (ended.state, ended.end_cause, cause) == (
        JobState.FAILED,
        RunEndCause.CRASHED,
        RunEndCause.CRASHED,
    )
    assert "trainer exited with -9" in ended.error_message


async def test_a_trainer_the_kernel_killed_for_memory_ran_out_of_memory(
    bench: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL that no one here sent, while the memory cgroup's OOM-kill count grew: the
    host ran out of memory (the count is the kernel's; faked here, parsed below)."""
    kills = itertools.count(4)  # one more kill each time it is read
    monkeypatch.setattr("services.executor.runs.oom_kills", lambda: next(kills))
    monkeypatch.setattr("services.executor.live.oom_kills", lambda: next(kills))
    run, trainer = await bench.start()
    trainer.exit(-9)
    ended, cause = await bench.ended(run.run_id)
    assert (ended.end_cause, cause) == (RunEndCause.OOM, RunEndCause.OOM)
    assert ended.failure is not None
    assert ended.failure.failure_class is FailureClass.OUT_OF_MEMORY
    assert "out-of-memory killer" in ended.error_message


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_the_oom_kill_count_is_read_from_either_cgroup_version(
    tmp_path: Path, version: str
) -> None:
    proc = tmp_path / "cgroup"
    if version == "v1":
        proc.write_text("5:cpu:/\n4:memory:/box/a\n0::/\n")
        target = tmp_path / "memory" / "box" / "a" / "memory.oom_control"
        text = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"
    else:
        proc.write_text("0::/box/a\n")
        target = tmp_path / "box" / "a" / "memory.events"
        text = "low 0\nhigh 0\nmax 2\noom 1\noom_kill 3\n"
    target.parent.mkdir(parents=True)
    target.write_text(text)
    assert oom_kills(str(proc), str(tmp_path)) == 3
    assert oom_kills(str(tmp_path / "missing"), str(tmp_path)) is None


async def test_a_trainer_that_prunes_itself(bench: Bench) -> None:
    run, trainer = await bench.start()
    trainer.say(kind="state", state="pruned", reason="divergence: loss is nan")
    trainer.exit(0)
    ended, cause = await bench.ended(run.run_id)
    assert (ended.state, ended.end_cause, cause) == (
        JobState.PRUNED,
        RunEndCause.PRUNED,
        RunEndCause.PRUNED,
    )
    assert "divergence" in ended.error_message


@pytest.mark.parametrize(
    ("prune", "state", "cause"),
    [
        (False, JobState.CANCELLED, RunEndCause.CANCELLED),
        (True, JobState.PRUNED, RunEndCause.PRUNED),
    ],
)
async def test_a_cancel_ends_cancelled_or_pruned(
    bench: Bench, prune: bool, state: JobState, cause: RunEndCause
) -> None:
    run, _ = await bench.start()
    cancelled = await bench.manager.cancel(run.run_id, "below the median", prune=prune)
    ended, event_cause = await bench.ended(run.run_id)
    assert (cancelled.state, ended.end_cause, event_cause) == (state, cause, cause)
    assert ended.error_message == "below the median"


async def test_a_lost_lease_stops_the_run(bench: Bench) -> None:
    run, _ = await bench.start()
    bench.leases.stale = True  # the next heartbeat is refused
    ended, cause = await bench.ended(run.run_id)
    assert (ended.state, ended.end_cause, cause) == (
        JobState.FAILED,
        RunEndCause.LOST_LEASE,
        RunEndCause.LOST_LEASE,
    )
    assert ended.error_message.startswith("lease lost")


async def test_a_run_past_its_timeout(bench: Bench) -> None:
    run, _ = await bench.start(timeout=1)
    ended, cause = await bench.ended(run.run_id)
    assert (ended.state, ended.end_cause, cause) == (
        JobState.TIMED_OUT,
        RunEndCause.TIMED_OUT,
        RunEndCause.TIMED_OUT,
    )


async def test_shutdown_and_restart_end_runs_by_the_executor(bench: Bench) -> None:
    run, _ = await bench.start()
    await bench.manager.close()
    ended, cause = await bench.ended(run.run_id)
    assert (ended.state, ended.end_cause, cause) == (
        JobState.FAILED,
        RunEndCause.EXECUTOR_SHUTDOWN,
        RunEndCause.EXECUTOR_SHUTDOWN,
    )

    # A run the store still holds as live (the executor died): recovered as ended.
    orphan = run.model_copy(update={"run_id": "j1-orphan", "state": JobState.RUNNING})
    await bench.manager.store.save(orphan, locator=Locator(pgid=4242, started=7))
    bench.launcher.leftovers = {"j1-orphan"}
    assert await bench.manager.recover() == 1
    recovered, cause = await bench.ended("j1-orphan")
    assert (recovered.state, recovered.end_cause) == (
        JobState.FAILED,
        RunEndCause.EXECUTOR_SHUTDOWN,
    )
    assert "process group 4242 was killed" in recovered.error_message


async def test_a_prepared_run_gets_its_gpus_at_activation(bench: Bench) -> None:
    run = await bench.manager.prepare(config(), request_id="p1")
    trainer = bench.launcher.trainers[-1]
    assert run.state is JobState.QUEUED and trainer.gpus is None
    active = await bench.manager.activate(run.run_id, LEASE)
    assert active.state is JobState.STARTING and trainer.gpus == [0]
    assert active.config is not None and active.config.gpu_ids == [0]
    trainer.say(kind="result", result=result())
    trainer.exit(0)
    ended, cause = await bench.ended(run.run_id)
    assert (ended.state, cause) == (JobState.COMPLETED, RunEndCause.COMPLETED)


async def test_a_prepare_whose_caller_goes_away_still_launches(bench: Bench) -> None:
    """A scheduler killed mid-PrepareRun cancels the call; its retry, by request id, must
    find a run with a trainer it can activate."""
    gate, reached = asyncio.Event(), asyncio.Event()
    start = bench.launcher.start

    async def slow_start(launch: TrainerLaunch) -> FakeTrainer:
        reached.set()  # the run is recorded; its trainer is on its way
        await gate.wait()
        return await start(launch)

    bench.launcher.start = slow_start  # type: ignore[method-assign]
    first = asyncio.create_task(bench.manager.prepare(config(), request_id="p2"))
    await reached.wait()
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    gate.set()
    run = await bench.manager.prepare(config(), request_id="p2")
    active = await bench.manager.activate(run.run_id, LEASE)
    assert active.state is JobState.STARTING and bench.launcher.trainers[-1].gpus == [0]
