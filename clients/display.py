"""What the ``arc`` command and the demo print: tables, a job's progress line, the
leaderboard."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from typing import Any

from arc_common.models import Job, JobState
from arc_common.packed import unpack
from clients.arc_client import ArcClient


class Out:
    def __init__(self, as_json: bool) -> None:
        self.json = as_json

    def data(self, value: Any) -> None:
        print(json.dumps(value, indent=2, default=str))

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


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.3f}"
    if hasattr(value, "value"):
        return str(value.value)
    return str(value)


def _bar(done: int, total: int, width: int = 24) -> str:
    filled = int(width * done / max(total, 1))
    return "#" * filled + "-" * (width - filled)


async def watch_job(client: ArcClient, job_id: str, *, label: str = "", stream: Any = None) -> Job:
    """Follow a job's events, drawing one progress line: epoch, loss, AUC."""
    stream = stream or sys.stdout
    tty = stream.isatty()
    job = await client.job(job_id)
    epochs = 0
    spec_epochs = 0
    loss = auc = math.nan
    state = job.state.value if job.state else ""
    async for event in client.watch(job_id, batch_metrics=True):
        if event.state_change is not None and event.state_change.state is not None:
            state = event.state_change.state.value
            if not tty:
                print(f"{label or job_id}: {state} {event.state_change.reason}", file=stream)
        # Step losses are most of the metrics and not drawn: never made into models.
        if event.metrics is not None:
            metrics = unpack(event.metrics, skip="train_step_loss")
        else:
            metrics = [event.metric] if event.metric is not None else []
        for metric in metrics:
            if metric.name == "train_loss":
                loss, epochs = metric.value, metric.epoch
            elif metric.name == "val_auc":
                auc = metric.value
                if not tty:
                    print(
                        f"{label or job_id}: epoch {epochs} loss {loss:.4f} val_auc {auc:.4f}",
                        file=stream,
                    )
        if tty:
            spec_epochs = spec_epochs or epochs
            line = (
                f"\r{label or job_id} [{_bar(epochs, max(spec_epochs, epochs, 1))}] "
                f"epoch {epochs} loss {loss:.4f} AUC {auc:.3f} {state:10}"
            )
            stream.write(line)
            stream.flush()
    if tty:
        stream.write("\n")
    return await client.job(job_id)


def leaderboard_rows(jobs: list[Job]) -> list[dict[str, Any]]:
    rows = []
    for job in jobs:
        if job.state is not JobState.COMPLETED or job.result is None:
            continue
        best = job.result.best_metrics
        rows.append(
            {
                "experiment": job.experiment_id,
                "job": job.job_id,
                "auc": best.get("test_auc", math.nan),
                "sensitivity": best.get("test_sensitivity", math.nan),
                "specificity": best.get("test_specificity", math.nan),
                "val_auc": best.get("val_auc", math.nan),
                "seconds": job.result.duration_seconds,
            }
        )
    return sorted(rows, key=lambda r: -r["auc"] if not math.isnan(r["auc"]) else math.inf)
