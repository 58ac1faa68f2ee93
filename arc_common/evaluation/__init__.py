"""The one evaluation module: what a model's scores say on a split, for the trainer's
validation and test passes, the evaluation tool, evaluation jobs and paired comparisons.

Binary tasks: AUC with DeLong and bootstrap intervals, partial AUC, operating points chosen on
validation and applied unchanged to other splits (Wilson intervals), calibration, and a flag
for scores that do not rank. Multi-class tasks: macro AUC and one-vs-rest figures.
"""

from __future__ import annotations

from arc_common.evaluation.report import (
    OPERATING_POINTS,
    auc,
    evaluate_split,
    flat_metrics,
    positive_index,
)

__all__ = [
    "OPERATING_POINTS",
    "auc",
    "evaluate_split",
    "flat_metrics",
    "positive_index",
]
