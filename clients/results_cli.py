"""``arc results``, ``arc evaluate`` and ``arc compare``: what a researcher ranks by."""

from __future__ import annotations

import argparse
import sys

from arc.scheduler.v1 import scheduler_pb2
from arc_common.models import CheckpointKind, Job, JobState
from clients.cli_base import JOB_NOT_COMPLETED, client_for
from clients.display import LEADERBOARD, Out, leaderboard_rows, leaderboard_table, watch_job


async def cmd_results(args: argparse.Namespace, out: Out) -> int:
    async with client_for(args) as client:
        if args.reveal_test:
            await client.reveal_test(args.reveal_test, reason=args.reason)
        jobs = await client.jobs(experiment_id=args.reveal_test or args.experiment or "")
    rows = leaderboard_rows(jobs, evaluations=args.evaluations)
    if out.json:
        out.data(rows)
    else:
        out.table(leaderboard_table(rows), LEADERBOARD)
    return 0


async def cmd_evaluate(args: argparse.Namespace, out: Out) -> int:
    """Evaluate a completed job's best checkpoint on another dataset (or split), as an
    evaluation job on a leased GPU; its row joins the experiment's in ``arc results``."""
    async with client_for(args) as client:
        trained = await client.job(args.job)
        best = _best_checkpoint(trained)
        if not best:
            print(f"{args.job} has no best checkpoint to evaluate", file=sys.stderr)
            return JOB_NOT_COMPLETED
        evaluation = scheduler_pb2.EvaluationJob(
            checkpoint_path=best,
            data_path=args.data,
            split=args.split,
            bootstrap_samples=args.bootstrap,
            dataset_id=args.dataset_id or "",
        )
        job = await client.submit(experiment_id=trained.experiment_id, evaluation=evaluation)
        # Progress to stderr under --json, so stdout stays one JSON document.
        job = await watch_job(client, job.job_id, stream=sys.stderr if out.json else None)
    rows = leaderboard_rows([job], evaluations=True)
    if out.json:
        out.data(rows)
    else:
        out.table(leaderboard_table(rows), LEADERBOARD)
    if job.state is not JobState.COMPLETED:
        print(f"{job.job_id} ended {job.state}: {job.error_message}", file=sys.stderr)
        return JOB_NOT_COMPLETED
    return 0


def _best_checkpoint(job: Job) -> str:
    best = next(
        (
            c
            for c in (job.result.checkpoints if job.result else [])
            if c.kind is CheckpointKind.BEST
        ),
        None,
    )
    return best.path if best else ""


async def cmd_compare(args: argparse.Namespace, out: Out) -> int:
    """B against A on the same validation and test images: AUC difference, paired DeLong."""
    async with client_for(args) as client:
        jobs = [await client.job(args.job_a), await client.job(args.job_b)]
        paths = [_best_checkpoint(j) for j in jobs]
        for job, path in zip(jobs, paths, strict=True):
            if not path:
                print(f"{job.job_id} has no best checkpoint to compare", file=sys.stderr)
                return JOB_NOT_COMPLETED
        data = args.data or (await client.experiment(jobs[0].experiment_id)).spec.dataset.data_path
        rows = []
        for split in args.splits.split(","):
            found = await client.compare(
                paths[0], paths[1], data, split=split, dataset_id=args.dataset_id or ""
            )
            rows.append(found | {"a": args.job_a, "b": args.job_b})
    if out.json:
        out.data(rows)
        return 0
    out.table(
        [
            {
                "split": r["split"],
                "n": r["num_samples"],
                "auc a": r["auc_a"],
                "auc b": r["auc_b"],
                "b - a [95% ci]": f"{r['difference']:+.3f} "
                f"[{r['difference_ci']['lower']:+.3f}, {r['difference_ci']['upper']:+.3f}]",
                "p (paired delong)": r["p_value"],
            }
            for r in rows
        ],
        ["split", "n", "auc a", "auc b", "b - a [95% ci]", "p (paired delong)"],
    )
    return 0
