"""The evaluation module's figures: equal to scikit-learn's, thresholds frozen on validation,
intervals and flags."""

from __future__ import annotations

import math

import numpy as np
import pytest
from numpy.typing import NDArray
from sklearn.metrics import roc_auc_score, roc_curve

from arc_common.evaluation import evaluate_split, flat_metrics, wilson
from arc_common.evaluation.report import auc, reliability_bins, sensitivity_at_specificity

CLASSES = ["normal", "glaucoma"]


def _probs(scores: NDArray[np.float64]) -> NDArray[np.float64]:
    return np.stack([1 - scores, scores], axis=1)


def _binary(seed: int, n: int) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    scores = 1 / (1 + np.exp(-(2 * labels - 1 + rng.normal(scale=1.2, size=n))))
    return labels, np.round(scores, 2)  # ties


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_figures_equal_scikit_learns(seed: int) -> None:
    labels, scores = _binary(seed, 200)
    result = evaluate_split(labels, _probs(scores), split="val", class_names=CLASSES)
    assert abs(result.auc - roc_auc_score(labels, scores)) < 1e-9
    assert abs(result.partial_auc - roc_auc_score(labels, scores, max_fpr=0.1)) < 1e-9
    assert abs(auc(labels, _probs(scores), 1) - roc_auc_score(labels, scores)) < 1e-9
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    youden = result.point("youden")
    assert youden is not None
    assert youden.sensitivity - (1 - youden.specificity) == pytest.approx(np.max(tpr - fpr))
    assert result.num_samples == 200 and result.positive_class == "glaucoma"
    assert result.prevalence == pytest.approx(labels.mean())
    assert result.brier_score == pytest.approx(np.mean((scores - labels) ** 2))


def test_multiclass_macro_auc_equals_scikit_learns() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, 300)
    logits = np.eye(3)[labels] + rng.normal(scale=1.0, size=(300, 3))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    result = evaluate_split(
        labels, probs, split="test", class_names=["a", "b", "c"], bootstrap_samples=200
    )
    expected = roc_auc_score(labels, probs, multi_class="ovr", average="macro")
    assert abs(result.auc - expected) < 1e-9
    assert [c.class_name for c in result.per_class] == ["a", "b", "c"]
    assert result.auc_ci_bootstrap.lower < result.auc < result.auc_ci_bootstrap.upper
    assert flat_metrics(result)["test_auc"] == result.auc


def test_the_threshold_chosen_on_validation_is_the_one_applied_to_test() -> None:
    # Validation separates at 0.5; on test the best cut-off would be 0.8.
    val_labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    val_scores = np.array([0.1, 0.2, 0.3, 0.45, 0.55, 0.6, 0.7, 0.9])
    test_labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    test_scores = np.array([0.5, 0.6, 0.65, 0.7, 0.85, 0.9, 0.95, 0.99])
    val = evaluate_split(val_labels, _probs(val_scores), split="val", class_names=CLASSES)
    test = evaluate_split(
        test_labels,
        _probs(test_scores),
        split="test",
        class_names=CLASSES,
        frozen=val.operating_points,
    )
    own = evaluate_split(test_labels, _probs(test_scores), split="test", class_names=CLASSES)
    val_youden, test_youden, own_youden = (e.point("youden") for e in (val, test, own))
    assert val_youden and test_youden and own_youden
    assert val_youden.threshold == 0.55
    assert test_youden.threshold == val_youden.threshold and test_youden.chosen_on == "val"
    assert own_youden.threshold == 0.85 and own_youden.chosen_on == "test"
    # At the frozen 0.55 every test negative but one is called positive.
    assert (test_youden.sensitivity, test_youden.specificity) == (1.0, 0.25)
    assert (own_youden.sensitivity, own_youden.specificity) == (1.0, 1.0)
    assert [p.name for p in test.operating_points] == ["youden", "spec85", "spec90", "spec95"]
    flat = flat_metrics(test)
    assert flat["test_specificity"] == 0.25 and flat["test_threshold"] == 0.55


def test_specificity_points_reach_their_specificity_on_validation() -> None:
    labels, scores = _binary(4, 500)
    val = evaluate_split(labels, _probs(scores), split="val", class_names=CLASSES)
    for name, floor in (("spec85", 0.85), ("spec90", 0.90), ("spec95", 0.95)):
        point = val.point(name)
        assert point is not None and point.specificity >= floor
    assert val.sensitivity_at_95_specificity == val.point("spec95").sensitivity  # type: ignore[union-attr]


def test_airogs_sensitivity_at_95_specificity_by_hand() -> None:
    # 20 negatives, 4 positives; one negative above every positive but one.
    negatives = [*list(np.linspace(0.0, 0.5, 19)), 0.9]
    labels = np.array([0] * 20 + [1] * 4)
    scores = np.array([*negatives, 0.95, 0.8, 0.7, 0.3])
    # Specificity >= 0.95 allows one false positive (19/20): threshold 0.7 catches 3 of 4.
    assert sensitivity_at_specificity(labels, scores, 0.95) == 0.75


def test_wilson_interval_known_values() -> None:
    ci = wilson(8, 10)
    assert ci.lower == pytest.approx(0.4902, abs=1e-4)
    assert ci.upper == pytest.approx(0.9433, abs=1e-4)
    edge = wilson(0, 20)
    assert edge.lower == 0.0 and edge.upper == pytest.approx(0.1611, abs=1e-4)


def test_intervals_cover_the_auc_and_the_bootstrap_is_seeded() -> None:
    labels, scores = _binary(5, 150)
    a = evaluate_split(labels, _probs(scores), split="test", class_names=CLASSES, seed=11)
    b = evaluate_split(labels, _probs(scores), split="test", class_names=CLASSES, seed=11)
    c = evaluate_split(labels, _probs(scores), split="test", class_names=CLASSES, seed=12)
    assert a.auc_ci_delong.lower < a.auc < a.auc_ci_delong.upper
    assert a.auc_ci_bootstrap.lower < a.auc < a.auc_ci_bootstrap.upper
    assert a.auc_ci_bootstrap == b.auc_ci_bootstrap != c.auc_ci_bootstrap
    point = a.point("youden")
    assert point is not None
    assert point.sensitivity_ci.lower <= point.sensitivity <= point.sensitivity_ci.upper
    assert point.true_positives + point.false_negatives == a.num_positives


def test_a_collapsed_model_is_flagged() -> None:
    rng = np.random.default_rng(6)
    labels = rng.integers(0, 2, 72)
    scores = 0.4945 + rng.uniform(-1e-7, 1e-7, 72)
    result = evaluate_split(labels, _probs(scores), split="test", class_names=CLASSES)
    assert result.degenerate
    assert "does not rank" in result.degenerate_reason
    assert flat_metrics(result)["test_degenerate"] == 1.0


def test_one_class_predicted_at_every_frozen_threshold_is_flagged() -> None:
    val_labels = np.array([0, 0, 1, 1])
    val = evaluate_split(
        val_labels, _probs(np.array([0.1, 0.2, 0.3, 0.4])), split="val", class_names=CLASSES
    )
    labels = np.array([0, 1, 0, 1, 0, 1])
    test = evaluate_split(
        labels,
        _probs(np.array([0.8, 0.9, 0.7, 0.95, 0.75, 0.85])),  # above every frozen threshold
        split="test",
        class_names=CLASSES,
        frozen=val.operating_points,
    )
    assert test.degenerate and "single class" in test.degenerate_reason
    good = evaluate_split(
        labels, _probs(np.array([0.1, 0.9, 0.2, 0.8, 0.3, 0.7])), split="val", class_names=CLASSES
    )
    assert not good.degenerate


def test_one_class_on_a_split_is_nan_and_flagged_not_an_error() -> None:
    result = evaluate_split(
        np.zeros(5, dtype=np.int64), _probs(np.linspace(0, 1, 5)), split="test", class_names=CLASSES
    )
    assert math.isnan(result.auc) and result.degenerate


@pytest.mark.parametrize("samples", [0, -1, 100_001])
def test_bootstrap_samples_out_of_bounds_name_the_field(samples: int) -> None:
    labels, scores = _binary(0, 20)
    with pytest.raises(ValueError, match="bootstrap_samples"):
        evaluate_split(
            labels, _probs(scores), split="val", class_names=CLASSES, bootstrap_samples=samples
        )


def test_zero_figures_stay_zero_in_flat_metrics() -> None:
    labels = np.array([0, 0, 1, 1])
    scores = np.array([0.9, 0.8, 0.2, 0.1])  # perfectly wrong
    result = evaluate_split(labels, _probs(scores), split="val", class_names=CLASSES)
    flat = flat_metrics(result)
    assert flat["val_auc"] == 0.0
    assert flat["val_accuracy"] == 0.0


def test_the_bootstrap_resamples_patients_not_images() -> None:
    labels, scores = _binary(8, 80)
    # Each patient's two eyes scored the same: twice the images, no more information.
    eyes, eye_scores = np.repeat(labels, 2), np.repeat(scores, 2)
    patients = [f"p{i}" for i in np.repeat(np.arange(80), 2)]
    alone = evaluate_split(labels, _probs(scores), split="test", class_names=CLASSES, seed=3)
    grouped = evaluate_split(
        eyes, _probs(eye_scores), split="test", class_names=CLASSES, seed=3, groups=patients
    )
    by_image = evaluate_split(eyes, _probs(eye_scores), split="test", class_names=CLASSES, seed=3)
    assert grouped.num_groups == 80 and by_image.num_groups == 0
    assert grouped.auc == pytest.approx(alone.auc, abs=1e-12)
    assert grouped.auc_ci_bootstrap.lower == pytest.approx(alone.auc_ci_bootstrap.lower, abs=1e-12)
    assert grouped.auc_ci_bootstrap.upper == pytest.approx(alone.auc_ci_bootstrap.upper, abs=1e-12)
    # Counting each eye as independent claims more certainty than the data hold.
    width = by_image.auc_ci_bootstrap.upper - by_image.auc_ci_bootstrap.lower
    assert width < grouped.auc_ci_bootstrap.upper - grouped.auc_ci_bootstrap.lower
    # A grouped split reports the patient bootstrap as its interval.
    flat = flat_metrics(grouped)
    assert flat["test_auc_ci_lower"] == grouped.auc_ci_bootstrap.lower


def test_the_calibration_error_is_the_reliability_diagrams_gaps() -> None:
    labels, scores = _binary(9, 300)
    found = evaluate_split(labels, _probs(scores), split="val", class_names=CLASSES)
    bins = reliability_bins(labels, scores)
    assert sum(count for _, _, count in bins) == 300
    gaps = sum(count / 300 * abs(observed - mean) for mean, observed, count in bins)
    assert found.expected_calibration_error == pytest.approx(gaps, abs=1e-12)
