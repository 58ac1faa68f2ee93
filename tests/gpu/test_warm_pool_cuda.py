"""On a GPU machine: the warm pool imports torch without touching CUDA, and the run it
forks trains on the leased GPU (real NVML leases, real CUDA)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from arc.common.v1 import common_pb2
from arc_common.auth import TokenStore
from services.executor import __main__ as executor_main
from services.executor.settings import ExecutorSettings
from services.executor.synth import generate_dataset
from services.gpu_manager import __main__ as gpu_main
from services.gpu_manager.settings import GpuManagerSettings
from tests.integration.executor.conftest import Suite
from tests.integration.executor.test_runs import wait_done
from tests.integration.executor.test_warm_pool import parent_of, pool_ready

pytestmark = pytest.mark.gpu


@pytest.fixture
async def gpu_suite(tmp_path: Path) -> AsyncIterator[Suite]:
    home = tmp_path / "ws"
    data_root = tmp_path / "datasets"
    generate_dataset(data_root / "fundus", count=96, size=48, seed=7, splits=(0.5, 0.25, 0.25))
    tokens = TokenStore.ensure(home)
    gpu = await gpu_main.start(GpuManagerSettings(home=home, port=0, backend="nvml"), tokens)
    settings = ExecutorSettings(
        home=home,
        port=0,
        gpu_manager_address=f"127.0.0.1:{gpu.port}",
        data_root=data_root,
        log_every_steps=1,
    )
    server = await executor_main.start(settings, tokens)
    suite = Suite(home, tokens, gpu.port, server.port)
    yield suite
    for channel in suite.channels:
        await channel.close()
    await server.stop(0)
    await gpu.stop(0)


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
