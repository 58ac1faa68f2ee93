"""The ablation report's statistics against scipy and statistics on fixed numbers."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
from scipy import stats

from arc_common.evaluation.ablation import mean_ci, paired_difference, pooled_delong, summarize
from arc_common.evaluation.delong import paired_delong

BASE = [0.812, 0.795, 0.830, 0.801, 0.818]
ARM = [0.841, 0.820, 0.838, 0.829, 0.851]  # better on every seed


def test_an_arm_is_its_mean_with_a_student_t_interval() -> None:
    summary = summarize("base", BASE)
    assert summary.n == 5 and summary.mean == pytest.approx(statistics.fmean(BASE))
    low, high = stats.t.interval(0.95, df=4, loc=statistics.fmean(BASE), scale=stats.sem(BASE))
    assert (summary.ci.lower, summary.ci.upper) == pytest.approx((low, high))
    assert summary.ci.lower < summary.mean < summary.ci.upper


def test_an_arm_against_the_base_is_paired_by_seed() -> None:
    found = paired_difference("wider", BASE, ARM)
    differences = [b - a for a, b in zip(BASE, ARM, strict=True)]
    assert found.mean == pytest.approx(statistics.fmean(differences))
    expected = stats.ttest_rel(ARM, BASE)
    assert (found.t, found.p_value) == pytest.approx((expected.statistic, expected.pvalue))
    assert found.wilcoxon_p == pytest.approx(stats.wilcoxon(ARM, BASE).pvalue)
    assert found.wilcoxon_p == pytest.approx(2 / 2**5)  # all five up: the exact p
    low, high = stats.t.interval(
        0.95, df=4, loc=statistics.fmean(differences), scale=stats.sem(differences)
    )
    assert (found.ci.lower, found.ci.upper) == pytest.approx((low, high))
    assert found.ci.lower > 0 and found.p_value < 0.01
    # Unpaired, the same numbers say much less: the pairing is what the test is for.
    assert stats.ttest_ind(ARM, BASE).pvalue > found.p_value


def test_degenerate_pairs_say_so_instead_of_failing() -> None:
    same = paired_difference("same", BASE, BASE)
    assert (same.mean, same.t, same.p_value) == (0.0, 0.0, 1.0) and math.isnan(same.wilcoxon_p)
    shifted = paired_difference("shifted", BASE, [v + 0.01 for v in BASE])
    assert shifted.p_value == 0.0 and shifted.t == math.inf
    one = paired_difference("one", BASE[:1], ARM[:1])
    assert math.isnan(one.p_value) and math.isnan(one.ci.lower)
    assert math.isnan(mean_ci([])[0])
    with pytest.raises(ValueError, match="paired by seed"):
        paired_difference("short", BASE, ARM[:3])


def test_pooled_delong_is_delong_on_every_seeds_images_together() -> None:
    rng = np.random.default_rng(3)
    labels = [rng.integers(0, 2, 40) for _ in range(3)]
    base = [np.clip(y * 0.3 + rng.normal(0.35, 0.25, 40), 0, 1) for y in labels]
    arm = [np.clip(y * 0.5 + rng.normal(0.25, 0.25, 40), 0, 1) for y in labels]
    pooled = pooled_delong(labels, base, arm)
    direct = paired_delong(np.concatenate(labels), np.concatenate(base), np.concatenate(arm))
    assert pooled == direct
    assert pooled.difference > 0 and pooled.ci.lower < pooled.difference < pooled.ci.upper
    # More images than any one seed has: a tighter interval than seed 0's alone.
    single = paired_delong(labels[0], base[0], arm[0])
    assert pooled.ci.upper - pooled.ci.lower < single.ci.upper - single.ci.lower
