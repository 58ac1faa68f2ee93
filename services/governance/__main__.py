"""``python -m services.governance`` / ``arc-governance``."""

from __future__ import annotations

import asyncio

from arc.governance.v1 import governance_pb2, governance_pb2_grpc
from arc_common.auth import TokenStore
from arc_common.cli import parse_service_args
from arc_common.logs import configure_logging
from arc_common.server import Registration, run_server
from services.governance.settings import GovernanceSettings


def main() -> None:
    settings = parse_service_args(GovernanceSettings, service="governance", default_port=50053)
    configure_logging("governance", settings.log_level)
    tokens = TokenStore.ensure(settings.home)
    registration = Registration(
        servicer=governance_pb2_grpc.GovernanceServiceServicer(),  # type: ignore[abstract]  # UNIMPLEMENTED until its issue lands
        add_to_server=governance_pb2_grpc.add_GovernanceServiceServicer_to_server,
        descriptor=governance_pb2.DESCRIPTOR.services_by_name["GovernanceService"],
    )
    asyncio.run(run_server(settings, [registration], tokens=tokens))


if __name__ == "__main__":
    main()
