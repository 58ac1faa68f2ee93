"""The warm pool's executor side when the pool dies before it is warm: runs are refused
at once (and start cold), not after the readiness timeout."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from services.executor.warm import PoolUnavailable, WarmPool


async def test_a_pool_that_dies_while_warming_refuses_at_once(tmp_path: Path) -> None:
    pool = WarmPool(tmp_path / "warm-pool.log", ready_seconds=120)
    await pool.start()
    assert pool.pid is not None
    os.kill(pool.pid, signal.SIGKILL)  # long before torch is imported
    began = time.monotonic()
    with pytest.raises(PoolUnavailable):
        await pool.spawn(input_path="unused.json", fds=(0, 1, 2, 0), env={}, cwd=str(tmp_path))
    assert time.monotonic() - began < 10
    assert not pool.available
    await pool.close()


async def test_spawn_waits_for_a_pool_that_is_still_warming(tmp_path: Path) -> None:
    pool = WarmPool(tmp_path / "warm-pool.log", ready_seconds=0.2)
    await pool.start()
    try:
        ready = await pool.wait_ready(0.05)  # torch takes seconds to import
        assert ready is False and pool.available
        assert await pool.wait_ready(120)
        assert "ready" in (tmp_path / "warm-pool.log").read_text()
    finally:
        await pool.close()
    await asyncio.sleep(0)
    assert not pool.available
