"""Concurrent clients of mixed calls against the whole suite: no errors, no SQLite busy
errors, latency per RPC reported, memory flat after warm-up."""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from google.protobuf.struct_pb2 import Struct
from grpc import aio

from arc.governance.v1 import governance_pb2, governance_pb2_grpc
from arc.gpu.v1 import gpu_pb2, gpu_pb2_grpc
from arc.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from arc_common.auth import Role, TokenStore
from arc_common.synth import generate_dataset
from tests.integration.scheduler.conftest import spec
from tests.security.suite import ProcessSuite

LONG = bool(os.environ.get("ARC_TEST_LONG"))
CLIENTS = 50
SECONDS = 60.0 if LONG else 8.0
WARMUP = SECONDS / 4


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def test_mixed_load(tmp_path: Path) -> None:
    home = tmp_path / "ws"
    home.mkdir()
    # Budgets big enough for the load: this test is about the engine, not the policy.
    policy = (Path(__file__).parents[2] / "services/governance/default_policy.yaml").read_text()
    (home / "policy.yaml").write_text(
        policy.replace("gpu_hours_per_cycle: 48", "gpu_hours_per_cycle: 1000000")
        .replace("calls_per_minute: 600", "calls_per_minute: 1000000")
        .replace("max_concurrent_jobs: 4", "max_concurrent_jobs: 1000000")
    )
    generate_dataset(home / "data" / "fundus", count=8, size=32, seed=1, splits=(0.5, 0.25, 0.25))
    suite = ProcessSuite(home)
    await suite.start()
    tokens = TokenStore.load(suite.home)
    auth = [("authorization", f"Bearer {tokens.token_for(Role.AGENT)}")]
    ports = suite.ports()
    latencies: dict[str, list[float]] = defaultdict(list)
    errors: list[str] = []
    counter = 0
    try:
        channels = {name: aio.insecure_channel(f"127.0.0.1:{port}") for name, port in ports.items()}
        scheduler = scheduler_pb2_grpc.SchedulerServiceStub(channels["scheduler"])
        gpus = gpu_pb2_grpc.GpuManagerServiceStub(channels["gpu_manager"])
        governance = governance_pb2_grpc.GovernanceServiceStub(channels["governance"])
        params = Struct()
        params.update({"hyperparameters": {"optimizer": {"learning_rate": 0.001}}})
        job_ids: list[str] = []

        def submit() -> Awaitable[Any]:
            nonlocal counter
            counter += 1
            # More GPU memory than any GPU has: the job is accepted (its dataset is there,
            # its GPU count fits a machine) and is never given a lease, never trained.
            experiment = spec(f"load-{counter}", gpu_allocation={"min_free_memory_mib": 10_000_000})
            call: Awaitable[Any] = scheduler.SubmitJob(
                scheduler_pb2.SubmitJobRequest(spec=experiment, request_id=f"load-{counter}"),
                metadata=auth,
                timeout=30,
            )
            return call

        calls: dict[str, Callable[[], Awaitable[Any]]] = {
            "GetSchedulerStatus": lambda: scheduler.GetSchedulerStatus(
                scheduler_pb2.GetSchedulerStatusRequest(), metadata=auth, timeout=30
            ),
            "ListGpus": lambda: gpus.ListGpus(gpu_pb2.ListGpusRequest(), metadata=auth, timeout=30),
            "GetMode": lambda: governance.GetMode(
                governance_pb2.GetModeRequest(), metadata=auth, timeout=30
            ),
            "ValidateToolRequest": lambda: governance.ValidateToolRequest(
                governance_pb2.ValidateToolRequestRequest(
                    tool=governance_pb2.TOOL_RUN_TRAINING_JOB, parameters=params, dry_run=True
                ),
                metadata=auth,
                timeout=30,
            ),
            "SubmitJob": submit,
            "GetJob": lambda: scheduler.GetJob(
                scheduler_pb2.GetJobRequest(job_id=job_ids[-1] if job_ids else "none"),
                metadata=auth,
                timeout=30,
            ),
        }
        names = list(calls)
        start = time.monotonic()
        warm_rss: dict[str, int] = {}

        async def client(number: int) -> None:
            index = number
            while time.monotonic() - start < SECONDS:
                name = names[index % len(names)]
                index += 1
                began = time.perf_counter()
                # Decided when the request is made: a GetJob sent before any job exists asks
                # for "none" and may come back after another client's submission.
                asks_for_none = name == "GetJob" and not job_ids
                try:
                    reply = await calls[name]()
                    if name == "SubmitJob":
                        job_ids.append(reply.job.job_id)
                except aio.AioRpcError as exc:
                    if not asks_for_none:
                        errors.append(f"{name}: {exc.code().name} {exc.details()}")
                    continue
                latencies[name].append(time.perf_counter() - began)

        async def sample_memory() -> None:
            await asyncio.sleep(WARMUP)
            for name, process in suite.processes.items():
                assert process.process is not None
                warm_rss[name] = rss_kib(process.process.pid)

        await asyncio.gather(sample_memory(), *(client(n) for n in range(CLIENTS)))
        final_rss = {
            name: rss_kib(p.process.pid)
            for name, p in suite.processes.items()
            if p.process is not None
        }
        for channel in channels.values():
            await channel.close()
    finally:
        logs = {name: p.log() for name, p in suite.processes.items()}
        suite.stop()
    print(f"\n{CLIENTS} clients, {SECONDS:.0f} s")
    for name, values in sorted(latencies.items()):
        values.sort()
        p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
        print(
            f"  {name:22} n={len(values):6d} p50={statistics.median(values) * 1000:7.1f} ms "
            f"p99={p99 * 1000:7.1f} ms"
        )
    print(f"  RSS KiB after warm-up {warm_rss}, at the end {final_rss}")
    assert errors == [], errors[:5]
    assert all(latencies[name] for name in names)
    for name, text in logs.items():
        assert "database is locked" not in text, f"{name} hit SQLite busy"
    for name, warm in warm_rss.items():
        assert final_rss[name] <= warm * 1.5 + 40_000, f"{name} grew {warm} -> {final_rss[name]}"
