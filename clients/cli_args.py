"""The ``arc`` command's arguments (clients.cli runs them)."""

from __future__ import annotations

import argparse
import os

from arc_common.models import DecisionOutcome, Mode, Tool
from clients import sweep_cli, tools_cli
from clients.arc_client import DEFAULT_PORT_BASE


def _global_options(p: argparse.ArgumentParser, *, defaults: bool) -> None:
    """The options every command takes, before or after its name (after it, an option
    left out keeps what was given before: SUPPRESS adds no default)."""

    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    p.add_argument(
        "--home",
        default=default(os.environ.get("ARC_HOME", ".arc")),
        help="workspace (default $ARC_HOME or ./.arc)",
    )
    p.add_argument(
        "--port-base",
        type=int,
        default=default(DEFAULT_PORT_BASE),
        help="scheduler port; gpu-manager, governance, executor follow",
    )
    p.add_argument(
        "--token", default=default(None), help="bearer token (default: $ARC_HOME/auth_token)"
    )
    p.add_argument(
        "--json", action="store_true", default=default(False), help="machine-readable output"
    )


def _everywhere(p: argparse.ArgumentParser) -> None:
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _global_options(child, defaults=False)
                _everywhere(child)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="arc", description="ARC Experiment Engine")
    _global_options(p, defaults=True)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start all four services (Ctrl-C stops them)")
    s = sub.add_parser(
        "submit", help="submit a spec or proposal (YAML or JSON; a list for a sweep)"
    )
    s.add_argument("file")
    s.add_argument("--priority", type=int)
    s.add_argument("--max-retries", type=int, default=0)
    s.add_argument("--timeout", type=int, default=0, help="seconds (0: the spec's limit)")
    s.add_argument(
        "--revision", help="train this commit or ref of the spec's source (arc patch prints one)"
    )
    s.add_argument("--repository", help="with --entrypoint: the registered repository")
    s.add_argument("--entrypoint", help="module:function building the model (sets source)")
    for name, help_text in (("status", "one job"), ("watch", "follow a job live")):
        c = sub.add_parser(name, help=help_text)
        c.add_argument("job")
    c = sub.add_parser("cancel", help="cancel a job")
    c.add_argument("job")
    c.add_argument("--reason", default="")
    q = sub.add_parser("queue", help="the queue and running jobs")
    q.add_argument(
        "--limit", type=int, default=0, help="queued jobs to list (default 20, at most 1000)"
    )
    sub.add_parser("gpus", help="GPUs with telemetry and lease holders")
    r = sub.add_parser(
        "results", help="leaderboard: ranked by validation, test AUC [95% CI] beside it"
    )
    r.add_argument("--experiment")
    r.add_argument(
        "--evaluations", action="store_true", help="add evaluation jobs' rows under each row"
    )
    r.add_argument(
        "--reveal-test",
        metavar="EXPERIMENT",
        help="operator: release a sealed experiment's test figures to agents, then show it",
    )
    r.add_argument("--reason", default="", help="why, for the record (with --reveal-test)")
    e = sub.add_parser(
        "evaluate", help="evaluate a job's best checkpoint on a dataset (an evaluation job)"
    )
    e.add_argument("job", help="the completed training job")
    e.add_argument("--data", required=True, help="workspace-relative dataset folder")
    e.add_argument("--split", default="test", choices=["train", "val", "test"])
    e.add_argument("--dataset-id", help="the name on its row (default: the folder's name)")
    e.add_argument("--bootstrap", type=int, default=1000, help="resamples, 100 to 100000")
    c = sub.add_parser(
        "compare", help="job B against job A on the same images (paired DeLong test)"
    )
    c.add_argument("job_a")
    c.add_argument("job_b")
    c.add_argument("--data", help="dataset folder (default: job A's experiment's)")
    c.add_argument("--splits", default="val,test", help="comma-separated (default val,test)")
    c.add_argument("--dataset-id", help="the name in the report (default: the folder's name)")
    a = sub.add_parser("audit", help="the audit log (export: JSON lines)")
    a.add_argument("action", choices=["list", "verify", "export"])
    a.add_argument("--caller")
    a.add_argument("--tool", choices=[t.value for t in Tool])
    a.add_argument("--decision", choices=[d.value for d in DecisionOutcome])
    a.add_argument("--limit", type=int, default=100, help="records per page (export: all)")
    a.add_argument("--page", help="the token `arc audit list` printed for the next page")
    a.add_argument("--oldest-first", action="store_true", help="the chain's order")
    m = sub.add_parser("mode", help="show or set the governance mode (operator)")
    m.add_argument("mode", nargs="?", choices=[x.value for x in Mode])
    m.add_argument("--reason", default="")
    for name in ("approve", "reject"):
        d = sub.add_parser(name, help=f"{name} a pending request (no id: list them)")
        d.add_argument("id", nargs="?")
        d.add_argument("--reason", default="")
    data = sub.add_parser("data", help="datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    tools_cli.add_sync_parser(data_sub)
    synth = data_sub.add_parser("synth", help="generate synthetic fundus images")
    synth.add_argument("--out", default="datasets/fundus", help="path inside the workspace")
    synth.add_argument("--count", type=int, default=200)
    synth.add_argument("--size", type=int, default=96)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument(
        "--splits", default="0.7,0.15,0.15", help="train,val,test fractions ('' for one folder)"
    )
    patch = sub.add_parser("patch", help="code patches to a registered repository")
    patch_sub = patch.add_subparsers(dest="patch_command", required=True)
    apply = patch_sub.add_parser("apply", help="apply a unified diff (governed); print its commit")
    apply.add_argument("file", help="the diff ('-': standard input)")
    apply.add_argument("--repo", default="models", help="registered repository (default models)")
    apply.add_argument("--message", default="", help="commit message")
    apply.add_argument("--request-id", default="", help="retry-safe id (default: the diff's hash)")
    tools_cli.add_parsers(sub)
    sweep_cli.add_parser(sub)
    demo = sub.add_parser("demo", help="start the suite, run a small sweep, show results, stop")
    demo.add_argument("--keep", action="store_true", help="leave the suite running afterwards")
    _everywhere(p)
    return p
