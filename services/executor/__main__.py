"""``python -m services.executor`` / ``arc-executor``."""

from __future__ import annotations

import asyncio

from arc.executor.v1 import executor_pb2, executor_pb2_grpc
from arc_common.auth import TokenStore
from arc_common.cli import parse_service_args
from arc_common.logs import configure_logging
from arc_common.server import Registration, run_server
from services.executor.settings import ExecutorSettings


def main() -> None:
    settings = parse_service_args(ExecutorSettings, service="executor", default_port=50054)
    configure_logging("executor", settings.log_level)
    tokens = TokenStore.ensure(settings.home)
    registration = Registration(
        servicer=executor_pb2_grpc.ExecutorServiceServicer(),  # type: ignore[abstract]  # UNIMPLEMENTED until its issue lands
        add_to_server=executor_pb2_grpc.add_ExecutorServiceServicer_to_server,
        descriptor=executor_pb2.DESCRIPTOR.services_by_name["ExecutorService"],
    )
    asyncio.run(run_server(settings, [registration], tokens=tokens))


if __name__ == "__main__":
    main()
