"""What a model's scores say on one split: ranking (AUC with DeLong and bootstrap intervals,
partial AUC), operating points chosen on validation and applied unchanged elsewhere,
calibration, and whether the scores rank at all."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray
from scipy.stats import rankdata

from arc_common.evaluation.delong import Z_95, delong_ci
from arc_common.models import ClassEvaluation, Interval, OperatingPoint, SplitEvaluation

# Youden's J, then the thresholds reaching 85%, 90% and 95% specificity, in that order.
OPERATING_POINTS = ("youden", "spec85", "spec90", "spec95")
_SPECIFICITY = {"spec85": 0.85, "spec90": 0.90, "spec95": 0.95}
MAX_BOOTSTRAP = 100_000
# Positive-class scores that vary less than this across a split do not rank anything.
MIN_SPREAD = 1e-4
CALIBRATION_BINS = 10
POSITIVE_NAMES = ("glaucoma", "positive", "disease", "abnormal", "referable")
_EPS = float(np.finfo(np.float64).eps)


def positive_index(class_names: Sequence[str]) -> int:
    """The class a binary task detects: glaucoma (or another disease name), else index 1."""
    for index, name in enumerate(class_names):
        if name.lower() in POSITIVE_NAMES:
            return index
    return 1


def _binary_auc(labels01: NDArray[np.int64], scores: NDArray[np.float64]) -> float:
    """Mann-Whitney U over midranks (ties count half); NaN with one class."""
    positives = int(labels01.sum())
    negatives = len(labels01) - positives
    if positives == 0 or negatives == 0:
        return math.nan
    ranks = rankdata(scores)
    u = ranks[labels01 == 1].sum() - positives * (positives + 1) / 2.0
    return float(u / (positives * negatives))


def auc(labels: NDArray[np.int64], probabilities: NDArray[np.float64], positive: int) -> float:
    """ROC AUC of the positive class (two classes) or macro one-vs-rest; NaN with one class."""
    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.shape[1] == 2:
        return _binary_auc((labels == positive).astype(np.int64), probabilities[:, positive])
    values = [
        _binary_auc((labels == k).astype(np.int64), probabilities[:, k])
        for k in range(probabilities.shape[1])
    ]
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def wilson(successes: int, trials: int) -> Interval:
    """Wilson score 95% interval of a proportion."""
    if trials == 0:
        return Interval(lower=math.nan, upper=math.nan)
    p = successes / trials
    z2 = Z_95 * Z_95
    denominator = 1.0 + z2 / trials
    centre = (p + z2 / (2 * trials)) / denominator
    half = Z_95 * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / denominator
    return Interval(lower=max(0.0, centre - half), upper=min(1.0, centre + half))


def _roc(
    labels01: NDArray[np.int64], scores: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    from sklearn.metrics import roc_curve

    fpr, tpr, thresholds = roc_curve(labels01, scores, drop_intermediate=False)
    return fpr, tpr, thresholds


def _choose(labels01: NDArray[np.int64], scores: NDArray[np.float64]) -> dict[str, float]:
    """Each operating point's threshold on this split (positive when score >= threshold)."""
    fpr, tpr, thresholds = _roc(labels01, scores)
    # sklearn's first threshold is +inf (nothing positive); keep it finite for the wire.
    thresholds = thresholds.copy()
    thresholds[0] = np.nextafter(float(np.max(scores)), math.inf)
    chosen = {"youden": float(thresholds[int(np.argmax(tpr - fpr))])}
    for name, specificity in _SPECIFICITY.items():
        good = np.flatnonzero(1.0 - fpr >= specificity - _EPS)
        chosen[name] = float(thresholds[good[-1]])  # the highest sensitivity that reaches it
    return chosen


def _apply(
    labels01: NDArray[np.int64],
    scores: NDArray[np.float64],
    name: str,
    threshold: float,
    chosen_on: str,
) -> OperatingPoint:
    predicted = scores >= threshold
    actual = labels01 == 1
    tp = int(np.sum(predicted & actual))
    fn = int(np.sum(~predicted & actual))
    fp = int(np.sum(predicted & ~actual))
    tn = int(np.sum(~predicted & ~actual))
    return OperatingPoint(
        name=name,
        chosen_on=chosen_on,
        threshold=threshold,
        sensitivity=tp / (tp + fn) if tp + fn else math.nan,
        sensitivity_ci=wilson(tp, tp + fn),
        specificity=tn / (tn + fp) if tn + fp else math.nan,
        specificity_ci=wilson(tn, tn + fp),
        true_positives=tp,
        false_positives=fp,
        true_negatives=tn,
        false_negatives=fn,
    )


def sensitivity_at_specificity(
    labels01: NDArray[np.int64], scores: NDArray[np.float64], specificity: float
) -> float:
    """AIROGS's screening sensitivity: on the split's own ROC curve (all thresholds), the
    sensitivity of the last point whose specificity is at least ``specificity``."""
    fpr, tpr, _ = _roc(labels01, scores)
    good = 1.0 - fpr >= specificity - _EPS
    return float(tpr[good][-1])


def _bootstrap(
    labels: NDArray[np.int64],
    probabilities: NDArray[np.float64],
    positive: int,
    samples: int,
    seed: int,
    *,
    groups: Sequence[str] | None = None,
) -> Interval:
    """Percentile interval of the AUC over resamples drawn within each class; with
    ``groups``, whole patients are drawn (within the class of their highest label), since
    two eyes of one patient are not two independent observations."""
    rng = np.random.default_rng(seed)
    members: dict[str, list[int]] = {}
    for row, key in enumerate(groups or ()):
        members.setdefault(key, []).append(row)
    units = [np.array(m) for m in members.values()]
    unit_label = np.array([labels[m].max() for m in units]) if groups else labels
    strata = [np.flatnonzero(unit_label == k) for k in np.unique(unit_label)]
    values = []
    for _ in range(samples):
        drawn = np.concatenate([rng.choice(s, size=len(s), replace=True) for s in strata])
        index = np.concatenate([units[u] for u in drawn]) if groups else drawn
        value = auc(labels[index], probabilities[index], positive)
        if not math.isnan(value):
            values.append(value)
    if not values:
        return Interval(lower=math.nan, upper=math.nan)
    low, high = np.percentile(values, [2.5, 97.5])
    return Interval(lower=float(low), upper=float(high))


def reliability_bins(
    labels01: NDArray[np.int64], scores: NDArray[np.float64]
) -> list[tuple[float, float, int]]:
    """Per non-empty equal-width bin of the score: (mean score, fraction positive, count),
    the points of the reliability diagram and the terms of the calibration error."""
    bins = np.minimum((scores * CALIBRATION_BINS).astype(np.int64), CALIBRATION_BINS - 1)
    out = []
    for b in range(CALIBRATION_BINS):
        members = bins == b
        if members.any():
            out.append(
                (float(scores[members].mean()), float(labels01[members].mean()), int(members.sum()))
            )
    return out


def _calibration(labels01: NDArray[np.int64], scores: NDArray[np.float64]) -> tuple[float, float]:
    """(Brier score, expected calibration error over equal-width bins)."""
    brier = float(np.mean((scores - labels01) ** 2))
    bins = reliability_bins(labels01, scores)
    ece = sum(count / len(scores) * abs(observed - mean) for mean, observed, count in bins)
    return brier, float(ece)


def _degenerate(scores: NDArray[np.float64], points: Sequence[OperatingPoint]) -> str:
    spread = float(np.max(scores) - np.min(scores))
    if spread < MIN_SPREAD:
        return (
            f"scores vary by {spread:.1e} across {len(scores)} images (under {MIN_SPREAD:g}): "
            "the model does not rank them"
        )
    one_class = [p for p in points if p.true_positives + p.false_positives == 0] + [
        p for p in points if p.true_negatives + p.false_negatives == 0
    ]
    if points and len(one_class) == len(points):
        return "every operating point predicts a single class for every image"
    return ""


def _check_bootstrap(samples: int) -> None:
    if not 1 <= samples <= MAX_BOOTSTRAP:
        raise ValueError(f"bootstrap_samples must be in [1, {MAX_BOOTSTRAP}] (got {samples})")


def evaluate_split(
    labels: NDArray[np.int64],
    probabilities: NDArray[np.float64],
    *,
    split: str,
    class_names: Sequence[str],
    frozen: Sequence[OperatingPoint] | None = None,
    bootstrap_samples: int = 1000,
    seed: int = 0,
    groups: Sequence[str] | None = None,
) -> SplitEvaluation:
    """Everything reported on one split. ``frozen``: operating points chosen on validation,
    applied here at their thresholds; None chooses them here (this is the validation
    split). ``groups``: each image's patient, for a bootstrap over patients. A ValueError
    names ``bootstrap_samples`` when it is out of bounds."""
    _check_bootstrap(bootstrap_samples)
    if groups is not None and len(groups) != len(labels):
        raise ValueError(f"groups has {len(groups)} entries for {len(labels)} images")
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(len(labels), -1)
    n, k = len(labels), max(probabilities.shape[1], len(class_names))
    if n == 0:
        return SplitEvaluation(
            split=split, auc=math.nan, degenerate=True, degenerate_reason="no images"
        )
    accuracy = float(np.mean(probabilities.argmax(axis=1) == labels))
    if k > 2:
        return _multiclass(
            labels,
            probabilities,
            split=split,
            class_names=class_names,
            bootstrap_samples=bootstrap_samples,
            seed=seed,
            accuracy=accuracy,
            groups=groups,
        )
    positive = positive_index(class_names)
    labels01 = (labels == positive).astype(np.int64)
    scores = probabilities[:, positive]
    positives = int(labels01.sum())
    brier, ece = _calibration(labels01, scores)
    base = {
        "split": split,
        "num_samples": n,
        "num_positives": positives,
        "prevalence": positives / n,
        "positive_class": class_names[positive],
        "bootstrap_samples": bootstrap_samples,
        "brier_score": brier,
        "expected_calibration_error": ece,
        "accuracy": accuracy,
        "num_groups": len(set(groups)) if groups is not None else 0,
    }
    if positives in (0, n):
        reason = f"only one class ({'positive' if positives else 'negative'}) on this split"
        points = [_apply(labels01, scores, p.name, p.threshold, p.chosen_on) for p in frozen or []]
        nan = Interval(lower=math.nan, upper=math.nan)
        return SplitEvaluation(
            **base,
            auc=math.nan,
            auc_ci_delong=nan,
            auc_ci_bootstrap=nan,
            partial_auc=math.nan,
            operating_points=points,
            sensitivity_at_95_specificity=math.nan,
            degenerate=True,
            degenerate_reason=reason,
        )
    from sklearn.metrics import roc_auc_score

    value, delong = delong_ci(labels01, scores)
    if frozen is None:
        thresholds = _choose(labels01, scores)
        points = [
            _apply(labels01, scores, name, thresholds[name], split) for name in OPERATING_POINTS
        ]
    else:
        points = [_apply(labels01, scores, p.name, p.threshold, p.chosen_on) for p in frozen]
    reason = _degenerate(scores, points)
    return SplitEvaluation(
        **base,
        auc=value,
        auc_ci_delong=delong,
        auc_ci_bootstrap=_bootstrap(
            labels, probabilities, positive, bootstrap_samples, seed, groups=groups
        ),
        partial_auc=float(roc_auc_score(labels01, scores, max_fpr=0.1)),
        operating_points=points,
        sensitivity_at_95_specificity=sensitivity_at_specificity(labels01, scores, 0.95),
        degenerate=bool(reason),
        degenerate_reason=reason,
    )


def _multiclass(
    labels: NDArray[np.int64],
    probabilities: NDArray[np.float64],
    *,
    split: str,
    class_names: Sequence[str],
    bootstrap_samples: int,
    seed: int,
    accuracy: float,
    groups: Sequence[str] | None,
) -> SplitEvaluation:
    per_class = []
    for index, name in enumerate(class_names):
        value, ci = delong_ci((labels == index).astype(np.int64), probabilities[:, index])
        per_class.append(
            ClassEvaluation(
                class_name=name, num_samples=int(np.sum(labels == index)), auc=value, auc_ci=ci
            )
        )
    onehot = np.eye(probabilities.shape[1])[labels]
    macro = auc(labels, probabilities, 0)
    spread = float(np.max(probabilities.max(axis=1) - probabilities.min(axis=1)))
    reason = (
        f"class probabilities vary by {spread:.1e} (under {MIN_SPREAD:g}): the model does not rank"
        if spread < MIN_SPREAD
        else (
            "no class has both members and non-members on this split" if math.isnan(macro) else ""
        )
    )
    return SplitEvaluation(
        split=split,
        num_samples=len(labels),
        auc=macro,
        auc_ci_bootstrap=_bootstrap(
            labels, probabilities, 0, bootstrap_samples, seed, groups=groups
        ),
        num_groups=len(set(groups)) if groups is not None else 0,
        bootstrap_samples=bootstrap_samples,
        brier_score=float(np.mean(np.sum((probabilities - onehot) ** 2, axis=1))),
        per_class=per_class,
        accuracy=accuracy,
        degenerate=bool(reason),
        degenerate_reason=reason,
    )


def flat_metrics(evaluation: SplitEvaluation) -> dict[str, float]:
    """The evaluation as ``{split}_{name}`` numbers, for ExperimentResult.best_metrics."""
    s = evaluation.split
    # DeLong treats images as independent: the patient bootstrap is the honest interval
    # of a grouped split, and the only one of a multi-class task.
    interval = (
        evaluation.auc_ci_delong
        if evaluation.positive_class and not evaluation.num_groups
        else evaluation.auc_ci_bootstrap
    )
    out = {
        f"{s}_auc": evaluation.auc,
        f"{s}_auc_ci_lower": interval.lower,
        f"{s}_auc_ci_upper": interval.upper,
        f"{s}_accuracy": evaluation.accuracy,
        f"{s}_num_samples": float(evaluation.num_samples),
        f"{s}_degenerate": 1.0 if evaluation.degenerate else 0.0,
    }
    if evaluation.positive_class:
        youden = evaluation.point("youden")
        out |= {
            f"{s}_partial_auc": evaluation.partial_auc,
            f"{s}_sensitivity": youden.sensitivity if youden else math.nan,
            f"{s}_specificity": youden.specificity if youden else math.nan,
            f"{s}_threshold": youden.threshold if youden else math.nan,
            f"{s}_sensitivity_at_95_specificity": evaluation.sensitivity_at_95_specificity,
            f"{s}_brier_score": evaluation.brier_score,
            f"{s}_expected_calibration_error": evaluation.expected_calibration_error,
            f"{s}_prevalence": evaluation.prevalence,
        }
    return out
