"""The ordered queue of jobs waiting for GPUs.

Order is priority (high first), then submission order. The queue also counts the queued
jobs per GPU request (their "shape"), so a dispatch pass can stop once every shape still
queued is blocked, and remembers why each blocked shape waits.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from typing import Any

from sortedcontainers import SortedList

from services.scheduler.store import JobRecord

QueueKey = tuple[int, int, str]
Shape = tuple[Any, ...]


def queue_key(job: JobRecord) -> QueueKey:
    return (-job.priority, job.seq, job.job_id)


def shape(job: JobRecord) -> Shape:
    """What a job asks of a machine: jobs of one shape fit where each other fits."""
    allocation = job.spec.gpu_allocation
    return (
        allocation.preference,
        tuple(allocation.gpu_indices),
        allocation.count,
        allocation.min_free_memory_mib,
    )


class JobQueue:
    """Keys and shape counts change together, only here: a job is counted in its shape
    exactly while its key is in the queue."""

    def __init__(self) -> None:
        self._keys: SortedList = SortedList()
        self._shapes: Counter[Shape] = Counter()
        self._blocked: dict[Shape, str] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, job: JobRecord) -> bool:
        return queue_key(job) in self._keys

    def add(self, job: JobRecord) -> None:
        key = queue_key(job)
        if key not in self._keys:
            self._keys.add(key)
            self._shapes[shape(job)] += 1

    def remove(self, job: JobRecord) -> None:
        key = queue_key(job)
        if key in self._keys:
            self._keys.remove(key)
            kind = shape(job)
            self._shapes[kind] -= 1
            if not self._shapes[kind]:
                del self._shapes[kind]

    @property
    def shape_count(self) -> int:
        return len(self._shapes)

    def position(self, job: JobRecord) -> int:
        """1-based; 0 when the job is not queued."""
        key = queue_key(job)
        return int(self._keys.bisect_left(key)) + 1 if key in self._keys else 0

    def priorities_ahead(self, position: int) -> tuple[int, int]:
        """The highest and lowest priority of the jobs ahead of ``position`` (> 1)."""
        return -self._keys[0][0], -self._keys[position - 2][0]

    def head(self, limit: int) -> list[str]:
        return [key[2] for key in self._keys.islice(0, limit)]

    def in_order(self, chunk: int = 64) -> Iterator[str]:
        """Job ids in dispatch order, read a chunk at a time after the last key seen, so
        jobs may come and go while a pass awaits."""
        last: QueueKey | None = None
        while True:
            keys = (
                self._keys.islice(0, chunk)
                if last is None
                else itertools.islice(
                    self._keys.irange(minimum=last, inclusive=(False, True)), chunk
                )
            )
            batch: list[QueueKey] = list(keys)
            if not batch:
                return
            for key in batch:
                yield key[2]
            last = batch[-1]

    def set_blocked(self, blocked: dict[Shape, str]) -> None:
        """What the last dispatch pass found: why each blocked shape waits."""
        self._blocked = blocked

    def blocked_reason(self, job: JobRecord) -> str:
        return self._blocked.get(shape(job), "")
