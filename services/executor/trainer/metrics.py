"""Classification metrics in plain numpy (no torch, no sklearn): the trainer and the
evaluation tool share them; the tests check them against scikit-learn."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray


def _rank_average(values: NDArray[np.float64]) -> NDArray[np.float64]:
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_values = values[order]
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and sorted_values[j + 1] == sorted_values[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def binary_auc(labels: NDArray[np.int64], scores: NDArray[np.float64]) -> float:
    """ROC AUC by the Mann-Whitney U statistic (ties count half); NaN with one class only."""
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = _rank_average(scores)
    u = ranks[labels == 1].sum() - positives * (positives + 1) / 2.0
    return float(u / (positives * negatives))


POSITIVE_NAMES = ("glaucoma", "positive", "disease", "abnormal", "referable")


def positive_index(class_names: list[str]) -> int:
    """The class a binary task detects: glaucoma (or another disease name), else index 1."""
    for index, name in enumerate(class_names):
        if name.lower() in POSITIVE_NAMES:
            return index
    return 1


def auc(labels: NDArray[np.int64], probabilities: NDArray[np.float64], positive: int = 1) -> float:
    """Binary AUC on the positive class, or macro one-vs-rest for more classes."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels)
    if probabilities.shape[1] == 2:
        return binary_auc((labels == positive).astype(np.int64), probabilities[:, positive])
    values = [
        binary_auc((labels == k).astype(np.int64), probabilities[:, k])
        for k in range(probabilities.shape[1])
    ]
    finite = [v for v in values if not np.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def confusion_matrix(
    labels: NDArray[np.int64], predictions: NDArray[np.int64], num_classes: int
) -> NDArray[np.int64]:
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels), np.asarray(predictions)), 1)
    return matrix


@dataclass(frozen=True)
class Summary:
    accuracy: float
    auc: float
    sensitivity: float
    specificity: float
    f1: float


def _safe_div(a: float, b: float) -> float:
    return float(a / b) if b else float("nan")


def summarize(
    labels: NDArray[np.int64], probabilities: NDArray[np.float64], positive: int = 1
) -> Summary:
    """Accuracy, AUC, and sensitivity/specificity/F1 of the positive class; macro averages
    over one-vs-rest for more than two classes."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels)
    k = probabilities.shape[1]
    predictions = probabilities.argmax(axis=1)
    matrix = confusion_matrix(labels, predictions, k)
    accuracy = _safe_div(np.trace(matrix), matrix.sum())
    positives = [positive] if k == 2 else list(range(k))
    sens, spec, f1s = [], [], []
    for c in positives:
        tp = matrix[c, c]
        fn = matrix[c, :].sum() - tp
        fp = matrix[:, c].sum() - tp
        tn = matrix.sum() - tp - fn - fp
        sens.append(_safe_div(tp, tp + fn))
        spec.append(_safe_div(tn, tn + fp))
        f1s.append(_safe_div(2 * tp, 2 * tp + fp + fn))
    return Summary(
        accuracy=accuracy,
        auc=auc(labels, probabilities, positive),
        sensitivity=float(np.nanmean(sens)) if not np.all(np.isnan(sens)) else float("nan"),
        specificity=float(np.nanmean(spec)) if not np.all(np.isnan(spec)) else float("nan"),
        f1=float(np.nanmean(f1s)) if not np.all(np.isnan(f1s)) else float("nan"),
    )


def roc_curve(
    labels: NDArray[np.int64], scores: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """(false positive rates, true positive rates, thresholds), like scikit-learn's with
    drop_intermediate=False: one point per distinct score, plus the (0, 0) start."""
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="mergesort")
    scores_sorted = scores[order]
    labels_sorted = labels[order]
    distinct = np.where(np.diff(scores_sorted))[0]
    idx = np.r_[distinct, len(scores_sorted) - 1]
    tps = np.cumsum(labels_sorted)[idx]
    fps = 1 + idx - tps
    tps = np.r_[0, tps]
    fps = np.r_[0, fps]
    thresholds = np.r_[np.inf, scores_sorted[idx]]
    p, n = tps[-1], fps[-1]
    tpr = tps / p if p else np.full_like(tps, np.nan, dtype=np.float64)
    fpr = fps / n if n else np.full_like(fps, np.nan, dtype=np.float64)
    return fpr.astype(np.float64), tpr.astype(np.float64), thresholds


def sensitivity_at_specificity(
    labels: NDArray[np.int64], scores: NDArray[np.float64], specificity: float
) -> float:
    """The best sensitivity among thresholds whose specificity is at least ``specificity``."""
    fpr, tpr, _ = roc_curve(labels, scores)
    ok = (1.0 - fpr) >= specificity - 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0
