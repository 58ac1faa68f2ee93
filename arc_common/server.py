"""One way to run a service process (after grpc's asyncio examples).

``start_server`` builds a ``grpc.aio`` server with the servicers behind our guard, the
standard health service and reflection (names from the generated descriptors), binds and
marks SERVING. ``run_server`` adds SIGTERM/SIGINT handling: health goes NOT_SERVING, then
``server.stop(grace)`` lets in-flight calls finish, then the service's own cleanup runs.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from arc_common.auth import TokenStore
from arc_common.interceptors import Guard, GuardedRegistrar
from arc_common.settings import ServiceSettings

logger = logging.getLogger(__name__)

KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


@dataclass(frozen=True)
class Registration:
    """A servicer, the generated function that adds it, and its service descriptor."""

    servicer: object
    add_to_server: Callable[[Any, aio.Server], None]
    descriptor: ServiceDescriptor


@dataclass
class ServerHandle:
    server: aio.Server
    port: int
    health: health.aio.HealthServicer
    service_names: list[str]
    on_shutdown: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    _stopped: bool = False

    async def stop(self, grace: float | None) -> None:
        """Graceful stop: NOT_SERVING first, in-flight calls get ``grace`` seconds."""
        if self._stopped:
            return
        self._stopped = True
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        for hook in self.on_shutdown:
            try:
                await hook()
            except Exception:
                logger.exception("shutdown hook failed")

    async def wait(self) -> None:
        await self.server.wait_for_termination()


def _credentials(settings: ServiceSettings) -> grpc.ServerCredentials | None:
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    client_ca = settings.tls_client_ca_file.read_bytes() if settings.tls_client_ca_file else None
    return grpc.ssl_server_credentials(
        [(settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


async def start_server(
    settings: ServiceSettings,
    registrations: Sequence[Registration],
    *,
    tokens: TokenStore | None,
    on_shutdown: Sequence[Callable[[], Awaitable[None]]] = (),
) -> ServerHandle:
    """Build, bind and start; returns once SERVING. ``tokens=None`` turns auth off (tests)."""
    server = aio.server(
        options=[
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            ("grpc.so_reuseport", 0),
            *KEEPALIVE_OPTIONS,
        ],
    )
    registrar = GuardedRegistrar(server, Guard(tokens))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, registrar)
    names = []
    for registration in registrations:
        registration.add_to_server(registration.servicer, registrar)
        names.append(registration.descriptor.full_name)
    reflection.enable_server_reflection(
        [
            *names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        registrar,
    )
    address = f"{settings.host}:{settings.port}"
    credentials = _credentials(settings)
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"could not bind {address}")
    await server.start()
    for name in names:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    if settings.port_file is not None:
        settings.port_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = settings.port_file.with_suffix(".tmp")
        tmp.write_text(f"{port}\n")
        tmp.replace(settings.port_file)
    logger.info(
        "listening on %s:%d (%s)",
        settings.host,
        port,
        "tls" if credentials else "plaintext",
        extra={"fields": {"port": port, "services": names}},
    )
    return ServerHandle(server, port, health_servicer, names, list(on_shutdown))


def run_service(main: Coroutine[Any, Any, None]) -> None:
    """``asyncio.run(main)`` for a service's ``__main__``: a service that fails (to start,
    above all) logs why and exits 1 at once, even if a thread it started (a database's, a
    pool's) would keep the interpreter waiting with the port already closed."""
    try:
        asyncio.run(main)
    except Exception:
        logger.exception("service failed")
        logging.shutdown()
        os._exit(1)


async def run_server(
    settings: ServiceSettings,
    registrations: Sequence[Registration],
    *,
    tokens: TokenStore | None,
    on_shutdown: Sequence[Callable[[], Awaitable[None]]] = (),
) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully."""
    handle = await start_server(settings, registrations, tokens=tokens, on_shutdown=on_shutdown)
    await serve_until_signal(handle, settings.grace_seconds)


# A service holds many long-lived objects (jobs, events, leases, the models in them) and
# makes few reference cycles. With CPython's default thresholds (700, 10, 10) a full
# collection walks all of them every few thousand requests, a long pause with many jobs
# queued (docs/decisions/0002-gc-tuning.md has the numbers).
GC_THRESHOLDS = (10_000, 20, 50)


def tune_gc() -> None:
    """Collect what startup left, move what it loaded out of the collector's sight (it
    lives as long as the process), and collect the young generations less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def serve_until_signal(handle: ServerHandle, grace_seconds: float) -> None:
    """Wait for SIGTERM or SIGINT (or the server ending), then stop gracefully."""
    tune_gc()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    waiter = asyncio.create_task(handle.wait())
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    logger.info("shutting down (grace %.1fs)", grace_seconds)
    await handle.stop(grace_seconds)
    stopper.cancel()
    await waiter
    logger.info("stopped")
