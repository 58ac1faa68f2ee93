"""On a GPU machine: the warm pool imports torch without touching CUDA, and the run it
forks trains on the leased GPU (real NVML leases, real CUDA)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from arc.common.v1 import common_pb2
from arc_common.synth import generate_dataset
from tests.integration.executor.conftest import Suite, running_suite
from tests.integration.executor.test_runs import wait_done
from tests.integration.executor.test_warm_pool import parent_of, pool_ready

pytestmark = pytest.mark.gpu


@pytest.fixture
async def gpu_suite(tmp_path: Path) -> AsyncIterator[Suite]:
    data_root = tmp_path / "datasets"
    generate_dataset(data_root / "fundus", count=96, size=48, seed=7, splits=(0.5, 0.25, 0.25))
    async with running_suite(
        tmp_path / "ws", data_root, backend="nvml", log_every_steps=1
    ) as suite:
        yield suite


async def test_a_warm_forked_run_trains_on_the_leased_gpu(gpu_suite: Suite) -> None:
    pool_pid = await pool_ready(gpu_suite.home)  # asserts "CUDA not initialised"
    run = await gpu_suite.start("job-gpu")
    assert parent_of(run.pid) == pool_pid
    done = await wait_done(gpu_suite, run.run_id)
    assert done.state == common_pb2.JOB_STATE_COMPLETED, done.error_message
    events = await gpu_suite.events(run.run_id)
    running = [
        e.state_change.reason
        for e in events
        if e.WhichOneof("payload") == "state_change"
        and e.state_change.state == common_pb2.JOB_STATE_RUNNING
    ]
    assert running and "training on cuda" in running[0]
