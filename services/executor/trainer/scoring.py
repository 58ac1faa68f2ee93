"""The trainer's last pass: the best model scored on val and test by the evaluation
module, and each split's figures drawn."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from arc_common import evaluation
from arc_common.models import SplitEvaluation

Scored = tuple[np.ndarray, np.ndarray, list[str] | None]  # labels, probabilities, patients


def figures(
    evaluations: list[SplitEvaluation],
    scored: dict[str, tuple[np.ndarray, np.ndarray]],
    class_names: list[str],
    *,
    folder: Path,
    workspace: Path,
) -> list[SplitEvaluation]:
    """Each split's ROC curve and reliability diagram beside the run's checkpoints."""
    from arc_common.evaluation.plots import write_figures  # matplotlib only here

    out = []
    for found in evaluations:
        labels, probs = scored[found.split]
        written = (
            write_figures(labels, probs, found, class_names=class_names, stem=folder / found.split)
            if np.isfinite(probs).all()
            else None
        )
        if written is not None:
            roc, reliability = (str(p.relative_to(workspace)) for p in written)
            found = found.model_copy(
                update={"roc_curve_png": roc, "reliability_diagram_png": reliability}
            )
        out.append(found)
    return out


def evaluate_best(
    val: Scored, test: Scored, class_names: list[str], *, seed: int
) -> list[SplitEvaluation]:
    """Validation chooses the operating points; test is read at those thresholds, never its
    own. Without validation images, test chooses its own and says so (chosen_on "test")."""
    found: list[SplitEvaluation] = []
    frozen = None
    if len(val[0]):
        found.append(
            evaluation.evaluate_split(
                val[0], val[1], split="val", class_names=class_names, seed=seed, groups=val[2]
            )
        )
        frozen = found[0].operating_points or None
    found.append(
        evaluation.evaluate_split(
            test[0],
            test[1],
            split="test",
            class_names=class_names,
            frozen=frozen,
            seed=seed,
            groups=test[2],
        )
    )
    return found
