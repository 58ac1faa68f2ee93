"""What a call costs and the limits it is counted against: GPU-hours per cycle, running
jobs, calls per minute."""

from __future__ import annotations

import math
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any

from arc_common.models import Tool, Violation, ViolationKind
from services.governance.policy import Limits
from services.governance.store import GovernanceStore

# What the budget arithmetic accepts: more is malformed, not merely over budget.
MAX_GPUS = 4096
MAX_TRAINING_SECONDS = 10 * 365 * 86400
RATE_WINDOW_SECONDS = 60.0


class MalformedParameterError(ValueError):
    """A value the budget cannot be computed from (a MALFORMED violation)."""

    def __init__(self, field: str, constraint: str, actual: Any, suggested: str = "") -> None:
        super().__init__(f"{field} {constraint}")
        self.violation = Violation(
            field=field,
            constraint=constraint,
            actual=repr(actual)[:200],
            suggested=suggested,
            kind=ViolationKind.MALFORMED,
        )


def _positive(value: Any, *, field: str, default: float, maximum: float) -> float:
    if value is None or value in (0, ""):
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedParameterError(field, "must be a number", value)
    if not math.isfinite(value):
        raise MalformedParameterError(field, "must be finite", value)
    if not 0 < value <= maximum:
        raise MalformedParameterError(field, "must be within bounds", value, f"{maximum:g}")
    return float(value)


def gpus(parameters: dict[str, Any]) -> float:
    allocation = parameters.get("gpu_allocation") or {}
    if not isinstance(allocation, dict):
        raise MalformedParameterError("gpu_allocation", "must be an object", allocation)
    indices = allocation.get("gpu_indices") or []
    if not isinstance(indices, list):
        raise MalformedParameterError("gpu_allocation.gpu_indices", "must be a list", indices)
    if len(indices) > MAX_GPUS:
        raise MalformedParameterError(
            "gpu_allocation.gpu_indices", "must be within bounds", len(indices), str(MAX_GPUS)
        )
    return len(indices) or _positive(
        allocation.get("gpu_count"), field="gpu_allocation.gpu_count", default=1, maximum=MAX_GPUS
    )


def estimated_gpu_hours(tool: Tool, parameters: dict[str, Any]) -> float:
    """What a training job may cost: its GPUs times its time limit. Raises
    MalformedParameterError for values no budget can be computed from."""
    if tool is not Tool.RUN_TRAINING_JOB:
        return 0.0
    seconds = _positive(
        parameters.get("max_training_time_seconds"),
        field="max_training_time_seconds",
        default=3600,
        maximum=MAX_TRAINING_SECONDS,
    )
    return gpus(parameters) * seconds / 3600.0


class Budgets:
    """Usage per caller and cycle (in the store) and calls per caller (in memory: a restart
    forgets the last minute's calls)."""

    def __init__(self, store: GovernanceStore, clock: Callable[[], float]) -> None:
        self._store = store
        self._clock = clock
        self._calls: defaultdict[str, deque[float]] = defaultdict(deque)

    async def used_gpu_hours(self, caller: str, cycle_id: int) -> float:
        return await self._store.used_gpu_hours(caller, cycle_id)

    async def charge(self, caller: str, cycle_id: int, hours: float) -> None:
        await self._store.charge(caller, cycle_id, hours)

    def _rate_ok(self, caller: str, limit: int, *, count: bool) -> bool:
        window = self._calls[caller]
        now = self._clock()
        while window and window[0] <= now - RATE_WINDOW_SECONDS:
            window.popleft()
        if len(window) >= limit:
            return False
        if count:
            window.append(now)
        return True

    async def violations(
        self,
        *,
        caller: str,
        cycle_id: int,
        parameters: dict[str, Any],
        hours: float,
        limits: Limits,
        count: bool,
    ) -> list[Violation]:
        """The budget and concurrency a job of ``hours`` breaks, and the rate limit (this
        call is counted against it when ``count``)."""
        out: list[Violation] = []
        if hours:
            used = await self._store.used_gpu_hours(caller, cycle_id)
            if used + hours > limits.gpu_hours_per_cycle + 1e-9:
                left = max(0.0, limits.gpu_hours_per_cycle - used)
                seconds_left = int(left * 3600 / gpus(parameters))
                out.append(
                    Violation(
                        field="max_training_time_seconds",
                        constraint=f"GPU-hour budget of cycle {cycle_id}: "
                        f"{limits.gpu_hours_per_cycle:g} h for {caller}, {used:.2f} h used",
                        actual=f"{hours:.2f} GPU-hours",
                        suggested=str(seconds_left) if seconds_left >= 1 else "",
                        kind=ViolationKind.BUDGET,
                    )
                )
            running = await self._store.open_jobs(caller)
            if running >= limits.max_concurrent_jobs:
                out.append(
                    Violation(
                        field="concurrent_jobs",
                        constraint=f"at most {limits.max_concurrent_jobs} running jobs",
                        actual=str(running),
                        suggested="wait for a running job to finish",
                        kind=ViolationKind.QUOTA,
                    )
                )
        if not self._rate_ok(caller, limits.calls_per_minute, count=count):
            out.append(
                Violation(
                    field="rate",
                    constraint=f"at most {limits.calls_per_minute} calls per minute",
                    actual=f"{limits.calls_per_minute}+ calls in the last minute",
                    suggested="retry in a minute",
                    kind=ViolationKind.QUOTA,
                )
            )
        return out
