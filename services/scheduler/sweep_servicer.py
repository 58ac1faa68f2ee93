"""SweepService: converts requests, calls the SweepManager, converts back."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

from google.protobuf import json_format, struct_pb2
from optuna.trial import TrialState

from arc.common.v1 import common_pb2
from arc.scheduler.v1 import sweep_pb2, sweep_pb2_grpc
from arc_common import auth
from arc_common.convert import enum_value, message_to_dict, to_model, to_proto
from arc_common.errors import InvalidArgumentError, PermissionDeniedError
from arc_common.models import ExperimentSpec
from arc_common.models._base import parse_model
from arc_common.pagination import encode_token, page_bounds
from services.scheduler.admission import MAX_REASON_LENGTH, check_length
from services.scheduler.core import Caller
from services.scheduler.sweeps.driver import CANCELLED, COMPLETED, FAILED, RUNNING
from services.scheduler.sweeps.ledger import Trial
from services.scheduler.sweeps.manager import SweepManager, SweepView
from services.scheduler.sweeps.plan import Plan
from services.scheduler.sweeps.pruners import PrunerKind, PrunerSpec
from services.scheduler.sweeps.space import Parameter

_SAMPLERS: dict[int, str] = {
    sweep_pb2.SAMPLER_UNSPECIFIED: "tpe",
    sweep_pb2.SAMPLER_TPE: "tpe",
    sweep_pb2.SAMPLER_RANDOM: "random",
    sweep_pb2.SAMPLER_GRID: "grid",
    sweep_pb2.SAMPLER_QMC: "qmc",
    sweep_pb2.SAMPLER_GP: "gp",
    sweep_pb2.SAMPLER_CMA_ES: "cma_es",
}
_DIRECTIONS: dict[int, str] = {
    sweep_pb2.DIRECTION_UNSPECIFIED: "maximize",
    sweep_pb2.DIRECTION_MAXIMIZE: "maximize",
    sweep_pb2.DIRECTION_MINIMIZE: "minimize",
}
_PRUNERS: dict[int, str] = {
    sweep_pb2.PRUNER_KIND_UNSPECIFIED: "none",
    sweep_pb2.PRUNER_KIND_MEDIAN: "median",
    sweep_pb2.PRUNER_KIND_PERCENTILE: "percentile",
    sweep_pb2.PRUNER_KIND_SUCCESSIVE_HALVING: "successive_halving",
    sweep_pb2.PRUNER_KIND_HYPERBAND: "hyperband",
}
_STATES = {
    RUNNING: sweep_pb2.SWEEP_STATE_RUNNING,
    COMPLETED: sweep_pb2.SWEEP_STATE_COMPLETED,
    CANCELLED: sweep_pb2.SWEEP_STATE_CANCELLED,
    FAILED: sweep_pb2.SWEEP_STATE_FAILED,
}
_TRIAL_STATES = {
    "RUNNING": sweep_pb2.TRIAL_STATE_RUNNING,
    "COMPLETE": sweep_pb2.TRIAL_STATE_COMPLETE,
    "PRUNED": sweep_pb2.TRIAL_STATE_PRUNED,
    "FAIL": sweep_pb2.TRIAL_STATE_FAILED,
}


# A page stops short of gRPC's 4 MiB message limit (a sweep is at most 64 KiB stored).
MAX_PAGE_BYTES = 2 * 1024 * 1024

_REPORTED = {
    sweep_pb2.TRIAL_STATE_RUNNING: TrialState.RUNNING,
    sweep_pb2.TRIAL_STATE_COMPLETE: TrialState.COMPLETE,
    sweep_pb2.TRIAL_STATE_PRUNED: TrialState.PRUNED,
    sweep_pb2.TRIAL_STATE_FAILED: TrialState.FAIL,
}


def _who() -> Caller:
    identity = auth.current_identity.get()
    if identity is None:  # pragma: no cover - the interceptor always sets one
        raise PermissionDeniedError("no caller identity")
    return Caller(
        name=identity.name,
        operator=identity.role is auth.Role.OPERATOR,
        service=identity.role is auth.Role.SERVICE,
    )


def _enum(table: dict[int, str], value: int, field: str) -> str:
    if value not in table:
        raise InvalidArgumentError(f"{field}: unknown value {value}", field=field)
    return table[value]


def _choice(value: Any) -> Any:
    # A Value's numbers are doubles: a whole one is an int, as a YAML file would give it.
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _parameter(message: sweep_pb2.SearchParameter, field: str) -> Parameter:
    data: dict[str, Any] = {"path": message.path}
    which = message.WhichOneof("distribution")
    if which in ("log_uniform", "uniform"):
        bounds = getattr(message, which)
        data[which] = (bounds.low, bounds.high)
    elif which == "int_range":
        data["int_range"] = (message.int_range.low, message.int_range.high)
        data["step"] = message.int_range.step or 1
    elif which == "categorical":
        data["categorical"] = []
        for index, value in enumerate(message.categorical.values):
            if value.WhichOneof("kind") not in ("string_value", "number_value", "bool_value"):
                raise InvalidArgumentError(
                    f"{field}.categorical.values[{index}]: a string, number or boolean",
                    field=f"{field}.categorical.values[{index}]",
                )
            if value.HasField("number_value") and not math.isfinite(value.number_value):
                raise InvalidArgumentError(
                    f"{field}.categorical.values[{index}] must be finite",
                    field=f"{field}.categorical.values[{index}]",
                )
            data["categorical"].append(_choice(json_format.MessageToDict(value)))
    return parse_model(Parameter, data, prefix=field)


def _arm(message: sweep_pb2.Arm, field: str) -> dict[str, Any]:
    try:
        changes = json_format.MessageToDict(message.changes)
    except ValueError:  # a NaN or an infinity has no JSON
        raise InvalidArgumentError(f"{field}.changes: values must be finite", field=field) from None
    return {"name": message.name, "changes": {k: _choice(v) for k, v in changes.items()}}


def plan_of(message: sweep_pb2.Sweep) -> Plan:
    """The request's sweep as a Plan; INVALID_ARGUMENT naming the field (``sweep.…``)."""
    if not message.HasField("base_spec"):
        raise InvalidArgumentError("sweep.base_spec is required", field="sweep.base_spec")
    base = to_model(message.base_spec, ExperimentSpec, prefix="sweep.base_spec")
    parameters = [
        _parameter(parameter, f"sweep.parameters[{index}]")
        for index, parameter in enumerate(message.parameters)
    ]
    # Fields left at zero are not in the dict: the models' own defaults stand for them.
    pruner: dict[str, Any] = message_to_dict(message.pruner)
    pruner["kind"] = _enum(_PRUNERS, message.pruner.kind, "sweep.pruner.kind")
    arms = [_arm(arm, f"sweep.arms[{index}]") for index, arm in enumerate(message.arms)]
    data: dict[str, Any] = {
        "parameters": parameters,
        "sampler": _enum(_SAMPLERS, message.sampler, "sweep.sampler"),
        "direction": _enum(_DIRECTIONS, message.direction, "sweep.direction"),
        "seed": message.seed,
        "base": base,
        "name": message.display_name,
        "pruner": parse_model(PrunerSpec, pruner, prefix="sweep.pruner"),
        "by_caller": message.driven_by_caller,
        "repeat": message.repeat,
        "warm_start": message.warm_start,
        "max_gpu_hours": message.max_gpu_hours if message.HasField("max_gpu_hours") else None,
        "max_wall_seconds": (
            message.max_wall_seconds if message.HasField("max_wall_seconds") else None
        ),
    }
    # Zero, as proto3 sends an unset number or string: the plan's default.
    data |= {
        name: value
        for name, value in (
            ("max_trials", message.max_trials),
            ("max_parallel", message.max_parallel),
            ("objective", message.objective),
        )
        if value
    }
    if arms and parameters:
        raise InvalidArgumentError(
            "sweep.parameters: an ablation's trials are its arms and seeds; give no parameters",
            field="sweep.parameters",
        )
    if arms:
        data |= {"arms": arms, "seeds": list(message.seeds)}
    elif message.seeds:
        raise InvalidArgumentError("sweep.seeds: only with arms (an ablation)", field="sweep.seeds")
    return parse_model(Plan, data, prefix="sweep")


def trial_proto(trial: Trial) -> sweep_pb2.Trial:
    message = sweep_pb2.Trial(
        number=trial.number,
        state=_TRIAL_STATES.get(trial.state.name, sweep_pb2.TRIAL_STATE_UNSPECIFIED),
        job_id=trial.job_id,
        last_epoch=trial.last_epoch,
    )
    message.params.update(trial.params)
    if trial.value is not None:
        message.value = trial.value
    if trial.last_value is not None:
        message.last_value = trial.last_value
    return message


def _range(low: float, high: float) -> sweep_pb2.FloatRange:
    return sweep_pb2.FloatRange(low=low, high=high)


def parameter_proto(parameter: Parameter) -> sweep_pb2.SearchParameter:
    message = sweep_pb2.SearchParameter(path=parameter.path)
    if parameter.log_uniform is not None:
        message.log_uniform.CopyFrom(_range(*parameter.log_uniform))
    elif parameter.uniform is not None:
        message.uniform.CopyFrom(_range(*parameter.uniform))
    elif parameter.int_range is not None:
        low, high = parameter.int_range
        message.int_range.CopyFrom(sweep_pb2.IntRange(low=low, high=high, step=parameter.step))
    else:
        values = struct_pb2.ListValue()
        values.extend(parameter.categorical or [])
        message.categorical.values.extend(values.values)
    return message


def sweep_proto(view: SweepView, *, with_trials: bool = True) -> sweep_pb2.Sweep:
    plan = view.plan
    pruner = plan.pruner
    message = sweep_pb2.Sweep(
        sweep_id=view.sweep_id,
        display_name=plan.name,
        parameters=[parameter_proto(parameter) for parameter in plan.parameters],
        sampler=enum_value(sweep_pb2.Sampler, plan.sampler),
        objective=plan.objective,
        direction=enum_value(sweep_pb2.Direction, plan.direction),
        max_trials=plan.max_trials,
        max_parallel=plan.max_parallel,
        seed=plan.seed,
        pruner=sweep_pb2.Pruner(
            kind=(
                enum_value(sweep_pb2.PrunerKind, pruner.kind)
                if pruner.kind is not PrunerKind.NONE
                else sweep_pb2.PRUNER_KIND_UNSPECIFIED
            ),
            min_trials=pruner.min_trials,
            warmup_epochs=pruner.warmup_epochs,
            percentile=pruner.percentile,
            min_epochs=pruner.min_epochs,
            reduction_factor=pruner.reduction_factor,
            max_epochs=pruner.max_epochs,
            floor=pruner.floor,
            floor_after_epochs=pruner.floor_after_epochs,
        ),
        state=_STATES.get(view.state, sweep_pb2.SWEEP_STATE_UNSPECIFIED),
        created_by=plan.caller,
        driven_by_caller=plan.by_caller,
        seeds=plan.seeds,
        state_reason=view.reason,
        importance=view.importance,
        max_gpu_hours=plan.max_gpu_hours,
        repeat=plan.repeat,
        warm_start=plan.warm_start,
        max_wall_seconds=plan.max_wall_seconds,
    )
    for arm in plan.arms:
        made = message.arms.add(name=arm.name)
        made.changes.update(arm.changes)
    if plan.base is not None:
        message.base_spec.CopyFrom(to_proto(plan.base, common_pb2.ExperimentSpec))
    if with_trials:
        message.trials.extend(trial_proto(trial) for trial in view.trials)
    if view.best is not None:
        message.best_trial.CopyFrom(trial_proto(view.best))
    return message


class SweepServicer(sweep_pb2_grpc.SweepServiceServicer):
    def __init__(self, manager: SweepManager) -> None:
        self._m = manager

    async def CreateSweep(
        self, request: sweep_pb2.CreateSweepRequest, context: Any
    ) -> sweep_pb2.CreateSweepResponse:
        check_length(request.request_id, "request_id")
        plan = plan_of(request.sweep)
        sweep_id = await self._m.create(plan, caller=_who().name, request_id=request.request_id)
        return sweep_pb2.CreateSweepResponse(sweep=sweep_proto(await self._m.get(sweep_id)))

    async def GetSweep(
        self, request: sweep_pb2.GetSweepRequest, context: Any
    ) -> sweep_pb2.GetSweepResponse:
        check_length(request.sweep_id, "sweep_id")
        return sweep_pb2.GetSweepResponse(sweep=sweep_proto(await self._m.get(request.sweep_id)))

    async def ListSweeps(
        self, request: sweep_pb2.ListSweepsRequest, context: Any
    ) -> sweep_pb2.ListSweepsResponse:
        ids = list(reversed(await self._m.ids()))
        offset, limit = page_bounds(request.page_size, request.page_token)
        sweeps: list[sweep_pb2.Sweep] = []
        size = 0
        for sweep_id in ids[offset : offset + limit]:
            sweep = sweep_proto(await self._m.get(sweep_id), with_trials=False)
            size += sweep.ByteSize()
            if sweeps and size > MAX_PAGE_BYTES:  # the rest on the next page
                break
            sweeps.append(sweep)
        end = offset + len(sweeps)
        token = encode_token(end) if end < len(ids) else ""
        return sweep_pb2.ListSweepsResponse(sweeps=sweeps, next_page_token=token)

    async def WatchSweep(
        self, request: sweep_pb2.WatchSweepRequest, context: Any
    ) -> AsyncIterator[sweep_pb2.WatchSweepResponse]:
        check_length(request.sweep_id, "sweep_id")
        async for view, trial in self._m.watch(request.sweep_id):
            response = sweep_pb2.WatchSweepResponse(sweep=sweep_proto(view))
            if trial is not None:
                response.trial.CopyFrom(trial_proto(trial))
            yield response

    async def CancelSweep(
        self, request: sweep_pb2.CancelSweepRequest, context: Any
    ) -> sweep_pb2.CancelSweepResponse:
        check_length(request.sweep_id, "sweep_id")
        check_length(request.reason, "reason", MAX_REASON_LENGTH)
        view = await self._m.cancel(request.sweep_id, _who(), request.reason)
        return sweep_pb2.CancelSweepResponse(sweep=sweep_proto(view))

    async def SuggestTrials(
        self, request: sweep_pb2.SuggestTrialsRequest, context: Any
    ) -> sweep_pb2.SuggestTrialsResponse:
        check_length(request.request_id, "request_id")
        check_length(request.sweep_id, "sweep_id")
        trials = await self._m.suggest(
            request.sweep_id, request.count, _who(), request_id=request.request_id
        )
        return sweep_pb2.SuggestTrialsResponse(trials=[trial_proto(t) for t in trials])

    async def ReportTrial(
        self, request: sweep_pb2.ReportTrialRequest, context: Any
    ) -> sweep_pb2.ReportTrialResponse:
        check_length(request.sweep_id, "sweep_id")
        if request.state not in _REPORTED:
            raise InvalidArgumentError(
                "state must be TRIAL_STATE_RUNNING, _COMPLETE, _PRUNED or _FAILED", field="state"
            )
        trial, reason = await self._m.report(
            request.sweep_id,
            request.number,
            _who(),
            state=_REPORTED[request.state],
            value=request.value if request.HasField("value") else None,
            epoch=request.epoch,
        )
        return sweep_pb2.ReportTrialResponse(trial=trial_proto(trial), prune_reason=reason)
