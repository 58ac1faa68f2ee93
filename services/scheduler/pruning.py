"""Median pruning, as a pure rule over the curves it is shown: stop a job whose monitored
value at an epoch is worse than the median of the other jobs of its cycle at that epoch."""

from __future__ import annotations

import statistics
from collections import defaultdict

from arc_common.models import EarlyStopping, MetricMode


class MedianPruner:
    def __init__(self) -> None:
        # cycle -> job -> epoch -> monitored value
        self._curves: dict[int, dict[str, dict[int, float]]] = defaultdict(dict)

    def observe(
        self, cycle_id: int, job_id: str, epoch: int, value: float, rule: EarlyStopping
    ) -> str:
        """Record the value; the reason to prune the job now, or "" to let it go on."""
        curves = self._curves[cycle_id]
        curves.setdefault(job_id, {})[epoch] = value
        if epoch < max(1, rule.warmup_epochs):
            return ""
        others = [
            values[epoch] for other, values in curves.items() if other != job_id and epoch in values
        ]
        if not others:
            return ""
        median = statistics.median(others)
        higher_is_better = rule.mode is MetricMode.MAX
        if not (value < median if higher_is_better else value > median):
            return ""
        return (
            f"pruned: {rule.monitor} {value:.4f} at epoch {epoch} is "
            f"{'below' if higher_is_better else 'above'} the median "
            f"{median:.4f} of {len(others)} other job(s) of cycle {cycle_id}"
        )
