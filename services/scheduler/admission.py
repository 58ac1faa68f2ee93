"""Admission: a submission's checks, governance's decision, request ids, and the commit
that makes its jobs (and any new experiment) durable before anyone hears of them."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from arc_common.errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
)
from arc_common.models import DecisionOutcome, ExperimentSpec, JobState, JobStateChange
from services.scheduler import feasibility, sources
from services.scheduler.checks import GovernanceGate
from services.scheduler.context import Context
from services.scheduler.jobs import RequestKey, content_hash
from services.scheduler.kinds import JobKind
from services.scheduler.lifecycle import Lifecycle, now
from services.scheduler.seals import Seal, seal
from services.scheduler.store import JobRecord, Write

# Ids and free text a caller sends are stored and echoed: longer ones are refused.
MAX_ID_LENGTH = 256
MAX_REASON_LENGTH = 1000
MAX_TIMEOUT_SECONDS = 7 * 24 * 3600


def check_length(value: str, field: str, limit: int = MAX_ID_LENGTH) -> None:
    if len(value) > limit:
        raise InvalidArgumentError(
            f"{field} is at most {limit} characters (got {len(value)})", field=field
        )


def reused(field: str, request_id: str, what: str) -> AlreadyExistsError:
    return AlreadyExistsError(
        f"{field} {request_id!r} was already used for another request ({what}); a retry "
        "must send the same body, a new request a new id",
        field=field,
    )


@dataclass(frozen=True)
class Submission:
    spec: ExperimentSpec | None
    experiment_id: str = ""
    priority: int | None = None
    max_retries: int = 0
    timeout_seconds: int = 0
    request_id: str = ""
    # The job's kind (services.scheduler.kinds) and what it needs beyond the spec.
    kind: str = "training"
    payload: dict[str, Any] = field(default_factory=dict)
    # Digest of the request's body without its request id (arc_common.digest).
    request_digest: str = ""
    # Set for an item of a SubmitJobs batch without an id of its own: request_id is then
    # the batch's, and this its index (a key no caller-chosen id can equal).
    batch_index: int = -1
    request_field: str = "request_id"  # what an error about the id names
    # Submitted by a sweep's driver: its experiment id may be a TRIAL_ID.
    sweep_trial: bool = False


# Experiment ids of sweeps' trials ("sweep-<16 hex>-t<n>", "-<arm>-s<seed>"): no one
# else may take one first, or a trial would find its name held by another spec and fail.
TRIAL_ID = re.compile(r"sweep-[0-9a-f]{16}-")


def check_not_a_trial_id(experiment_id: str, field: str) -> None:
    if TRIAL_ID.match(experiment_id):
        raise InvalidArgumentError(
            f"{field}: ids of the form sweep-<16 hex digits>-... are sweeps' trials'; "
            "choose another",
            field=field,
        )


@dataclass(frozen=True)
class Checked:
    """A submission that passed its checks: its kind, spec and parsed payload."""

    submission: Submission
    kind: JobKind
    spec: ExperimentSpec
    payload: dict[str, Any]


@dataclass
class _Reservation:
    """What one submit call reserved in memory before its commit (undone if it fails)."""

    jobs: list[JobRecord] = field(default_factory=list)
    experiments: list[tuple[ExperimentSpec, str]] = field(default_factory=list)
    writes: list[Write] = field(default_factory=list)


class Admission:
    def __init__(
        self,
        ctx: Context,
        lifecycle: Lifecycle,
        gate: GovernanceGate,
        *,
        on_new_experiment: Callable[[ExperimentSpec], object],
    ) -> None:
        self._ctx = ctx
        self._life = lifecycle
        self._gate = gate
        # A new experiment's convenience copy on disk (the database has the truth).
        self._on_new_experiment = on_new_experiment
        # Request key -> (body digest, the job being committed under it).
        self._inflight: dict[RequestKey, tuple[str, asyncio.Future[JobRecord]]] = {}
        self._datasets = feasibility.DatasetCheck(ctx.nodes, ctx.clock)

    @staticmethod
    def _key(submission: Submission, caller: str) -> RequestKey | None:
        if not submission.request_id:
            return None
        return (caller, submission.request_id, submission.batch_index)

    def _existing(self, submission: Submission, caller: str) -> JobRecord | None:
        """The job an earlier request of this caller under the same id made; the same id
        with another body is ALREADY_EXISTS (a job stored without a digest, before ids
        were bound to bodies, is taken as the same)."""
        key = self._key(submission, caller)
        job = self._ctx.jobs.by_request(key) if key else None
        if job is not None and job.request_digest not in ("", submission.request_digest):
            raise reused(submission.request_field, submission.request_id, f"job {job.job_id}")
        return job

    def _resolve_spec(self, submission: Submission, index: str) -> ExperimentSpec:
        experiments = self._ctx.experiments
        if submission.spec is not None:
            spec = submission.spec
            if not submission.sweep_trial:
                check_not_a_trial_id(spec.experiment_id, f"{index}spec.experiment_id")
            known = experiments.get(spec.experiment_id)
            if known is not None and known[1] != content_hash(spec):
                raise AlreadyExistsError(
                    f"experiment {spec.experiment_id!r} exists with different content; "
                    "submit it by experiment_id or choose a new id",
                    field=f"{index}spec.experiment_id",
                )
            if known is not None and known[0].seal_test and not spec.seal_test:
                return spec.model_copy(update={"seal_test": True})  # a seal stays on
            return spec
        if not submission.experiment_id:
            raise InvalidArgumentError(
                "give experiment_id (a stored experiment) or spec", field=f"{index}experiment_id"
            )
        known = experiments.get(submission.experiment_id)
        if known is None:
            raise NotFoundError(
                f"no experiment {submission.experiment_id!r}; create it first or send its spec",
                field=f"{index}experiment_id",
            )
        return known[0]

    def _check(self, submission: Submission, index: str = "") -> Checked:
        check_length(submission.request_id, submission.request_field)
        check_length(submission.experiment_id, f"{index}experiment_id")
        if submission.priority is not None and not 0 <= submission.priority <= 10:
            raise InvalidArgumentError(
                f"priority must be between 0 and 10 (got {submission.priority})",
                field=f"{index}priority",
            )
        if not 0 <= submission.max_retries <= 10:
            raise InvalidArgumentError(
                f"max_retries must be between 0 and 10 (got {submission.max_retries})",
                field=f"{index}max_retries",
            )
        if not 0 <= submission.timeout_seconds <= MAX_TIMEOUT_SECONDS:
            raise InvalidArgumentError(
                f"timeout_seconds must be between 0 and {MAX_TIMEOUT_SECONDS} "
                f"(got {submission.timeout_seconds})",
                field=f"{index}timeout_seconds",
            )
        kind = self._ctx.kinds.get(submission.kind, field=f"{index}kind")
        payload = kind.parse(submission.payload, field=f"{index}{kind.name}")
        return Checked(submission, kind, self._resolve_spec(submission, index), payload)

    async def _sealed(
        self, item: Checked, sealed: list[str], *, caller: str, trusted: bool, index: str
    ) -> Seal:
        """The submission under the policy's sealed test splits; a refusal is audited."""
        try:
            return seal(
                item.kind.name, item.spec, item.payload, sealed, trusted=trusted, prefix=index
            )
        except PermissionDeniedError as exc:
            parameters, _ = item.kind.governance_request(item.spec, item.payload)
            await self._gate.audit_invalid(item.kind.tool, parameters, str(exc), caller=caller)
            raise

    async def _with_source(self, submission: Submission, index: str) -> Submission:
        """A training spec's init_from as a checkpoint path, and a code-defined one's
        revision as a commit, before anything compares or stores it (both are part of
        what the experiment is)."""
        spec = submission.spec
        if spec is None or submission.kind != "training":
            return submission
        check_length(submission.request_id, submission.request_field)
        ctx = self._ctx
        spec = sources.resolve_init(ctx.jobs, ctx.experiments, spec, prefix=index)
        if spec.source is not None:
            spec = await sources.resolve(ctx.nodes, spec, prefix=index)
        return dataclasses.replace(submission, spec=spec)

    async def _feasible(self, item: Checked, where: str) -> None:
        """What only the machines know (its GPUs, its dataset); after the seal checks, so
        that a sealed folder is refused as such and never looked into."""
        if item.kind.name != "training":
            return
        feasibility.check_gpus(self._ctx.nodes, item.spec, prefix=f"{where}spec.")
        await self._datasets.check(item.spec, self._gate.sealed, prefix=f"{where}spec.")

    def _new_job(
        self, item: Checked, job_id: str, caller: str, pending: bool, sealing: Seal
    ) -> JobRecord:
        submission, spec = item.submission, sealing.spec
        return JobRecord(
            job_id=job_id,
            seq=self._ctx.jobs.next_seq(),
            experiment_id=spec.experiment_id,
            spec=spec,
            caller=caller,
            request_id=submission.request_id,
            request_digest=submission.request_digest,
            batch_index=submission.batch_index,
            priority=submission.priority
            if submission.priority is not None
            else spec.effective_priority,
            max_retries=submission.max_retries,
            timeout_seconds=submission.timeout_seconds or spec.max_training_time_seconds,
            create_time=now(),
            approval=f"job:{job_id}" if pending else "",
            kind=item.kind.name,
            payload=item.payload,
            test_sealed=sealing.test_sealed,
            sealed_test_datasets=sealing.sealed_test_datasets,
            submitted_by_operator=sealing.trusted,
        )

    async def submit(
        self, submissions: list[Submission], *, caller: str, trusted: bool = False
    ) -> list[JobRecord]:
        """All-or-nothing: every submission is checked before any job is created.
        ``trusted``: an operator's, which no sealed test split refuses."""
        ctx = self._ctx
        prefix = len(submissions) > 1
        # A request id reused with another body is refused before anything else is read.
        existing = [self._existing(s, caller) for s in submissions]
        if all(e is not None for e in existing):
            return [e for e in existing if e is not None]
        submissions = [
            await self._with_source(s, f"jobs[{i}]." if prefix else "") if e is None else s
            for i, (s, e) in enumerate(zip(submissions, existing, strict=True))
        ]
        items = [self._check(s, f"jobs[{i}]." if prefix else "") for i, s in enumerate(submissions)]
        for index, (item, earlier) in enumerate(zip(items, existing, strict=True)):
            if earlier is None:  # the seal as last known, before governance counts anything
                where = f"jobs[{index}]." if prefix else ""
                early = await self._sealed(
                    item, self._gate.sealed, caller=caller, trusted=trusted, index=where
                )
                sources.refuse_sealed(early.spec, trusted=trusted, prefix=where)
                await self._feasible(item, where)
        for item, earlier in zip(items, existing, strict=True):
            if earlier is None and prefix and item.kind.checked_before_batch:
                await self._gate.check(
                    item.kind, item.spec, item.payload, caller=caller, dry_run=True
                )
        results: list[JobRecord | None] = [None] * len(submissions)
        waits: dict[int, asyncio.Future[JobRecord]] = {}
        made = _Reservation()
        loop = asyncio.get_running_loop()
        # A refusal part way (a governance denial, an id in flight with another body) or a
        # failed commit undoes what this call reserved in memory.
        try:
            for index, (item, earlier) in enumerate(zip(items, existing, strict=True)):
                if earlier is not None:
                    results[index] = earlier
                    continue
                submission, spec = item.submission, item.spec
                job_id = f"job-{uuid.uuid4().hex[:12]}"
                decision = await self._gate.check(
                    item.kind,
                    spec,
                    item.payload,
                    caller=caller,
                    dry_run=False,
                    request_id=f"job:{job_id}",
                )
                sealing = await self._sealed(
                    item,
                    decision.sealed_test_datasets,
                    caller=caller,
                    trusted=trusted,
                    index=f"jobs[{index}]." if prefix else "",
                )
                spec = sealing.spec
                sources.refuse_sealed(
                    spec, trusted=trusted, prefix=f"jobs[{index}]." if prefix else ""
                )
                # From here to the commit nothing awaits: the request id and the experiment
                # id are reserved in memory, so concurrent submissions need no lock and
                # their writes share one group commit.
                again = self._existing(submission, caller)
                if again is not None:  # a concurrent retry got here first
                    results[index] = again
                    continue
                key = self._key(submission, caller)
                inflight = self._inflight.get(key) if key else None
                if inflight is not None:  # ... and is being committed right now
                    if inflight[0] != submission.request_digest:
                        raise reused(submission.request_field, submission.request_id, "in flight")
                    waits[index] = inflight[1]
                    continue
                if spec.experiment_id not in ctx.experiments:
                    digest = content_hash(spec)
                    created_at = now()
                    ctx.experiments.remember(spec, digest, created_at)
                    made.writes.append(ctx.store.put_experiment(spec, digest, created_at))
                    made.experiments.append((spec, digest))
                pending = decision.outcome is DecisionOutcome.PENDING_APPROVAL
                job = self._new_job(item, job_id, caller, pending, sealing)
                made.writes.append(ctx.store.put_job(job))
                made.jobs.append(job)
                results[index] = job
                if key:
                    self._inflight[key] = (submission.request_digest, loop.create_future())
            if made.writes:
                await ctx.store.write(*made.writes)  # committed before anyone hears of them
        except BaseException as exc:
            self._undo(made, caller, exc)
            raise
        self._publish(made, caller)
        for index, future in waits.items():
            results[index] = await future
        return [job for job in results if job is not None]

    def _undo(self, made: _Reservation, caller: str, exc: BaseException) -> None:
        for spec, digest in made.experiments:
            self._ctx.experiments.forget(spec.experiment_id, digest)
        for job in made.jobs:
            _, future = self._inflight.pop((caller, job.request_id, job.batch_index), ("", None))
            if future is not None:
                future.set_exception(exc)
                future.exception()  # retrieved: a concurrent retry may not be waiting

    def _publish(self, made: _Reservation, caller: str) -> None:
        """The committed jobs join the indexes and the queue, and their first event."""
        ctx = self._ctx
        for job in made.jobs:
            ctx.jobs.add(job)
            self._life.enqueue(job)
            ctx.event(
                job,
                state_change=JobStateChange(
                    state=JobState.QUEUED, reason=f"submitted by {caller}", attempt=1
                ),
            )
            _, future = self._inflight.pop((caller, job.request_id, job.batch_index), ("", None))
            if future is not None:
                future.set_result(job)
        for spec, _ in made.experiments:
            self._on_new_experiment(spec)
        ctx.wake.set()
