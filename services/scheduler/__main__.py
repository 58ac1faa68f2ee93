"""``python -m services.scheduler`` / ``arc-scheduler``."""

from __future__ import annotations

import asyncio

from arc.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from arc_common.auth import TokenStore
from arc_common.cli import parse_service_args
from arc_common.logs import configure_logging
from arc_common.server import Registration, run_server
from services.scheduler.settings import SchedulerSettings


def main() -> None:
    settings = parse_service_args(SchedulerSettings, service="scheduler", default_port=50051)
    configure_logging("scheduler", settings.log_level)
    tokens = TokenStore.ensure(settings.home)
    registration = Registration(
        servicer=scheduler_pb2_grpc.SchedulerServiceServicer(),  # type: ignore[abstract]  # UNIMPLEMENTED until its issue lands
        add_to_server=scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server,
        descriptor=scheduler_pb2.DESCRIPTOR.services_by_name["SchedulerService"],
    )
    asyncio.run(run_server(settings, [registration], tokens=tokens))


if __name__ == "__main__":
    main()
