"""How a sweep stops its weak trials early: one of Optuna's pruners, fed each trial's
validation objective per epoch, and an absolute floor on top of any of them."""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Annotated, Self

import optuna
from optuna.pruners import (
    BasePruner,
    HyperbandPruner,
    MedianPruner,
    NopPruner,
    PercentilePruner,
    SuccessiveHalvingPruner,
)
from optuna.trial import FrozenTrial
from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_EPOCHS = 10_000


class PrunerKind(StrEnum):
    NONE = "none"
    MEDIAN = "median"
    PERCENTILE = "percentile"
    SUCCESSIVE_HALVING = "successive_halving"
    HYPERBAND = "hyperband"


class PrunerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    kind: PrunerKind = PrunerKind.NONE
    min_trials: Annotated[int, Field(ge=1, le=1000)] = 1
    warmup_epochs: Annotated[int, Field(ge=0, le=MAX_EPOCHS)] = 0
    percentile: Annotated[float, Field(gt=0, lt=100)] = 25.0
    min_epochs: Annotated[int, Field(ge=1, le=MAX_EPOCHS)] = 1
    reduction_factor: Annotated[int, Field(ge=2, le=100)] = 3
    max_epochs: Annotated[int, Field(ge=0, le=MAX_EPOCHS)] = 0
    floor: float | None = None
    floor_after_epochs: Annotated[int, Field(ge=0, le=MAX_EPOCHS)] = 0

    @model_validator(mode="after")
    def _hyperband_range(self) -> Self:
        if self.kind is PrunerKind.HYPERBAND and 0 < self.max_epochs <= self.min_epochs:
            raise ValueError(
                f"max_epochs ({self.max_epochs}) must be above min_epochs ({self.min_epochs})"
            )
        return self

    def build(self, *, epochs: int) -> BasePruner:
        """Optuna's pruner; ``epochs``: what a trial trains at most (Hyperband's top)."""
        if self.kind is PrunerKind.MEDIAN:
            return MedianPruner(n_startup_trials=self.min_trials, n_warmup_steps=self.warmup_epochs)
        if self.kind is PrunerKind.PERCENTILE:
            return PercentilePruner(
                self.percentile,
                n_startup_trials=self.min_trials,
                n_warmup_steps=self.warmup_epochs,
            )
        if self.kind is PrunerKind.SUCCESSIVE_HALVING:
            return SuccessiveHalvingPruner(
                min_resource=self.min_epochs, reduction_factor=self.reduction_factor
            )
        if self.kind is PrunerKind.HYPERBAND:
            top = self.max_epochs or max(epochs, self.min_epochs + 1)
            return HyperbandPruner(
                min_resource=self.min_epochs,
                max_resource=top,
                reduction_factor=self.reduction_factor,
            )
        return NopPruner()

    def below_floor(self, value: float, epoch: int, *, maximize: bool) -> bool:
        if self.floor is None or epoch < self.floor_after_epochs:
            return False
        if not math.isfinite(value):
            return True
        return value < self.floor if maximize else value > self.floor


def should_prune(spec: PrunerSpec, study: optuna.Study, trial: FrozenTrial, *, epochs: int) -> str:
    """Why ``trial`` (its intermediate values already stored) stops now, or ""."""
    epoch = trial.last_step
    if epoch is None:
        return ""
    value = trial.intermediate_values[epoch]
    maximize = study.direction is optuna.study.StudyDirection.MAXIMIZE
    if spec.below_floor(value, epoch, maximize=maximize):
        side = "below" if maximize else "above"
        return f"pruned: objective {value:.4g} at epoch {epoch} is {side} the floor {spec.floor}"
    if spec.kind is not PrunerKind.NONE and spec.build(epochs=epochs).prune(study, trial):
        return f"pruned by the sweep's {spec.kind.value} pruner at epoch {epoch} ({value:.4g})"
    return ""
