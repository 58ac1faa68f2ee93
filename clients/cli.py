"""The ``arc`` command: run the suite, submit and watch experiments, govern, audit.

Exit codes tell errors apart: 0 ok, 1 unexpected, 2 usage, 3 not found, 4 invalid request
or state, 5 not allowed (credentials, role, policy), 6 a service is unreachable, 7 out of
GPUs or budget, 8 the job ended without completing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from arc_common import errors
from arc_common.models import DecisionOutcome, Job, JobState, Mode, Tool
from clients import tools_cli
from clients.cli_args import parser
from clients.cli_base import JOB_NOT_COMPLETED, client_for
from clients.code_cli import cmd_patch, failure_lines, with_revision
from clients.demo import run_demo
from clients.display import (
    Out,
    fmt,
    watch_job,
)
from clients.orchestrator import interpret
from clients.results_cli import cmd_compare, cmd_evaluate, cmd_results
from clients.suite import LocalSuite
from clients.sweep_cli import cmd_ablation, cmd_history, cmd_sweep

EXIT_CODES: list[tuple[type[errors.ArcError], int]] = [
    (errors.NotFoundError, 3),
    (errors.InvalidArgumentError, 4),
    (errors.AlreadyExistsError, 4),
    (errors.FailedPreconditionError, 4),
    (errors.PermissionDeniedError, 5),
    (errors.UnauthenticatedError, 5),
    (errors.UnavailableError, 6),
    (errors.DeadlineExceededError, 6),
    (errors.ResourceExhaustedError, 7),
]


def _job_row(job: Job) -> dict[str, Any]:
    best = job.result.best_metrics if job.result else {}
    return {
        "job": job.job_id,
        "experiment": job.experiment_id,
        "state": job.state.value if job.state else "",
        "priority": job.priority,
        "attempt": job.attempt,
        "node": job.node,
        "gpus": ",".join(map(str, job.gpu_indices)),
        "test_auc": best.get("test_auc", math.nan),
        "waiting_for": job.pending_reason,
    }


# --- commands -------------------------------------------------------------------------------


async def cmd_submit(args: argparse.Namespace, out: Out) -> int:
    text = Path(args.file).read_text()
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise errors.InvalidArgumentError(
            f"{args.file} is not valid YAML or JSON{where}: {getattr(exc, 'problem', exc)}"
        ) from None
    if not isinstance(loaded, (dict, list)):
        raise errors.InvalidArgumentError(
            f"{args.file} holds no proposal (a mapping, or a list of them)"
        )
    proposals = loaded if isinstance(loaded, list) else [loaded]
    specs = []
    for index, proposal in enumerate(proposals):
        result = interpret(proposal)
        if result.spec is None:
            print(
                f"proposal {index} in {args.file} cannot run:\n{result.feedback()}", file=sys.stderr
            )
            return 4
        specs.append(with_revision(result.spec, args))
    options: dict[str, Any] = {"max_retries": args.max_retries, "timeout_seconds": args.timeout}
    if args.priority is not None:
        options["priority"] = args.priority
    async with client_for(args) as client:
        jobs = await client.submit_many(specs, **options)
    out.table(
        [_job_row(j) | {"position": j.queue_position} for j in jobs],
        ["job", "experiment", "state", "priority", "position"],
    )
    return 0


async def cmd_status(args: argparse.Namespace, out: Out) -> int:
    async with client_for(args) as client:
        job = await client.job(args.job)
    if out.json:
        out.data(job.model_dump(mode="json"))
        return 0
    row = _job_row(job)
    for key in ("job", "experiment", "state", "priority", "attempt", "node", "gpus"):
        print(f"{key:12} {fmt(row[key])}")
    if job.pending_reason:
        print(f"{'waiting for':12} {job.pending_reason}")
    if job.error_message:
        print(f"{'error':12} {job.error_message.splitlines()[0]}")
    for line in failure_lines(job.failure):
        print(line)
    if job.result and job.result.best_metrics:
        for name, value in sorted(job.result.best_metrics.items()):
            print(f"  {name:22} {fmt(value)}")
    return 0


async def cmd_queue(args: argparse.Namespace, out: Out) -> int:
    async with client_for(args) as client:
        status = await client.status(queued_limit=args.limit)
    if out.json:
        out.data(status.model_dump(mode="json"))
        return 0
    print(
        f"queued {status.queue_length}  running {status.running_jobs}  "
        f"free GPUs {status.available_gpus}"
        + (f"  DOWN: {', '.join(status.down_nodes)}" if status.down_nodes else "")
    )
    out.table(
        [_job_row(j) | {"position": j.queue_position} for j in status.queued_jobs],
        ["position", "job", "experiment", "priority", "waiting_for"],
    )
    more = status.queue_length - len(status.queued_jobs)
    if more > 0:
        print(f"... and {more} more (arc queue --limit N, up to 1000)")
    return 0


async def cmd_gpus(args: argparse.Namespace, out: Out) -> int:
    async with client_for(args) as client:
        gpus = await client.gpus()
    out.table(
        [
            {
                "gpu": g.index,
                "name": g.name,
                "util_%": g.utilization_percent,
                "mem_used_gib": g.memory_used_bytes / 2**30,
                "mem_total_gib": g.memory_total_bytes / 2**30,
                "temp_c": g.temperature_celsius,
                "reserved": g.reserved,
                "job": g.lease_holder,
                "backend": g.backend.value if g.backend else "",
            }
            for g in gpus
        ],
        [
            "gpu",
            "name",
            "util_%",
            "mem_used_gib",
            "mem_total_gib",
            "temp_c",
            "reserved",
            "job",
            "backend",
        ],
    )
    return 0


async def cmd_cancel(args: argparse.Namespace, out: Out) -> int:
    async with client_for(args) as client:
        job = await client.cancel(args.job, args.reason)
    out.table([_job_row(job)], ["job", "state", "attempt"])
    return 0


async def cmd_watch(args: argparse.Namespace, out: Out) -> int:
    async with client_for(args) as client:
        job = await watch_job(client, args.job)
    print(
        f"{job.job_id} ended {job.state.value if job.state else '?'}"
        + (f": {job.error_message.splitlines()[0]}" if job.error_message else "")
    )
    for line in failure_lines(job.failure):
        print(line)
    return 0 if job.state is JobState.COMPLETED else JOB_NOT_COMPLETED


async def cmd_audit(args: argparse.Namespace, out: Out) -> int:
    async with client_for(args) as client:
        if args.action == "verify":
            check = await client.verify_audit()
            if out.json:
                out.data(check.__dict__)
            elif check.ok:
                print(f"audit log OK: {check.records_checked} records, chain intact")
            else:
                print(f"audit log TAMPERED at record {check.first_bad_sequence}: {check.reason}")
            return 0 if check.ok else 5
        export = args.action == "export"  # the chain's order, all of it
        records, token = await client.audit(
            caller=args.caller or "",
            tool=Tool(args.tool) if args.tool else None,
            decision=DecisionOutcome(args.decision) if args.decision else None,
            limit=10**9 if export else args.limit,
            newest_first=not export and not args.oldest_first,
            page_token=args.page or "",
        )
    if args.action == "export":  # JSON lines, one record each, for other tools
        for record in records:
            print(record.model_dump_json())
        return 0
    out.table(
        [
            {
                "seq": r.sequence,
                "time": r.time.isoformat(timespec="seconds") if r.time else "",
                "caller": r.caller,
                "action": r.action,
                "tool": r.tool.value if r.tool else "",
                "decision": r.decision.value if r.decision else "",
                "outcome": r.outcome[:60],
            }
            for r in records
        ],
        ["seq", "time", "caller", "action", "tool", "decision", "outcome"],
    )
    if token and not out.json:
        print(f"more: arc audit list --page {token}")
    return 0


async def cmd_mode(args: argparse.Namespace, out: Out) -> int:
    async with client_for(args) as client:
        if args.mode:
            previous = await client.set_mode(Mode(args.mode), args.reason)
            print(f"mode {previous.value} -> {args.mode}")
            return 0
        mode, version = await client.mode()
    if out.json:
        out.data({"mode": mode.value, "policy_version": version})
    else:
        print(f"mode {mode.value} (policy {version})")
    return 0


async def cmd_decide(args: argparse.Namespace, out: Out) -> int:
    async with client_for(args) as client:
        if not args.id:
            pending = await client.pending()
            out.table(
                [
                    {
                        "id": p.pending_request_id,
                        "caller": p.caller,
                        "tool": p.tool.value if p.tool else "",
                        "expires": p.expire_time,
                    }
                    for p in pending
                ],
                ["id", "caller", "tool", "expires"],
            )
            return 0
        decided = await client.decide(
            args.id, approve=args.command == "approve", reason=args.reason
        )
    print(f"{decided.pending_request_id}: {decided.state.value if decided.state else '?'}")
    return 0


def cmd_data(args: argparse.Namespace, out: Out) -> int:
    from arc_common.synth import generate_dataset  # numpy and PIL: only for this command

    splits: tuple[float, float, float] | None = None
    if args.splits:
        parts = [float(x) for x in args.splits.split(",")]
        if len(parts) != 3 or abs(sum(parts) - 1) > 1e-6:
            raise errors.InvalidArgumentError(
                f"--splits needs three fractions that sum to 1 (got {args.splits!r})"
            )
        splits = (parts[0], parts[1], parts[2])
    target = Path(args.home) / args.out
    counts = generate_dataset(
        target, count=args.count, size=args.size, seed=args.seed, splits=splits
    )
    if out.json:
        out.data({"path": str(target), "images_per_class": counts})
    else:
        print(f"wrote {sum(counts.values())} fundus images to {target}: {counts}")
    return 0


async def cmd_up(args: argparse.Namespace, out: Out) -> int:
    home = Path(args.home).resolve()
    suite = LocalSuite(home, args.port_base)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await suite.start()
        a = suite.addresses
        print(
            f"ARC suite up in {home}\n  scheduler   {a.scheduler}\n  gpu-manager {a.gpu_manager}\n"
            f"  governance  {a.governance}\n  executor    {a.executor}\n"
            f"  operator token: {home / 'auth_token'}   logs: {home / 'logs'}\n"
            "Ctrl-C stops everything.",
            flush=True,
        )
        while not stop.is_set() and suite.alive():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
        if not suite.alive():
            print("a service exited; stopping the rest (see the logs)", file=sys.stderr)
    finally:
        codes = suite.stop()
        print(f"stopped: {codes}", flush=True)
    return 0 if all(c == 0 for c in codes.values()) else 1


async def cmd_demo(args: argparse.Namespace, out: Out) -> int:
    return await run_demo(Path(args.home).resolve(), args.port_base, keep=args.keep)


COMMANDS = {
    "submit": cmd_submit,
    "status": cmd_status,
    "queue": cmd_queue,
    "gpus": cmd_gpus,
    "cancel": cmd_cancel,
    "watch": cmd_watch,
    "evaluate": cmd_evaluate,
    "compare": cmd_compare,
    "results": cmd_results,
    "audit": cmd_audit,
    "mode": cmd_mode,
    "approve": cmd_decide,
    "reject": cmd_decide,
    "up": cmd_up,
    "demo": cmd_demo,
    "patch": cmd_patch,
    "preprocess": tools_cli.cmd_preprocess,
    "visualize": tools_cli.cmd_visualize,
    "sweep": cmd_sweep,
    "ablation": cmd_ablation,
    "history": cmd_history,
    "checkpoints": tools_cli.cmd_checkpoints,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    out = Out(args.json)
    started = time.monotonic()
    try:
        if args.command == "data" and args.data_command == "sync":
            return asyncio.run(tools_cli.cmd_sync(args, out))
        if args.command == "data":
            return cmd_data(args, out)
        return asyncio.run(COMMANDS[args.command](args, out))
    except errors.ArcError as exc:
        code = next((c for cls, c in EXIT_CODES if isinstance(exc, cls)), 1)
        hint = {
            6: " (is the suite running? start it with `arc up`)",
            5: " (check the token: --token or $ARC_HOME/auth_token)",
        }.get(code, "")
        print(f"arc {args.command}: {exc.status or 'error'}: {exc}{hint}", file=sys.stderr)
        return code
    except FileNotFoundError as exc:
        print(f"arc {args.command}: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `arc ... | head`: the reader left, nothing more to say
        # Python flushes stdout again at exit: point it at /dev/null so that says nothing.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        if os.environ.get("ARC_CLI_TIMING"):
            print(f"({time.monotonic() - started:.2f} s)", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
