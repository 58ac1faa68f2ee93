"""``arc demo`` / ``make demo``: the whole engine on this machine in a few minutes.

Starts the suite, generates synthetic fundus photographs, submits a small sweep the way the
orchestrator does (two architectures x two learning rates, at different priorities), shows
live progress, prints a leaderboard, draws Grad-CAM maps for the best model, verifies the
audit log, runs a sweep the engine drives itself (TPE with successive halving) and stops
the suite.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from pathlib import Path
from typing import Any

from arc.scheduler.v1 import sweep_pb2
from arc_common.models import CheckpointKind, JobState
from clients.arc_client import ArcClient
from clients.display import LEADERBOARD, Out, leaderboard_rows, leaderboard_table, watch_job
from clients.orchestrator import Orchestrator, interpret
from clients.suite import LocalSuite
from clients.sweep_cli import follow
from clients.sweeps import ranked, sweep_message

SWEEP: list[dict[str, Any]] = [
    {"model": "resnet18", "lr": 1e-3, "priority": 7},
    {"model": "resnet18", "lr": 3e-4, "priority": 5},
    {"model": "mobilenet_v3_small", "lr": 3e-3, "priority": 6},
    {"model": "mobilenet_v3_small", "lr": 1e-3, "priority": 4},
]


def proposal(item: dict[str, Any]) -> dict[str, Any]:
    """A proposal as an agent would write it (loose keys; the adapter fills the rest)."""
    return {
        "name": f"demo-{item['model']}-lr{item['lr']:g}",
        "description": "ARC demo sweep on synthetic AcuVue fundus images",
        "model": item["model"],
        "lr": item["lr"],
        "optimizer": "adamw",
        "batch": 16,
        "epochs": 3,
        "seed": 7,
        "priority": item["priority"],
        "novelty": "explore",
        "cycle_id": 1,
        "dataset": "acuvue-synthetic",
        "data_path": "datasets/fundus",
        "image_size": 64,
        "max_training_time": 900,
        "preprocessing": {"chain_id": "demo", "steps": [{"type": "horizontal_flip"}]},
    }


def say(text: str) -> None:
    print(text, flush=True)


async def run_demo(home: Path, port_base: int, *, keep: bool = False) -> int:
    started = time.monotonic()
    home.mkdir(parents=True, exist_ok=True)
    suite = LocalSuite(home, port_base)
    say(f"== starting the ARC suite in {home} (ports {port_base}-{port_base + 3})")
    await suite.start()
    try:
        data = home / "datasets" / "fundus"
        if not data.exists():
            from arc_common.synth import generate_dataset

            counts = await asyncio.to_thread(
                generate_dataset, data, count=160, size=64, seed=7, splits=(0.6, 0.2, 0.2)
            )
            say(f"== generated {sum(counts.values())} synthetic fundus images: {counts}")
        async with ArcClient(suite.addresses, home=home, timeout=60) as client:
            gpus = await client.gpus()
            say(
                f"== GPUs ({gpus[0].backend.value if gpus and gpus[0].backend else '?'}): "
                + ", ".join(f"GPU{g.index}{' (reserved)' if g.reserved else ''}" for g in gpus)
            )
            orchestrator = Orchestrator(client)
            outcomes = await orchestrator.submit([proposal(i) for i in SWEEP], request_id="demo")
            for outcome in outcomes:
                if outcome.job is None:
                    say(f"!! not submitted: {outcome.error or outcome.interpretation.feedback()}")
                    return 4
            say("== submitted the sweep as the orchestrator would:")
            Out(False).table(
                [
                    {
                        "job": o.job.job_id,
                        "experiment": o.job.experiment_id,
                        "priority": o.job.priority,
                        "position": o.job.queue_position,
                    }
                    for o in outcomes
                    if o.job
                ],
                ["job", "experiment", "priority", "position"],
            )
            say("== live progress")
            jobs = await asyncio.gather(
                *(
                    watch_job(client, o.job.job_id, label=o.job.experiment_id, stream=_Lines())
                    for o in outcomes
                    if o.job
                )
            )
            say("== leaderboard (ranked by validation; test AUC, sens/spec at the val threshold)")
            rows = leaderboard_rows(list(jobs))
            Out(False).table(leaderboard_table(rows), LEADERBOARD)
            failed = [j for j in jobs if j.state is not JobState.COMPLETED]
            for job in failed:
                say(f"!! {job.experiment_id} ended {job.state}: {job.error_message[:200]}")
            if rows and not math.isnan(rows[0]["auc"]):
                best = next(j for j in jobs if j.job_id == rows[0]["job"])
                assert best.result is not None
                checkpoint = next(
                    c for c in best.result.checkpoints if c.kind is CheckpointKind.BEST
                )
                images, index = await client.visualize(
                    checkpoint.path, "datasets/fundus", num_images=6
                )
                say(
                    f"== Grad-CAM of the best model ({best.experiment_id}): "
                    f"{len(images)} images, index {home / index}"
                )
                for image in images:
                    say(
                        f"   {home / image['path']}  true={image['true_class']} "
                        f"predicted={image['predicted_class']} p={image['probability']:.2f}"
                    )
            pruned = await _sweep(client)
            check = await client.verify_audit()
            say(
                f"== audit log: {'OK' if check.ok else 'TAMPERED'}, "
                f"{check.records_checked} records" + ("" if check.ok else f": {check.reason}")
            )
        say(f"== demo finished in {time.monotonic() - started:.0f} s")
        return 0 if not failed and check.ok and pruned else 8
    finally:
        if keep:
            say(f"== the suite keeps running (arc --home {home} queue); stop it with Ctrl-C")
            try:
                while suite.alive():  # noqa: ASYNC110 - child processes have no event to await
                    await asyncio.sleep(1)
            finally:
                suite.stop()
        else:
            suite.stop()
            say("== suite stopped")


async def _sweep(client: ArcClient) -> bool:
    """A sweep the engine runs itself, pruning as it goes: a pruned trial's GPU starts the
    next trial at once. True when it completed."""
    spec = interpret(proposal(SWEEP[0]) | {"epochs": 4, "name": "demo-sweep"}).spec
    assert spec is not None
    data = {
        "name": "demo-lr",
        "base": {},
        "sampler": "tpe",
        "max_trials": 6,
        "max_parallel": 2,
        "parameters": {"hyperparameters.optimizer.learning_rate": {"log_uniform": [1e-5, 0.1]}},
        "pruner": {"kind": "successive_halving", "min_epochs": 1, "reduction_factor": 2},
    }
    made = await client.sweeps.create(sweep_message(data, lambda _: spec), request_id="demo")
    say(f"== sweep {made.sweep_id}: 6 learning rates by TPE, 2 at a time, successive halving")
    final = await follow(client.sweeps, made.sweep_id, sys.stdout)
    rows = ranked(final)
    if rows and rows[0]["value"] is not None:
        say(f"== best of the sweep: trial {rows[0]['trial']}, val_auc {rows[0]['value']:.3f}")
    return final.state == sweep_pb2.SWEEP_STATE_COMPLETED


class _Lines:
    """Progress as plain lines (several jobs at once do not share one terminal line)."""

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()
