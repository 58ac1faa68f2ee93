"""The optimizer, learning-rate schedule and seeds a spec asks for."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch import nn

from arc_common.models import LrScheduleType, OptimizerType


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(model: nn.Module, spec: Any, groups: Any = None) -> torch.optim.Optimizer:
    """``groups``: a repository's parameter groups instead of all the model's parameters."""
    opt = spec.hyperparameters.optimizer
    params = model.parameters() if groups is None else groups
    if opt.type is OptimizerType.SGD:
        return torch.optim.SGD(
            params,
            lr=opt.learning_rate,
            momentum=opt.momentum or 0.0,
            weight_decay=opt.weight_decay,
        )
    if opt.type is OptimizerType.ADAMW:
        return torch.optim.AdamW(params, lr=opt.learning_rate, weight_decay=opt.weight_decay)
    return torch.optim.Adam(params, lr=opt.learning_rate, weight_decay=opt.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, spec: Any) -> Any:
    schedule = spec.hyperparameters.lr_schedule
    if schedule.type is LrScheduleType.STEP:
        return torch.optim.lr_scheduler.StepLR(optimizer, schedule.step_size, schedule.gamma)
    if schedule.type is LrScheduleType.COSINE:
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(1, spec.hyperparameters.epochs)
        )
    return None
