"""Domain models of the engine, mirroring the protos field for field.

Field names equal the proto field names and enum values equal the proto value names
without their prefix, lower-cased (``ARCHITECTURE_FAMILY_RESNET`` -> ``"resnet"``), so
``arc_common.convert`` maps both ways without hand-written code. Validation lives here:
every bound a spec must respect is declared once, and ``parse_model`` turns a pydantic
error into an ``InvalidArgumentError`` naming every field path and the bound it broke.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Self, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from arc_common.errors import InvalidArgumentError
from arc_common.paths import check_relative_path

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
SPLIT_TOLERANCE = 1e-6

WorkspacePath = Annotated[str, AfterValidator(check_relative_path)]


def _optional_path(value: str) -> str:
    return check_relative_path(value) if value else value


Identifier = Annotated[str, Field(pattern=ID_PATTERN)]


class _Spec(BaseModel):
    """Inputs: strict, immutable, finite numbers only."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class _Resource(BaseModel):
    """Outputs: what services report; metric values may be NaN (a diverged loss)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --- enums (values = proto names without prefix, lower-cased) ---------------------------


class ArchitectureFamily(StrEnum):
    RESNET = "resnet"
    EFFICIENTNET = "efficientnet"
    DENSENET = "densenet"
    MOBILENET = "mobilenet"
    CONVNEXT = "convnext"
    VIT = "vit"
    REGNET = "regnet"
    VGG = "vgg"
    SWIN = "swin"


class OptimizerType(StrEnum):
    ADAM = "adam"
    ADAMW = "adamw"
    SGD = "sgd"


class LrScheduleType(StrEnum):
    NONE = "none"
    STEP = "step"
    COSINE = "cosine"


class DatasetType(StrEnum):
    IMAGE_FOLDER = "image_folder"
    SPLIT_FOLDERS = "split_folders"


class PreprocessingStepType(StrEnum):
    RESIZE = "resize"
    CENTER_CROP = "center_crop"
    NORMALIZE = "normalize"
    CLAHE = "clahe"
    GREEN_CHANNEL = "green_channel"
    HORIZONTAL_FLIP = "horizontal_flip"
    VERTICAL_FLIP = "vertical_flip"
    ROTATION = "rotation"
    COLOR_JITTER = "color_jitter"
    RANDOM_RESIZED_CROP = "random_resized_crop"


class NoveltyClass(StrEnum):
    EXPLOIT = "exploit"
    EXPLORE = "explore"
    WILDCAT = "wildcat"


class GpuPreference(StrEnum):
    AUTO = "auto"
    SPECIFIC = "specific"


class MetricMode(StrEnum):
    MAX = "max"
    MIN = "min"


class JobState(StrEnum):
    QUEUED = "queued"
    STARTING = "starting"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    PRUNED = "pruned"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset(
    {
        JobState.COMPLETED,
        JobState.FAILED,
        JobState.CANCELLED,
        JobState.TIMED_OUT,
        JobState.PRUNED,
    }
)


class CheckpointKind(StrEnum):
    BEST = "best"
    LAST = "last"


class GpuBackend(StrEnum):
    NVML = "nvml"
    SIMULATED = "simulated"


class Tool(StrEnum):
    RUN_TRAINING_JOB = "run_training_job"
    RUN_EVALUATION_JOB = "run_evaluation_job"
    PREPROCESS_DATASET = "preprocess_dataset"
    MANAGE_CHECKPOINTS = "manage_checkpoints"
    GENERATE_VISUALIZATIONS = "generate_visualizations"
    SYNC_DATASETS = "sync_datasets"
    APPLY_CODE_PATCH = "apply_code_patch"


class Mode(StrEnum):
    AUTONOMOUS = "autonomous"
    SUPERVISED = "supervised"
    LOCKED = "locked"


class RunEndCause(StrEnum):
    """Why a run ended (arc.common.v1.RunEndCause): what retries are decided on."""

    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    PRUNED = "pruned"
    LOST_LEASE = "lost_lease"
    EXECUTOR_SHUTDOWN = "executor_shutdown"
    TIMED_OUT = "timed_out"
    OOM = "oom"
    CRASHED = "crashed"


class ViolationKind(StrEnum):
    POLICY = "policy"
    MALFORMED = "malformed"
    QUOTA = "quota"
    BUDGET = "budget"


class DecisionOutcome(StrEnum):
    ALLOWED = "allowed"
    DENIED = "denied"
    PENDING_APPROVAL = "pending_approval"


class TransactionState(StrEnum):
    OPEN = "open"
    COMMITTED = "committed"
    ROLLED_BACK = "rolled_back"


class PendingRequestState(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"


# --- the experiment spec -----------------------------------------------------------------


class ArchitectureSpec(_Spec):
    family: ArchitectureFamily
    variant: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{1,63}$")]
    pretrained: bool = False
    num_classes: Annotated[int, Field(ge=2, le=10_000)] = 2
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0

    @model_validator(mode="after")
    def _variant_matches_family(self) -> Self:
        if not self.variant.startswith(self.family.value):
            raise ValueError(
                f"variant {self.variant!r} is not a {self.family.value} model "
                f"(expected a name starting with {self.family.value!r}, e.g. "
                f"{_EXAMPLE_VARIANT[self.family]!r})"
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


class DatasetSpec(_Spec):
    dataset_id: Identifier
    dataset_type: DatasetType = DatasetType.IMAGE_FOLDER
    data_path: WorkspacePath
    train_split: Annotated[float, Field(gt=0.0, le=1.0)] = 0.8
    val_split: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    test_split: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    image_size: Annotated[int, Field(ge=16, le=4096)] = 224
    dvc_revision: Annotated[str, Field(max_length=256)] = ""

    @model_validator(mode="after")
    def _splits_sum_to_one(self) -> Self:
        total = self.train_split + self.val_split + self.test_split
        if not math.isclose(total, 1.0, abs_tol=SPLIT_TOLERANCE):
            raise ValueError(
                f"train_split + val_split + test_split must sum to 1 (got {total:g}: "
                f"{self.train_split:g} + {self.val_split:g} + {self.test_split:g})"
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


# --- results -------------------------------------------------------------------------------


class MetricResult(_Resource):
    name: str
    value: float = 0.0
    step: int = 0
    epoch: int = 0
    split: str = ""
    time: datetime | None = None


class PackedMetrics(_Resource):
    """Metrics that travel together, kept as one serialized ``arc.common.v1.MetricBatch``
    from the trainer to the WatchJob client, so that no service looks at them one by one
    (``arc_common.packed`` packs and opens them). ``count`` is how many it holds."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, ser_json_bytes="base64", val_json_bytes="base64"
    )

    count: Annotated[int, Field(ge=0)] = 0
    data: bytes = b""


class CheckpointInfo(_Resource):
    path: str
    epoch: int = 0
    size_bytes: int = 0
    create_time: datetime | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    kind: CheckpointKind | None = None
    sha256: str = ""


class ExperimentResult(_Resource):
    experiment_id: str = ""
    job_id: str = ""
    state: JobState | None = None
    metrics: list[MetricResult] = Field(default_factory=list)
    best_metrics: dict[str, float] = Field(default_factory=dict)
    checkpoints: list[CheckpointInfo] = Field(default_factory=list)
    error_message: str = ""
    duration_seconds: float = 0.0


# --- GPUs and leases -------------------------------------------------------------------------


class GpuProcess(_Resource):
    pid: int = 0
    used_memory_bytes: int = 0


class Gpu(_Resource):
    index: int = 0
    uuid: str = ""
    name: str = ""
    memory_total_bytes: int = 0
    memory_used_bytes: int = 0
    memory_free_bytes: int = 0
    utilization_percent: float = 0.0
    temperature_celsius: float = 0.0
    power_watts: float = 0.0
    reserved: bool = False
    lease_holder: str = ""
    lease_id: str = ""
    lease_expire_time: datetime | None = None
    processes: list[GpuProcess] = Field(default_factory=list)
    backend: GpuBackend | None = None
    node: str = ""


class Lease(_Resource):
    lease_id: str
    job_id: str = ""
    gpu_indices: list[int] = Field(default_factory=list)
    fencing_token: int = 0
    expire_time: datetime | None = None
    create_time: datetime | None = None
    node: str = ""


# --- governance -------------------------------------------------------------------------------


class Violation(_Resource):
    field: str
    constraint: str
    actual: str = ""
    suggested: str = ""
    kind: ViolationKind | None = None


class Decision(_Resource):
    outcome: DecisionOutcome | None = None
    allowed: bool = False
    violations: list[Violation] = Field(default_factory=list)
    requires_approval: bool = False
    pending_request_id: str = ""
    policy_version: str = ""
    reason: str = ""
    audit_sequence: int = 0


class Transaction(_Resource):
    transaction_id: str
    tool: Tool | None = None
    paths: list[str] = Field(default_factory=list)
    state: TransactionState | None = None
    caller: str = ""
    create_time: datetime | None = None
    expire_time: datetime | None = None


class PendingRequest(_Resource):
    pending_request_id: str
    caller: str = ""
    tool: Tool | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    state: PendingRequestState | None = None
    create_time: datetime | None = None
    expire_time: datetime | None = None
    decided_by: str = ""
    reason: str = ""


class AuditRecord(_Resource):
    sequence: int
    time: datetime | None = None
    caller: str = ""
    tool: Tool | None = None
    parameters_digest: str = ""
    decision: DecisionOutcome | None = None
    outcome: str = ""
    previous_hash: str = ""
    hash: str = ""
    policy_version: str = ""
    action: str = ""
    detail: str = ""


# --- scheduler --------------------------------------------------------------------------------


class Job(_Resource):
    job_id: str
    experiment_id: str = ""
    state: JobState | None = None
    priority: int = 0
    attempt: int = 0
    max_retries: int = 0
    pending_reason: str = ""
    queue_position: int = 0
    create_time: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    result: ExperimentResult | None = None
    gpu_indices: list[int] = Field(default_factory=list)
    node: str = ""
    run_id: str = ""
    timeout_seconds: int = 0
    error_message: str = ""
    submitted_by: str = ""


class JobStateChange(_Resource):
    previous_state: JobState | None = None
    state: JobState | None = None
    reason: str = ""
    attempt: int = 0


class JobEvent(_Resource):
    """One numbered event of a job; exactly one payload field is set."""

    sequence: int = 0
    job_id: str = ""
    time: datetime | None = None
    state_change: JobStateChange | None = None
    metric: MetricResult | None = None
    checkpoint: CheckpointInfo | None = None
    result: ExperimentResult | None = None
    source_sequence: int = 0
    # A batch of metrics stored as one event; it holds the numbers
    # ``sequence - metrics.count + 1`` through ``sequence``.
    metrics: PackedMetrics | None = None


def metric_count(event: JobEvent | RunEvent) -> int:
    """How many numbers a job event holds, and what a run event weighs in memory: a metric
    batch its length (never below 1), any other event 1."""
    return max(event.metrics.count, 1) if event.metrics is not None else 1


def acted_on(event: RunEvent) -> bool:
    """Whether the scheduler acts on the run event as soon as it is there (a state change,
    GPUs given back, a checkpoint, a result), unlike the metrics and log lines that come by
    the thousand: the executor's event log commits it at once, not at its next interval
    (the GPUs a run gives back go to the next job that much sooner)."""
    return event.metrics is None and event.log is None


class EvaluationJob(_Spec):
    checkpoint_path: WorkspacePath
    data_path: WorkspacePath
    split: Annotated[str, Field(pattern=r"^(train|val|test)?$")] = "test"
    bootstrap_samples: Annotated[int, Field(ge=0, le=10_000)] = 1000


class Experiment(_Resource):
    spec: ExperimentSpec
    state: JobState | None = None
    create_time: datetime | None = None
    results: list[ExperimentResult] = Field(default_factory=list)
    content_hash: str = ""
    job_ids: list[str] = Field(default_factory=list)


class SchedulerStatus(_Resource):
    queue_length: int = 0
    running_jobs: int = 0
    available_gpus: int = 0
    gpus: list[Gpu] = Field(default_factory=list)
    queued_jobs: list[Job] = Field(default_factory=list)
    down_nodes: list[str] = Field(default_factory=list)


# --- executor runs ----------------------------------------------------------------------------


class StateChange(_Resource):
    previous_state: JobState | None = None
    state: JobState | None = None
    reason: str = ""
    cause: RunEndCause | None = None


class LogExcerpt(_Resource):
    stream: str = ""
    lines: list[str] = Field(default_factory=list)


class DevicesReleased(_Resource):
    gpu_indices: list[int] = Field(default_factory=list)


class RunEvent(_Resource):
    """One numbered event of a run; exactly one payload field is set."""

    sequence: int = 0
    run_id: str = ""
    time: datetime | None = None
    state_change: StateChange | None = None
    metrics: PackedMetrics | None = None
    checkpoint: CheckpointInfo | None = None
    log: LogExcerpt | None = None
    result: ExperimentResult | None = None
    devices_released: DevicesReleased | None = None


class Run(_Resource):
    run_id: str
    job_id: str = ""
    state: JobState | None = None
    config: TrainingJobConfig | None = None
    lease: Lease | None = None
    pid: int = 0
    create_time: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    result: ExperimentResult | None = None
    error_message: str = ""
    last_sequence: int = 0
    end_cause: RunEndCause | None = None


# --- validation helpers -------------------------------------------------------------------------


_CTX_BOUND = re.compile(r"^(gt|ge|lt|le|min_length|max_length|pattern)$")


def describe_errors(exc: ValidationError, *, prefix: str = "") -> list[tuple[str, str]]:
    """Every problem as (dotted field path, message with the bound and the value given)."""
    problems: list[tuple[str, str]] = []
    for err in exc.errors(include_url=False):
        path = ".".join(str(part) for part in err["loc"])
        if prefix:
            path = f"{prefix}.{path}" if path else prefix
        message = err["msg"].removeprefix("Value error, ")
        bounds = {k: v for k, v in (err.get("ctx") or {}).items() if _CTX_BOUND.match(k)}
        if err["type"] not in {"value_error", "missing"} and "input" in err:
            shown = repr(err["input"])
            if len(shown) > 80:
                shown = shown[:77] + "..."
            message = f"{message} (got {shown})"
        elif bounds and "input" in err:
            message = f"{message} (got {err['input']!r})"
        problems.append((path or "(request)", message))
    return problems


def invalid_argument(exc: ValidationError, *, prefix: str = "") -> InvalidArgumentError:
    """One InvalidArgumentError that lists every field problem, first field named."""
    problems = describe_errors(exc, prefix=prefix)
    text = "; ".join(f"{path}: {message}" for path, message in problems)
    return InvalidArgumentError(
        text, field=problems[0][0] if problems else None, violations=problems
    )


M = TypeVar("M", bound=BaseModel)


def parse_model(cls: type[M], data: Any, *, prefix: str = "") -> M:
    """Validate ``data`` into ``cls``; raise InvalidArgumentError naming every bad field."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise invalid_argument(exc, prefix=prefix) from None
