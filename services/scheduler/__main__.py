"""``python -m services.scheduler`` / ``arc-scheduler``."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import aiosqlite
from grpc import aio

from arc.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from arc_common import sqlite
from arc_common.auth import Role, TokenStore
from arc_common.channel import create_channel
from arc_common.cli import parse_service_args
from arc_common.eventlog import EventLog
from arc_common.logs import configure_logging
from arc_common.models import JobEvent
from arc_common.server import Registration, ServerHandle, serve_until_signal, start_server
from services.scheduler.core import Scheduler
from services.scheduler.remote import GrpcGovernance, GrpcNode, NodeClient
from services.scheduler.servicer import SchedulerServicer
from services.scheduler.settings import SchedulerSettings
from services.scheduler.store import SchedulerStore

DB_FILE = "scheduler.sqlite3"


@dataclass
class SchedulerApp:
    scheduler: Scheduler
    events_db: aiosqlite.Connection
    channels: list[aio.Channel] = field(default_factory=list)

    async def stop(self) -> None:
        await self.scheduler.close()
        await self.events_db.close()
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
    governance = None
    if settings.governance_address:
        channel = create_channel(settings.governance_address, token=token)
        channels.append(channel)
        governance = GrpcGovernance(channel)
    store = SchedulerStore(settings.home / DB_FILE)
    scheduler_ref: list[Scheduler] = []

    async def mirror(events: list[JobEvent]) -> None:
        await scheduler_ref[0].write_jsonl(events)

    await store.open()
    # Its own connection: the store groups its writes in transactions of its own.
    events_db = await sqlite.connect(settings.home / DB_FILE)
    events = EventLog(
        events_db,
        model=JobEvent,
        table="job_events",
        key_field="job_id",
        flush_ms=settings.event_flush_ms,
        on_commit=mirror,
    )
    scheduler = Scheduler(settings, store=store, events=events, nodes=nodes, governance=governance)
    scheduler_ref.append(scheduler)
    await scheduler.open()
    return SchedulerApp(scheduler, events_db, channels)


def registration(app: SchedulerApp) -> Registration:
    return Registration(
        servicer=SchedulerServicer(app.scheduler),
        add_to_server=scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server,
        descriptor=scheduler_pb2.DESCRIPTOR.services_by_name["SchedulerService"],
    )


async def start(settings: SchedulerSettings, tokens: TokenStore) -> ServerHandle:
    """The service, serving (tests and ``serve`` share this)."""
    app = await build_scheduler(settings, tokens)
    return await start_server(settings, [registration(app)], tokens=tokens, on_shutdown=[app.stop])


async def serve(settings: SchedulerSettings) -> None:
    handle = await start(settings, TokenStore.ensure(settings.home))
    await serve_until_signal(handle, settings.grace_seconds)


def main() -> None:
    settings = parse_service_args(SchedulerSettings, service="scheduler", default_port=50051)
    configure_logging("scheduler", settings.log_level)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
