"""PrepareRun reaches the executor (the trainer of the job behind is prepared) but its
reply is lost on the way back to the scheduler. Asked again with the same request id, the
executor answers with the run it made: no second trainer, and the job trains on that one.
Should the scheduler never learn of it, the job's cold start cancels the orphan instead of
being refused forever (one live run per job)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from grpc import aio

from arc.common.v1 import common_pb2
from arc.executor.v1 import executor_pb2, executor_pb2_grpc
from arc.scheduler.v1 import scheduler_pb2_grpc
from arc_common.auth import Role, TokenStore
from tests.faults.jobs import DONE, PREPARED, Jobs
from tests.faults.proxy import DroppingProxy
from tests.security.suite import ProcessSuite

PREPARE = "/arc.executor.v1.ExecutorService/PrepareRun"


@dataclass
class Scene:
    jobs: Jobs
    executor: executor_pb2_grpc.ExecutorServiceStub
    proxy: DroppingProxy

    def lost_run_id(self) -> str:
        """The run the lost PrepareRun replies named: one, however often the call was
        tried (the channel retries UNAVAILABLE itself, with the same request id)."""
        assert {method for method, _ in self.proxy.lost} == {PREPARE}
        [run_id] = {
            executor_pb2.PrepareRunResponse.FromString(reply).run.run_id
            for _, reply in self.proxy.lost
        }
        return str(run_id)


@asynccontextmanager
async def scene(
    home: Path, data: Path, *, retry_seconds: float, max_drops: int | None
) -> AsyncIterator[Scene]:
    """The suite, with the scheduler reaching its executor through a proxy that drops
    PrepareRun replies (``max_drops`` of them; every one when None)."""
    suite = ProcessSuite(
        home, data_root=data, env={"ARC_SCHEDULER_PREPARE_RETRY_SECONDS": str(retry_seconds)}
    )
    await suite.start()
    assert suite.executor is not None and suite.scheduler is not None
    proxy = DroppingProxy(
        f"127.0.0.1:{suite.executor.port}",
        drop=1.0,
        methods=frozenset({PREPARE}),
        max_drops=max_drops,
    )
    try:
        proxy_port = await proxy.start()
        nodes = [
            {
                "name": "local",
                "gpu_manager": f"127.0.0.1:{suite.gpu.port}",
                "executor": f"127.0.0.1:{proxy_port}",
            }
        ]
        suite.scheduler.kill()  # started again, reaching its executor through the proxy
        suite.scheduler.env["ARC_SCHEDULER_NODES"] = json.dumps(nodes)
        await suite.scheduler.start()
        token = TokenStore.load(home).token_for(Role.OPERATOR)
        async with (
            aio.insecure_channel(f"127.0.0.1:{suite.scheduler.port}") as scheduler,
            aio.insecure_channel(f"127.0.0.1:{suite.executor.port}") as executor,
        ):
            auth = [("authorization", f"Bearer {token}")]
            yield Scene(
                Jobs(scheduler_pb2_grpc.SchedulerServiceStub(scheduler), auth),
                executor_pb2_grpc.ExecutorServiceStub(executor),
                proxy,
            )
    finally:
        await proxy.stop()
        suite.stop()


async def test_asked_again_the_executor_answers_with_the_run_it_prepared(
    tmp_path: Path, tiny_data: Path
) -> None:
    # Five replies lost: every attempt of the scheduler's first call (its channel tries
    # five times), so the scheduler sees UNAVAILABLE and asks again a second later.
    async with scene(tmp_path / "ws", tiny_data, retry_seconds=1, max_drops=5) as s:
        first = await s.jobs.submit_on_gpu0("long", epochs=8, priority=9)
        await s.jobs.until(first, lambda j: j.state == common_pb2.JOB_STATE_RUNNING)
        second = await s.jobs.submit_on_gpu0("behind", epochs=1, priority=5)
        waiting = await s.jobs.until(second, lambda j: PREPARED in j.pending_reason)
        lost = s.lost_run_id()  # the run the first PrepareRun made; its reply never came
        assert waiting.pending_reason.endswith(f"({lost})")  # the same run: no second trainer
        assert s.proxy.dropped == 5 and s.proxy.calls[PREPARE] == 6
        finished = await s.jobs.until(second, lambda j: j.state in DONE)
        assert finished.state == common_pb2.JOB_STATE_COMPLETED, finished.error_message
        assert finished.run_id == lost  # it trained on the prepared trainer
        assert (await s.jobs.get(first)).state == common_pb2.JOB_STATE_COMPLETED


async def test_a_prepared_run_the_scheduler_never_heard_of_gives_way_to_the_cold_start(
    tmp_path: Path, tiny_data: Path
) -> None:
    async with scene(tmp_path / "ws", tiny_data, retry_seconds=3600, max_drops=None) as s:
        first = await s.jobs.submit_on_gpu0("long", epochs=8, priority=9)
        await s.jobs.until(first, lambda j: j.state == common_pb2.JOB_STATE_RUNNING)
        second = await s.jobs.submit_on_gpu0("behind", epochs=1, priority=5)
        for _ in range(300):  # until the executor has prepared it (the scheduler never hears)
            if s.proxy.lost:
                break
            await asyncio.sleep(0.2)
        orphan = s.lost_run_id()
        assert "prepared" not in (await s.jobs.get(second)).pending_reason
        finished = await s.jobs.until(second, lambda j: j.state in DONE)
        assert finished.state == common_pb2.JOB_STATE_COMPLETED, finished.error_message
        assert finished.run_id and finished.run_id != orphan  # started cold
        reply = await s.executor.GetRun(
            executor_pb2.GetRunRequest(run_id=orphan), metadata=s.jobs.auth
        )
        assert reply.run.state == common_pb2.JOB_STATE_CANCELLED
        # Asked once (its attempts all lost): the scheduler's retry is an hour away.
        assert s.proxy.calls[PREPARE] == s.proxy.dropped <= 5
