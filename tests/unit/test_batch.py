"""The one group-commit primitive: batches under concurrency, errors, delays, close."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from arc_common.batch import Batcher, GroupCommit, Outcomes


class Gate:
    """A handler on the loop that records its batches and holds each until released."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.fail_on = fail_on

    async def __call__(self, items: list[int]) -> Outcomes:
        self.batches.append(list(items))
        self.entered.set()
        await self.release.wait()
        if self.fail_on is not None and self.fail_on in items:
            raise ValueError(f"bad item {self.fail_on}")
        return None


async def test_callers_that_arrive_during_a_batch_share_the_next_one() -> None:
    gate = Gate()
    batcher = Batcher.on_loop(gate)
    first = asyncio.create_task(batcher.submit(0))
    await gate.entered.wait()
    rest = [asyncio.create_task(batcher.submit(n)) for n in range(1, 51)]
    await asyncio.sleep(0)  # every caller has queued its item
    assert batcher.pending == 50
    gate.release.set()
    await asyncio.gather(first, *rest)
    assert gate.batches == [[0], list(range(1, 51))]


async def test_a_lone_caller_does_not_wait_for_company() -> None:
    calls: list[list[int]] = []

    async def handle(items: list[int]) -> Outcomes:
        calls.append(items)
        return None

    batcher = Batcher.on_loop(handle, max_delay=60.0, linger_if=lambda: False)
    await asyncio.wait_for(batcher.submit(1), timeout=5)
    assert calls == [[1]]


async def test_a_failed_batch_fails_every_caller_of_it_and_no_other() -> None:
    gate = Gate(fail_on=13)
    batcher = Batcher.on_loop(gate)
    first = asyncio.create_task(batcher.submit(0))
    await gate.entered.wait()
    doomed = [asyncio.create_task(batcher.submit(n)) for n in (11, 12, 13)]
    posted = batcher.post(14)
    await asyncio.sleep(0)
    gate.release.set()
    await first
    for task in doomed:
        with pytest.raises(ValueError, match="bad item 13"):
            await task
    with pytest.raises(ValueError, match="bad item 13"):
        await posted
    await batcher.submit(15)  # the next batch is not poisoned
    assert gate.batches[-1] == [15]


async def test_per_item_outcomes_fail_only_their_own_caller() -> None:
    def handle(items: list[int]) -> Sequence[BaseException | None]:
        return [ValueError(f"odd {n}") if n % 2 else None for n in items]

    batcher = Batcher(handle)
    results = await asyncio.gather(*(batcher.submit(n) for n in range(6)), return_exceptions=True)
    assert [type(r).__name__ for r in results] == ["NoneType", "ValueError"] * 3
    assert str(results[3]) == "odd 3"


async def test_a_plain_handler_runs_in_the_given_thread() -> None:
    threads: list[str] = []

    def handle(items: list[int]) -> Outcomes:
        threads.append(threading.current_thread().name)
        return None

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="owner") as pool:
        batcher = Batcher(handle, executor=pool)
        await asyncio.gather(*(batcher.submit(n) for n in range(3)))
    assert threads and all(name.startswith("owner") for name in threads)
    assert threading.current_thread().name not in threads


async def test_close_waits_for_every_queued_item() -> None:
    gate = Gate()
    batcher = Batcher.on_loop(gate)
    for n in range(5):
        batcher.add(n)
    await gate.entered.wait()
    batcher.add(5)
    closing = asyncio.create_task(batcher.close())
    await asyncio.sleep(0)
    assert not closing.done()
    gate.release.set()
    await asyncio.wait_for(closing, timeout=5)
    assert gate.batches == [[0, 1, 2, 3, 4], [5]]
    assert batcher.pending == 0


async def test_close_waits_for_the_batch_in_flight_and_swallows_its_error() -> None:
    gate = Gate(fail_on=1)
    batcher = Batcher.on_loop(gate)
    batcher.add(1)
    await gate.entered.wait()
    closing = asyncio.create_task(batcher.close())
    await asyncio.sleep(0)
    assert not closing.done()
    gate.release.set()
    await asyncio.wait_for(closing, timeout=5)


async def test_a_batch_waits_for_more_items_until_hurried() -> None:
    gate = Gate()
    gate.release.set()
    batcher = Batcher.on_loop(gate, max_delay=60.0)
    batcher.add(1)
    batcher.add(2)
    await asyncio.sleep(0.01)
    assert gate.batches == []  # still gathering
    batcher.hurry()
    await asyncio.wait_for(gate.entered.wait(), timeout=5)
    assert gate.batches == [[1, 2]]


async def test_flush_does_not_wait_out_the_delay() -> None:
    gate = Gate()
    gate.release.set()
    batcher = Batcher.on_loop(gate, max_delay=60.0)
    batcher.add(1)
    await asyncio.wait_for(batcher.flush(), timeout=5)
    assert gate.batches == [[1]]


async def test_requeued_items_go_first_in_the_next_batch() -> None:
    attempts: list[list[int]] = []
    healthy = False

    async def handle(items: list[int]) -> Outcomes:
        attempts.append(list(items))
        if not healthy:
            raise OSError("disk full")
        return [None] * len(items)

    batcher = Batcher.on_loop(handle, requeue_failed=True)
    batcher.add(1)
    with pytest.raises(OSError, match="disk full"):
        await batcher.flush()
    assert attempts == [[1]]  # not retried in a loop
    healthy = True
    await batcher.submit(2)
    assert attempts == [[1], [1, 2]]
    await batcher.flush()


async def test_group_commit_shares_one_commit_among_callers_that_wait_together() -> None:
    commits = 0
    release = asyncio.Event()

    async def commit() -> None:
        nonlocal commits
        commits += 1
        await release.wait()

    group = GroupCommit(commit)
    first = asyncio.create_task(group.wait())
    await asyncio.sleep(0)
    others = [asyncio.create_task(group.wait()) for _ in range(20)]
    await asyncio.sleep(0)
    release.set()
    await asyncio.gather(first, *others)
    assert commits == 2  # the first caller's commit, then one for everyone who came after


async def test_a_cancelled_caller_leaves_its_batch_to_the_others() -> None:
    gate = Gate()
    batcher = Batcher.on_loop(gate)
    first = asyncio.create_task(batcher.submit(0))
    other = asyncio.create_task(batcher.submit(1))
    await gate.entered.wait()
    first.cancel()
    gate.release.set()
    await other
    with pytest.raises(asyncio.CancelledError):
        await first
