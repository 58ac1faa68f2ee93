"""Sweeps for clients: a sweep file (YAML) as the SweepService's message, the calls, and
trials as plain rows. ``arc sweep`` and the orchestrator both use this.

A sweep file::

    name: lr-and-batch
    base: spec.yaml            # a proposal file beside it (as `arc submit` takes), or one
    objective: val_auc         # a validation metric of the trials' results
    direction: maximize
    sampler: tpe               # tpe, random, grid, qmc
    max_trials: 16
    max_parallel: 2
    parameters:
      hyperparameters.optimizer.learning_rate: {log_uniform: [1.0e-5, 1.0e-1]}
      hyperparameters.batch_size: {categorical: [16, 32]}
      hyperparameters.epochs: {int_range: [2, 8], step: 2}
    pruner: {kind: successive_halving, min_epochs: 1, reduction_factor: 3}
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format, struct_pb2
from grpc import aio

from arc.common.v1 import common_pb2
from arc.scheduler.v1 import sweep_pb2, sweep_pb2_grpc
from arc_common.convert import to_proto
from arc_common.errors import InvalidArgumentError
from arc_common.models import ExperimentSpec
from arc_common.rpc import stream, unary

FIELDS = {
    "name",
    "base",
    "objective",
    "direction",
    "sampler",
    "max_trials",
    "max_parallel",
    "seed",
    "parameters",
    "pruner",
    "max_gpu_hours",
    "max_wall_seconds",
    "repeat",
    "warm_start",
}
TRIAL_STATES = {
    sweep_pb2.TRIAL_STATE_RUNNING: "running",
    sweep_pb2.TRIAL_STATE_COMPLETE: "complete",
    sweep_pb2.TRIAL_STATE_PRUNED: "pruned",
    sweep_pb2.TRIAL_STATE_FAILED: "failed",
}
SWEEP_STATES = {
    sweep_pb2.SWEEP_STATE_RUNNING: "running",
    sweep_pb2.SWEEP_STATE_COMPLETED: "completed",
    sweep_pb2.SWEEP_STATE_CANCELLED: "cancelled",
    sweep_pb2.SWEEP_STATE_FAILED: "failed",
}


def _enum(enum: Any, prefix: str, value: Any, field: str) -> int:
    try:
        number: int = enum.Value(f"{prefix}{str(value).upper()}")
    except ValueError:
        raise InvalidArgumentError(f"{field}: unknown value {value!r}", field=field) from None
    return number


def _parameter(path: str, given: Any) -> sweep_pb2.SearchParameter:
    field = f"parameters.{path}"
    if not isinstance(given, dict) or len(set(given) - {"step"}) != 1:
        raise InvalidArgumentError(
            f"{field}: one of log_uniform, uniform, int_range or categorical", field=field
        )
    message = sweep_pb2.SearchParameter(path=path)
    [kind] = set(given) - {"step"}
    values = given[kind]
    if kind == "categorical":
        choices = struct_pb2.ListValue()
        choices.extend(list(values))
        message.categorical.values.extend(choices.values)
        return message
    if not (isinstance(values, list) and len(values) == 2):
        raise InvalidArgumentError(f"{field}.{kind}: [low, high]", field=field)
    if kind in ("log_uniform", "uniform"):
        getattr(message, kind).CopyFrom(sweep_pb2.FloatRange(low=values[0], high=values[1]))
    elif kind == "int_range":
        message.int_range.CopyFrom(
            sweep_pb2.IntRange(low=values[0], high=values[1], step=given.get("step", 1))
        )
    else:
        raise InvalidArgumentError(f"{field}: unknown distribution {kind!r}", field=field)
    return message


def sweep_from_file(
    path: Path, base_spec: Callable[[dict[str, Any]], ExperimentSpec]
) -> sweep_pb2.Sweep:
    """``base_spec``: the base (a proposal as ``arc submit`` takes) as a spec."""
    return sweep_message(load_file(path, "sweep"), base_spec, where=str(path))


def load_file(path: Path, kind: str) -> dict[str, Any]:
    """A sweep's or ablation's file, its ``base`` read from the file it names."""
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise InvalidArgumentError(f"{path}: a mapping of {kind} fields", field=kind)
    if isinstance(data.get("base"), str):
        data = {**data, "base": yaml.safe_load((path.parent / data["base"]).read_text())}
    return data


def sweep_message(
    data: dict[str, Any],
    base_spec: Callable[[dict[str, Any]], ExperimentSpec],
    *,
    where: str = "sweep",
) -> sweep_pb2.Sweep:
    """A sweep's fields as the module's docstring shows them, as the RPC's message."""
    unknown = set(data) - FIELDS
    if unknown:
        raise InvalidArgumentError(
            f"{where}: unknown fields {sorted(unknown)} (known: {sorted(FIELDS)})", field="sweep"
        )
    base = data.get("base")
    if not isinstance(base, dict):
        raise InvalidArgumentError(f"{where}: base is a proposal (a mapping)", field="base")
    pruner = dict(data.get("pruner") or {})
    kind = pruner.pop("kind", None)
    try:
        message = sweep_pb2.Sweep(
            display_name=str(data.get("name", "")),
            base_spec=to_proto(base_spec(base), common_pb2.ExperimentSpec),
            parameters=[_parameter(p, d) for p, d in (data.get("parameters") or {}).items()],
            objective=str(data.get("objective", "")),
            max_trials=int(data.get("max_trials", 0)),
            max_parallel=int(data.get("max_parallel", 0)),
            seed=int(data.get("seed", 0)),
            repeat=bool(data.get("repeat", False)),
            warm_start=bool(data.get("warm_start", False)),
            pruner=json_format.ParseDict(pruner, sweep_pb2.Pruner()),
        )
    except (TypeError, ValueError, json_format.ParseError) as exc:
        raise InvalidArgumentError(f"{where}: {exc}", field="sweep") from None
    if "max_gpu_hours" in data:
        message.max_gpu_hours = float(data["max_gpu_hours"])
    if "max_wall_seconds" in data:
        message.max_wall_seconds = int(data["max_wall_seconds"])
    if "sampler" in data:
        message.sampler = _enum(sweep_pb2.Sampler, "SAMPLER_", data["sampler"], "sampler")  # type: ignore[assignment]
    if "direction" in data:
        message.direction = _enum(  # type: ignore[assignment]
            sweep_pb2.Direction, "DIRECTION_", data["direction"], "direction"
        )
    if kind is not None:
        message.pruner.kind = _enum(sweep_pb2.PrunerKind, "PRUNER_KIND_", kind, "pruner.kind")  # type: ignore[assignment]
    return message


def trial_row(trial: sweep_pb2.Trial, epochs: int = 0) -> dict[str, Any]:
    params = json_format.MessageToDict(trial.params)
    return {
        "trial": trial.number,
        "state": TRIAL_STATES.get(trial.state, "?"),
        "value": trial.value if trial.HasField("value") else None,
        "epoch": trial.last_epoch,
        "epochs": epochs,
        "last": trial.last_value if trial.HasField("last_value") else None,
        "params": {
            k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in params.items()
        },
        "job": trial.job_id,
    }


def ranked(sweep: sweep_pb2.Sweep) -> list[dict[str, Any]]:
    """The trials best first by the objective (complete ones, then the rest by number)."""
    sign = -1.0 if sweep.direction == sweep_pb2.DIRECTION_MINIMIZE else 1.0
    rows = [trial_row(t, sweep.base_spec.hyperparameters.epochs) for t in sweep.trials]
    done = sorted((r for r in rows if r["value"] is not None), key=lambda r: -sign * r["value"])
    rest = [r for r in rows if r["value"] is None]
    for rank, row in enumerate(done, start=1):
        row["rank"] = rank
    return done + rest


class SweepClient:
    def __init__(self, channel: aio.Channel, timeout: float = 30.0) -> None:
        self._stub = sweep_pb2_grpc.SweepServiceStub(channel)
        self._timeout = timeout

    async def create(self, sweep: sweep_pb2.Sweep, *, request_id: str = "") -> sweep_pb2.Sweep:
        request = sweep_pb2.CreateSweepRequest(request_id=request_id, sweep=sweep)
        reply: sweep_pb2.CreateSweepResponse = await unary(
            self._stub.CreateSweep(request, timeout=self._timeout)
        )
        return reply.sweep

    async def get(self, sweep_id: str) -> sweep_pb2.Sweep:
        request = sweep_pb2.GetSweepRequest(sweep_id=sweep_id)
        reply: sweep_pb2.GetSweepResponse = await unary(
            self._stub.GetSweep(request, timeout=self._timeout)
        )
        return reply.sweep

    async def list(self) -> list[sweep_pb2.Sweep]:
        out: list[sweep_pb2.Sweep] = []
        token = ""
        while True:
            request = sweep_pb2.ListSweepsRequest(page_size=1000, page_token=token)
            reply = await unary(self._stub.ListSweeps(request, timeout=self._timeout))
            out += reply.sweeps
            token = reply.next_page_token
            if not token:
                return out

    async def cancel(self, sweep_id: str, reason: str = "") -> sweep_pb2.Sweep:
        request = sweep_pb2.CancelSweepRequest(sweep_id=sweep_id, reason=reason)
        reply: sweep_pb2.CancelSweepResponse = await unary(
            self._stub.CancelSweep(request, timeout=120)
        )
        return reply.sweep

    async def watch(self, sweep_id: str) -> AsyncIterator[sweep_pb2.WatchSweepResponse]:
        """The sweep now, then once per trial change until it has ended."""
        request = sweep_pb2.WatchSweepRequest(sweep_id=sweep_id)
        async for response in stream(self._stub.WatchSweep(request)):
            yield response


@dataclass
class SweepReport:
    """What the orchestrator gives an agent for a sweep: the sweep (None when refused)
    and one message to act on."""

    sweep: sweep_pb2.Sweep | None
    feedback: str
    trials: list[dict[str, Any]] = field(default_factory=list)


def _shown(params: dict[str, Any]) -> str:
    return ", ".join(
        f"{path}={value:.3g}" if isinstance(value, float) else f"{path}={value}"
        for path, value in params.items()
    )


def report(sweep: sweep_pb2.Sweep, failures: dict[int, str]) -> SweepReport:
    """``failures``: the failed trials' failure summaries, by trial number."""
    rows = ranked(sweep)
    states = Counter(row["state"] for row in rows)
    objective = sweep.objective or "val_auc"
    lines = [
        f"Sweep {sweep.sweep_id} {SWEEP_STATES.get(sweep.state, '?')}: {len(rows)} trials, "
        f"{states['complete']} complete, {states['pruned']} pruned, {states['failed']} failed."
    ]
    if rows and rows[0]["value"] is not None:
        best = rows[0]
        lines.append(
            f"Best {objective} {best['value']:.4f} with {_shown(best['params'])} "
            f"(trial {best['trial']}, job {best['job']})."
        )
    else:
        lines.append(f"No trial finished with {objective}.")
    for number, summary in sorted(failures.items()):
        lines.append(f"Trial {number} failed: {summary}")
    return SweepReport(sweep, "\n".join(lines), rows)
