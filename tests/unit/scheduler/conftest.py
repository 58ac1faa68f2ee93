"""A scheduler over fake machines, fake governance and a fake clock: no sockets, no torch.

The store and the event log are the real SQLite ones in the test's folder, so a test can
close the scheduler and open another over the same state (a restart)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from arc_common import sqlite
from arc_common.eventlog import EventLog
from arc_common.models import ExperimentSpec, JobEvent, JobState, metric_count
from services.scheduler.__main__ import EVENTS_FILE, EVENTS_TABLE
from services.scheduler.core import Scheduler, Submission
from services.scheduler.settings import SchedulerSettings
from services.scheduler.store import JobRecord, SchedulerStore
from tests.unit.scheduler.fakes import FakeClock, FakeGovernance, FakeNode

DEFAULTS: dict[str, Any] = {
    "dispatch_interval_seconds": 0.02,
    "probe_interval_seconds": 0.05,
    "retry_backoff_seconds": 10.0,
    "retry_backoff_max_seconds": 60.0,
    "node_down_seconds": 30.0,
    "event_flush_ms": 2,
    "governance_address": "",
}


def experiment(experiment_id: str, **overrides: Any) -> ExperimentSpec:
    data: dict[str, Any] = {
        "experiment_id": experiment_id,
        "architecture": {"family": "resnet", "variant": "resnet18"},
        "hyperparameters": {
            "batch_size": 8,
            "epochs": 1,
            "optimizer": {"learning_rate": 0.001},
            "seed": 1,
        },
        "dataset": {
            "dataset_id": "fundus",
            "dataset_type": "split_folders",
            "data_path": "data/fundus",
            "image_size": 32,
        },
        "cycle_id": 1,
        "max_training_time_seconds": 600,
    }
    for key, value in overrides.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return ExperimentSpec.model_validate(data)


@dataclass
class Harness:
    home: Path
    settings: SchedulerSettings
    nodes: list[FakeNode]
    governance: FakeGovernance
    clock: FakeClock
    scheduler: Scheduler = field(init=False)
    _events_db: Any = None

    @property
    def node(self) -> FakeNode:
        return self.nodes[0]

    async def open(self, *, before_open: Callable[[Scheduler], None] | None = None) -> Scheduler:
        store = SchedulerStore(self.home / "scheduler.sqlite3")
        await store.open()
        self._events_db = await sqlite.connect(self.home / EVENTS_FILE)
        events: EventLog[JobEvent] = EventLog(
            self._events_db,
            model=JobEvent,
            table=EVENTS_TABLE,
            key_field="job_id",
            flush_ms=self.settings.event_flush_ms,
            weight=metric_count,
            span=metric_count,
        )
        self.scheduler = Scheduler(
            self.settings,
            store=store,
            events=events,
            nodes=list(self.nodes),
            governance=self.governance,
            clock=self.clock,
        )
        if before_open is not None:
            before_open(self.scheduler)
        await self.scheduler.open()
        return self.scheduler

    async def close(self) -> None:
        await self.scheduler.close()
        await self._events_db.close()

    async def restart(self, **kwargs: Any) -> Scheduler:
        await self.close()
        return await self.open(**kwargs)

    async def submit(
        self, experiment_id: str, *, priority: int | None = None, **options: Any
    ) -> JobRecord:
        spec_overrides = options.pop("spec", {})
        [job] = await self.scheduler.submit(
            [
                Submission(
                    spec=experiment(experiment_id, **spec_overrides),
                    priority=priority,
                    **options,
                )
            ],
            caller="agent",
        )
        return job

    async def until(self, check: Callable[[], bool], what: str, seconds: float = 5.0) -> None:
        """Wait for ``check`` to hold (the scheduler works in its own tasks)."""
        async with asyncio.timeout(seconds):
            # A poll: the scheduler has no one event for every change a test waits on.
            while not check():  # noqa: ASYNC110
                await asyncio.sleep(0.005)
        assert check(), what

    async def state(self, job: JobRecord, state: JobState, seconds: float = 5.0) -> None:
        await self.until(lambda: job.state is state, f"{job.job_id} {state}", seconds)

    async def running(self, job: JobRecord, node: FakeNode | None = None) -> None:
        """Until the job's run is RUNNING on ``node`` and followed."""
        where = node or self.node
        await self.state(job, JobState.RUNNING)
        attempt_dir = f"runs/{job.job_id}/attempt-{job.attempt}/checkpoints"
        await self.until(
            lambda: any(c.checkpoint_dir == attempt_dir for c in where.started), "started"
        )

    def dispatch(self) -> Awaitable[None]:
        """One dispatch pass now."""
        return self.scheduler.dispatch_once()


Factory = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[Factory]:
    made: list[Harness] = []

    async def factory(
        *,
        gpus: int = 1,
        nodes: int = 1,
        open_now: bool = True,
        node_type: type[FakeNode] = FakeNode,
        **settings: Any,
    ) -> Harness:
        home = tmp_path / f"home-{len(made)}"
        home.mkdir()
        harness = Harness(
            home=home,
            settings=SchedulerSettings(home=home, **{**DEFAULTS, **settings}),
            nodes=[node_type(f"node-{i}", gpus=gpus) for i in range(nodes)],
            governance=FakeGovernance(),
            clock=FakeClock(),
        )
        if open_now:
            await harness.open()
        made.append(harness)
        return harness

    yield factory
    for harness in made:
        if hasattr(harness, "scheduler"):
            await harness.close()
