"""Group work from concurrent callers into one call (group commit, batched file writes).

``await batcher.submit(item)`` queues the item and returns once the batch that carried it
has been handled by ``handle(items)`` (run in a worker thread: it may fsync); an
exception from ``handle`` reaches every caller of that batch. While one batch is handled
the next one gathers, so under load each call carries many items and the cost of the
slow part (a thread hop, an fsync) is shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")
logger = logging.getLogger(__name__)


class Batcher(Generic[T]):
    def __init__(self, handle: Callable[[list[T]], None], *, name: str = "batcher") -> None:
        self._handle = handle
        self._name = name
        self._items: list[T] = []
        self._futures: list[asyncio.Future[None]] = []
        self._task: asyncio.Task[None] | None = None

    def post(self, item: T) -> asyncio.Future[None]:
        """Queue ``item``; the future is done once its batch was handled."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._items.append(item)
        self._futures.append(future)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=self._name)
        return future

    async def submit(self, item: T) -> None:
        await self.post(item)

    async def _run(self) -> None:
        while self._items:
            items, futures = self._items, self._futures
            self._items, self._futures = [], []
            try:
                await asyncio.to_thread(self._handle, items)
            except Exception as exc:
                logger.exception("%s: a batch of %d failed", self._name, len(items))
                for future in futures:
                    if not future.done():
                        future.set_exception(exc)
                        future.exception()  # retrieved: a posted item has no waiter
                continue
            for future in futures:
                if not future.done():
                    future.set_result(None)

    async def close(self) -> None:
        """Wait for what was queued."""
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
