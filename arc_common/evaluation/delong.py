"""DeLong's variance of ROC AUCs, by the fast algorithm of Sun and Xu (2014): midranks
instead of the O(m n) placement matrix. One AUC gets a confidence interval; two models'
AUCs on the same images get a paired test of their difference."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.stats import rankdata

from arc_common.models import Interval

Z_95 = 1.959963984540054


@dataclass(frozen=True)
class PairedComparison:
    auc_a: float
    auc_b: float
    # b - a
    difference: float
    ci: Interval
    z: float
    p_value: float


def _nan_interval() -> Interval:
    return Interval(lower=math.nan, upper=math.nan)


def delong_covariance(
    labels01: NDArray[np.int64], scores: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(AUCs, their covariance) of the rows of ``scores`` (k models x n images); raises
    ValueError when one class is missing."""
    labels = np.asarray(labels01).astype(bool)
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    positives, negatives = scores[:, labels], scores[:, ~labels]
    m, n = positives.shape[1], negatives.shape[1]
    if m == 0 or n == 0:
        raise ValueError("DeLong needs both classes")
    tx = rankdata(positives, axis=1)
    ty = rankdata(negatives, axis=1)
    tz = rankdata(np.concatenate([positives, negatives], axis=1), axis=1)
    aucs = (tz[:, :m].sum(axis=1) / m - (m + 1) / 2.0) / n
    v01 = (tz[:, :m] - tx) / n  # each positive's share of negatives ranked below it
    v10 = 1.0 - (tz[:, m:] - ty) / m  # each negative's share of positives above it
    sx = np.atleast_2d(np.cov(v01)) if m > 1 else np.zeros((len(aucs), len(aucs)))
    sy = np.atleast_2d(np.cov(v10)) if n > 1 else np.zeros((len(aucs), len(aucs)))
    return aucs, sx / m + sy / n


def delong_ci(labels01: NDArray[np.int64], scores: NDArray[np.float64]) -> tuple[float, Interval]:
    """AUC and its 95% interval (normal, clipped into [0, 1]); NaN with one class."""
    try:
        aucs, cov = delong_covariance(labels01, scores)
    except ValueError:
        return math.nan, _nan_interval()
    auc = float(aucs[0])
    half = Z_95 * math.sqrt(max(float(cov[0, 0]), 0.0))
    return auc, Interval(lower=max(0.0, auc - half), upper=min(1.0, auc + half))


def paired_delong(
    labels01: NDArray[np.int64], scores_a: NDArray[np.float64], scores_b: NDArray[np.float64]
) -> PairedComparison:
    """Two models scored on the same images: is B's AUC different from A's (two-sided)?"""
    try:
        aucs, cov = delong_covariance(labels01, np.vstack([scores_a, scores_b]))
    except ValueError:
        return PairedComparison(math.nan, math.nan, math.nan, _nan_interval(), math.nan, math.nan)
    difference = float(aucs[1] - aucs[0])
    variance = max(float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]), 0.0)
    if variance == 0.0:
        z = 0.0 if difference == 0.0 else math.copysign(math.inf, difference)
    else:
        z = difference / math.sqrt(variance)
    half = Z_95 * math.sqrt(variance)
    return PairedComparison(
        auc_a=float(aucs[0]),
        auc_b=float(aucs[1]),
        difference=difference,
        ci=Interval(lower=difference - half, upper=difference + half),
        z=z,
        p_value=math.erfc(abs(z) / math.sqrt(2.0)),
    )
