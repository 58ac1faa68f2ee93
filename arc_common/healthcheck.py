"""``python -m arc_common.healthcheck HOST:PORT [SERVICE]``: exit 0 when SERVING.

Used by container health checks; health needs no token."""

from __future__ import annotations

import asyncio
import sys

from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc


async def check(address: str, service: str = "") -> bool:
    async with aio.insecure_channel(address) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=3
            )
        except aio.AioRpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def main() -> int:
    if len(sys.argv) < 2:
        print("usage: python -m arc_common.healthcheck HOST:PORT [SERVICE]", file=sys.stderr)
        return 2
    ok = asyncio.run(check(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else ""))
    print("SERVING" if ok else "NOT SERVING")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
