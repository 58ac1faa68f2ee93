"""Calling another service: gRPC errors come back as the one domain error tree."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

from grpc import aio

from arc_common.status import error_from_status

T = TypeVar("T")


async def unary(call: Awaitable[T]) -> T:
    """Await a unary call; an RpcError becomes the matching ArcError."""
    try:
        return await call
    except aio.AioRpcError as exc:
        raise error_from_status(exc.code(), exc.details() or exc.code().name) from None
