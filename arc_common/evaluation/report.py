"""CONTRACT SKELETON (to be implemented): the signatures the trainer, the tools and the
scheduler code against."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from arc_common.models import OperatingPoint, SplitEvaluation

# Names of the operating points, in the order reported: Youden's J, then the lowest
# threshold reaching 85%, 90% and 95% specificity on the split they are chosen on.
OPERATING_POINTS = ("youden", "spec85", "spec90", "spec95")


def positive_index(class_names: Sequence[str]) -> int:
    """The class a binary task detects: glaucoma (or another disease name), else index 1."""
    raise NotImplementedError


def auc(labels: NDArray[np.int64], probabilities: NDArray[np.float64], positive: int) -> float:
    """ROC AUC of the positive class (binary) or macro one-vs-rest; NaN with one class."""
    raise NotImplementedError


def evaluate_split(
    labels: NDArray[np.int64],
    probabilities: NDArray[np.float64],
    *,
    split: str,
    class_names: Sequence[str],
    frozen: Sequence[OperatingPoint] | None = None,
    groups: Sequence[str] | None = None,
    bootstrap_samples: int = 1000,
    seed: int = 0,
) -> SplitEvaluation:
    """Everything the module reports on one split.

    ``labels`` are class indices, ``probabilities`` an (n, k) softmax. ``frozen``: operating
    points chosen on validation, applied here at their thresholds; None chooses them on
    this split (it is the validation split) with ``chosen_on = split``. ``groups``: a patient
    id per image; the bootstrap then resamples whole patients (within each class stratum).
    """
    raise NotImplementedError


def flat_metrics(evaluation: SplitEvaluation) -> dict[str, float]:
    """The evaluation as ``{split}_{name}`` numbers for ExperimentResult.best_metrics."""
    raise NotImplementedError
