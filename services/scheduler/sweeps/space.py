"""A sweep's search space: spec fields by dotted path, each with one distribution, turned
into Optuna's distributions; a trial's parameters applied to the base spec give the spec
its job trains. No grpc and no Optuna state here."""

from __future__ import annotations

import math
from typing import Annotated, Any, Self

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from arc_common.errors import InvalidArgumentError
from arc_common.models import ExperimentSpec
from arc_common.models._base import invalid_argument

MAX_PARAMETERS = 32
MAX_CHOICES = 256
# What a trial may not change: what names it, where it reads, what it may see.
# (cycle_id too: budgets are per caller and cycle, so a trial may not pick its cycle.)
FIXED = frozenset({"experiment_id", "dataset", "seal_test", "init_from", "priority", "cycle_id"})
Choice = Annotated[str, Field(max_length=256)] | int | float | bool


class Parameter(BaseModel):
    """One field of the spec and how a trial picks its value: exactly one of the four."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    path: Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[a-z_]+(\.[a-z_]+)*$")]
    log_uniform: tuple[float, float] | None = None
    uniform: tuple[float, float] | None = None
    int_range: tuple[int, int] | None = None
    step: Annotated[int, Field(ge=1, le=1_000_000)] = 1
    categorical: Annotated[list[Choice], Field(min_length=1, max_length=MAX_CHOICES)] | None = None

    @model_validator(mode="after")
    def _one_distribution(self) -> Self:
        given = [
            name
            for name in ("log_uniform", "uniform", "int_range", "categorical")
            if getattr(self, name) is not None
        ]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of log_uniform, uniform, int_range, categorical "
                f"(got {', '.join(given) or 'none'})"
            )
        if self.path.split(".")[0] in FIXED:
            raise ValueError(f"{self.path!r} is fixed for every trial of a sweep")
        low, high = self.log_uniform or self.uniform or self.int_range or (0, 1)
        if not low < high:
            raise ValueError(f"the range must go up: low {low} is not below high {high}")
        if self.log_uniform is not None and low <= 0:
            raise ValueError(f"log_uniform needs a positive low bound (got {low})")
        if self.categorical is not None:
            kinds = {type(choice) for choice in self.categorical}
            if bool in kinds and kinds & {int, float}:
                raise ValueError("categorical: booleans and numbers do not mix (True is 1)")
            if len({(type(c), c) for c in self.categorical}) < len(self.categorical):
                raise ValueError("categorical choices must differ")
        return self

    def distribution(self) -> BaseDistribution:
        if self.log_uniform is not None:
            return FloatDistribution(*self.log_uniform, log=True)
        if self.uniform is not None:
            return FloatDistribution(*self.uniform)
        if self.int_range is not None:
            return IntDistribution(*self.int_range, step=self.step)
        assert self.categorical is not None
        return CategoricalDistribution(self.categorical)


def distributions(parameters: list[Parameter]) -> dict[str, BaseDistribution]:
    return {parameter.path: parameter.distribution() for parameter in parameters}


def _set(tree: dict[str, Any], path: str, value: Any, *, field: str) -> None:
    *parents, leaf = path.split(".")
    node = tree
    for name in parents:
        child = node.get(name)
        if not isinstance(child, dict):
            raise InvalidArgumentError(f"{field}: the spec has no field {path!r}", field=field)
        node = child
    if leaf not in node:
        raise InvalidArgumentError(f"{field}: the spec has no field {path!r}", field=field)
    node[leaf] = value


def value_at(spec: ExperimentSpec, path: str) -> Any:
    """The spec's value at a dotted path (None where it has none)."""
    node: Any = spec.model_dump(mode="json")
    for name in path.split("."):
        if not isinstance(node, dict) or name not in node:
            return None
        node = node[name]
    return node


def apply(
    base: ExperimentSpec, params: dict[str, Any], *, experiment_id: str, field: str = "parameters"
) -> ExperimentSpec:
    """The base spec with each parameter's value at its path, named ``experiment_id``;
    INVALID_ARGUMENT naming the path when the value does not fit the field."""
    tree = base.model_dump(mode="json")
    tree["experiment_id"] = experiment_id
    for index, (path, value) in enumerate(params.items()):
        _set(tree, path, value, field=f"{field}[{index}].path")
    try:
        return ExperimentSpec.model_validate(tree)
    except ValidationError as exc:
        raise invalid_argument(exc, prefix=f"{field} applied to the spec") from None


def check(base: ExperimentSpec, parameters: list[Parameter]) -> None:
    """Every corner of the space gives a valid spec: refused at create, not at trial 40."""
    if len(parameters) > MAX_PARAMETERS:
        raise InvalidArgumentError(
            f"parameters: at most {MAX_PARAMETERS} (got {len(parameters)})", field="parameters"
        )
    paths = [parameter.path for parameter in parameters]
    if len(set(paths)) != len(paths):
        raise InvalidArgumentError("parameters: each path at most once", field="parameters")
    for index, parameter in enumerate(parameters):
        for value in _corners(parameter):
            try:
                apply(base, {parameter.path: value}, experiment_id=base.experiment_id)
            except InvalidArgumentError as exc:
                raise InvalidArgumentError(
                    f"parameters[{index}] ({parameter.path}) = {value!r}: {exc.message}",
                    field=f"parameters[{index}].path",
                ) from None


def _corners(parameter: Parameter) -> list[Any]:
    """The values that show whether a field takes the whole range: its ends, and for a
    continuous range a point inside that no integer field takes."""
    if parameter.categorical is not None:
        return list(parameter.categorical)
    low, high = parameter.log_uniform or parameter.uniform or parameter.int_range or (0, 0)
    if parameter.int_range is not None:
        top = low + (high - low) // parameter.step * parameter.step
        return [int(low), int(top)]
    if parameter.log_uniform is not None:
        inside = math.exp(math.log(low) + 0.37 * (math.log(high) - math.log(low)))
    else:
        inside = low + 0.37 * (high - low)
    if float(inside).is_integer():
        inside = math.nextafter(inside, high)
    return [float(low), float(high), float(inside)]
