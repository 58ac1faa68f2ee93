"""What the scheduler's parts share: settings, store, event log, clock and the indexes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from arc_common.eventlog import EventLog
from arc_common.models import JobEvent
from services.scheduler.jobs import Catalog, JobIndex
from services.scheduler.kinds import KindRegistry
from services.scheduler.nodes import Nodes
from services.scheduler.queue import JobQueue
from services.scheduler.settings import SchedulerSettings
from services.scheduler.store import JobRecord, Store, Write

Clock = Callable[[], float]


@dataclass
class Context:
    settings: SchedulerSettings
    store: Store
    events: EventLog[JobEvent]
    clock: Clock
    nodes: Nodes
    kinds: KindRegistry
    jobs: JobIndex = field(default_factory=JobIndex)
    queue: JobQueue = field(default_factory=JobQueue)
    experiments: Catalog = field(default_factory=Catalog)
    # Held by changes that must see a job's state unchanged across an await (placement,
    # cancellation, a new experiment's id).
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Set when a dispatch pass may place something it could not before.
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    # Job id -> the task following its run or executing its call.
    watchers: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def save(self, *jobs: JobRecord, also: list[Write] | None = None) -> None:
        await self.store.write(*(self.store.put_job(job) for job in jobs), *(also or []))

    def event(self, job: JobRecord, **payload: Any) -> None:
        self.events.append(job.job_id, **payload)
