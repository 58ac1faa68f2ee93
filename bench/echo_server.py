"""The baselines: a bare grpc.aio server that echoes any unary request (same payload path,
no engine logic), and ``/bench.Echo/Metrics``, a bare server stream of N step metrics in
batches of 256. ``python -m bench.echo_server --port N``."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio

from arc.common.v1 import common_pb2

BATCH = 256


async def metrics(request: bytes, context: Any) -> AsyncIterator[bytes]:
    count = int(request.decode())
    stamp = Timestamp()
    stamp.GetCurrentTime()
    for first in range(1, count + 1, BATCH):
        batch = common_pb2.MetricBatch(
            metrics=[
                common_pb2.MetricResult(
                    name="train_step_loss", value=1.0 / step, step=step, epoch=1, time=stamp
                )
                for step in range(first, min(count, first + BATCH - 1) + 1)
            ]
        )
        yield batch.SerializeToString()


class Echo(grpc.GenericRpcHandler):  # type: ignore[misc]
    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        if details.method == "/bench.Echo/Metrics":
            return grpc.unary_stream_rpc_method_handler(metrics)

        async def echo(request: bytes, context: Any) -> bytes:
            return request

        return grpc.unary_unary_rpc_method_handler(echo)


async def serve(port: int) -> None:
    server = aio.server()
    server.add_generic_rpc_handlers((Echo(),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
