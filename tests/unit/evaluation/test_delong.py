"""DeLong by midranks against the definition (placement values over every pair)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from numpy.typing import NDArray
from sklearn.metrics import roc_auc_score

from arc_common.evaluation import delong_ci, paired_delong
from arc_common.evaluation.delong import Z_95, delong_covariance


def slow_delong(
    labels: NDArray[np.int64], scores: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """DeLong, DeLong and Clarke-Pearson (1988) as written: psi over all pairs."""
    rows = []
    v10s, v01s = [], []
    for row in np.atleast_2d(scores):
        x, y = row[labels == 1], row[labels == 0]
        psi = (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])
        rows.append(psi.mean())
        v10s.append(psi.mean(axis=1))
        v01s.append(psi.mean(axis=0))
    m, n = len(v10s[0]), len(v01s[0])
    s10 = np.atleast_2d(np.cov(np.array(v10s)))
    s01 = np.atleast_2d(np.cov(np.array(v01s)))
    return np.array(rows), s10 / m + s01 / n


def _fixture(seed: int, n: int, levels: int) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    # Rounded to a few levels, so ties are common.
    scores = np.round(labels[None, :] * 0.8 + rng.normal(size=(2, n)), levels) / 4 + 0.5
    return labels, scores


@pytest.mark.parametrize(("seed", "n", "levels"), [(0, 40, 1), (1, 97, 2), (2, 300, 0)])
def test_fast_delong_equals_the_definition(seed: int, n: int, levels: int) -> None:
    labels, scores = _fixture(seed, n, levels)
    fast_aucs, fast_cov = delong_covariance(labels, scores)
    slow_aucs, slow_cov = slow_delong(labels, scores)
    np.testing.assert_allclose(fast_aucs, slow_aucs, atol=1e-12)
    np.testing.assert_allclose(fast_cov, slow_cov, atol=1e-12)
    for row, value in zip(scores, fast_aucs, strict=True):
        assert abs(value - roc_auc_score(labels, row)) < 1e-9


def test_interval_is_inside_zero_one_at_n_100000() -> None:
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, 100_000)
    scores = labels + rng.normal(scale=0.05, size=labels.shape)  # almost perfect ranking
    value, ci = delong_ci(labels, scores)
    assert 0.0 <= ci.lower <= value <= ci.upper <= 1.0
    assert value > 0.999
    _, worst = delong_ci(labels, -scores)  # and almost perfectly wrong
    assert 0.0 <= worst.lower <= worst.upper <= 1.0


def test_interval_is_the_normal_one_from_the_variance() -> None:
    labels, scores = _fixture(3, 120, 2)
    value, ci = delong_ci(labels, scores[0])
    _, cov = slow_delong(labels, scores[0])
    half = Z_95 * math.sqrt(cov[0, 0])
    assert ci.lower == pytest.approx(value - half, abs=1e-12)
    assert ci.upper == pytest.approx(value + half, abs=1e-12)


def test_one_class_gives_nan_not_an_error() -> None:
    value, ci = delong_ci(np.ones(5, dtype=np.int64), np.linspace(0, 1, 5))
    assert math.isnan(value) and math.isnan(ci.lower)


def test_paired_test_against_the_definition() -> None:
    labels, scores = _fixture(4, 150, 2)
    result = paired_delong(labels, scores[0], scores[1])
    aucs, cov = slow_delong(labels, scores)
    variance = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    assert result.difference == pytest.approx(aucs[1] - aucs[0], abs=1e-12)
    assert result.z == pytest.approx((aucs[1] - aucs[0]) / math.sqrt(variance), rel=1e-9)
    assert result.p_value == pytest.approx(math.erfc(abs(result.z) / math.sqrt(2)), rel=1e-12)
    same = paired_delong(labels, scores[0], scores[0])
    assert same.difference == 0.0 and same.p_value == 1.0


def test_a_clearly_better_model_is_significant() -> None:
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 400)
    good = labels + rng.normal(scale=0.5, size=400)
    weak = labels + rng.normal(scale=3.0, size=400)
    result = paired_delong(labels, weak, good)
    assert result.difference > 0 and result.p_value < 0.001
    assert result.ci.lower > 0
