"""Calling another service: gRPC errors come back as the one domain error tree."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from typing import Protocol, TypeVar

from grpc import aio

from arc_common.status import error_from_status

T = TypeVar("T")
R_co = TypeVar("R_co", covariant=True)


class StreamCall(Protocol[R_co]):
    """What a server-streaming call of grpc.aio offers (grpc ships no types of its own)."""

    def __aiter__(self) -> AsyncIterator[R_co]: ...
    def cancel(self) -> bool: ...


async def unary(call: Awaitable[T]) -> T:
    """Await a unary call; an RpcError becomes the matching ArcError."""
    try:
        return await call
    except aio.AioRpcError as exc:
        raise error_from_status(exc.code(), exc.details() or exc.code().name) from None


async def stream(call: StreamCall[T]) -> AsyncGenerator[T, None]:
    """The replies of a server-streaming call; an RpcError becomes the matching ArcError,
    and the call is cancelled when the caller stops early."""
    try:
        async for reply in call:
            yield reply
    except aio.AioRpcError as exc:
        raise error_from_status(exc.code(), exc.details() or exc.code().name) from None
    finally:
        call.cancel()
