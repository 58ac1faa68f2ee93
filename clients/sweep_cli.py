"""``arc sweep create|watch|results|list|cancel``: sweeps the scheduler runs itself."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import Counter
from pathlib import Path
from typing import Any, TextIO

import yaml

from arc.scheduler.v1 import sweep_pb2
from arc_common.errors import InvalidArgumentError
from arc_common.models import ExperimentSpec
from clients import ablation
from clients.cli_base import client_for
from clients.display import Out, fmt
from clients.orchestrator import interpret
from clients.sweeps import SWEEP_STATES, SweepClient, ranked, sweep_from_file, trial_row

RESULTS = ["rank", "trial", "state", "value", "epoch", "params", "job"]
SWEEPS = ["sweep", "name", "state", "trials", "best", "created_by"]
BAR = 10


def add_parser(sub: Any) -> None:
    sweep = sub.add_parser("sweep", help="sweeps: the scheduler searches a space of specs")
    commands = sweep.add_subparsers(dest="sweep_command", required=True)
    create = commands.add_parser("create", help="start a sweep from a YAML file")
    create.add_argument("file")
    create.add_argument("--request-id", default="", help="retry-safe id (same id: same sweep)")
    create.add_argument("--watch", action="store_true", help="then follow it until it ends")
    for name, text in (("watch", "follow a sweep live"), ("results", "its trials, best first")):
        command = commands.add_parser(name, help=text)
        command.add_argument("sweep")
    commands.add_parser("list", help="every sweep, newest first")
    cancel = commands.add_parser("cancel", help="stop a sweep and its running trials")
    cancel.add_argument("sweep")
    cancel.add_argument("--reason", default="")
    history = sub.add_parser("history", help="what already ran that is nearest a proposal")
    history.add_argument("file", help="a proposal (YAML), as arc submit takes it")
    history.add_argument("--limit", type=int, default=10, help="nearest runs, at most 100")
    history.add_argument("--metric", default="val_auc", help="what best means")
    abl = sub.add_parser("ablation", help="ablations: arms against the base, paired by seed")
    abl_commands = abl.add_subparsers(dest="ablation_command", required=True)
    create = abl_commands.add_parser("create", help="start an ablation from a YAML file")
    create.add_argument("file")
    create.add_argument("--request-id", default="", help="retry-safe id (same id: same one)")
    create.add_argument("--watch", action="store_true", help="then follow it and report")
    results = abl_commands.add_parser("results", help="each arm against the base")
    results.add_argument("ablation")


def _spec(proposal: dict[str, Any]) -> ExperimentSpec:
    result = interpret(proposal)
    if result.spec is None:
        raise InvalidArgumentError(
            f"the sweep's base cannot run:\n{result.feedback()}", field="base"
        )
    return result.spec


def _bar(epoch: int, epochs: int) -> str:
    if epochs <= 0:
        return ""
    filled = min(BAR, round(BAR * epoch / epochs))
    return f"[{'#' * filled}{'-' * (BAR - filled)}] {epoch}/{epochs}"


def _params(params: dict[str, Any]) -> str:
    def shown(value: Any) -> str:
        return f"{value:.3g}" if isinstance(value, float) else fmt(value)

    return " ".join(f"{path.rsplit('.', 1)[-1]}={shown(v)}" for path, v in params.items())


def summary(sweep: sweep_pb2.Sweep) -> str:
    counts = Counter(trial_row(t)["state"] for t in sweep.trials)
    best = (
        f"best {sweep.best_trial.value:.4f} (trial {sweep.best_trial.number})"
        if sweep.HasField("best_trial")
        else "no trial complete yet"
    )
    states = " · ".join(
        f"{counts.get(s, 0)} {s}" for s in ("running", "complete", "pruned", "failed")
    )
    return (
        f"{sweep.sweep_id} {SWEEP_STATES.get(sweep.state, '?')}: {len(sweep.trials)}/"
        f"{sweep.max_trials} trials · {states} · {best}"
    )


def trial_line(trial: sweep_pb2.Trial, epochs: int) -> str:
    row = trial_row(trial, epochs)
    value = row["value"] if row["value"] is not None else row["last"]
    shown = f"{value:.4f}" if value is not None else "-"
    return (
        f"  trial {row['trial']:>3}  {row['state']:<8}  {_bar(row['epoch'], epochs):<17}  "
        f"{shown:<7}  {_params(row['params'])}"
    )


def _progress(out: Out) -> TextIO:
    """Where a live watch goes: stderr under --json, so stdout stays one JSON document."""
    return sys.stderr if out.json else sys.stdout


async def follow(client: SweepClient, sweep_id: str, out: TextIO) -> sweep_pb2.Sweep:
    """One line per trial change and the sweep's totals after it, until the sweep ends."""
    final = sweep_pb2.Sweep()
    shown: dict[int, str] = {}  # each trial's last line: a change not seen in it is not shown
    async for response in client.watch(sweep_id):
        final = response.sweep
        epochs = final.base_spec.hyperparameters.epochs
        trials = final.trials if not response.HasField("trial") else [response.trial]
        lines = [(t.number, trial_line(t, epochs)) for t in trials]
        if response.HasField("trial") and shown.get(lines[0][0]) == lines[0][1]:
            continue
        for number, line in lines:
            shown[number] = line
            print(line, file=out)
        print(summary(final), file=out, flush=True)
    return final


def _results(sweep: sweep_pb2.Sweep, out: Out) -> None:
    rows = ranked(sweep)
    if out.json:
        out.data(
            {
                "sweep": sweep.sweep_id,
                "state": SWEEP_STATES.get(sweep.state),
                "importance": dict(sweep.importance),
                "trials": rows,
            }
        )
        return
    print(summary(sweep))
    if sweep.importance:
        shares = sorted(sweep.importance.items(), key=lambda item: -item[1])
        print("importance: " + ", ".join(f"{path} {share:.2f}" for path, share in shares))
    shown = [{**row, "params": _params(row["params"])} for row in rows]
    out.table(shown, RESULTS)


HISTORY = ["distance", "job", "experiment", "value", "differences"]


def _history_row(job: Any, metric: str, **more: Any) -> dict[str, Any]:
    return {
        "job": job.job_id,
        "experiment": job.experiment_id,
        "value": job.result.best_metrics.get(metric),
        **more,
    }


async def cmd_history(args: argparse.Namespace, out: Out) -> int:
    proposal = await asyncio.to_thread(Path(args.file).read_text)
    spec = _spec(yaml.safe_load(proposal))
    async with client_for(args) as arc:
        known = await arc.history(spec, limit=args.limit, metric=args.metric)
    nearest = [
        _history_row(n.job, args.metric, distance=n.distance, differences="; ".join(n.differences))
        for n in known.nearest
    ]
    best = [_history_row(job, args.metric) for job in known.best_per_family]
    identical = known.identical.job_id if known.HasField("identical") else None
    if out.json:
        out.data(
            {
                "dataset_hash": known.dataset_hash,
                "nearest": nearest,
                "best": best,
                "identical": identical,
            }
        )
        return 0
    if identical:
        print(f"this proposal ran before: job {identical}")
    print(f"nearest on the same data ({known.dataset_hash or 'no content hash yet'}):")
    out.table(nearest, HISTORY)
    print(f"best per architecture family, by {args.metric}:")
    out.table(best, ["job", "experiment", "value"])
    return 0


async def cmd_ablation(args: argparse.Namespace, out: Out) -> int:
    async with client_for(args) as arc:
        if args.ablation_command == "create":
            message = ablation.ablation_from_file(Path(args.file), _spec)
            made = await arc.sweeps.create(message, request_id=args.request_id)
            if not args.watch:
                if out.json:
                    out.data({"ablation": made.sweep_id})
                else:
                    print(made.sweep_id)
                return 0
            sweep_id = made.sweep_id
            final = await follow(arc.sweeps, sweep_id, _progress(out))
        else:
            final = await arc.sweeps.get(args.ablation)
        rows = await ablation.report(arc, final)
    if out.json:
        out.data({"ablation": final.sweep_id, "state": SWEEP_STATES.get(final.state), "arms": rows})
    else:
        print(ablation.feedback(final, rows))
        out.table(ablation.table(rows), ablation.COLUMNS)
    return 0


async def cmd_sweep(args: argparse.Namespace, out: Out) -> int:
    async with client_for(args) as arc:
        client = arc.sweeps
        command = args.sweep_command
        if command == "create":
            sweep = sweep_from_file(Path(args.file), _spec)
            made = await client.create(sweep, request_id=args.request_id)
            if not args.watch:
                if out.json:
                    out.data({"sweep": made.sweep_id})
                else:
                    print(made.sweep_id)
                return 0
            _results(await follow(client, made.sweep_id, _progress(out)), out)
            return 0
        if command == "watch":
            final = await follow(client, args.sweep, _progress(out))
            if out.json:
                _results(final, out)
            return 0
        if command == "results":
            _results(await client.get(args.sweep), out)
            return 0
        if command == "list":
            rows = [
                {
                    "sweep": s.sweep_id,
                    "name": s.display_name,
                    "state": SWEEP_STATES.get(s.state, "?"),
                    "trials": s.max_trials,
                    "best": s.best_trial.value if s.HasField("best_trial") else None,
                    "created_by": s.created_by,
                }
                for s in await client.list()
            ]
            out.table(rows, SWEEPS)
            return 0
        cancelled = await client.cancel(args.sweep, args.reason)
        print(summary(cancelled))
        return 0
