"""A gRPC proxy that forwards every unary call and drops a share of the replies (the caller
sees UNAVAILABLE although the call went through), to test retries with a request id. It
can drop only the replies of some methods, and only so many; it keeps what it dropped."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import descriptor_pool
from grpc import aio


class DroppingProxy:
    def __init__(
        self,
        upstream: str,
        *,
        drop: float,
        seed: int = 0,
        methods: frozenset[str] = frozenset(),
        max_drops: int | None = None,
    ) -> None:
        """``methods`` (full names, ``/package.Service/Method``): only their replies are
        dropped (all methods' when empty); ``max_drops``: at most that many in all."""
        self._upstream = upstream
        self._drop = drop
        self._rng = random.Random(seed)
        self._methods = methods
        self._max_drops = max_drops
        self.lost: list[tuple[str, bytes]] = []  # (method, reply) of each dropped reply
        self.calls: Counter[str] = Counter()  # unary calls forwarded, per method
        self._channel: aio.Channel | None = None
        self._server: aio.Server | None = None
        self.port = 0
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
        self.calls[method] += 1
        if self._methods and method not in self._methods:
            return reply
        if self._max_drops is not None and self.dropped >= self._max_drops:
            return reply
        if self._rng.random() < self._drop:
            self.dropped += 1
            self.lost.append((method, reply))
            await context.abort(grpc.StatusCode.UNAVAILABLE, "reply dropped by the test proxy")
        return reply

    async def forward_stream(
        self, method: str, request: bytes, context: Any
    ) -> AsyncIterator[bytes]:
        """A server-streaming call, passed through whole (nothing dropped)."""
        assert self._channel is not None
        metadata = tuple((k, v) for k, v in context.invocation_metadata() if k == "authorization")
        call = self._channel.unary_stream(method)
        try:
            async for reply in call(request, metadata=metadata):
                yield reply
        except aio.AioRpcError as exc:
            await context.abort(exc.code(), exc.details() or "")


def _server_streaming(method: str) -> bool:
    """Whether ``/package.Service/Method`` streams its replies (from the loaded protos)."""
    try:
        found = descriptor_pool.Default().FindMethodByName(method.lstrip("/").replace("/", "."))
    except KeyError:
        return False
    return bool(found.server_streaming)


class _Handler(grpc.GenericRpcHandler):  # type: ignore[misc]
    def __init__(self, proxy: DroppingProxy) -> None:
        self._proxy = proxy

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = details.method
        if _server_streaming(method):

            async def stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
                async for reply in self._proxy.forward_stream(method, request, context):
                    yield reply

            return grpc.unary_stream_rpc_method_handler(stream)

        async def handle(request: bytes, context: Any) -> bytes:
            return await self._proxy.forward(method, request, context)

        return grpc.unary_unary_rpc_method_handler(handle)
