"""A tiny governance servicer for testing ``run_server`` itself (not the governance logic).

Runs in-process for most tests and as a real process (``python -m
tests.integration.probe_service``) for the SIGTERM test.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from arc.governance.v1 import governance_pb2, governance_pb2_grpc
from arc_common.auth import TokenStore
from arc_common.cli import parse_service_args
from arc_common.errors import InvalidArgumentError
from arc_common.logs import configure_logging
from arc_common.server import Registration, run_server
from arc_common.settings import ServiceSettings


class ProbeServicer(governance_pb2_grpc.GovernanceServiceServicer):
    async def GetMode(
        self, request: governance_pb2.GetModeRequest, context: Any
    ) -> governance_pb2.GetModeResponse:
        await asyncio.sleep(float(os.environ.get("ARC_PROBE_DELAY", "0")))
        return governance_pb2.GetModeResponse(mode=governance_pb2.MODE_AUTONOMOUS)

    async def SetMode(
        self, request: governance_pb2.SetModeRequest, context: Any
    ) -> governance_pb2.SetModeResponse:
        return governance_pb2.SetModeResponse(mode=request.mode)

    async def ListPendingRequests(
        self, request: governance_pb2.ListPendingRequestsRequest, context: Any
    ) -> governance_pb2.ListPendingRequestsResponse:
        if request.page_size < 0:
            raise InvalidArgumentError(
                f"page_size must be >= 0 (got {request.page_size})", field="page_size"
            )
        raise RuntimeError("secret internal detail")


def registration() -> Registration:
    return Registration(
        servicer=ProbeServicer(),  # type: ignore[abstract]  # the rest stay UNIMPLEMENTED
        add_to_server=governance_pb2_grpc.add_GovernanceServiceServicer_to_server,
        descriptor=governance_pb2.DESCRIPTOR.services_by_name["GovernanceService"],
    )


def main() -> None:
    settings = parse_service_args(ServiceSettings, service="probe", default_port=0)
    configure_logging("probe", settings.log_level)
    tokens = TokenStore.ensure(settings.home)
    asyncio.run(run_server(settings, [registration()], tokens=tokens))


if __name__ == "__main__":
    main()
