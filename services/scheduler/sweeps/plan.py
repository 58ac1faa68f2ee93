"""What a sweep is: its search space, sampler, objective, budgets and, for an ablation,
its arms and seeds; stored whole with its study (``SweepLedger``). No Optuna state here."""

from __future__ import annotations

import math
from collections.abc import Sequence
from enum import StrEnum
from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from arc_common.models import ExperimentSpec
from services.scheduler.sweeps.pruners import PrunerSpec
from services.scheduler.sweeps.space import FIXED, MAX_PARAMETERS, Parameter

MAX_TRIALS = 10_000
MAX_PARALLEL = 64
MAX_ENUMERATED = 10_000  # a grid's points, listed (a grid beyond max_trials is moot)


class Sampler(StrEnum):
    TPE = "tpe"
    RANDOM = "random"
    GRID = "grid"
    QMC = "qmc"
    GP = "gp"
    CMA_ES = "cma_es"


class Direction(StrEnum):
    MAXIMIZE = "maximize"
    MINIMIZE = "minimize"


ARM = "arm"  # an ablation's parameter: which arm a trial trains
BASE_ARM = "base"
SEED = "hyperparameters.seed"
MAX_ARMS = 32
MAX_SEEDS = 20
Value = str | int | float | bool


class Arm(BaseModel):
    """One arm of an ablation: the base spec with ``changes`` (path: value), e.g. a
    field switched off or a code revision."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_-]*$")]
    changes: Annotated[
        dict[Annotated[str, Field(max_length=200, pattern=r"^[a-z_]+(\.[a-z_]+)*$")], Value],
        Field(min_length=1, max_length=MAX_PARAMETERS),
    ]

    @model_validator(mode="after")
    def _not_fixed(self) -> Self:
        for path in self.changes:
            if path.split(".")[0] in FIXED or path == SEED:
                raise ValueError(f"{path!r} is the same for every arm of an ablation")
        if self.name == BASE_ARM:
            raise ValueError(f"{BASE_ARM!r} is the base spec's own arm")
        return self


class Plan(BaseModel):
    """What a sweep searches and how, recorded with its study. An ablation is a sweep
    whose trials are every arm (and the base) at every seed: given ``arms``, its space,
    sampler and number of trials follow from them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _ablation(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not data.get("arms"):
            return data
        arms = [Arm.model_validate(arm) if isinstance(arm, dict) else arm for arm in data["arms"]]
        names = [BASE_ARM, *(arm.name for arm in arms)]
        if len(set(names)) < len(names):
            raise ValueError("arms: each name once")
        seeds = list(data.get("seeds") or [0, 1, 2])
        return {
            **data,
            "arms": arms,
            "seeds": seeds,
            "parameters": [
                Parameter(path=ARM, categorical=names),
                Parameter(path=SEED, categorical=seeds),
            ],
            "sampler": Sampler.GRID,
            "max_trials": len(names) * len(seeds),
        }

    parameters: Annotated[list[Parameter], Field(max_length=MAX_PARAMETERS)] = []
    sampler: Sampler = Sampler.TPE
    direction: Direction = Direction.MAXIMIZE
    max_trials: Annotated[int, Field(ge=1, le=MAX_TRIALS)] = 16
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0
    # The trials' jobs: the spec each starts from, the result metric the sweep optimizes,
    # how many run at once, and who asked (trials are that caller's jobs).
    base: ExperimentSpec | None = None
    # Never a test figure: a sweep would tune on the test split, and its trials' values
    # are shown to every caller (sealed test figures are not).
    objective: Annotated[str, Field(max_length=128, pattern=r"^(train|val)_[a-z_]+$")] = "val_auc"
    max_parallel: Annotated[int, Field(ge=1, le=MAX_PARALLEL)] = 1
    caller: str = ""
    name: Annotated[str, Field(max_length=128)] = ""
    pruner: PrunerSpec = PrunerSpec()
    arms: Annotated[list[Arm], Field(max_length=MAX_ARMS)] = []
    seeds: Annotated[
        list[Annotated[int, Field(ge=0, le=2**31 - 1)]], Field(max_length=MAX_SEEDS)
    ] = []
    # The caller asks for trials and reports them (SuggestTrials, ReportTrial); the engine
    # submits nothing.
    by_caller: bool = False
    # Budgets: no trial starts once the trials told took this many GPU-hours; at this
    # many seconds after its creation the sweep stops, its running trials cancelled.
    # A trial identical to a completed job (its id aside) takes that job's result instead
    # of training again, unless ``repeat``; ``warm_start``: completed jobs that are points
    # of this space (all else as in the base) teach the sampler before the first trial.
    repeat: bool = False
    warm_start: bool = False
    max_gpu_hours: Annotated[float, Field(gt=0, le=1e6)] | None = None
    max_wall_seconds: Annotated[int, Field(ge=1, le=30 * 24 * 3600)] | None = None

    @model_validator(mode="after")
    def _grid_is_finite(self) -> Self:
        if not self.parameters:
            raise ValueError("parameters: at least one (or arms, for an ablation)")
        if self.sampler is not Sampler.GRID:
            return self
        axes = axes_of(self.parameters)
        if axes is None:
            raise ValueError("sampler grid needs int_range or categorical parameters only")
        size = math.prod(len(axis) for axis in axes)
        if size > MAX_ENUMERATED:
            raise ValueError(f"the grid has {size} points; at most {MAX_ENUMERATED}")
        return self

    def dump(self) -> str:
        return self.model_dump_json()

    def search(self) -> list[Parameter]:
        """The parameters that are spec fields (an ablation's arm is not one)."""
        return [parameter for parameter in self.parameters if parameter.path != ARM]

    def changes(self, params: dict[str, Any]) -> dict[str, Any]:
        """A trial's parameters as spec changes: an ablation's arm as its arm's changes."""
        out = {path: value for path, value in params.items() if path != ARM}
        arm = next((a for a in self.arms if a.name == params.get(ARM)), None)
        return {**(arm.changes if arm is not None else {}), **out}

    @classmethod
    def load(cls, text: str) -> Plan:
        return cls.model_validate_json(text)


def axes_of(parameters: list[Parameter]) -> list[Sequence[Any]] | None:
    """Each parameter's values, when all are finite (ranges stay lazy), else None."""
    axes: list[Sequence[Any]] = []
    for parameter in parameters:
        if parameter.categorical is not None:
            axes.append(parameter.categorical)
        elif parameter.int_range is not None:
            low, high = parameter.int_range
            axes.append(range(low, high + 1, parameter.step))
        else:
            return None
    return axes
