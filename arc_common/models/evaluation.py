"""Outputs of an evaluation: what a model does on one split, the operating points chosen on
validation, and what is needed to repeat the result (``arc_common.evaluation`` fills them)."""

from __future__ import annotations

from pydantic import Field

from arc_common.models._base import _Resource
from arc_common.models.specs import CodeSource


class Interval(_Resource):
    """A two-sided 95% confidence interval."""

    lower: float = 0.0
    upper: float = 0.0


class OperatingPoint(_Resource):
    name: str = ""
    chosen_on: str = ""
    threshold: float = 0.0
    sensitivity: float = 0.0
    sensitivity_ci: Interval = Field(default_factory=Interval)
    specificity: float = 0.0
    specificity_ci: Interval = Field(default_factory=Interval)
    true_positives: int = 0
    false_positives: int = 0
    true_negatives: int = 0
    false_negatives: int = 0


class ClassEvaluation(_Resource):
    class_name: str = ""
    num_samples: int = 0
    auc: float = 0.0
    auc_ci: Interval = Field(default_factory=Interval)


class SplitEvaluation(_Resource):
    split: str = ""
    num_samples: int = 0
    num_positives: int = 0
    prevalence: float = 0.0
    positive_class: str = ""
    auc: float = 0.0
    auc_ci_delong: Interval = Field(default_factory=Interval)
    auc_ci_bootstrap: Interval = Field(default_factory=Interval)
    bootstrap_samples: int = 0
    partial_auc: float = 0.0
    operating_points: list[OperatingPoint] = Field(default_factory=list)
    sensitivity_at_95_specificity: float = 0.0
    brier_score: float = 0.0
    expected_calibration_error: float = 0.0
    degenerate: bool = False
    degenerate_reason: str = ""
    per_class: list[ClassEvaluation] = Field(default_factory=list)
    accuracy: float = 0.0
    num_groups: int = 0
    roc_curve_png: str = ""
    reliability_diagram_png: str = ""

    def point(self, name: str) -> OperatingPoint | None:
        return next((p for p in self.operating_points if p.name == name), None)


class Provenance(_Resource):
    seed: int = 0
    engine_version: str = ""
    torch_version: str = ""
    torchvision_version: str = ""
    device: str = ""
    precision: str = ""
    deterministic: bool = False
    dataset_id: str = ""
    data_path: str = ""
    dataset_hash: str = ""
    checkpoint_path: str = ""
    checkpoint_sha256: str = ""
    grouping: str = ""
    source: CodeSource | None = None
    parameter_count: int = 0
