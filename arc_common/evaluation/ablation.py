"""What an ablation reports: each arm's metric over its seeds as a mean with a 95%
confidence interval, and each arm against the base arm paired by seed (the same seed
means the same initialisation and data order): the mean difference with its interval, a
paired t-test and a Wilcoxon signed-rank test over the seeds, and a paired DeLong test on
the predictions of all seeds pooled (the same images, scored by both arms' models)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

from arc_common.evaluation.delong import PairedComparison, paired_delong
from arc_common.models import Interval

NAN_INTERVAL = Interval(lower=math.nan, upper=math.nan)


@dataclass(frozen=True)
class ArmSummary:
    arm: str
    n: int
    mean: float
    ci: Interval  # Student's t over the seeds; NaN with fewer than two


@dataclass(frozen=True)
class PairedDifference:
    """``arm`` minus the base, seed by seed."""

    arm: str
    n: int
    mean: float
    ci: Interval
    t: float
    p_value: float  # paired t-test, two-sided
    wilcoxon_p: float  # signed-rank, two-sided, exact for small n; NaN when all equal


def mean_ci(values: Sequence[float], *, confidence: float = 0.95) -> tuple[float, Interval]:
    """The mean and its Student-t interval (NaN interval with fewer than two values)."""
    if not values:
        return math.nan, NAN_INTERVAL
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, NAN_INTERVAL
    half = float(stats.t.ppf((1 + confidence) / 2, len(values) - 1)) * (
        statistics.stdev(values) / math.sqrt(len(values))
    )
    return mean, Interval(lower=mean - half, upper=mean + half)


def summarize(arm: str, values: Sequence[float]) -> ArmSummary:
    mean, ci = mean_ci(values)
    return ArmSummary(arm, len(values), mean, ci)


def paired_difference(arm: str, base: Sequence[float], values: Sequence[float]) -> PairedDifference:
    """``values`` against ``base``, the i-th of each from the same seed."""
    if len(base) != len(values):
        raise ValueError(f"paired by seed: {len(base)} base values, {len(values)} of {arm}")
    differences = [b - a for a, b in zip(base, values, strict=True)]
    mean, ci = mean_ci(differences)
    t, p, w = math.nan, math.nan, math.nan
    if len(differences) >= 2:
        if statistics.pstdev(differences) > 0:
            result = stats.ttest_rel(values, base)
            t, p = float(result.statistic), float(result.pvalue)
        elif mean != 0:  # the same non-zero difference every seed
            t, p = math.copysign(math.inf, mean), 0.0
        else:
            t, p = 0.0, 1.0
        if any(d != 0 for d in differences):
            w = float(stats.wilcoxon(values, base).pvalue)
    return PairedDifference(arm, len(differences), mean, ci, t, p, w)


def pooled_delong(
    labels: Sequence[ArrayLike], scores_base: Sequence[ArrayLike], scores_arm: Sequence[ArrayLike]
) -> PairedComparison:
    """One paired DeLong test over every seed's images: seed i's base and arm models
    scored the same images ``labels[i]``; the pairs are pooled into one sample."""
    return paired_delong(
        np.concatenate([np.asarray(x, dtype=np.int64) for x in labels]),
        np.concatenate([np.asarray(x, dtype=np.float64) for x in scores_base]),
        np.concatenate([np.asarray(x, dtype=np.float64) for x in scores_arm]),
    )
