"""A gRPC proxy that forwards every unary call and drops a share of the replies (the caller
sees UNAVAILABLE although the call went through), to test retries with a request id."""

from __future__ import annotations

import random
from typing import Any

import grpc
from grpc import aio


class DroppingProxy:
    def __init__(self, upstream: str, *, drop: float, seed: int = 0) -> None:
        self._upstream = upstream
        self._drop = drop
        self._rng = random.Random(seed)
        self._channel: aio.Channel | None = None
        self._server: aio.Server | None = None
        self.port = 0
        self.forwarded = 0
        self.dropped = 0

    async def start(self) -> int:
        self._channel = aio.insecure_channel(self._upstream)
        self._server = aio.server()
        self._server.add_generic_rpc_handlers((_Handler(self),))
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0)
        if self._channel is not None:
            await self._channel.close()

    async def forward(self, method: str, request: bytes, context: Any) -> bytes:
        assert self._channel is not None
        metadata = tuple((k, v) for k, v in context.invocation_metadata() if k == "authorization")
        call = self._channel.unary_unary(method)  # raw bytes both ways
        try:
            reply: bytes = await call(request, metadata=metadata, timeout=60)
        except aio.AioRpcError as exc:
            await context.abort(exc.code(), exc.details() or "")
        self.forwarded += 1
        if self._rng.random() < self._drop:
            self.dropped += 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "reply dropped by the test proxy")
        return reply


class _Handler(grpc.GenericRpcHandler):  # type: ignore[misc]
    def __init__(self, proxy: DroppingProxy) -> None:
        self._proxy = proxy

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = details.method

        async def handle(request: bytes, context: Any) -> bytes:
            return await self._proxy.forward(method, request, context)

        return grpc.unary_unary_rpc_method_handler(handle)
