"""Group work from concurrent callers into one call: the engine's one group-commit primitive.

Callers add items; a batch is everything added while the previous batch was being
handled, so under load each call of the handler carries many items and the cost of its
slow part (an fsync, a thread hop) is shared, while a lone caller never waits for company.

- ``await batcher.submit(item)`` returns once the batch that carried the item was handled;
  ``add(item)`` queues it without waiting (the caller awaits ``flush()`` when it must know).
- An exception from the handler reaches every caller of that batch. A handler may instead
  return one outcome per item (``None`` or the exception for that item alone), so that one
  bad item fails alone.
- ``Batcher(handle)`` runs a plain function in a worker thread (``executor``: a thread of
  the caller's, e.g. the one that owns a SQLite connection); ``Batcher.on_loop(handle)``
  awaits a coroutine function on the event loop (aiosqlite, or a handler that picks its
  own thread).
- ``max_delay`` lets a batch wait up to that long for more items before it is cut (while
  ``linger_if()`` holds, when given); ``hurry()`` cuts the wait short, and ``flush()``
  does too.
- ``requeue_failed``: the items of a failed batch go back to the front of the queue (their
  callers still get the error) and are handled first in the next batch: at once when other
  items wait, else on the next ``add`` or ``flush`` (a failing disk is not retried in a
  loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from typing import Generic, TypeVar

T = TypeVar("T")
logger = logging.getLogger(__name__)

# What a handler returns: None when every item succeeded, else one outcome per item.
Outcomes = Sequence[BaseException | None] | None


def _settle(future: asyncio.Future[None], index: int, batch: asyncio.Future[Outcomes]) -> None:
    if future.done():
        return
    error = batch.exception()
    if error is None:
        outcomes = batch.result()
        error = outcomes[index] if outcomes is not None else None
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
        future.exception()  # retrieved: a posted item may have no waiter


class Batcher(Generic[T]):
    def __init__(
        self,
        handle: Callable[[list[T]], Outcomes],
        *,
        name: str = "batcher",
        executor: Executor | None = None,
        max_delay: float = 0.0,
        linger_if: Callable[[], bool] | None = None,
        requeue_failed: bool = False,
    ) -> None:
        self._sync_handle = handle
        self._executor = executor
        self._handle: Callable[[list[T]], Awaitable[Outcomes]] = self._in_thread
        self._setup(name, max_delay, linger_if, requeue_failed)

    @classmethod
    def on_loop(
        cls,
        handle: Callable[[list[T]], Awaitable[Outcomes]],
        *,
        name: str = "batcher",
        max_delay: float = 0.0,
        linger_if: Callable[[], bool] | None = None,
        requeue_failed: bool = False,
    ) -> Batcher[T]:
        """A batcher whose handler is a coroutine function awaited on the event loop."""
        batcher = cls.__new__(cls)
        batcher._handle = handle
        batcher._setup(name, max_delay, linger_if, requeue_failed)
        return batcher

    def _setup(
        self,
        name: str,
        max_delay: float,
        linger_if: Callable[[], bool] | None,
        requeue_failed: bool,
    ) -> None:
        self._name = name
        self._max_delay = max_delay
        self._linger_if = linger_if
        self._requeue = requeue_failed
        self._items: list[T] = []
        self._retry: list[T] = []  # a failed batch's items, handled first in the next one
        self._next: asyncio.Future[Outcomes] | None = None  # the batch now gathering
        self._current: asyncio.Future[Outcomes] | None = None  # the batch being handled
        self._task: asyncio.Task[None] | None = None
        self._hurry = asyncio.Event()

    async def _in_thread(self, items: list[T]) -> Outcomes:
        if self._executor is None:  # to_thread: the caller's context (its request id) goes too
            return await asyncio.to_thread(self._sync_handle, items)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._sync_handle, items)

    @property
    def pending(self) -> int:
        """How many items wait for a batch (not counting the one being handled)."""
        return len(self._items)

    def _add(self, item: T) -> tuple[asyncio.Future[Outcomes], int]:
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        self._items.append(item)
        self._start()
        return self._next, len(self._items) - 1

    def _start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name=self._name)

    def add(self, item: T) -> None:
        """Queue ``item`` without waiting for its batch."""
        self._add(item)

    def post(self, item: T) -> asyncio.Future[None]:
        """Queue ``item``; the future is done once its batch was handled."""
        batch, index = self._add(item)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        batch.add_done_callback(functools.partial(_settle, future, index))
        return future

    async def submit(self, item: T) -> None:
        """Queue ``item`` and return once its batch was handled; raise its error if any."""
        batch, index = self._add(item)
        outcomes = await asyncio.shield(batch)  # one caller's cancel leaves the batch be
        if outcomes is not None and (error := outcomes[index]) is not None:
            raise error

    def hurry(self) -> None:
        """Cut the gathering batch's wait for more items short."""
        self._hurry.set()

    async def flush(self) -> None:
        """Return once everything added before the call was handled, without waiting out
        ``max_delay``; raise the error of the batch that failed, if one did."""
        if self._items or self._retry:
            self._hurry.set()
            if self._next is None:
                self._next = asyncio.get_running_loop().create_future()
            last: asyncio.Future[Outcomes] | None = self._next
            self._start()
        else:
            last = self._current
        if last is not None:
            await asyncio.shield(last)

    async def close(self) -> None:
        """Wait for what was queued (a failure was logged and reached its callers)."""
        with contextlib.suppress(Exception):
            await self.flush()

    async def _linger(self) -> None:
        if not self._max_delay or self._hurry.is_set():
            return
        if self._linger_if is not None and not self._linger_if():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._hurry.wait(), self._max_delay)

    async def _run(self) -> None:
        while self._items or self._retry:
            await self._linger()
            self._hurry.clear()  # what is queued now goes with this batch
            retry, items = self._retry, self._items
            batch = self._next or asyncio.get_running_loop().create_future()
            self._retry, self._items, self._next, self._current = [], [], None, batch
            everything = retry + items if retry else items
            try:
                outcomes = await self._handle(everything)
            except Exception as exc:
                logger.exception("%s: a batch of %d failed", self._name, len(everything))
                batch.set_exception(exc)
                batch.exception()  # retrieved: added items have no waiter
                if self._requeue:
                    self._retry = everything
                    if not self._items:
                        return  # the next add or flush tries again
                continue
            finally:
                self._current = None
            if outcomes is not None:
                if len(outcomes) != len(everything):
                    error = RuntimeError(
                        f"{self._name}: {len(outcomes)} outcomes for {len(everything)} items"
                    )
                    batch.set_exception(error)
                    batch.exception()
                    continue
                outcomes = outcomes[len(retry) :]
            batch.set_result(outcomes)


class GroupCommit:
    """``await wait()`` returns once a commit that began after the call has completed; the
    callers that arrive while one commit is on its way share the next one. A failed commit
    fails every caller waiting on it."""

    def __init__(self, commit: Callable[[], Awaitable[None]]) -> None:
        async def handle(_: list[None]) -> Outcomes:
            await commit()
            return None

        self._batcher: Batcher[None] = Batcher.on_loop(handle, name="group-commit")

    async def wait(self) -> None:
        await self._batcher.submit(None)
