"""Kinds of job: what differs between a training job, an evaluation job and any later kind.

A kind says which governance tool checks its submissions and with what parameters, and how
it executes on a machine. There are two ways to execute:

- ``RunKind``: an executor run the scheduler follows (events, checkpoints, pruning, a
  trainer prepared ahead, re-attached after a scheduler restart);
- ``CallKind``: one awaited call that returns the result; redone after a restart (its
  request id makes the redo idempotent).

Adding a kind is one class registered with ``Scheduler.register_kind``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

from pydantic import ValidationError

from arc_common.errors import InvalidArgumentError
from arc_common.evaluation import flat_metrics
from arc_common.models import (
    EvaluationJob,
    ExperimentResult,
    ExperimentSpec,
    JobState,
    Lease,
    Tool,
    TrainingJobConfig,
)
from services.scheduler.ports import NodeClient
from services.scheduler.store import JobRecord


class JobKind(Protocol):
    name: str
    # Governance's tool for its submissions.
    tool: Tool
    # Every item of a SubmitJobs batch gets a dry-run check before any job is created.
    checked_before_batch: bool

    def parse(self, payload: dict[str, Any], *, field: str) -> dict[str, Any]:
        """The payload as stored; a bad one is InvalidArgumentError naming ``field``."""
        ...

    def governance_request(
        self, spec: ExperimentSpec, payload: dict[str, Any]
    ) -> tuple[dict[str, Any], int]:
        """The tool call's parameters and its cycle id (0: none)."""
        ...


@runtime_checkable
class RunKind(JobKind, Protocol):
    def run_config(self, job: JobRecord, gpu_ids: list[int]) -> TrainingJobConfig: ...


@runtime_checkable
class CallKind(JobKind, Protocol):
    async def execute(
        self, job: JobRecord, node: NodeClient, lease: Lease, *, request_id: str
    ) -> ExperimentResult:
        """The job's work on ``node`` under ``lease``; an ArcError fails the attempt."""
        ...


class TrainingKind:
    name = "training"
    tool = Tool.RUN_TRAINING_JOB
    checked_before_batch = True

    def parse(self, payload: dict[str, Any], *, field: str) -> dict[str, Any]:
        if payload:
            raise InvalidArgumentError("a training job takes no payload", field=field)
        return {}

    def governance_request(
        self, spec: ExperimentSpec, payload: dict[str, Any]
    ) -> tuple[dict[str, Any], int]:
        return spec.model_dump(mode="json"), spec.cycle_id

    def run_config(self, job: JobRecord, gpu_ids: list[int]) -> TrainingJobConfig:
        attempt_dir = f"runs/{job.job_id}/attempt-{job.attempt}"
        # A retry resumes from the last checkpoint of the attempt before (when intact).
        resume = (
            f"runs/{job.job_id}/attempt-{job.attempt - 1}/checkpoints/last.pt"
            if job.attempt > 1
            else ""
        )
        spec = job.spec
        if job.batch_halved:
            hyper = spec.hyperparameters
            halved = hyper.model_copy(update={"batch_size": max(1, hyper.batch_size // 2)})
            spec = spec.model_copy(update={"hyperparameters": halved})
        return TrainingJobConfig(
            job_id=job.job_id,
            experiment_spec=spec,
            gpu_ids=gpu_ids,
            checkpoint_dir=f"{attempt_dir}/checkpoints",
            log_dir=f"{attempt_dir}/logs",
            timeout_seconds=job.timeout_seconds,
            max_retries=job.max_retries,
            resume_from=resume,
            submitted_by=job.caller,
            sealed_test_datasets=job.sealed_test_datasets,
        )


class EvaluationKind:
    """A checkpoint evaluated by the executor's EvaluateCheckpoint on a leased GPU."""

    name = "evaluation"
    tool = Tool.RUN_EVALUATION_JOB
    checked_before_batch = False

    def parse(self, payload: dict[str, Any], *, field: str) -> dict[str, Any]:
        try:
            return EvaluationJob.model_validate(payload).model_dump(mode="json")
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(part) for part in error["loc"])
            named = f"{field}.{where}" if where else field
            raise InvalidArgumentError(error["msg"], field=named) from None

    def governance_request(
        self, spec: ExperimentSpec, payload: dict[str, Any]
    ) -> tuple[dict[str, Any], int]:
        return dict(payload), 0

    async def execute(
        self, job: JobRecord, node: NodeClient, lease: Lease, *, request_id: str
    ) -> ExperimentResult:
        evaluation = EvaluationJob.model_validate(job.payload)
        report, provenance = await node.evaluate(
            evaluation,
            lease,
            request_id=request_id,
            seconds=job.timeout_seconds,
            operator_job=job.submitted_by_operator,
        )
        return ExperimentResult(
            experiment_id=job.experiment_id,
            job_id=job.job_id,
            state=JobState.COMPLETED,
            best_metrics=flat_metrics(report),
            evaluations=[report],
            provenance=provenance,
            kind=self.name,
        )


class KindRegistry:
    def __init__(self, *kinds: JobKind) -> None:
        self._kinds: dict[str, JobKind] = {}
        for kind in kinds:
            self.register(kind)

    def register(self, kind: JobKind) -> None:
        if not isinstance(kind, (RunKind, CallKind)):
            raise TypeError(f"job kind {kind.name!r} has neither run_config nor execute")
        self._kinds[kind.name] = kind

    def get(self, name: str, *, field: str = "kind") -> JobKind:
        kind = self._kinds.get(name)
        if kind is None:
            known = ", ".join(sorted(self._kinds))
            raise InvalidArgumentError(f"no job kind {name!r} (one of {known})", field=field)
        return kind

    def __contains__(self, name: object) -> bool:
        return name in self._kinds

    def of(self, job: JobRecord) -> JobKind:
        return self.get(job.kind)

    def __iter__(self) -> Iterator[JobKind]:
        return iter(self._kinds.values())


def default_kinds() -> KindRegistry:
    return KindRegistry(TrainingKind(), EvaluationKind())
