"""Inputs: the experiment spec and what it is made of, every bound declared once."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Annotated, Any, Self

from pydantic import (
    AfterValidator,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from arc_common.models._base import (
    SPLIT_TOLERANCE,
    Identifier,
    WorkspacePath,
    _optional_path,
    _Spec,
)
from arc_common.models.enums import (
    ArchitectureFamily,
    DatasetType,
    GpuPreference,
    LrScheduleType,
    MetricMode,
    NoveltyClass,
    OptimizerType,
    PreprocessingStepType,
)

# Error types of the rules below, for clients that suggest fixes (clients.orchestrator).
VARIANT_FAMILY = "variant_family"
SPLIT_SUM = "split_sum"


class ArchitectureSpec(_Spec):
    family: ArchitectureFamily
    variant: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{1,63}$")]
    pretrained: bool = False
    num_classes: Annotated[int, Field(ge=2, le=10_000)] = 2
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0

    @model_validator(mode="after")
    def _variant_matches_family(self) -> Self:
        if not self.variant.startswith(self.family.value):
            raise PydanticCustomError(
                VARIANT_FAMILY,
                "variant {variant!r} is not a {family} model (expected a name starting "
                "with {family!r}, e.g. {example!r})",
                {
                    "variant": self.variant,
                    "family": self.family.value,
                    "example": _EXAMPLE_VARIANT[self.family],
                },
            )
        return self


_EXAMPLE_VARIANT = {
    ArchitectureFamily.RESNET: "resnet18",
    ArchitectureFamily.EFFICIENTNET: "efficientnet_b0",
    ArchitectureFamily.DENSENET: "densenet121",
    ArchitectureFamily.MOBILENET: "mobilenet_v3_small",
    ArchitectureFamily.CONVNEXT: "convnext_tiny",
    ArchitectureFamily.VIT: "vit_b_16",
    ArchitectureFamily.REGNET: "regnet_y_400mf",
    ArchitectureFamily.VGG: "vgg11",
    ArchitectureFamily.SWIN: "swin_t",
    ArchitectureFamily.CUSTOM: "custom",
}


class OptimizerSpec(_Spec):
    type: OptimizerType = OptimizerType.ADAM
    learning_rate: Annotated[float, Field(gt=0.0, le=1.0)]
    weight_decay: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] | None = None


class LrSchedule(_Spec):
    type: LrScheduleType = LrScheduleType.NONE
    step_size: Annotated[int, Field(ge=1, le=100_000)] = 10
    gamma: Annotated[float, Field(gt=0.0, le=1.0)] = 0.1


class Hyperparameters(_Spec):
    batch_size: Annotated[int, Field(ge=1, le=4096)]
    epochs: Annotated[int, Field(ge=1, le=10_000)]
    optimizer: OptimizerSpec
    # Factories, not instances: pydantic deep-copies an instance default on every parse.
    lr_schedule: LrSchedule = Field(default_factory=LrSchedule)
    seed: Annotated[int, Field(ge=0, le=2**63 - 1)] | None = None
    deterministic: bool = False
    halve_batch_on_oom: bool = False


class Grouping(_Spec):
    """Where an image's patient id comes from (see the proto): a pattern or a manifest."""

    # A proto oneof: the one not given stays None, so it is not sent.
    pattern: Annotated[str, Field(max_length=128)] | None = None
    manifest: Annotated[str, AfterValidator(_optional_path), Field(max_length=256)] | None = None

    @field_validator("pattern")
    @classmethod
    def _compiles_with_a_group(cls, value: str | None) -> str | None:
        if not value:
            return value
        try:
            compiled = re.compile(value)
        except re.error as exc:
            raise ValueError(f"is not a regular expression: {exc}") from None
        if not compiled.groups:
            raise ValueError("needs a group, (...) or (?P<patient>...), that is the patient id")
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if bool(self.pattern) == bool(self.manifest):
            raise PydanticCustomError("grouping_one_of", "give exactly one of pattern and manifest")
        return self

    def describe(self) -> str:
        return f"pattern {self.pattern}" if self.pattern else f"manifest {self.manifest}"


class DatasetSpec(_Spec):
    dataset_id: Identifier
    dataset_type: DatasetType = DatasetType.IMAGE_FOLDER
    data_path: WorkspacePath
    train_split: Annotated[float, Field(gt=0.0, le=1.0)] = 0.8
    val_split: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    test_split: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    image_size: Annotated[int, Field(ge=16, le=4096)] = 224
    dvc_revision: Annotated[str, Field(max_length=256)] = ""
    grouping: Grouping | None = None

    @model_validator(mode="after")
    def _splits_sum_to_one(self) -> Self:
        total = self.train_split + self.val_split + self.test_split
        if not math.isclose(total, 1.0, abs_tol=SPLIT_TOLERANCE):
            raise PydanticCustomError(
                SPLIT_SUM,
                "train_split + val_split + test_split must sum to 1 (got {shown})",
                {
                    "shown": f"{total:g}: {self.train_split:g} + {self.val_split:g} + "
                    f"{self.test_split:g}"
                },
            )
        return self


@dataclass(frozen=True)
class _Bound:
    """One step parameter: a number in [low, high] (an integer when ``integer``), or a
    list of 1-4 such numbers when ``vector``."""

    low: float
    high: float
    integer: bool = False
    vector: bool = False
    low_open: bool = False  # low itself excluded

    def check(self, name: str, value: Any) -> None:
        items = value if self.vector and isinstance(value, list) else [value]
        if self.vector and not 1 <= len(items) <= 4:
            raise ValueError(f"{name} must be a list of 1 to 4 numbers")
        what = "an integer" if self.integer else "a number"
        shown = f"({self.low}, {self.high}]" if self.low_open else f"[{self.low}, {self.high}]"
        for item in items:
            number = item if isinstance(item, int | float) and not isinstance(item, bool) else None
            if (
                number is None
                or not math.isfinite(number)
                or (self.integer and not float(number).is_integer())
                or not self.low <= number <= self.high
                or (self.low_open and number == self.low)
            ):
                raise ValueError(f"{name} must be {what} in {shown} (got {item!r})")


_SIZE = _Bound(1, 4096, integer=True)
_PROBABILITY = _Bound(0, 1)
STEP_PARAMS: dict[PreprocessingStepType, dict[str, _Bound]] = {
    PreprocessingStepType.RESIZE: {"size": _SIZE},
    PreprocessingStepType.CENTER_CROP: {"size": _SIZE},
    PreprocessingStepType.NORMALIZE: {
        "mean": _Bound(-10, 10, vector=True),
        "std": _Bound(0, 10, vector=True, low_open=True),
    },
    PreprocessingStepType.CLAHE: {
        "clip_limit": _Bound(0, 100, low_open=True),
        "grid": _Bound(1, 64, integer=True),
    },
    PreprocessingStepType.GREEN_CHANNEL: {},
    PreprocessingStepType.HORIZONTAL_FLIP: {"p": _PROBABILITY},
    PreprocessingStepType.VERTICAL_FLIP: {"p": _PROBABILITY},
    PreprocessingStepType.ROTATION: {"degrees": _Bound(0, 360)},
    PreprocessingStepType.COLOR_JITTER: {
        "brightness": _Bound(0, 10),
        "contrast": _Bound(0, 10),
        "saturation": _Bound(0, 10),
    },
    PreprocessingStepType.RANDOM_RESIZED_CROP: {
        "size": _SIZE,
        "min_scale": _Bound(0, 1, low_open=True),
    },
}


class PreprocessingStep(_Spec):
    type: PreprocessingStepType
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("params")
    @classmethod
    def _params_of_the_step(cls, params: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """Each step takes its own parameters, each bounded (no zero CLAHE grid, no
        2^31-pixel resize reaches the image code)."""
        kind = info.data.get("type")
        if kind is None:  # the type itself is invalid and reported
            return params
        allowed = STEP_PARAMS[kind]
        for name, value in params.items():
            if name not in allowed:
                takes = ", ".join(allowed) or "no parameters"
                raise ValueError(f"{kind.value} takes {takes}, not {name[:64]!r}")
            allowed[name].check(f"params.{name}", value)
        return params


class PreprocessingChain(_Spec):
    chain_id: Annotated[str, Field(max_length=128)] = ""
    steps: Annotated[list[PreprocessingStep], Field(max_length=64)] = Field(default_factory=list)


_ENTRY = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
Entry = Annotated[str, Field(pattern=_ENTRY, max_length=200)]
OptionalEntry = Annotated[str, Field(pattern=f"^$|{_ENTRY}", max_length=200)]


class CodeSource(_Spec):
    """Model code from a registered repository at one commit (see the proto)."""

    repository: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
    # Never an option to git: no leading "-", no spaces, no "..", no control characters.
    revision: Annotated[str, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_./~^@{}-]{0,199}$")] = "HEAD"
    entrypoint: Entry
    loss: OptionalEntry = ""
    transforms: OptionalEntry = ""
    param_groups: OptionalEntry = ""
    # Output only (set at submit from the repository).
    commit: Annotated[str, Field(pattern=r"^$|^[0-9a-f]{40}([0-9a-f]{24})?$")] = ""
    tree: Annotated[str, Field(pattern=r"^$|^[0-9a-f]{40}([0-9a-f]{24})?$")] = ""

    @field_validator("revision")
    @classmethod
    def _one_revision(cls, value: str) -> str:
        if ".." in value:
            raise ValueError("names a range ('..'); give one commit or ref")
        return value

    def entries(self) -> dict[str, str]:
        """The fields naming code, by field name, the ones set."""
        named = {
            "entrypoint": self.entrypoint,
            "loss": self.loss,
            "transforms": self.transforms,
            "param_groups": self.param_groups,
        }
        return {name: value for name, value in named.items() if value}


class GpuAllocation(_Spec):
    preference: GpuPreference = GpuPreference.AUTO
    gpu_indices: Annotated[list[Annotated[int, Field(ge=0, le=255)]], Field(max_length=16)] = Field(
        default_factory=list
    )
    gpu_count: Annotated[int, Field(ge=1, le=16)] = 1
    min_free_memory_mib: Annotated[int, Field(ge=0, le=10_000_000)] = 0

    @model_validator(mode="after")
    def _indices_match_preference(self) -> Self:
        if len(set(self.gpu_indices)) != len(self.gpu_indices):
            raise ValueError(f"gpu_indices must not repeat a GPU (got {self.gpu_indices})")
        if self.preference is GpuPreference.SPECIFIC:
            if not self.gpu_indices:
                raise ValueError("preference 'specific' needs gpu_indices (e.g. [0])")
            if self.gpu_count != len(self.gpu_indices) and self.gpu_count != 1:
                raise ValueError(
                    f"gpu_count {self.gpu_count} does not match the {len(self.gpu_indices)} "
                    "gpu_indices named"
                )
        elif self.gpu_indices:
            raise ValueError("gpu_indices are only used with preference 'specific'")
        return self

    @property
    def count(self) -> int:
        """GPUs wanted: the named ones, or gpu_count."""
        return len(self.gpu_indices) if self.gpu_indices else self.gpu_count


class EarlyStopping(_Spec):
    enabled: bool = False
    patience: Annotated[int, Field(ge=1, le=10_000)] = 5
    monitor: Annotated[str, Field(pattern=r"^(train|val)_[a-z_]+$")] = "val_auc"
    mode: MetricMode = MetricMode.MAX
    min_delta: Annotated[float, Field(ge=0.0)] = 0.0
    divergence_factor: Annotated[float, Field(gt=1.0, le=1e6)] = 10.0
    median_pruning: bool = False
    warmup_epochs: Annotated[int, Field(ge=0, le=10_000)] = 2


class ExperimentSpec(_Spec):
    experiment_id: Identifier
    description: Annotated[str, Field(max_length=4096)] = ""
    architecture: ArchitectureSpec
    hyperparameters: Hyperparameters
    dataset: DatasetSpec
    preprocessing: PreprocessingChain = Field(default_factory=PreprocessingChain)
    cycle_id: Annotated[int, Field(ge=0, le=1_000_000)] = 0
    novelty_class: NoveltyClass = NoveltyClass.EXPLOIT
    priority: Annotated[int, Field(ge=0, le=10)] | None = None
    max_training_time_seconds: Annotated[int, Field(ge=1, le=7 * 24 * 3600)] = 3600
    gpu_allocation: GpuAllocation = Field(default_factory=GpuAllocation)
    early_stopping: EarlyStopping = Field(default_factory=EarlyStopping)
    # Test figures kept from agent tokens until an operator releases them (a sealed
    # dataset in the policy sets it); not part of the content hash.
    seal_test: bool = False
    source: CodeSource | None = None
    # An experiment id or a runs/.../*.pt checkpoint; a path once submitted.
    init_from: Annotated[str, Field(max_length=256)] = ""

    @model_validator(mode="after")
    def _custom_needs_source(self) -> Self:
        if self.architecture.family is ArchitectureFamily.CUSTOM and self.source is None:
            raise ValueError(
                "architecture.family 'custom' needs source (the repository code that builds "
                "the model)"
            )
        return self

    @property
    def effective_priority(self) -> int:
        return 5 if self.priority is None else self.priority


class TrainingJobConfig(_Spec):
    job_id: Identifier
    experiment_spec: ExperimentSpec
    gpu_ids: Annotated[list[Annotated[int, Field(ge=0, le=255)]], Field(max_length=16)] = Field(
        default_factory=list
    )
    checkpoint_dir: WorkspacePath
    log_dir: WorkspacePath
    timeout_seconds: Annotated[int, Field(ge=1, le=7 * 24 * 3600)] = 3600
    max_retries: Annotated[int, Field(ge=0, le=10)] = 0
    resume_from: Annotated[str, AfterValidator(_optional_path)] = ""
    # The identity that submitted the job (its name in tokens.json); the executor records
    # it as the owner of the job's folder under runs/.
    submitted_by: Annotated[str, Field(max_length=128, pattern=r"^[^\n]*$")] = ""
    # An agent's job: the sealed datasets whose test folders the run may not read.
    sealed_test_datasets: Annotated[list[WorkspacePath], Field(max_length=64)] = Field(
        default_factory=list
    )


# Bootstrap resamples an evaluation may ask for: under 100 the interval is noise.
MIN_BOOTSTRAP, DEFAULT_BOOTSTRAP, MAX_BOOTSTRAP = 100, 1000, 100_000
DATASET_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"


class EvaluationJob(_Spec):
    checkpoint_path: WorkspacePath
    data_path: WorkspacePath
    split: Annotated[str, Field(pattern=r"^(train|val|test)?$")] = "test"
    bootstrap_samples: Annotated[int, Field(ge=MIN_BOOTSTRAP, le=MAX_BOOTSTRAP)] = DEFAULT_BOOTSTRAP
    # Empty: the data folder's name.
    dataset_id: Annotated[str, Field(pattern=f"^({DATASET_ID_PATTERN})?$")] = ""
