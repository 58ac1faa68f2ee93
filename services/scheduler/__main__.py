"""``python -m services.scheduler`` / ``arc-scheduler``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import aiosqlite
from grpc import aio

from arc.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc, sweep_pb2, sweep_pb2_grpc
from arc_common import governance_client, sqlite
from arc_common.auth import Role, TokenStore
from arc_common.channel import create_channel
from arc_common.cli import parse_service_args
from arc_common.eventlog import EventLog
from arc_common.ledger import RequestLedger
from arc_common.logs import configure_logging
from arc_common.models import JobEvent, metric_count
from arc_common.server import (
    Registration,
    ServerHandle,
    run_service,
    serve_until_signal,
    start_server,
)
from services.scheduler.core import Scheduler
from services.scheduler.remote import GovernanceClient, GrpcNode, NodeClient
from services.scheduler.servicer import SchedulerServicer
from services.scheduler.settings import SchedulerSettings
from services.scheduler.store import SchedulerStore
from services.scheduler.sweep_servicer import SweepServicer
from services.scheduler.sweeps.ledger import SweepLedger
from services.scheduler.sweeps.manager import SchedulerJobs, SweepManager

DB_FILE = "scheduler.sqlite3"
# Job events in a file of their own: SQLite has one writer per file, and the state's group
# commits should never queue behind an event flush (or the other way round).
EVENTS_FILE = "scheduler_events.sqlite3"
EVENTS_TABLE = "job_events"
# The first answers of CreateExperiment and CancelJob by request id (arc_common.ledger).
LEDGER_FILE = "scheduler_ledger.sqlite3"
# Sweeps' trials: Optuna's journal, appended before a trial's job is submitted.
SWEEPS_FILE = "sweeps.journal"


async def move_events(events_db: aiosqlite.Connection, old_file: Path) -> None:
    """Job events of a scheduler from before EVENTS_FILE lived in DB_FILE: move them once
    (the store has opened ``old_file`` already)."""
    await events_db.execute("ATTACH DATABASE ? AS old", (str(old_file),))
    try:
        async with events_db.execute(
            "SELECT 1 FROM old.sqlite_master WHERE type = 'table' AND name = ?", (EVENTS_TABLE,)
        ) as cursor:
            if await cursor.fetchone() is None:
                return
        await events_db.execute(
            f"CREATE TABLE IF NOT EXISTS {EVENTS_TABLE} (key TEXT NOT NULL, sequence INTEGER "
            "NOT NULL, event TEXT NOT NULL, PRIMARY KEY (key, sequence)) WITHOUT ROWID"
        )
        await events_db.execute(
            f"INSERT OR IGNORE INTO {EVENTS_TABLE} SELECT key, sequence, event "
            f"FROM old.{EVENTS_TABLE}"
        )
        await events_db.commit()  # copied first: a crash before the DROP copies again
        await events_db.execute(f"DROP TABLE old.{EVENTS_TABLE}")
        await events_db.commit()
    finally:
        await events_db.execute("DETACH DATABASE old")


@dataclass
class SchedulerApp:
    scheduler: Scheduler
    events_db: aiosqlite.Connection
    ledger_db: aiosqlite.Connection
    ledger: RequestLedger
    sweeps: SweepManager
    channels: list[aio.Channel] = field(default_factory=list)

    async def stop(self) -> None:
        await self.sweeps.close()  # first: the sweeps stay running in their journal
        await self.scheduler.close()
        await self.events_db.close()
        await self.ledger_db.close()
        for channel in self.channels:
            await channel.close()


async def build_scheduler(settings: SchedulerSettings, tokens: TokenStore) -> SchedulerApp:
    token = settings.service_token or tokens.token_for(Role.SERVICE)
    channels: list[aio.Channel] = []
    nodes: list[NodeClient] = []
    for address in settings.nodes:
        gpu = create_channel(address.gpu_manager, token=token)
        executor = create_channel(address.executor, token=token)
        channels += [gpu, executor]
        nodes.append(GrpcNode(address.name, gpu, executor))
    governance: GovernanceClient | None = None
    if settings.governance_address:
        channel = create_channel(settings.governance_address, token=token)
        channels.append(channel)
        governance = governance_client.GovernanceClient(channel)
    store = SchedulerStore(settings.home / DB_FILE)
    scheduler_ref: list[Scheduler] = []

    async def mirror(events: list[JobEvent]) -> None:
        await scheduler_ref[0].write_jsonl(events)

    await store.open()
    events_db = await sqlite.connect(settings.home / EVENTS_FILE)
    await move_events(events_db, settings.home / DB_FILE)
    events = EventLog(
        events_db,
        model=JobEvent,
        table=EVENTS_TABLE,
        key_field="job_id",
        flush_ms=settings.event_flush_ms,
        on_commit=mirror,
        weight=metric_count,
        span=metric_count,
    )
    scheduler = Scheduler(settings, store=store, events=events, nodes=nodes, governance=governance)
    scheduler_ref.append(scheduler)
    await scheduler.open()
    ledger_db = await sqlite.connect(settings.home / LEDGER_FILE)
    ledger = RequestLedger(ledger_db, table="requests")
    await ledger.open()
    sweeps = SweepManager(
        SweepLedger(settings.home / SWEEPS_FILE),
        SchedulerJobs(scheduler),
        max_running_per_caller=settings.sweeps_per_caller,
    )
    await sweeps.open()
    return SchedulerApp(scheduler, events_db, ledger_db, ledger, sweeps, channels)


def registrations(app: SchedulerApp) -> list[Registration]:
    return [
        Registration(
            servicer=SchedulerServicer(app.scheduler, ledger=app.ledger),
            add_to_server=scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server,
            descriptor=scheduler_pb2.DESCRIPTOR.services_by_name["SchedulerService"],
        ),
        Registration(
            servicer=SweepServicer(app.sweeps),
            add_to_server=sweep_pb2_grpc.add_SweepServiceServicer_to_server,
            descriptor=sweep_pb2.DESCRIPTOR.services_by_name["SweepService"],
        ),
    ]


async def start(settings: SchedulerSettings, tokens: TokenStore) -> ServerHandle:
    """The service, serving (tests and ``serve`` share this)."""
    app = await build_scheduler(settings, tokens)
    return await start_server(settings, registrations(app), tokens=tokens, on_shutdown=[app.stop])


async def serve(settings: SchedulerSettings) -> None:
    handle = await start(settings, TokenStore.ensure(settings.home))
    await serve_until_signal(handle, settings.grace_seconds)


def main() -> None:
    settings = parse_service_args(SchedulerSettings, service="scheduler", default_port=50051)
    configure_logging("scheduler", settings.log_level)
    run_service(serve(settings))


if __name__ == "__main__":
    main()
