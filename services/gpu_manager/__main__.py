"""``python -m services.gpu_manager`` / ``arc-gpu-manager``."""

from __future__ import annotations

import asyncio

from arc.gpu.v1 import gpu_pb2, gpu_pb2_grpc

from arc_common.auth import TokenStore
from arc_common.cli import parse_service_args
from arc_common.logs import configure_logging
from arc_common.server import Registration, run_server
from services.gpu_manager.settings import GpuManagerSettings


def main() -> None:
    settings = parse_service_args(GpuManagerSettings, service="gpu_manager", default_port=50052)
    configure_logging("gpu-manager", settings.log_level)
    tokens = TokenStore.ensure(settings.home)
    registration = Registration(
        servicer=gpu_pb2_grpc.GpuManagerServiceServicer(),  # type: ignore[abstract]  # UNIMPLEMENTED until its issue lands
        add_to_server=gpu_pb2_grpc.add_GpuManagerServiceServicer_to_server,
        descriptor=gpu_pb2.DESCRIPTOR.services_by_name["GpuManagerService"],
    )
    asyncio.run(run_server(settings, [registration], tokens=tokens))


if __name__ == "__main__":
    main()
