"""``python -m services.governance`` / ``arc-governance``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from pathlib import Path

from grpc_health.v1 import health_pb2

from arc.governance.v1 import governance_pb2, governance_pb2_grpc
from arc_common.auth import TokenStore
from arc_common.cli import parse_service_args
from arc_common.errors import ArcError
from arc_common.logs import configure_logging
from arc_common.server import (
    Registration,
    ServerHandle,
    run_service,
    serve_until_signal,
    start_server,
)
from services.governance.audit import AuditLog
from services.governance.core import Governance, GovernanceConfig
from services.governance.servicer import GovernanceServicer
from services.governance.settings import GovernanceSettings
from services.governance.transactions import TransactionLimits

logger = logging.getLogger(__name__)

# The audit log of a workspace (its home): the benchmark's baseline passes one that keeps
# nothing.
AuditFactory = Callable[[Path], AuditLog]


def registration(governance: Governance) -> Registration:
    return Registration(
        servicer=GovernanceServicer(governance),
        add_to_server=governance_pb2_grpc.add_GovernanceServiceServicer_to_server,
        descriptor=governance_pb2.DESCRIPTOR.services_by_name["GovernanceService"],
    )


def build_governance(
    settings: GovernanceSettings, *, audit_log: AuditFactory = AuditLog.for_workspace
) -> Governance:
    return Governance(
        settings.home,
        audit=audit_log(settings.home),
        config=GovernanceConfig(
            pending_ttl_seconds=settings.pending_ttl_seconds,
            transactions=TransactionLimits(
                timeout_seconds=settings.transaction_timeout_seconds,
                max_timeout_seconds=settings.max_transaction_timeout_seconds,
                max_snapshot_bytes=settings.max_snapshot_bytes,
            ),
        ),
    )


async def housekeeping(governance: Governance, interval: float) -> None:
    """Expire undecided requests and roll back transactions whose holder vanished."""
    while True:
        await asyncio.sleep(interval)
        try:
            await governance.expire_pending()
            await governance.recover_transactions()
        except Exception:
            logger.exception("governance housekeeping failed")


async def audit_checks(governance: Governance, interval: float) -> None:
    """Verify the audit records added since the last check; a break locks governance."""
    while True:
        await asyncio.sleep(interval)
        try:
            await governance.check_audit()
        except Exception:
            logger.exception("audit verification failed")


async def start(settings: GovernanceSettings, tokens: TokenStore) -> ServerHandle:
    """The service, serving (tests and ``serve`` share this)."""
    handle, _ = await _start(settings, tokens)
    return handle


async def _start(
    settings: GovernanceSettings,
    tokens: TokenStore,
    *,
    audit_log: AuditFactory = AuditLog.for_workspace,
) -> tuple[ServerHandle, Governance]:
    governance = build_governance(settings, audit_log=audit_log)
    await governance.open()
    tasks = [
        asyncio.create_task(housekeeping(governance, settings.housekeeping_interval_seconds)),
        asyncio.create_task(audit_checks(governance, settings.audit_verify_interval_seconds)),
    ]

    async def stop() -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await governance.close()

    reg = registration(governance)
    handle = await start_server(settings, [reg], tokens=tokens, on_shutdown=[stop])

    async def report(reason: str) -> None:
        """The governance service is NOT_SERVING while its audit chain is broken (the
        process still answers, so an operator can look and act)."""
        status = (
            health_pb2.HealthCheckResponse.NOT_SERVING
            if reason
            else health_pb2.HealthCheckResponse.SERVING
        )
        await handle.health.set(reg.descriptor.full_name, status)

    governance.on_audit_break.append(report)
    if governance.audit_break:
        await report(governance.audit_break)
    return handle, governance


async def serve(
    settings: GovernanceSettings, *, audit_log: AuditFactory = AuditLog.for_workspace
) -> None:
    handle, governance = await _start(
        settings, TokenStore.ensure(settings.home), audit_log=audit_log
    )

    def reload() -> None:
        async def run() -> None:
            with contextlib.suppress(ArcError):  # refused: logged and audited, old policy stays
                await governance.reload_policy(caller="operator (SIGHUP)")

        asyncio.get_running_loop().create_task(run())

    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)
    await serve_until_signal(handle, settings.grace_seconds)


def main(*, audit_log: AuditFactory = AuditLog.for_workspace) -> None:
    settings = parse_service_args(GovernanceSettings, service="governance", default_port=50053)
    configure_logging("governance", settings.log_level)
    run_service(serve(settings, audit_log=audit_log))


if __name__ == "__main__":
    main()
