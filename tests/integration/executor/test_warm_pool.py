"""Runs forked from the warm pool (torch imported once per executor), and a cold start
when the pool is gone."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from arc.common.v1 import common_pb2
from tests.integration.executor.conftest import Suite
from tests.integration.executor.test_runs import wait_done


def parent_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise AssertionError(f"no PPid for {pid}")


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


async def pool_ready(home: Path, seconds: float = 90) -> int:
    log = home / "logs" / "warm-pool.log"
    for _ in range(int(seconds * 10)):
        if log.exists() and "ready" in log.read_text():
            line = [x for x in log.read_text().splitlines() if "ready" in x][-1]
            assert "CUDA not initialised" in line
            return int(line.split()[2])
        await asyncio.sleep(0.1)
    raise AssertionError(f"the warm pool did not get ready: {log}")


async def test_runs_fork_from_the_warm_pool_and_start_cold_without_it(suite: Suite) -> None:
    pool_pid = await pool_ready(suite.home)
    assert "services.executor.trainer.pool" in cmdline(pool_pid)

    warm = await suite.start("job-warm")
    assert parent_of(warm.pid) == pool_pid  # forked by the pool ...
    assert os.getpgid(warm.pid) == warm.pid  # ... as the leader of its own process group
    done = await wait_done(suite, warm.run_id)
    assert done.state == common_pb2.JOB_STATE_COMPLETED, done.error_message
    assert done.result.best_metrics["test_auc"] >= 0

    os.kill(pool_pid, signal.SIGKILL)
    await asyncio.sleep(0.5)
    cold = await suite.start("job-cold")
    assert parent_of(cold.pid) == os.getpid()  # the executor (in this process) spawned it
    assert "services.executor.trainer" in cmdline(cold.pid)
    done = await wait_done(suite, cold.run_id)
    assert done.state == common_pb2.JOB_STATE_COMPLETED, done.error_message
    log = (suite.home / "logs" / "warm-pool.log").read_text()
    assert "ready" in log


async def test_a_warm_run_that_crashes_reports_its_exit_code(suite: Suite) -> None:
    await pool_ready(suite.home)
    run = await suite.start("job-bad", architecture={"variant": "resnet999"})
    done = await wait_done(suite, run.run_id)
    assert done.state == common_pb2.JOB_STATE_FAILED
    assert done.end_cause == common_pb2.RUN_END_CAUSE_FAILED
    assert "trainer exited with 1" in done.error_message
    assert "resnet999" in done.error_message
