"""ROC curve and reliability diagram of a binary split, as PNG files a researcher opens.

Drawn with matplotlib's object API (no pyplot: no global figure state, no display), and
imported only by those who draw, so the services never load matplotlib.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from numpy.typing import NDArray
from sklearn.metrics import roc_curve

from arc_common.evaluation.report import CALIBRATION_BINS, positive_index, reliability_bins
from arc_common.models import SplitEvaluation
from arc_common.untrusted import save_png_no_follow

SIZE_INCHES, DPI = 4.5, 100


def _roc(labels01: NDArray[np.int64], scores: NDArray[np.float64], e: SplitEvaluation) -> Figure:
    fpr, tpr, _ = roc_curve(labels01, scores)
    figure = Figure(figsize=(SIZE_INCHES, SIZE_INCHES), dpi=DPI)
    ax = figure.subplots()
    ci = e.auc_ci_bootstrap if e.num_groups else e.auc_ci_delong
    ax.plot(fpr, tpr, color="C0", label=f"AUC {e.auc:.3f} [{ci.lower:.3f}, {ci.upper:.3f}]")
    ax.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1)
    for index, point in enumerate(e.operating_points):
        ax.plot(
            1 - point.specificity,
            point.sensitivity,
            marker="o",
            linestyle="",
            color=f"C{index + 1}",
            label=f"{point.name} (chosen on {point.chosen_on})",
        )
    ax.set(
        xlabel="1 - specificity",
        ylabel=f"sensitivity ({e.positive_class})",
        xlim=(0, 1),
        ylim=(0, 1.02),
        title=f"ROC, {e.split} split, n={e.num_samples}",
    )
    ax.legend(loc="lower right", fontsize="small")
    return figure


def _reliability(
    labels01: NDArray[np.int64], scores: NDArray[np.float64], e: SplitEvaluation
) -> Figure:
    bins = reliability_bins(labels01, scores)
    centers, observed, counts = (list(column) for column in zip(*bins, strict=True))
    figure = Figure(figsize=(SIZE_INCHES, SIZE_INCHES), dpi=DPI)
    ax, hist = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1, label="calibrated")
    ax.plot(centers, observed, marker="o", color="C0", label="observed")
    ax.set(
        ylabel=f"fraction {e.positive_class}",
        ylim=(0, 1),
        title=f"Reliability, {e.split}: Brier {e.brier_score:.3f}, "
        f"ECE {e.expected_calibration_error:.3f}",
    )
    ax.legend(loc="upper left", fontsize="small")
    hist.bar(centers, counts, width=1 / CALIBRATION_BINS * 0.8, color="C0")
    hist.set(xlabel="predicted probability", ylabel="images", xlim=(0, 1))
    return figure


def write_figures(
    labels: NDArray[np.int64],
    probabilities: NDArray[np.float64],
    evaluation: SplitEvaluation,
    *,
    class_names: Sequence[str],
    stem: Path,
) -> tuple[Path, Path] | None:
    """``<stem>-roc.png`` and ``<stem>-reliability.png``; None where there is no binary
    curve to draw (multi-class, or one class only on the split)."""
    if len(class_names) != 2 or not evaluation.num_positives:
        return None
    if evaluation.num_positives == evaluation.num_samples:
        return None
    positive = positive_index(class_names)
    labels01 = (np.asarray(labels) == positive).astype(np.int64)
    scores = np.asarray(probabilities, dtype=np.float64).reshape(len(labels01), -1)[:, positive]
    stem.parent.mkdir(parents=True, exist_ok=True)
    roc = stem.with_name(f"{stem.name}-roc.png")
    reliability = stem.with_name(f"{stem.name}-reliability.png")
    _save(_roc(labels01, scores, evaluation), roc)
    _save(_reliability(labels01, scores, evaluation), reliability)
    return roc, reliability


def _save(figure: Figure, path: Path) -> None:
    # The folder may be a sandboxed trainer's: a link planted at the name is not followed.
    save_png_no_follow(
        lambda buffer: figure.savefig(buffer, format="png", bbox_inches="tight"), path
    )
