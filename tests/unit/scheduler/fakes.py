"""In-memory fakes of the scheduler's ports and a clock the test moves by hand.

``FakeNode`` is one machine: GPUs leased by count, runs that stay RUNNING until the test
ends them (``end``), events streamed as the real executor streams them. ``FakeGovernance``
answers every check with the outcome a test sets and records what it was asked.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from arc_common import packed
from arc_common.errors import (
    FailedPreconditionError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
)
from arc_common.models import (
    TERMINAL_STATES,
    ArchitectureSpec,
    CodeSource,
    DatasetSpec,
    Decision,
    DecisionOutcome,
    EvaluationJob,
    ExperimentResult,
    Failure,
    FailureClass,
    Gpu,
    GpuAllocation,
    GpuPreference,
    JobState,
    Lease,
    MetricResult,
    Provenance,
    Run,
    RunEndCause,
    RunEvent,
    SplitEvaluation,
    StateChange,
    Tool,
    TrainingJobConfig,
)


class FakeClock:
    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class FakeRun:
    run: Run
    request_id: str
    prepared: bool = False
    events: list[RunEvent] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    cancel_reasons: list[tuple[str, bool]] = field(default_factory=list)

    def update(self, **fields: Any) -> None:
        self.run = self.run.model_copy(update=fields)

    def emit(self, **payload: Any) -> None:
        self.events.append(
            RunEvent(sequence=len(self.events) + 1, run_id=self.run.run_id, **payload)
        )
        self.changed.set()


class FakeNode:
    _ids = itertools.count(1)

    def __init__(self, name: str = "local", gpus: int = 1) -> None:
        self.name = name
        self.gpu_count = gpus
        self.down = False
        self.leases: dict[str, Lease] = {}
        self._acquired: dict[str, Lease] = {}  # request id -> lease
        self.runs: dict[str, FakeRun] = {}
        self.started: list[TrainingJobConfig] = []  # in the order runs started
        self.prepared: list[TrainingJobConfig] = []
        self.evaluations: list[tuple[EvaluationJob, float]] = []
        self.missing_datasets: set[str] = set()
        self.report = SplitEvaluation(split="test", auc=0.75, accuracy=0.5)
        self.calls_started = asyncio.Event()

    # --- the port ----------------------------------------------------------------------

    def _answer(self) -> None:
        if self.down:
            raise UnavailableError(f"{self.name} is down")

    def _used(self) -> set[int]:
        return {i for lease in self.leases.values() for i in lease.gpu_indices}

    async def acquire(
        self, job_id: str, allocation: GpuAllocation, *, ttl_seconds: int, request_id: str
    ) -> Lease:
        self._answer()
        if request_id in self._acquired:
            return self._acquired[request_id]
        free = [i for i in range(self.gpu_count) if i not in self._used()]
        if allocation.preference is GpuPreference.SPECIFIC:
            wanted = list(allocation.gpu_indices)
            if not set(wanted) <= set(free):
                raise ResourceExhaustedError(f"GPUs {wanted} are not free")
        else:
            if len(free) < allocation.count:
                raise ResourceExhaustedError(f"{allocation.count} GPU(s) wanted, {len(free)} free")
            wanted = free[: allocation.count]
        lease = Lease(
            lease_id=f"lease-{next(self._ids)}",
            job_id=job_id,
            gpu_indices=wanted,
            fencing_token=1,
            node=self.name,
        )
        self.leases[lease.lease_id] = self._acquired[request_id] = lease
        return lease

    async def release(self, lease: Lease) -> None:
        self._answer()
        self.leases.pop(lease.lease_id, None)

    async def list_gpus(self) -> list[Gpu]:
        self._answer()
        holders = {i: lease.job_id for lease in self.leases.values() for i in lease.gpu_indices}
        return [
            Gpu(index=i, lease_holder=holders.get(i, ""), node=self.name)
            for i in range(self.gpu_count)
        ]

    def _new_run(self, config: TrainingJobConfig, request_id: str, *, prepared: bool) -> FakeRun:
        for existing in self.runs.values():
            if existing.request_id == request_id:
                return existing
        run = Run(run_id=f"run-{next(self._ids)}", job_id=config.job_id, config=config)
        fake = FakeRun(run, request_id, prepared=prepared)
        self.runs[run.run_id] = fake
        return fake

    def _begin(self, fake: FakeRun, lease: Lease) -> None:
        assert fake.run.config is not None
        fake.update(state=JobState.RUNNING, lease=lease)
        fake.prepared = False
        self.started.append(fake.run.config)
        fake.emit(state_change=StateChange(state=JobState.RUNNING, reason="training"))

    async def start_run(self, config: TrainingJobConfig, lease: Lease, *, request_id: str) -> Run:
        self._answer()
        fake = self._new_run(config, request_id, prepared=False)
        if fake.run.state is None:
            self._begin(fake, lease)
        return fake.run

    async def prepare_run(self, config: TrainingJobConfig, *, request_id: str) -> Run:
        self._answer()
        fake = self._new_run(config, request_id, prepared=True)
        if fake.run.state is None:
            fake.update(state=JobState.QUEUED)
            self.prepared.append(config)
        return fake.run

    async def activate_run(self, run_id: str, lease: Lease, *, request_id: str) -> Run:
        self._answer()
        fake = self._run(run_id)
        if fake.prepared:
            self._begin(fake, lease)
        return fake.run

    def _run(self, run_id: str) -> FakeRun:
        fake = self.runs.get(run_id)
        if fake is None:
            raise NotFoundError(f"no run {run_id}")
        return fake

    async def check_dataset(
        self, dataset: DatasetSpec, sealed: list[str], architecture: ArchitectureSpec
    ) -> None:
        """A dataset the test put in ``missing_datasets`` is not there."""
        self._answer()
        if dataset.data_path in self.missing_datasets:
            raise FailedPreconditionError(
                f"dataset.data_path {dataset.data_path!r} has no class folders",
                field="dataset.data_path",
            )

    async def resolve_source(self, source: CodeSource) -> CodeSource:
        """Every revision resolves, to a commit derived from its name."""
        self._answer()
        commit = hashlib.sha1(source.revision.encode()).hexdigest()
        return source.model_copy(update={"commit": commit, "tree": commit[::-1]})

    async def get_run(self, run_id: str) -> Run:
        self._answer()
        return self._run(run_id).run

    async def cancel_run(self, run_id: str, reason: str, *, prune: bool = False) -> Run:
        self._answer()
        fake = self._run(run_id)
        if fake.run.state in TERMINAL_STATES:
            raise FailedPreconditionError(f"run {run_id} already ended")
        fake.cancel_reasons.append((reason, prune))
        if prune:
            self._end(fake, JobState.PRUNED, RunEndCause.PRUNED, reason)
        else:
            self._end(fake, JobState.CANCELLED, RunEndCause.CANCELLED, reason)
        return fake.run

    async def events(self, run_id: str, after: int) -> AsyncIterator[RunEvent]:
        self._answer()
        fake = self._run(run_id)
        seen = after
        while True:
            fake.changed.clear()
            for event in fake.events[seen:]:
                seen = event.sequence
                yield event
            # Ended, and every event up to its end sent (more may have come while the
            # last one was being handled): as the executor's stream closes.
            if fake.run.state in TERMINAL_STATES and seen == len(fake.events):
                return
            if seen == len(fake.events):
                await fake.changed.wait()
            self._answer()

    async def evaluate(
        self,
        evaluation: EvaluationJob,
        lease: Lease,
        *,
        request_id: str,
        seconds: float,
        operator_job: bool = False,
    ) -> tuple[SplitEvaluation, Provenance]:
        self._answer()
        self.evaluations.append((evaluation, seconds))
        return self.report, Provenance(dataset_id=evaluation.dataset_id or "fake")

    # --- what a test does to runs --------------------------------------------------------

    def _end(
        self,
        fake: FakeRun,
        state: JobState,
        cause: RunEndCause,
        reason: str,
        failure: Failure | None = None,
    ) -> None:
        fake.update(state=state, end_cause=cause, error_message=reason, failure=failure)
        change = StateChange(state=state, reason=reason, cause=cause, failure=failure)
        fake.emit(state_change=change)

    def run_of(self, job_id: str) -> FakeRun:
        live = [f for f in self.runs.values() if f.run.job_id == job_id and not f.prepared]
        assert live, f"no run of {job_id} on {self.name}"
        return live[-1]

    def end(
        self,
        job_id: str,
        state: JobState = JobState.COMPLETED,
        cause: RunEndCause = RunEndCause.COMPLETED,
        reason: str = "",
        failure: FailureClass | None = None,
        *,
        metrics: dict[str, float] | None = None,
    ) -> None:
        fake = self.run_of(job_id)
        if state is JobState.COMPLETED:
            self._complete(fake, metrics or {"val_auc": 0.8}, cause, reason or state.value)
            return
        said = Failure(failure_class=failure, summary=reason) if failure else None
        self._end(fake, state, cause, reason or state.value, said)

    def _complete(
        self,
        fake: FakeRun,
        best_metrics: dict[str, float],
        cause: RunEndCause = RunEndCause.COMPLETED,
        reason: str = "completed",
    ) -> None:
        """The run completes with ``best_metrics`` as its result."""
        result = ExperimentResult(best_metrics=best_metrics)
        fake.update(result=result)  # GetRun tells it too, as the executor's does
        fake.emit(result=result)
        self._end(fake, JobState.COMPLETED, cause, reason)

    def metric(self, job_id: str, name: str, epoch: int, value: float) -> None:
        metric = MetricResult(name=name, value=value, epoch=epoch, split="val")
        self.run_of(job_id).emit(metrics=packed.pack([metric]))

    def started_jobs(self) -> list[str]:
        return [config.job_id for config in self.started]


class FakeGovernance:
    def __init__(self) -> None:
        self.outcome = DecisionOutcome.ALLOWED
        self.calls: list[tuple[Tool, dict[str, Any], bool, str]] = []

    async def validate(
        self,
        tool: Tool,
        parameters: dict[str, Any],
        *,
        dry_run: bool,
        request_id: str = "",
        on_behalf_of: str = "",
        cycle_id: int = 0,
        invalid_reason: str = "",
    ) -> Decision:
        self.calls.append((tool, parameters, dry_run, request_id))
        outcome = DecisionOutcome.DENIED if invalid_reason else self.outcome
        return Decision(
            outcome=outcome,
            allowed=outcome is DecisionOutcome.ALLOWED,
            reason="denied by the fake" if outcome is DecisionOutcome.DENIED else "",
            pending_request_id=request_id if outcome is DecisionOutcome.PENDING_APPROVAL else "",
        )
