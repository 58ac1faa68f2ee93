"""``make bench`` / ``make bench-quick``: the engine's own overhead as ratios against a
baseline measured side by side in the same run (these machines are noisy: ratios, not
absolute times). One table; everything also goes to ``bench/results/latest.json``.

Measures 1-10 are issue 9's, 11 and 12 the sweeps' (bench/README.md has the method and
the latest table). ``--quick`` (CI, about a minute) runs 1, 2, 4, 8, 9, 10, 11 and 12
with short loads, a 1,000-job queue and 20-trial sweeps; the full run adds 3, 5 (two 60 s
jobs), 6 and 7, queues 10,000 jobs and sweeps 200 trials of 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grpc import aio

from arc.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from arc_common.auth import Role, TokenStore
from bench import engine, sweeps
from bench.common import REPO, drive, percentile
from bench.governance import audit_overhead
from tests.helpers import ServiceProcess
from tests.integration.scheduler.conftest import spec
from tests.security.suite import free_port

UNREACHABLE = json.dumps(
    [{"name": "none", "gpu_manager": "127.0.0.1:9", "executor": "127.0.0.1:9"}]
)


async def submit_vs_echo(home: Path, *, seconds: float, clients: int) -> dict[str, Any]:
    """1 and 2: SubmitJob (validated, durable, group-committed) against a bare echo server
    with the same request bytes. Governance is off here: its own cost is measure 8. Then,
    for the record, the ceiling: the same service answering SubmitJob without the engine's
    work (``bench.ceiling_scheduler``), as far as 1 and 2 could go on this machine."""
    env = {"ARC_SCHEDULER_NODES": UNREACHABLE, "ARC_SCHEDULER_GOVERNANCE_ADDRESS": ""}
    scheduler = ServiceProcess("services.scheduler", home, port=free_port(), env=env)
    ceiling = ServiceProcess("bench.ceiling_scheduler", home / "ceiling", port=free_port(), env=env)
    echo_port = free_port()
    echo = subprocess.Popen(
        [sys.executable, "-m", "bench.echo_server", "--port", str(echo_port)], cwd=REPO
    )
    await scheduler.start()
    await ceiling.start()
    token = TokenStore.load(home).token_for(Role.AGENT)
    ceiling_token = TokenStore.load(home / "ceiling").token_for(Role.AGENT)
    payload = scheduler_pb2.SubmitJobRequest(spec=spec("bench"), priority=5)
    try:
        async with (
            aio.insecure_channel(f"127.0.0.1:{scheduler.port}") as sched_channel,
            aio.insecure_channel(f"127.0.0.1:{ceiling.port}") as ceiling_channel,
            aio.insecure_channel(f"127.0.0.1:{echo_port}") as echo_channel,
        ):
            raw = echo_channel.unary_unary("/bench.Echo/Echo")
            body = payload.SerializeToString()
            await asyncio.wait_for(echo_channel.channel_ready(), 10)

            def submitter(channel: aio.Channel, token: str) -> Callable[[int], Any]:
                stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
                metadata = [("authorization", f"Bearer {token}")]

                async def submit(n: int) -> Any:
                    request = scheduler_pb2.SubmitJobRequest()
                    request.CopyFrom(payload)
                    request.request_id = f"b{n}"
                    request.spec.experiment_id = f"bench-{n}"
                    return await stub.SubmitJob(request, metadata=metadata, timeout=30)

                return submit

            submit = submitter(sched_channel, token)
            canned = submitter(ceiling_channel, ceiling_token)
            echo_auth = [("authorization", f"Bearer {token}")]

            async def bare(n: int) -> Any:
                return await raw(body, metadata=echo_auth, timeout=30)

            for call in (submit, bare, canned):  # warm-up
                await drive(call, clients=clients, seconds=0.5)
            engine_lat = await drive(submit, clients=clients, seconds=seconds)
            baseline = await drive(bare, clients=clients, seconds=seconds)
            ceiling_lat = await drive(canned, clients=clients, seconds=seconds)
    finally:
        scheduler.kill()
        ceiling.kill()
        echo.kill()
        echo.wait()
    return {
        "clients": clients,
        "submit_per_s": len(engine_lat) / seconds,
        "echo_per_s": len(baseline) / seconds,
        "throughput_ratio": len(engine_lat) / len(baseline),
        "submit_p50_ms": statistics.median(engine_lat) * 1000,
        "submit_p99_ms": percentile(engine_lat, 0.99) * 1000,
        "echo_p50_ms": statistics.median(baseline) * 1000,
        "echo_p99_ms": percentile(baseline, 0.99) * 1000,
        "latency_p50_ratio": statistics.median(engine_lat) / statistics.median(baseline),
        "ceiling_per_s": len(ceiling_lat) / seconds,
        "ceiling_p50_ms": statistics.median(ceiling_lat) * 1000,
        "ceiling_throughput_ratio": len(ceiling_lat) / len(baseline),
        "ceiling_latency_p50_ratio": statistics.median(ceiling_lat) / statistics.median(baseline),
    }


async def main_async(quick: bool, only: set[int]) -> dict[str, Any]:
    results: dict[str, Any] = {}

    def wanted(*numbers: int) -> bool:
        return not only or bool(only.intersection(numbers))

    try:
        await measure_all(results, quick, wanted)
    except Exception as exc:  # what was measured so far still counts, and says what broke
        logging.exception("benchmark failed")
        results["error"] = f"{type(exc).__name__}: {exc}"
    return results


async def measure_all(results: dict[str, Any], quick: bool, wanted: Callable[..., bool]) -> None:
    with tempfile.TemporaryDirectory(prefix="arc-bench-") as tmp:
        home = Path(tmp)
        if wanted(1, 2):
            results["submit"] = await submit_vs_echo(
                home / "submit", seconds=2.0 if quick else 10.0, clients=8 if quick else 32
            )
        if wanted(8):
            results["governance"] = await audit_overhead(
                home / "governance", seconds=2.0 if quick else 8.0, clients=8
            )
        if wanted(3, 4, 5, 7, 9, 10):
            suite_home = home / "suite"
            suite_home.mkdir()
            engine.make_dataset(suite_home, count=96 if quick else 320)
            async with engine.running_suite(suite_home) as bench:
                if wanted(4):
                    results["start"] = await engine.start_latency(bench, tries=1 if quick else 3)
                if wanted(9):
                    results["cancel"] = await engine.cancel_latency(bench, tries=1 if quick else 3)
                if wanted(10):
                    results["queue"] = await engine.long_queue(
                        bench, small=100, large=1000 if quick else 10_000
                    )
                if not quick and wanted(3, 5):
                    results["training"] = await engine.training_overhead(bench, epochs=3, rounds=3)
                    per_epoch = results["training"]["suite"]["wall_s"] / 3
                    if wanted(5):
                        results["gap"] = await engine.inter_job_gap(
                            bench,
                            # Jobs of at least 60 s: a third of the 3-epoch wall overstates
                            # an epoch (it holds the start and the test split too).
                            epochs=max(2, math.ceil(72 / per_epoch)),
                        )
        if wanted(11, 12):
            measured = await sweeps.measure(home / "sweeps", quick=quick)
            results["sweep"] = measured["bookkeeping"]
            results["sweep_busy"] = measured["busy"]
            results["suggest"] = measured["suggest"]
        if not quick and wanted(7):
            results["streaming"] = await engine.streaming_cost(home / "streaming", epochs=20)
        if not quick and wanted(6):
            results["metrics_path"] = await engine.metrics_path(home / "metrics", count=20_000)


TARGETS: list[tuple[str, str, str, str, str]] = [
    # (section, key, label, target, sense)
    ("submit", "throughput_ratio", "1 SubmitJob throughput / echo", ">= 0.5", "max"),
    ("submit", "latency_p50_ratio", "2 SubmitJob p50 / echo p50", "<= 2.5", "min"),
    ("training", "wall_ratio", "3 ~10 s training: suite / bare script", "<= 1.03", "min"),
    ("start", "ratio", "4 StartRun to first step / cold torch import", "<= 0.1", "min"),
    ("gap", "ratio", "5 gap between jobs on one GPU / job time", "<= 0.01", "min"),
    ("metrics_path", "ratio", "6 metrics/s to WatchJob / bare stream", ">= 0.5", "max"),
    ("streaming", "ratio", "7 step time streaming on / off", "<= 1.01", "min"),
    ("governance", "ratio", "8 ValidateToolRequest p50 audited / not", "<= 1.15", "min"),
    ("cancel", "ratio", "9 CancelRun until gone / raw kill + wait", "<= 2", "min"),
    ("queue", "status_growth", "10 GetSchedulerStatus p50, long / short queue", "<= 2", "min"),
    ("queue", "getjob_growth", "10 GetJob p50, long / short queue", "<= 2", "min"),
    ("queue", "dispatch_growth", "10 dispatch decision, long / short queue", "<= 2", "min"),
    ("sweep", "wall_ratio", "11 sweep wall / ideal, 2 trials at a time", "<= 1.10", "min"),
    ("sweep_busy", "busy_fraction", "11 GPU busy while trials are queued / 1.0", ">= 0.99", "max"),
    ("suggest", "tpe_p50_ms", "12 TPE suggestion p50 ms (1,000 trials)", "<= 50", "min"),
]


def table(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for section, key, label, target, sense in TARGETS:
        if section not in results:
            continue
        value = float(results[section][key])
        bound = float(target.split()[1])
        met = value >= bound if sense == "max" else value <= bound
        rows.append({"measure": label, "ratio": value, "target": target, "met": met})
    return rows


def details(results: dict[str, Any]) -> list[str]:
    out = []
    if "submit" in results:
        s = results["submit"]
        out.append(
            f"SubmitJob {s['submit_per_s']:.0f}/s, p50 {s['submit_p50_ms']:.1f} ms, "
            f"p99 {s['submit_p99_ms']:.1f} ms; echo {s['echo_per_s']:.0f}/s, "
            f"p50 {s['echo_p50_ms']:.1f} ms ({s['clients']} clients)"
        )
        out.append(
            f"ceiling of 1 and 2, the same service answering SubmitJob without the engine's "
            f"work: {s['ceiling_per_s']:.0f}/s, p50 {s['ceiling_p50_ms']:.1f} ms: "
            f"{s['ceiling_throughput_ratio']:.2f} of echo's throughput, "
            f"{s['ceiling_latency_p50_ratio']:.2f}x its p50"
        )
    if "training" in results:
        t = results["training"]
        out.append(
            f"training ({t['epochs']} epochs, median of {t['rounds']} each): suite "
            f"{t['suite']['wall_s']:.1f} s, bare {t['bare']['wall_s']:.1f} s; "
            f"{t['suite']['images_per_second']:.1f} vs "
            f"{t['bare']['images_per_second']:.1f} images/s with "
            f"{t['suite']['step_metrics_streamed']} step metrics streamed"
        )
    if "streaming" in results:
        m = results["streaming"]
        out.append(
            f"streaming: {m['pairs']} pairs of epochs in one run, images/s on "
            + ", ".join(f"{v:.1f}" for v in m["images_per_second_on"])
            + "; off "
            + ", ".join(f"{v:.1f}" for v in m["images_per_second_off"])
        )
    if "start" in results:
        s = results["start"]
        out.append(
            f"StartRun to the first step {s['start_to_first_step_s'] * 1000:.0f} ms (to its "
            f"end {s['start_to_first_step_done_s'] * 1000:.0f} ms); cold import of "
            f"torch+torchvision {s['cold_import_s']:.2f} s"
        )
    if "gap" in results:
        g = results["gap"]
        out.append(
            f"gap {g['gap_s']:.2f} s between {g['job_seconds']:.0f} s jobs (to the end of "
            f"B's first step {g['gap_to_first_step_done_s']:.2f} s): A's last validation "
            f"and test split {g['a_gpu_epilogue_s']:.2f} s, then from A's GPU released to "
            f"B's loop the engine {g['engine_gap_s']:.2f} s (A wrote its last checkpoint "
            f"meanwhile, done {g['a_end_after_b_s']:.2f} s after B began)"
        )
    if "metrics_path" in results:
        m = results["metrics_path"]
        out.append(
            f"metrics: {m['engine_per_s']:.0f}/s through the engine, "
            f"{m['bare_stream_per_s']:.0f}/s bare ({m['metrics']} metrics)"
        )
    if "governance" in results:
        g = results["governance"]
        out.append(
            f"ValidateToolRequest audited p50 {g['audited_p50_ms']:.1f} ms "
            f"({g['audited_per_s']:.0f}/s), without audit {g['no_audit_p50_ms']:.1f} ms "
            f"({g['no_audit_per_s']:.0f}/s)"
        )
    if "cancel" in results:
        c = results["cancel"]
        out.append(
            f"CancelRun until no process is left {c['cancel_s'] * 1000:.0f} ms; raw kill + "
            f"wait {c['raw_kill_s'] * 1000:.0f} ms"
        )
    if "queue" in results:
        q = results["queue"]
        small, large = q["small"], q["large"]
        out.append(
            f"queue {q['queued_small']} -> {q['queued_large']}: status "
            f"{small['status_ms']:.1f} -> {large['status_ms']:.1f} ms, GetJob "
            f"{small['getjob_ms']:.2f} -> {large['getjob_ms']:.2f} ms, dispatch "
            f"{small['dispatch_ms']:.0f} -> {large['dispatch_ms']:.0f} ms; scheduler RSS "
            f"{small['rss_mib']:.0f} -> {large['rss_mib']:.0f} MiB"
        )
    if "sweep" in results:
        w, b = results["sweep"], results["sweep_busy"]
        out.append(
            f"sweep of {w['trials']} trials of {w['trial_seconds']:g} s, {w['parallel']} at a "
            f"time: {w['wall_s']:.1f} s against {w['ideal_s']:.1f} s ideal; {b['parallel']} at "
            f"a time on {b['gpus']} GPUs: busy {b['busy_fraction']:.3f} while trials waited"
        )
    if "suggest" in results:
        g = results["suggest"]
        out.append(
            f"suggestion with {g['completed']} trials: TPE p50 {g['tpe']['p50_ms']:.1f} ms "
            f"({g['tpe']['cpu_ms']:.1f} ms CPU), random {g['random']['p50_ms']:.1f} ms "
            f"({g['random']['cpu_ms']:.1f} ms CPU)"
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="about a minute (CI)")
    parser.add_argument(
        "--only", default="", help="comma-separated measure numbers, e.g. 4,9 (default: all)"
    )
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "latest.json"))
    args = parser.parse_args()
    only = {int(n) for n in args.only.split(",") if n.strip()}
    began = time.monotonic()
    results = asyncio.run(main_async(args.quick, only))
    rows = table(results)
    print(f"{'measure':52} {'ratio':>8}  {'target':8} met")
    for row in rows:
        mark = "yes" if row["met"] else "NO"
        print(f"{row['measure']:52} {row['ratio']:8.3f}  {row['target']:8} {mark}")
    for line in details(results):
        print(line)
    if "error" in results:
        print(f"INCOMPLETE: {results['error']}")
    print(f"({time.monotonic() - began:.0f} s, {'quick' if args.quick else 'full'} run)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "host": platform.node(),
                "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, no GPU",
                "python": platform.python_version(),
                "quick": args.quick,
                "table": rows,
                **results,
            },
            indent=2,
        )
    )
    return 1 if "error" in results else 0


if __name__ == "__main__":
    sys.exit(main())
