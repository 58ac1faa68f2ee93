"""What the ``arc`` command and the demo print: tables, a job's progress line, the
leaderboard."""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

from arc_common.models import ExperimentResult, Job, JobState, MetricMode
from arc_common.packed import unpack
from clients.arc_client import ArcClient


class Out:
    def __init__(self, as_json: bool) -> None:
        self.json = as_json

    def data(self, value: Any) -> None:
        # NaN is not JSON: a figure that does not exist is null; a zero stays 0.0.
        print(json.dumps(_no_nan(value), indent=2, default=str, allow_nan=False))

    def table(self, rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
        if self.json:
            self.data(rows)
            return
        if not rows:
            print("(none)")
            return
        cells = [[fmt(row.get(c, "")) for c in columns] for row in rows]
        widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
        print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)))
        for row in cells:
            print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def _no_nan(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_no_nan(v) for v in value]
    return value


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.3f}"
    if hasattr(value, "value"):
        return str(value.value)
    return str(value)


class Progress:
    """A job's progress from its metrics: epochs of the spec's total, steps within the
    epoch once one epoch told how many it has, and the time left at the pace so far."""

    def __init__(self, total_epochs: int, clock: Any = time.monotonic) -> None:
        self.total = max(total_epochs, 1)
        self.epochs = 0  # finished
        self.step = 0
        self.steps_per_epoch = 0
        self._clock = clock
        self._started: float | None = None

    def seen(self, name: str, step: int, epoch: int) -> None:
        if self._started is None:
            self._started = self._clock()
        self.step = max(self.step, step)
        if name == "train_loss":
            self.epochs = max(self.epochs, epoch)
            if epoch == 1 and step:
                self.steps_per_epoch = step

    @property
    def fraction(self) -> float:
        done = float(self.epochs)
        if self.steps_per_epoch and self.epochs < self.total:
            within = self.step - self.epochs * self.steps_per_epoch
            done += min(max(within, 0) / self.steps_per_epoch, 0.99)
        return min(done / self.total, 1.0)

    def eta(self) -> str:
        fraction = self.fraction
        if self._started is None or fraction <= 0 or fraction >= 1:
            return ""
        left = (self._clock() - self._started) * (1 - fraction) / fraction
        minutes, seconds = divmod(int(left), 60)
        return f"ETA {minutes}:{seconds:02d}"


def _bar(fraction: float, width: int = 24) -> str:
    filled = int(width * min(max(fraction, 0.0), 1.0))
    return "#" * filled + "-" * (width - filled)


async def watch_job(client: ArcClient, job_id: str, *, label: str = "", stream: Any = None) -> Job:
    """Follow a job's events, drawing one progress line: epoch of the spec's total, steps
    within the epoch, loss, AUC and the time left."""
    stream = stream or sys.stdout
    tty = stream.isatty()
    job = await client.job(job_id)
    experiment = await client.experiment(job.experiment_id)
    progress = Progress(experiment.spec.hyperparameters.epochs)
    loss = auc = math.nan
    state = job.state.value if job.state else ""
    async for event in client.watch(job_id, batch_metrics=True):
        if event.state_change is not None and event.state_change.state is not None:
            state = event.state_change.state.value
            if not tty:
                print(f"{label or job_id}: {state} {event.state_change.reason}", file=stream)
        if event.metrics is not None:
            metrics = unpack(event.metrics)
        else:
            metrics = [event.metric] if event.metric is not None else []
        for metric in metrics:
            progress.seen(metric.name, metric.step, metric.epoch)
            if metric.name == "train_loss":
                loss = metric.value
            elif metric.name == "val_auc":
                auc = metric.value
                if not tty:
                    print(
                        f"{label or job_id}: epoch {progress.epochs}/{progress.total} "
                        f"loss {loss:.4f} val_auc {auc:.4f}",
                        file=stream,
                    )
        if tty:
            line = (
                f"\r{label or job_id} [{_bar(progress.fraction)}] "
                f"epoch {progress.epochs}/{progress.total} loss {loss:.4f} AUC {auc:.3f} "
                f"{progress.eta():10} {state:10}"
            )
            stream.write(line)
            stream.flush()
    if tty:
        stream.write("\n")
    return await client.job(job_id)


def _figure(best: dict[str, float], name: str) -> float:
    return best.get(name, math.nan)


def _row(job: Job, result: ExperimentResult, split: str) -> dict[str, Any]:
    """One leaderboard row: ranked by validation, test (or the evaluated split) beside it."""
    best = result.best_metrics
    ranked_by = result.selected_by or "val_auc"
    flagged = [e for e in result.evaluations if e.degenerate]
    flags = (["degenerate"] if flagged else []) + (["test sealed"] if result.test_sealed else [])
    provenance = result.provenance
    return {
        "experiment": job.experiment_id,
        "job": job.job_id,
        "kind": result.kind or "training",
        "on": f"{provenance.dataset_id if provenance else ''}/{split}",
        "ranked_by": ranked_by if result.kind != "evaluation" else "",
        "val": _figure(best, ranked_by) if result.kind != "evaluation" else math.nan,
        "auc": _figure(best, f"{split}_auc"),
        "auc_ci_lower": _figure(best, f"{split}_auc_ci_lower"),
        "auc_ci_upper": _figure(best, f"{split}_auc_ci_upper"),
        "sensitivity": _figure(best, f"{split}_sensitivity"),
        "specificity": _figure(best, f"{split}_specificity"),
        "threshold": _figure(best, f"{split}_threshold"),
        "flag": ", ".join(flags),
        "test_sealed": result.test_sealed,
        "flag_reason": "; ".join(f"{e.split}: {e.degenerate_reason}" for e in flagged),
        "seconds": result.duration_seconds,
    }


def _rank_key(row: dict[str, Any], mode: MetricMode | None) -> tuple[str, bool, float]:
    value = row["val"]
    signed = value if mode is MetricMode.MIN else -value
    return (row["ranked_by"], math.isnan(value), 0.0 if math.isnan(value) else signed)


def leaderboard_rows(jobs: list[Job], *, evaluations: bool = False) -> list[dict[str, Any]]:
    """Completed training jobs ranked by the validation metric each monitored (the test
    split never chooses a winner); with ``evaluations``, each evaluation job's row under
    its experiment's rows, labelled with the dataset and split it measured."""
    ranked: list[tuple[tuple[str, bool, float], dict[str, Any]]] = []
    measured: dict[str, list[dict[str, Any]]] = {}
    for job in jobs:
        result = job.result
        if job.state is not JobState.COMPLETED or result is None:
            continue
        if result.kind == "evaluation":
            split = result.evaluations[0].split if result.evaluations else "test"
            measured.setdefault(job.experiment_id, []).append(_row(job, result, split))
            continue
        row = _row(job, result, "test")
        ranked.append((_rank_key(row, result.selected_mode), row))
    rows: list[dict[str, Any]] = []
    for rank, (_, row) in enumerate(sorted(ranked, key=lambda pair: pair[0]), start=1):
        row["rank"] = rank
        rows.append(row)
    if not evaluations:
        return rows
    last = {row["experiment"]: index for index, row in enumerate(rows)}
    out: list[dict[str, Any]] = []
    for index, row in enumerate(rows):
        out.append(row)
        if last[row["experiment"]] == index:  # after the experiment's lowest-ranked row
            out += measured.pop(row["experiment"], [])
    for orphans in measured.values():  # evaluations of experiments not listed
        out += orphans
    return out


LEADERBOARD = ("#", "experiment", "job", "on", "ranked by", "auc [95% ci]", "sens", "spec", "flag")


def leaderboard_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows as printed: AUC with its 95% CI in one cell, the ranking metric named."""
    shown = []
    for row in rows:
        auc = fmt(row["auc"])
        if not math.isnan(row["auc_ci_lower"]):
            auc += f" [{row['auc_ci_lower']:.3f}, {row['auc_ci_upper']:.3f}]"
        val = f"{row['ranked_by']} {fmt(row['val'])}" if row["ranked_by"] else ""
        shown.append(
            {
                "#": row.get("rank", ""),
                "experiment": row["experiment"] if row["kind"] != "evaluation" else "",
                "job": row["job"],
                "on": row["on"] if row["kind"] != "evaluation" else f"eval {row['on']}",
                "ranked by": val,
                "auc [95% ci]": auc,
                "sens": row["sensitivity"],
                "spec": row["specificity"],
                "flag": row["flag"],
            }
        )
    return shown
