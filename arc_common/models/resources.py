"""Outputs: what the services report (results, GPUs and leases, governance records, jobs,
runs and their events)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
)

from arc_common.models._base import _Resource
from arc_common.models.enums import (
    CheckpointKind,
    DecisionOutcome,
    FailureClass,
    GpuBackend,
    JobState,
    MetricMode,
    PendingRequestState,
    RunEndCause,
    Tool,
    TransactionState,
    ViolationKind,
)
from arc_common.models.evaluation import Provenance, SplitEvaluation
from arc_common.models.specs import ExperimentSpec, TrainingJobConfig

# --- results -------------------------------------------------------------------------------


def _known(enum: type[StrEnum]) -> BeforeValidator:
    """A value of ``enum`` this side does not know (a newer peer's, which convert gives as
    ``unknown_N``) reads as unset: the reader treats it as it treats an older peer's."""

    def check(value: Any) -> Any:
        if isinstance(value, str) and value not in enum._value2member_map_:
            return None
        return value

    return BeforeValidator(check)


class Failure(_Resource):
    """Why a run or a job failed, by class (see the proto)."""

    failure_class: Annotated[FailureClass | None, _known(FailureClass)] = None
    summary: str = ""
    exception_type: str = ""
    message: str = ""
    file: str = ""
    line: int = 0
    stderr_tail: str = ""


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
    evaluations: list[SplitEvaluation] = Field(default_factory=list)
    provenance: Provenance | None = None
    kind: str = ""
    selected_by: str = ""
    selected_mode: MetricMode | None = None
    test_sealed: bool = False

    def evaluation(self, split: str) -> SplitEvaluation | None:
        return next((e for e in self.evaluations if e.split == split), None)


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
    kind: Annotated[ViolationKind | None, _known(ViolationKind)] = None


class Decision(_Resource):
    outcome: DecisionOutcome | None = None
    allowed: bool = False
    violations: list[Violation] = Field(default_factory=list)
    requires_approval: bool = False
    pending_request_id: str = ""
    policy_version: str = ""
    reason: str = ""
    audit_sequence: int = 0
    sealed_test_datasets: list[str] = Field(default_factory=list)


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
    failure: Failure | None = None


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


class Experiment(_Resource):
    spec: ExperimentSpec
    state: JobState | None = None
    create_time: datetime | None = None
    results: list[ExperimentResult] = Field(default_factory=list)
    content_hash: str = ""
    job_ids: list[str] = Field(default_factory=list)
    test_revealed_by: str = ""
    test_reveal_time: datetime | None = None
    test_reveal_reason: str = ""


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
    cause: Annotated[RunEndCause | None, _known(RunEndCause)] = None
    failure: Failure | None = None


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
    end_cause: Annotated[RunEndCause | None, _known(RunEndCause)] = None
    failure: Failure | None = None
