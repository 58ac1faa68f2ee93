"""Calls to other services raise the domain error tree, streams included."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc import aio

from arc_common.errors import ArcError, NotFoundError, Status, UnavailableError
from arc_common.rpc import stream, unary


def rpc_error(code: grpc.StatusCode, details: str) -> aio.AioRpcError:
    return aio.AioRpcError(code, aio.Metadata(), aio.Metadata(), details=details)


class FakeStream:
    def __init__(self, replies: list[int], error: aio.AioRpcError | None = None) -> None:
        self.replies = replies
        self.error = error
        self.cancelled = False

    async def _iterate(self) -> AsyncIterator[int]:
        for reply in self.replies:
            yield reply
        if self.error is not None:
            raise self.error

    def __aiter__(self) -> AsyncIterator[int]:
        return self._iterate()

    def cancel(self) -> bool:
        self.cancelled = True
        return True


async def test_a_unary_error_becomes_the_domain_error_with_its_status() -> None:
    async def failing() -> int:
        raise rpc_error(grpc.StatusCode.UNAVAILABLE, "governance is down")

    with pytest.raises(UnavailableError, match="governance is down") as raised:
        await unary(failing())
    assert raised.value.status is Status.UNAVAILABLE


async def test_a_code_without_its_own_class_is_an_arc_error_naming_the_code() -> None:
    async def failing() -> int:
        raise rpc_error(grpc.StatusCode.DATA_LOSS, "")

    with pytest.raises(ArcError, match="DATA_LOSS") as raised:
        await unary(failing())
    assert raised.value.status is Status.DATA_LOSS


async def test_a_stream_yields_its_replies_then_raises_the_domain_error() -> None:
    call = FakeStream([1, 2], rpc_error(grpc.StatusCode.NOT_FOUND, "no job j1"))
    seen = []
    with pytest.raises(NotFoundError, match="no job j1"):
        async for reply in stream(call):
            seen.append(reply)
    assert seen == [1, 2] and call.cancelled


async def test_a_stream_left_early_cancels_its_call() -> None:
    call = FakeStream([1, 2, 3])
    async with contextlib.aclosing(stream(call)) as replies:
        async for reply in replies:
            assert reply == 1
            break
    assert call.cancelled
