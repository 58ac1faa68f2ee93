"""Ablations for clients: a file of arms as the sweep that trains them, and the report an
ablation is for (``arc_common.evaluation.ablation``: arm means with intervals, paired
tests against the base over seeds, a paired DeLong test on every seed's validation
predictions pooled).

An ablation file::

    name: what-matters
    base: spec.yaml              # a proposal, as `arc submit` takes it (or the mapping)
    seeds: [0, 1, 2]             # paired across arms: same seed, same start
    max_parallel: 2
    arms:
      low-lr: {hyperparameters.optimizer.learning_rate: 1.0e-4}
      no-pretraining: {architecture.pretrained: false}
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from arc.scheduler.v1 import sweep_pb2
from arc_common.evaluation import ablation
from arc_common.models import CheckpointKind, ExperimentSpec
from clients.arc_client import ArcClient
from clients.sweeps import load_file, sweep_message

BASE = "base"
ARM = "arm"
SEED = "hyperparameters.seed"


def ablation_message(
    data: dict[str, Any], base_spec: Callable[[dict[str, Any]], ExperimentSpec]
) -> sweep_pb2.Sweep:
    rest = {k: v for k, v in data.items() if k not in ("arms", "seeds")}
    message = sweep_message({**rest, "parameters": {}}, base_spec, where="ablation")
    for name, changes in (data.get("arms") or {}).items():
        arm = message.arms.add(name=str(name))
        arm.changes.update(dict(changes or {}))
    message.seeds.extend(int(seed) for seed in data.get("seeds") or [])
    return message


def ablation_from_file(
    path: Path, base_spec: Callable[[dict[str, Any]], ExperimentSpec]
) -> sweep_pb2.Sweep:
    return ablation_message(load_file(path, "ablation"), base_spec)


def _by_arm(sweep: sweep_pb2.Sweep) -> dict[str, dict[int, sweep_pb2.Trial]]:
    """Complete trials by arm, then by seed."""
    out: dict[str, dict[int, sweep_pb2.Trial]] = {BASE: {}}
    for arm in sweep.arms:
        out[arm.name] = {}
    for trial in sweep.trials:
        if trial.state != sweep_pb2.TRIAL_STATE_COMPLETE:
            continue
        params = json_format.MessageToDict(trial.params)
        out.setdefault(str(params[ARM]), {})[int(params[SEED])] = trial
    return out


async def _best_checkpoint(client: ArcClient, job_id: str) -> str:
    job = await client.job(job_id)
    for checkpoint in job.result.checkpoints if job.result else []:
        if checkpoint.kind is CheckpointKind.BEST:
            return checkpoint.path
    return ""


async def report(client: ArcClient, sweep: sweep_pb2.Sweep) -> list[dict[str, Any]]:
    """One row per arm, the base first: its objective over seeds, and for the other arms
    the paired comparison with the base (seeds where both completed)."""
    arms = _by_arm(sweep)
    base = arms[BASE]
    data_path = sweep.base_spec.dataset.data_path
    rows = []
    for name, trials in arms.items():
        summary = ablation.summarize(name, [trials[s].value for s in sorted(trials)])
        row: dict[str, Any] = {
            "arm": name,
            "seeds": summary.n,
            "mean": summary.mean,
            "ci": [summary.ci.lower, summary.ci.upper],
        }
        shared = sorted(set(trials) & set(base))
        if name != BASE and shared:
            paired = ablation.paired_difference(
                name, [base[s].value for s in shared], [trials[s].value for s in shared]
            )
            row |= {
                "difference": paired.mean,
                "difference_ci": [paired.ci.lower, paired.ci.upper],
                "t_p": paired.p_value,
                "wilcoxon_p": paired.wilcoxon_p,
            }
            row |= await _pooled(client, data_path, [(base[s], trials[s]) for s in shared])
        rows.append(row)
    return rows


async def _pooled(
    client: ArcClient, data_path: str, pairs: list[tuple[sweep_pb2.Trial, sweep_pb2.Trial]]
) -> dict[str, Any]:
    """The paired DeLong test on the validation images of every seed, pooled."""

    async def compare(base: sweep_pb2.Trial, arm: sweep_pb2.Trial) -> dict[str, Any] | None:
        a, b = await asyncio.gather(
            _best_checkpoint(client, base.job_id), _best_checkpoint(client, arm.job_id)
        )
        if not (a and b):
            return None
        return await client.compare(a, b, data_path, split="val", with_scores=True)

    found = [c for c in await asyncio.gather(*(compare(*pair) for pair in pairs)) if c]
    if not found:
        return {}
    pooled = ablation.pooled_delong(
        [c["labels"] for c in found], [c["scores_a"] for c in found], [c["scores_b"] for c in found]
    )
    return {
        "delong_difference": pooled.difference,
        "delong_ci": [pooled.ci.lower, pooled.ci.upper],
        "delong_p": pooled.p_value,
        "pooled_images": sum(len(c["labels"]) for c in found),
    }


def _figure(value: Any) -> str:
    return (
        "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"
    )


def table(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The report as text cells."""
    out = []
    for row in rows:
        low, high = row["ci"]
        cells = {
            "arm": row["arm"],
            "seeds": str(row["seeds"]),
            "mean [95% CI]": f"{_figure(row['mean'])} [{_figure(low)}, {_figure(high)}]",
        }
        if "difference" in row:
            low, high = row["difference_ci"]
            cells["vs base [95% CI]"] = (
                f"{row['difference']:+.3f} [{_figure(low)}, {_figure(high)}]"
            )
            cells["t p"] = _figure(row["t_p"])
            cells["wilcoxon p"] = _figure(row["wilcoxon_p"])
        if "delong_p" in row:
            cells["pooled DeLong dAUC (p)"] = (
                f"{row['delong_difference']:+.3f} ({_figure(row['delong_p'])})"
            )
        out.append(cells)
    return out


COLUMNS = [
    "arm",
    "seeds",
    "mean [95% CI]",
    "vs base [95% CI]",
    "t p",
    "wilcoxon p",
    "pooled DeLong dAUC (p)",
]


def feedback(sweep: sweep_pb2.Sweep, rows: list[dict[str, Any]]) -> str:
    """What an agent reads: each arm against the base, and whether the seeds agree."""
    objective = sweep.objective or "val_auc"
    lines = [f"Ablation {sweep.sweep_id} ({objective}, paired over seeds):"]
    for row in rows:
        line = f"- {row['arm']}: {_figure(row['mean'])} over {row['seeds']} seeds"
        if "difference" in row:
            low, high = row["difference_ci"]
            verdict = (
                "better than base"
                if low > 0
                else "worse than base"
                if high < 0
                else "not distinguishable from base"
            )
            line += (
                f", {row['difference']:+.3f} vs base [{_figure(low)}, {_figure(high)}], "
                f"paired t p={_figure(row['t_p'])}: {verdict}"
            )
            if "delong_p" in row:
                line += f"; pooled DeLong p={_figure(row['delong_p'])}"
        lines.append(line)
    return "\n".join(lines)


async def run(
    client: ArcClient, message: sweep_pb2.Sweep, *, request_id: str = ""
) -> tuple[sweep_pb2.Sweep, list[dict[str, Any]]]:
    """Create the ablation, wait for its end, and report it."""
    made = await client.sweeps.create(message, request_id=request_id)
    final = made
    async for update in client.sweeps.watch(made.sweep_id):
        final = update.sweep
    return final, await report(client, final)
