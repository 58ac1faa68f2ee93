"""What every benchmark shares: closed-loop load, percentiles, process sizes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


async def drive(
    call: Callable[[int], Awaitable[Any]], *, clients: int, seconds: float
) -> list[float]:
    """Latencies of as many calls as ``clients`` concurrent loops make in ``seconds``."""
    latencies: list[float] = []
    stop = time.monotonic() + seconds
    counter = 0

    async def loop() -> None:
        nonlocal counter
        while time.monotonic() < stop:
            counter += 1
            began = time.perf_counter()
            await call(counter)
            latencies.append(time.perf_counter() - began)

    await asyncio.gather(*(loop() for _ in range(clients)))
    return latencies


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def p50(values: list[float]) -> float:
    return percentile(values, 0.5)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0
