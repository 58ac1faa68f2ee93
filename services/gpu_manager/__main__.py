"""``python -m services.gpu_manager`` / ``arc-gpu-manager``."""

from __future__ import annotations

from arc.gpu.v1 import gpu_pb2, gpu_pb2_grpc
from arc_common.auth import TokenStore
from arc_common.cli import parse_service_args
from arc_common.logs import configure_logging
from arc_common.server import (
    Registration,
    ServerHandle,
    run_service,
    serve_until_signal,
    start_server,
)
from services.gpu_manager.backends import create_backend
from services.gpu_manager.manager import GpuManager
from services.gpu_manager.servicer import GpuManagerServicer
from services.gpu_manager.settings import GpuManagerSettings
from services.gpu_manager.store import SqliteLeaseStore

DB_FILE = "gpu_manager.sqlite3"


def registration(manager: GpuManager) -> Registration:
    return Registration(
        servicer=GpuManagerServicer(manager),
        add_to_server=gpu_pb2_grpc.add_GpuManagerServiceServicer_to_server,
        descriptor=gpu_pb2.DESCRIPTOR.services_by_name["GpuManagerService"],
    )


def build_manager(settings: GpuManagerSettings) -> GpuManager:
    backend = create_backend(
        settings.backend,
        simulated_count=settings.simulated_count,
        simulated_memory_mib=settings.simulated_memory_mib,
    )
    return GpuManager(settings, backend=backend, store=SqliteLeaseStore(settings.home / DB_FILE))


async def start(settings: GpuManagerSettings, tokens: TokenStore) -> ServerHandle:
    """The service, serving (tests and ``serve`` share this)."""
    manager = build_manager(settings)
    await manager.start()
    return await start_server(
        settings, [registration(manager)], tokens=tokens, on_shutdown=[manager.stop]
    )


async def serve(settings: GpuManagerSettings) -> None:
    handle = await start(settings, TokenStore.ensure(settings.home))
    await serve_until_signal(handle, settings.grace_seconds)


def main() -> None:
    settings = parse_service_args(GpuManagerSettings, service="gpu_manager", default_port=50052)
    configure_logging("gpu-manager", settings.log_level)
    run_service(serve(settings))


if __name__ == "__main__":
    main()
