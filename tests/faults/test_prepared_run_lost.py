"""SIGKILL the executor while a job waits with its trainer prepared ahead: the prepared
trainer dies with its executor, and when the job's GPU comes the scheduler finds the
prepared run gone and starts the job cold; nothing is lost and both jobs complete."""

from __future__ import annotations

import signal
from pathlib import Path

from grpc import aio

from arc.common.v1 import common_pb2
from arc.scheduler.v1 import scheduler_pb2_grpc
from arc_common.auth import Role, TokenStore
from tests.faults.jobs import DONE, PREPARED, Jobs
from tests.security.suite import ProcessSuite


async def test_a_prepared_run_lost_with_its_executor_is_replaced_by_a_cold_start(
    tmp_path: Path, tiny_data: Path
) -> None:
    home = tmp_path / "ws"
    suite = ProcessSuite(home, data_root=tiny_data, fixed_ports=True)
    await suite.start()
    assert suite.executor is not None and suite.scheduler is not None
    token = TokenStore.load(home).token_for(Role.AGENT)
    try:
        async with aio.insecure_channel(f"127.0.0.1:{suite.scheduler.port}") as channel:
            jobs = Jobs(
                scheduler_pb2_grpc.SchedulerServiceStub(channel),
                [("authorization", f"Bearer {token}")],
            )
            first = await jobs.submit_on_gpu0("long", epochs=8, priority=9)
            await jobs.until(first, lambda j: j.state == common_pb2.JOB_STATE_RUNNING)
            second = await jobs.submit_on_gpu0("behind", epochs=1, priority=5)
            waiting = await jobs.until(second, lambda j: PREPARED in j.pending_reason)
            prepared_run = waiting.pending_reason.rsplit("(", 1)[1][:-1]

            await suite.executor.signal_and_wait(signal.SIGKILL)
            await suite.executor.start()

            await jobs.until(first, lambda j: j.state in DONE)
            finished = await jobs.until(second, lambda j: j.state in DONE)
            assert finished.state == common_pb2.JOB_STATE_COMPLETED, finished.error_message
            assert finished.run_id and finished.run_id != prepared_run  # started cold
            assert (await jobs.get(first)).state == common_pb2.JOB_STATE_COMPLETED
    finally:
        suite.stop()
