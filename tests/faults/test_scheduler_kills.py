"""SIGKILL the scheduler again and again during a burst of submissions from concurrent
clients: every submission that got an OK is present, exactly once."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
from pathlib import Path

from grpc import aio

from arc.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from arc_common.auth import Role, TokenStore
from tests.helpers import ServiceProcess
from tests.integration.scheduler.conftest import spec

LONG = bool(os.environ.get("ARC_TEST_LONG"))
SUBMISSIONS = 1000 if LONG else 200
KILLS = 20 if LONG else 4
CLIENTS = 8
# The scheduler comes back within seconds; do not let gRPC's backoff wait minutes.
FAST_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def test_kills_during_a_submission_burst_lose_nothing(tmp_path: Path) -> None:
    port = free_port()
    unreachable = [{"name": "nowhere", "gpu_manager": "127.0.0.1:9", "executor": "127.0.0.1:9"}]
    scheduler = ServiceProcess(
        "services.scheduler",
        tmp_path,
        port=port,
        env={
            "ARC_SCHEDULER_NODES": json.dumps(unreachable),
            "ARC_SCHEDULER_GOVERNANCE_ADDRESS": "",
        },  # jobs stay queued; only the queue counts
    )
    await scheduler.start()
    token = TokenStore.load(tmp_path).token_for(Role.AGENT)
    acknowledged: set[str] = set()
    pending = list(range(SUBMISSIONS))
    rng = random.Random(7)

    async def client() -> None:
        async with aio.insecure_channel(f"127.0.0.1:{port}", options=FAST_RECONNECT) as channel:
            stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
            while pending:
                n = pending.pop()
                request = scheduler_pb2.SubmitJobRequest(
                    request_id=f"burst-{n}", spec=spec(f"burst-{n}"), priority=n % 11
                )
                while True:  # retry the same request_id until it is acknowledged
                    try:
                        await stub.SubmitJob(
                            request,
                            timeout=5,
                            wait_for_ready=True,
                            metadata=[("authorization", f"Bearer {token}")],
                        )
                    except aio.AioRpcError:
                        await asyncio.sleep(0.05)
                        continue
                    acknowledged.add(f"burst-{n}")
                    break

    async def killer() -> None:
        for _ in range(KILLS):
            await asyncio.sleep(rng.uniform(0.3, 1.2))
            await scheduler.signal_and_wait(signal.SIGKILL)
            await scheduler.start()

    try:
        await asyncio.gather(killer(), *(client() for _ in range(CLIENTS)))
        assert len(acknowledged) == SUBMISSIONS
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
            jobs = []
            token_page = ""
            while True:
                reply = await stub.ListJobs(
                    scheduler_pb2.ListJobsRequest(page_size=1000, page_token=token_page),
                    metadata=[("authorization", f"Bearer {token}")],
                    timeout=30,
                )
                jobs += list(reply.jobs)
                token_page = reply.next_page_token
                if not token_page:
                    break
        per_experiment: dict[str, int] = {}
        for job in jobs:
            per_experiment[job.experiment_id] = per_experiment.get(job.experiment_id, 0) + 1
        assert set(per_experiment) == acknowledged
        assert set(per_experiment.values()) == {1}, "a submission was stored twice"
    finally:
        scheduler.kill()
