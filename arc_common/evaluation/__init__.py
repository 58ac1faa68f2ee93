"""The one evaluation module: what a model's scores say on a split, for the trainer's
validation and test passes, the evaluation tool and evaluation jobs.

Binary tasks: AUC with DeLong and stratified-bootstrap intervals, partial AUC, operating
points chosen on validation and applied unchanged to other splits (Wilson intervals),
calibration, and a flag for scores that do not rank. Multi-class tasks: macro AUC and
one-vs-rest figures.
"""

from __future__ import annotations

from arc_common.evaluation.delong import PairedComparison, delong_ci, paired_delong
from arc_common.evaluation.report import (
    OPERATING_POINTS,
    auc,
    evaluate_split,
    flat_metrics,
    positive_index,
    wilson,
)

__all__ = [
    "OPERATING_POINTS",
    "PairedComparison",
    "auc",
    "delong_ci",
    "evaluate_split",
    "flat_metrics",
    "paired_delong",
    "positive_index",
    "wilson",
]
