"""``python -m services.executor`` / ``arc-executor``."""

from __future__ import annotations

from dataclasses import dataclass

import aiosqlite

from arc.executor.v1 import executor_pb2, executor_pb2_grpc
from arc_common import sqlite
from arc_common.auth import Role, TokenStore
from arc_common.channel import create_channel
from arc_common.cli import parse_service_args
from arc_common.eventlog import EventLog
from arc_common.governance_client import GovernanceClient
from arc_common.ledger import RequestLedger
from arc_common.logs import configure_logging
from arc_common.models import RunEvent, acted_on, metric_count
from arc_common.server import (
    Registration,
    ServerHandle,
    run_service,
    serve_until_signal,
    start_server,
)
from services.executor.leases import GrpcLeaseChecker
from services.executor.local_launcher import LocalLauncher
from services.executor.run_store import SqliteRunStore
from services.executor.runs import RunManager
from services.executor.servicer import ExecutorServicer
from services.executor.settings import ExecutorSettings
from services.executor.tools.governed import Governed
from services.executor.tools.service import Tools
from services.executor.warm import WarmPool

DB_FILE = "executor.sqlite3"


@dataclass
class Executor:
    runs: RunManager
    db: aiosqlite.Connection
    events: EventLog[RunEvent]
    events_db: aiosqlite.Connection
    channels: list[object]
    tools: Tools
    ledger: RequestLedger

    async def stop(self) -> None:
        await self.runs.close()
        await self.events.close()
        for channel in self.channels:
            await channel.close()  # type: ignore[attr-defined]
        await self.events_db.close()
        await self.db.close()


async def build_executor(settings: ExecutorSettings, tokens: TokenStore) -> Executor:
    db = await sqlite.connect(settings.home / DB_FILE)
    # The event log commits (and on failure rolls back) on a connection of its own, so a
    # failed event group never takes a run row or a ledger entry with it.
    events_db = await sqlite.connect(settings.home / DB_FILE)
    events = EventLog(
        events_db,
        model=RunEvent,
        table="run_events",
        key_field="run_id",
        flush_ms=settings.event_flush_ms,
        weight=metric_count,
        urgent=acted_on,
    )
    await events.open()
    token = settings.service_token or tokens.token_for(Role.SERVICE)
    channel = create_channel(settings.gpu_manager_address, token=token)
    pool = None
    if settings.warm_pool:
        pool = WarmPool(settings.home / "logs" / "warm-pool.log")
        await pool.start()  # ready in a few seconds; runs before that start cold
    leases = GrpcLeaseChecker(channel)
    launcher = LocalLauncher(pool)
    store = SqliteRunStore(db)
    await store.open()
    runs = RunManager(settings, store, events, leases, launcher)
    await runs.recover()
    channels = [channel]
    governance_channel = None
    if settings.governance_address:
        governance_channel = create_channel(settings.governance_address, token=token)
        channels.append(governance_channel)
    governance = GovernanceClient(governance_channel) if governance_channel else None
    governed = Governed(governance, approval_wait_seconds=settings.approval_wait_seconds)
    ledger = RequestLedger(db)
    await ledger.open()
    tools = Tools(settings, governed, runs, leases=leases, launcher=launcher)
    return Executor(runs, db, events, events_db, channels, tools, ledger)


def registration(executor: Executor) -> Registration:
    return Registration(
        servicer=ExecutorServicer(executor.runs, executor.tools, executor.ledger),
        add_to_server=executor_pb2_grpc.add_ExecutorServiceServicer_to_server,
        descriptor=executor_pb2.DESCRIPTOR.services_by_name["ExecutorService"],
    )


async def start(settings: ExecutorSettings, tokens: TokenStore) -> ServerHandle:
    """The service, serving (tests and ``serve`` share this)."""
    executor = await build_executor(settings, tokens)
    return await start_server(
        settings, [registration(executor)], tokens=tokens, on_shutdown=[executor.stop]
    )


async def serve(settings: ExecutorSettings) -> None:
    handle = await start(settings, TokenStore.ensure(settings.home))
    await serve_until_signal(handle, settings.grace_seconds)


def main() -> None:
    settings = parse_service_args(ExecutorSettings, service="executor", default_port=50054)
    configure_logging("executor", settings.log_level)
    run_service(serve(settings))


if __name__ == "__main__":
    main()
