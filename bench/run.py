"""``make bench`` / ``make bench-quick``: the engine's own overhead as ratios against a
baseline measured side by side in the same run (these machines are noisy: ratios, not
absolute times). Results also go to ``bench/results/latest.json``.

Measured so far (issue 9 lists ten): 1-2 SubmitJob throughput and p50 latency against a
bare echo server with the same payload, and 10 the cost of GetSchedulerStatus / GetJob
with a long queue against a short one (plus the scheduler's RSS).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from grpc import aio

from arc.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from arc_common.auth import Role, TokenStore
from tests.helpers import ServiceProcess
from tests.integration.scheduler.conftest import spec
from tests.security.suite import free_port

REPO = Path(__file__).resolve().parents[1]
UNREACHABLE = json.dumps(
    [{"name": "none", "gpu_manager": "127.0.0.1:9", "executor": "127.0.0.1:9"}]
)


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


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def submit_vs_echo(home: Path, *, seconds: float, clients: int) -> dict[str, Any]:
    scheduler = ServiceProcess(
        "services.scheduler",
        home,
        port=free_port(),
        env={"ARC_SCHEDULER_NODES": UNREACHABLE, "ARC_SCHEDULER_GOVERNANCE_ADDRESS": ""},
    )
    echo_port = free_port()
    echo = subprocess.Popen(
        [sys.executable, "-m", "bench.echo_server", "--port", str(echo_port)], cwd=REPO
    )
    await scheduler.start()
    token = TokenStore.load(home).token_for(Role.AGENT)
    auth = [("authorization", f"Bearer {token}")]
    payload = scheduler_pb2.SubmitJobRequest(spec=spec("bench"), priority=5)
    try:
        async with (
            aio.insecure_channel(f"127.0.0.1:{scheduler.port}") as sched_channel,
            aio.insecure_channel(f"127.0.0.1:{echo_port}") as echo_channel,
        ):
            stub = scheduler_pb2_grpc.SchedulerServiceStub(sched_channel)
            raw = echo_channel.unary_unary("/bench.Echo/Echo")
            body = payload.SerializeToString()
            await asyncio.wait_for(echo_channel.channel_ready(), 10)

            async def submit(n: int) -> Any:
                request = scheduler_pb2.SubmitJobRequest()
                request.CopyFrom(payload)
                request.request_id = f"b{n}"
                request.spec.experiment_id = f"bench-{n}"
                return await stub.SubmitJob(request, metadata=auth, timeout=30)

            async def bare(n: int) -> Any:
                return await raw(body, metadata=auth, timeout=30)

            await drive(submit, clients=clients, seconds=0.5)  # warm-up
            engine = await drive(submit, clients=clients, seconds=seconds)
            baseline = await drive(bare, clients=clients, seconds=seconds)
    finally:
        scheduler.kill()
        echo.kill()
        echo.wait()
    return {
        "submit_per_s": len(engine) / seconds,
        "echo_per_s": len(baseline) / seconds,
        "throughput_ratio": (len(engine) / seconds) / (len(baseline) / seconds),
        "submit_p50_ms": statistics.median(engine) * 1000,
        "submit_p99_ms": p(engine, 0.99) * 1000,
        "echo_p50_ms": statistics.median(baseline) * 1000,
        "latency_p50_ratio": statistics.median(engine) / statistics.median(baseline),
    }


async def measure_queue(home: Path, size: int) -> dict[str, float]:
    """GetSchedulerStatus and GetJob latency with ``size`` jobs queued, and the RSS."""
    scheduler = ServiceProcess(
        "services.scheduler",
        home,
        port=free_port(),
        env={"ARC_SCHEDULER_NODES": UNREACHABLE, "ARC_SCHEDULER_GOVERNANCE_ADDRESS": ""},
    )
    await scheduler.start()
    auth = [("authorization", f"Bearer {TokenStore.load(home).token_for(Role.AGENT)}")]
    try:
        async with aio.insecure_channel(f"127.0.0.1:{scheduler.port}") as channel:
            stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
            last = ""
            for first in range(0, size, 1000):
                batch = scheduler_pb2.SubmitJobsRequest(
                    jobs=[
                        scheduler_pb2.SubmitJobRequest(spec=spec(f"q{n}"), priority=n % 11)
                        for n in range(first, min(size, first + 1000))
                    ]
                )
                reply = await stub.SubmitJobs(batch, metadata=auth, timeout=600)
                last = reply.results[-1].job.job_id

            async def status(_: int) -> Any:
                return await stub.GetSchedulerStatus(
                    scheduler_pb2.GetSchedulerStatusRequest(), metadata=auth, timeout=60
                )

            async def get(_: int) -> Any:
                return await stub.GetJob(
                    scheduler_pb2.GetJobRequest(job_id=last), metadata=auth, timeout=60
                )

            status_lat = await drive(status, clients=2, seconds=1.5)
            get_lat = await drive(get, clients=4, seconds=1.5)
            assert scheduler.process is not None
            rss_kib = rss(scheduler.process.pid)
    finally:
        scheduler.kill()
    return {
        "status_p50_ms": statistics.median(status_lat) * 1000,
        "getjob_p50_ms": statistics.median(get_lat) * 1000,
        "rss_mib": rss_kib / 1024,
    }


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def long_queue(home: Path, *, small: int, large: int) -> dict[str, Any]:
    few = await measure_queue(home / "few", small)
    many = await measure_queue(home / "many", large)
    return {
        "queued_small": small,
        "queued_large": large,
        "small": few,
        "large": many,
        "getjob_growth": many["getjob_p50_ms"] / few["getjob_p50_ms"],
        "status_growth": many["status_p50_ms"] / few["status_p50_ms"],
    }


async def main_async(quick: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        submit = await submit_vs_echo(
            home / "submit", seconds=2.0 if quick else 10.0, clients=8 if quick else 32
        )
        queue = await long_queue(home / "queue", small=100, large=1000 if quick else 10_000)
    return {"submit": submit, "queue": queue}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="under a minute (CI)")
    args = parser.parse_args()
    results = asyncio.run(main_async(args.quick))
    s, q = results["submit"], results["queue"]
    rows = [
        ("1 SubmitJob throughput / echo", s["throughput_ratio"], ">= 0.7"),
        ("2 SubmitJob p50 / echo p50", s["latency_p50_ratio"], "<= 1.5"),
        (
            f"10 GetJob p50, {q['queued_large']} / {q['queued_small']} queued",
            q["getjob_growth"],
            "<= 2",
        ),
        (
            f"10 GetSchedulerStatus p50, {q['queued_large']} / {q['queued_small']} queued",
            q["status_growth"],
            "<= 2",
        ),
    ]
    print(f"{'measure':58} {'ratio':>8}  target")
    for name, value, target in rows:
        print(f"{name:58} {value:8.2f}  {target}")
    print(
        f"SubmitJob {s['submit_per_s']:.0f}/s (p50 {s['submit_p50_ms']:.1f} ms, "
        f"p99 {s['submit_p99_ms']:.1f} ms); echo {s['echo_per_s']:.0f}/s; "
        f"scheduler RSS {q['large']['rss_mib']:.0f} MiB with "
        f"{q['queued_large']} queued"
    )
    out = REPO / "bench" / "results" / "latest.json"
    out.write_text(
        json.dumps(
            {
                "host": platform.node(),
                "python": platform.python_version(),
                "quick": args.quick,
                **results,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
