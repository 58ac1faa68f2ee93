"""``arc preprocess``, ``arc visualize``, ``arc data sync`` and ``arc checkpoints``: the
executor's research tools from the command line (each governed there)."""

from __future__ import annotations

import argparse
from typing import Any

import yaml

from arc_common import errors
from arc_common.models import (
    CheckpointKind,
    MetricMode,
    PreprocessingChain,
    PreprocessingStep,
    parse_model,
)
from clients.arc_client import ArcClient
from clients.cli_base import client_for
from clients.display import Out


def parse_step(text: str, index: int) -> PreprocessingStep:
    """``resize:size=64`` or ``normalize:mean=[0.5,0.5,0.5],std=[0.2,0.2,0.2]``."""
    kind, _, rest = text.partition(":")
    params: dict[str, Any] = {}
    for item in _split_params(rest):
        name, eq, value = item.partition("=")
        if not eq:
            raise errors.InvalidArgumentError(
                f"--step {text!r}: parameters go as name=value (got {item!r})",
                field=f"steps[{index}]",
            )
        params[name.strip()] = yaml.safe_load(value)
    return parse_model(
        PreprocessingStep,
        {"type": kind.strip().lower(), "params": params},
        prefix=f"steps[{index}]",
    )


def _split_params(text: str) -> list[str]:
    """Commas outside brackets separate parameters."""
    out, depth, current = [], 0, ""
    for char in text:
        depth += char == "["
        depth -= char == "]"
        if char == "," and depth == 0:
            out.append(current)
            current = ""
        else:
            current += char
    return [part for part in [*out, current] if part.strip()]


async def cmd_preprocess(args: argparse.Namespace, out: Out) -> int:
    chain = PreprocessingChain(steps=[parse_step(s, i) for i, s in enumerate(args.step or [])])
    async with client_for(args) as client:
        done = await client.tools.preprocess(
            args.input, args.output, chain, dataset_id=args.dataset_id or args.output.split("/")[-1]
        )
    if out.json:
        out.data(done)
        return 0
    reused = " (reused: same chain, same input)" if done["reused"] else ""
    print(f"{done['output_path']}: {done['images_per_class']}{reused}")
    for failed in done["failed_images"]:
        print(f"  failed: {failed}")
    return 0 if not done["failed_images"] else 4


async def _best_checkpoint(client: ArcClient, target: str) -> str:
    """A checkpoint path as given, or a job's best checkpoint."""
    if target.endswith(".pt"):
        return target
    job = await client.job(target)
    for checkpoint in job.result.checkpoints if job.result else []:
        if checkpoint.kind is CheckpointKind.BEST:
            return checkpoint.path
    raise errors.FailedPreconditionError(f"job {target} has no best checkpoint", field="job")


async def cmd_visualize(args: argparse.Namespace, out: Out) -> int:
    async with client_for(args) as client:
        checkpoint = await _best_checkpoint(client, args.target)
        images, index = await client.visualize(
            checkpoint, args.data, split=args.split, num_images=args.num, output_dir=args.out or ""
        )
    if out.json:
        out.data({"checkpoint": checkpoint, "index": index, "images": images})
        return 0
    out.table(images, ["path", "true_class", "predicted_class", "probability"])
    print(f"index: {index}")
    return 0


async def cmd_sync(args: argparse.Namespace, out: Out) -> int:
    async with client_for(args) as client:
        transfers = await client.tools.sync_datasets(
            args.dataset_ids, push=args.direction == "push", remote=args.remote or ""
        )
    out.table(transfers, ["dataset_id", "files", "bytes", "revision"])
    return 0


async def cmd_checkpoints(args: argparse.Namespace, out: Out) -> int:
    async with client_for(args) as client:
        if args.checkpoints_command == "delete":
            deleted = await client.tools.delete_checkpoint(args.path)
        elif args.checkpoints_command == "keep":
            mode = MetricMode(args.mode)
            deleted = await client.tools.keep_best(
                args.folder, args.best, metric=args.metric, mode=mode
            )
        else:
            folder, run_id = args.target, ""
            if not args.target.startswith("runs/"):  # a job: its current run
                run_id = (await client.job(args.target)).run_id
                folder = ""
            found = await client.tools.checkpoints(folder, run_id=run_id)
            rows = [
                {
                    "path": c.path,
                    "kind": c.kind.value if c.kind else "",
                    "epoch": c.epoch,
                    "MB": round(c.size_bytes / 1e6, 1),
                    "val_auc": c.metrics.get("val_auc", float("nan")),
                }
                for c in found
            ]
            out.table(rows, ["path", "kind", "epoch", "MB", "val_auc"])
            return 0
    out.table([{"deleted": path} for path in deleted], ["deleted"])
    return 0


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("preprocess", help="a preprocessed copy of a dataset (governed)")
    p.add_argument("input", help="workspace-relative ImageFolder")
    p.add_argument("output", help="workspace-relative folder under datasets/")
    p.add_argument("--step", action="append", help="e.g. resize:size=64 (repeat, applied in order)")
    p.add_argument("--dataset-id", help="its name (default: the output folder's)")
    v = sub.add_parser("visualize", help="Grad-CAM images of a job's best checkpoint")
    v.add_argument("target", help="a job id or a checkpoint path (*.pt)")
    v.add_argument("--data", required=True, help="workspace-relative dataset folder")
    v.add_argument("--split", default="test", choices=["train", "val", "test"])
    v.add_argument("--num", type=int, default=8, help="images, 1 to 64")
    v.add_argument("--out", help="output folder under the job's runs/ folder")
    c = sub.add_parser("checkpoints", help="list, delete or thin checkpoints")
    c_sub = c.add_subparsers(dest="checkpoints_command", required=True)
    listing = c_sub.add_parser("list", help="a job's checkpoints (or a runs/ folder's)")
    listing.add_argument("target", help="a job id or a runs/... folder")
    delete = c_sub.add_parser("delete", help="delete one checkpoint (your own jobs')")
    delete.add_argument("path")
    keep = c_sub.add_parser("keep", help="operator: keep the best N of a folder, delete the rest")
    keep.add_argument("folder", help="a runs/... checkpoint folder")
    keep.add_argument("--best", type=int, required=True)
    keep.add_argument("--metric", default="val_auc")
    keep.add_argument("--mode", default="max", choices=[m.value for m in MetricMode])


def add_sync_parser(data_sub: Any) -> None:
    s = data_sub.add_parser("sync", help="push or pull datasets with DVC (governed)")
    s.add_argument("direction", choices=["push", "pull"])
    s.add_argument("dataset_ids", nargs="+", help="ids under datasets/")
    s.add_argument("--remote", help="a folder inside the workspace (default: the configured)")
