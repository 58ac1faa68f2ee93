"""The scheduler's core: experiments, the priority queue, dispatch over many machines,
retries, cancellation, pruning and job events. No grpc here.

Queue order is priority (high first), then submission order; a job that cannot be placed
does not block smaller ones behind it from using a GPU that fits them (backfill). All
state changes go through ``_save``, which commits before anyone is told.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import itertools
import json
import logging
import math
import os
import statistics
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sortedcontainers import SortedList

from arc_common import packed
from arc_common.batch import Batcher
from arc_common.decisions import denial_error
from arc_common.errors import (
    AbortedError,
    AlreadyExistsError,
    ArcError,
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnavailableError,
)
from arc_common.eventlog import EventLog
from arc_common.models import (
    TERMINAL_STATES,
    CheckpointInfo,
    DecisionOutcome,
    EvaluationJob,
    Experiment,
    ExperimentResult,
    ExperimentSpec,
    Gpu,
    Job,
    JobEvent,
    JobState,
    JobStateChange,
    MetricMode,
    NoveltyClass,
    PackedMetrics,
    Run,
    RunEvent,
    SchedulerStatus,
    Tool,
    TrainingJobConfig,
)
from services.scheduler.remote import GovernanceClient, NodeClient
from services.scheduler.settings import SchedulerSettings
from services.scheduler.store import JobRecord, SchedulerStore, Write

logger = logging.getLogger(__name__)

Clock = Callable[[], float]
LOST_PREFIXES = ("lost:", "lease lost", "executor shut down")
# Ids and free text a caller sends are stored and echoed: longer ones are refused.
MAX_ID_LENGTH = 256
MAX_REASON_LENGTH = 1000
# (caller, request id, index in a SubmitJobs batch or -1): a caller's own id and the ids
# derived for a batch's items live apart, and another caller's id is another key.
RequestKey = tuple[str, str, int]


def check_length(value: str, field: str, limit: int = MAX_ID_LENGTH) -> None:
    if len(value) > limit:
        raise InvalidArgumentError(
            f"{field} is at most {limit} characters (got {len(value)})", field=field
        )


def _reused(field: str, request_id: str, what: str) -> AlreadyExistsError:
    return AlreadyExistsError(
        f"{field} {request_id!r} was already used for another request ({what}); a retry "
        "must send the same body, a new request a new id",
        field=field,
    )


def content_hash(spec: ExperimentSpec) -> str:
    """What decides the outcome of training, without names, priorities or placement."""
    content = spec.model_dump(
        mode="json",
        include={"architecture", "hyperparameters", "dataset", "preprocessing", "early_stopping"},
    )
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class NodeState:
    client: NodeClient
    up: bool = True
    down_since: float = 0.0
    gpus: list[Gpu] = field(default_factory=list)
    gpus_time: float = 0.0


@dataclass(frozen=True)
class Caller:
    """Who asks: the name in tokens.json and what its role may do."""

    name: str
    operator: bool = False
    service: bool = False


@dataclass(frozen=True)
class Submission:
    spec: ExperimentSpec | None
    experiment_id: str = ""
    priority: int | None = None
    max_retries: int = 0
    timeout_seconds: int = 0
    request_id: str = ""
    evaluation: EvaluationJob | None = None
    # Digest of the request's body without its request id (arc_common.digest).
    request_digest: str = ""
    # Set for an item of a SubmitJobs batch without an id of its own: request_id is then
    # the batch's, and this its index (a key no caller-chosen id can equal).
    batch_index: int = -1
    request_field: str = "request_id"  # what an error about the id names


def _queue_key(job: JobRecord) -> tuple[int, int, str]:
    return (-job.priority, job.seq, job.job_id)


def _shape(job: JobRecord) -> tuple[Any, ...]:
    allocation = job.spec.gpu_allocation
    return (
        allocation.preference,
        tuple(allocation.gpu_indices),
        allocation.count,
        allocation.min_free_memory_mib,
    )


class Scheduler:
    def __init__(
        self,
        settings: SchedulerSettings,
        *,
        store: SchedulerStore,
        events: EventLog[JobEvent],
        nodes: list[NodeClient],
        governance: GovernanceClient | None,
        clock: Clock = time.time,
    ) -> None:
        self.settings = settings
        self.home = settings.home
        self.store = store
        self.events = events
        self.governance = governance
        self._clock = clock
        self.nodes: dict[str, NodeState] = {n.name: NodeState(n) for n in nodes}
        self.jobs: dict[str, JobRecord] = {}
        self._by_request: dict[RequestKey, str] = {}
        # Request key -> (body digest, the job being committed under it).
        self._inflight: dict[RequestKey, tuple[str, asyncio.Future[JobRecord]]] = {}
        # (caller, method, request id) -> (body digest, what it made) for the requests
        # whose answer is not a job: CreateExperiment, CancelJob.
        self._requests: dict[tuple[str, str, str], tuple[str, str]] = {}
        self._spec_files = Batcher(self._write_spec_files, name="spec-files")
        self._queue: SortedList = SortedList()
        self._shapes: Counter[tuple[Any, ...]] = Counter()  # queued jobs per GPU request
        self._active: set[str] = set()  # STARTING or RUNNING
        self._prepared: dict[str, str] = {}  # queued job -> machine of its prepared run
        # Queued job -> when PrepareRun may be asked for it again (inf: it was refused).
        self._prepare_after: dict[str, float] = {}
        self._experiments: dict[str, tuple[ExperimentSpec, str, datetime]] = {}
        self._by_hash: dict[str, str] = {}
        self._experiment_jobs: dict[str, list[str]] = defaultdict(list)
        self._seq = 0
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._blocked: dict[tuple[Any, ...], str] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._finished: dict[str, asyncio.Event] = {}
        # cycle -> job -> epoch -> monitored value, for median pruning
        self._curves: dict[int, dict[str, dict[int, float]]] = defaultdict(dict)

    # --- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        """Load the state; the store must be open (the event log shares its database)."""
        await self.events.open()
        for spec, digest, created in await self.store.load_experiments():
            self._remember_experiment(spec, digest, created)
        self._requests = await self.store.load_requests()
        self._seq = await self.store.max_seq()
        resume: list[JobRecord] = []
        for job in await self.store.load_jobs():
            self._index(job)
            if job.prepared_run_id:
                self._prepared[job.job_id] = job.prepared_node
            if job.state is JobState.QUEUED:
                self._enqueue(job)
            elif job.state in (JobState.STARTING, JobState.RUNNING):
                resume.append(job)
        for job in resume:
            last = await self.events.read_last(job.job_id)
            if last is not None:
                job.run_sequence = max(job.run_sequence, last.source_sequence)
            if job.evaluation is not None:  # cheap to redo; the request id dedupes it
                self._tasks.append(
                    asyncio.create_task(
                        self._requeue(job, "scheduler restarted during the evaluation")
                    )
                )
            elif job.run_id:
                self._watch(job)
            else:
                # The lease may or may not have been granted: the request ids make the
                # launch idempotent, so simply drive it again.
                self._tasks.append(asyncio.create_task(self._relaunch(job)))
        logger.info(
            "scheduler state loaded: %d jobs (%d queued, %d re-attached), %d experiments",
            len(self.jobs),
            len(self._queue),
            len(resume),
            len(self._experiments),
        )
        self._tasks += [
            asyncio.create_task(self._dispatch_loop(), name="dispatch"),
            asyncio.create_task(self._probe_loop(), name="node-probe"),
        ]
        self._wake.set()

    async def close(self) -> None:
        for task in [*self._tasks, *self._watchers.values()]:
            task.cancel()
        for task in [*self._tasks, *self._watchers.values()]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._spec_files.close()
        await self.events.close()
        await self.store.close()

    def _track(self, job: JobRecord) -> None:
        """The running set and the queued shapes follow every change of state."""
        if job.state in (JobState.RUNNING, JobState.STARTING):
            self._active.add(job.job_id)
        else:
            self._active.discard(job.job_id)

    def _enqueue(self, job: JobRecord) -> None:
        key = _queue_key(job)
        if key not in self._queue:
            self._queue.add(key)
            self._shapes[_shape(job)] += 1

    def _dequeue(self, job: JobRecord) -> None:
        self._prepare_after.pop(job.job_id, None)
        key = _queue_key(job)
        if key in self._queue:
            self._queue.remove(key)
            shape = _shape(job)
            self._shapes[shape] -= 1
            if not self._shapes[shape]:
                del self._shapes[shape]

    def _in_order(self, chunk: int = 64) -> Iterator[tuple[int, int, str]]:
        """The queue in dispatch order, read a chunk at a time after the last key seen, so
        jobs may come and go while a pass awaits."""
        last: tuple[int, int, str] | None = None
        while True:
            keys = (
                self._queue.islice(0, chunk)
                if last is None
                else itertools.islice(
                    self._queue.irange(minimum=last, inclusive=(False, True)), chunk
                )
            )
            batch = list(keys)
            if not batch:
                return
            yield from batch
            last = batch[-1]

    def _index(self, job: JobRecord) -> None:
        self.jobs[job.job_id] = job
        self._track(job)
        self._seq = max(self._seq, job.seq)
        if job.request_id:
            self._by_request[(job.caller, job.request_id, job.batch_index)] = job.job_id
        self._experiment_jobs[job.experiment_id].append(job.job_id)
        self._finished.setdefault(job.job_id, asyncio.Event())
        if job.state in TERMINAL_STATES:
            self._finished[job.job_id].set()

    def _remember_experiment(self, spec: ExperimentSpec, digest: str, created: datetime) -> None:
        self._experiments[spec.experiment_id] = (spec, digest, created)
        self._by_hash.setdefault(digest, spec.experiment_id)

    def _forget_experiment(self, experiment_id: str, digest: str) -> None:
        self._experiments.pop(experiment_id, None)
        if self._by_hash.get(digest) == experiment_id:
            del self._by_hash[digest]

    # --- persistence and events ---------------------------------------------------------------

    async def _save(self, *jobs: JobRecord, also: list[Write] | None = None) -> None:
        await self.store.write(*(self.store.put_job(job) for job in jobs), *(also or []))

    def _event(self, job: JobRecord, **payload: Any) -> None:
        self.events.append(job.job_id, **payload)

    async def _set_state(
        self,
        job: JobRecord,
        state: JobState,
        reason: str,
        *,
        also: list[Write] | None = None,
        **updates: Any,
    ) -> None:
        previous = job.state
        job.state = state
        for key, value in updates.items():
            setattr(job, key, value)
        self._track(job)
        if state in TERMINAL_STATES:
            job.end_time = _now()
            self._dequeue(job)
            if job.prepared_run_id:  # ended while queued: its prepared run goes too
                await self._drop_prepared(job)
        await self._save(job, also=also)
        self._event(
            job,
            state_change=JobStateChange(
                previous_state=previous, state=state, reason=reason, attempt=job.attempt
            ),
        )
        if state in TERMINAL_STATES:
            self._finished[job.job_id].set()
            self._wake.set()

    async def write_jsonl(self, events: list[JobEvent]) -> None:
        """Mirror every state change to scheduler_events.jsonl (one fsync per group)."""
        lines = [
            json.dumps(
                {
                    "time": e.time.isoformat() if e.time else "",
                    "job_id": e.job_id,
                    "sequence": e.sequence,
                    "previous_state": e.state_change.previous_state,
                    "state": e.state_change.state,
                    "attempt": e.state_change.attempt,
                    "reason": e.state_change.reason,
                }
            )
            for e in events
            if e.state_change is not None
        ]
        if lines:
            await asyncio.to_thread(self._append_lines, lines)

    def _append_lines(self, lines: list[str]) -> None:
        path = self.home / "scheduler_events.jsonl"
        with path.open("a") as handle:
            handle.write("\n".join(lines) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    # --- experiments -------------------------------------------------------------------------

    async def _governance_check(
        self, spec: ExperimentSpec, *, caller: str, dry_run: bool, request_id: str = ""
    ) -> DecisionOutcome:
        if self.governance is None:
            return DecisionOutcome.ALLOWED
        decision = await self.governance.validate(
            Tool.RUN_TRAINING_JOB,
            spec.model_dump(mode="json"),
            dry_run=dry_run,
            request_id=request_id,
            on_behalf_of=caller,
            cycle_id=spec.cycle_id,
        )
        if decision.outcome is DecisionOutcome.DENIED:
            raise denial_error(Tool.RUN_TRAINING_JOB, decision)
        return decision.outcome or DecisionOutcome.ALLOWED

    async def _evaluation_check(
        self, evaluation: EvaluationJob, *, caller: str, request_id: str
    ) -> DecisionOutcome:
        if self.governance is None:
            return DecisionOutcome.ALLOWED
        decision = await self.governance.validate(
            Tool.RUN_EVALUATION_JOB,
            evaluation.model_dump(mode="json"),
            dry_run=False,
            request_id=request_id,
            on_behalf_of=caller,
        )
        if decision.outcome is DecisionOutcome.DENIED:
            raise denial_error(Tool.RUN_EVALUATION_JOB, decision)
        return decision.outcome or DecisionOutcome.ALLOWED

    async def audit_invalid(
        self, tool: Tool, parameters: dict[str, Any], reason: str, *, caller: str
    ) -> None:
        """Record a refused malformed request in governance's audit log (best effort)."""
        if self.governance is None:
            return
        try:
            await self.governance.validate(
                tool, parameters, dry_run=True, on_behalf_of=caller, invalid_reason=reason
            )
        except ArcError as exc:
            logger.warning("could not audit an invalid request: %s", exc)

    def _write_spec_files(self, specs: list[ExperimentSpec]) -> None:
        """``experiments/<id>/spec.json`` for people and tools (the database is the truth)."""
        root = os.path.join(self.home, "experiments")  # plain os calls: this thread holds
        for spec in specs:  # the GIL the event loop needs for as little as it can
            folder = os.path.join(root, spec.experiment_id)
            os.makedirs(folder, exist_ok=True)
            tmp = os.path.join(folder, ".spec.json.tmp")
            with open(tmp, "wb") as handle:
                handle.write(spec.model_dump_json(indent=2).encode())
            os.replace(tmp, os.path.join(folder, "spec.json"))

    def _replayed(self, caller: str, method: str, request_id: str, digest: str) -> str | None:
        """What an earlier request of this caller under ``request_id`` made, or None; the
        id with another body is ALREADY_EXISTS."""
        if not request_id:
            return None
        earlier = self._requests.get((caller, method, request_id))
        if earlier is None:
            return None
        if earlier[0] != digest:
            raise _reused("request_id", request_id, f"{method} of {earlier[1]}")
        return earlier[1]

    def _request_write(
        self, caller: str, method: str, request_id: str, digest: str, target: str
    ) -> list[Write]:
        if not request_id:
            return []
        self._requests[(caller, method, request_id)] = (digest, target)
        return [self.store.put_request(caller, method, request_id, digest, target)]

    async def create_experiment(
        self,
        spec: ExperimentSpec,
        *,
        caller: str,
        request_id: str = "",
        request_digest: str = "",
    ) -> tuple[Experiment, str]:
        """Returns the experiment and the id of an earlier one with identical content. A
        retry under the same request id returns the experiment it created."""
        check_length(request_id, "request_id")
        replayed = self._replayed(caller, "CreateExperiment", request_id, request_digest)
        if replayed is not None:
            return self.experiment(replayed), self._duplicate_of(replayed)
        await self._governance_check(spec, caller=caller, dry_run=True)
        digest = content_hash(spec)
        async with self._lock:
            replayed = self._replayed(caller, "CreateExperiment", request_id, request_digest)
            if replayed is not None:
                return self.experiment(replayed), self._duplicate_of(replayed)
            if spec.experiment_id in self._experiments:
                _, existing_hash, _ = self._experiments[spec.experiment_id]
                raise AlreadyExistsError(
                    f"experiment {spec.experiment_id!r} already exists"
                    + ("" if existing_hash == digest else " with different content"),
                    field="spec.experiment_id",
                )
            duplicate = self._by_hash.get(digest, "")
            created = _now()
            # Reserved before the write, so a concurrent submission cannot claim the id.
            self._remember_experiment(spec, digest, created)
            writes = self._request_write(
                caller, "CreateExperiment", request_id, request_digest, spec.experiment_id
            )
            try:
                await self.store.write(self.store.put_experiment(spec, digest, created), *writes)
            except BaseException:
                self._forget_experiment(spec.experiment_id, digest)
                self._requests.pop((caller, "CreateExperiment", request_id), None)
                raise
        await self._spec_files.submit(spec)
        return self.experiment(spec.experiment_id), duplicate

    def _duplicate_of(self, experiment_id: str) -> str:
        _, digest, _ = self._experiments[experiment_id]
        first = self._by_hash.get(digest, "")
        return "" if first == experiment_id else first

    def experiment(self, experiment_id: str) -> Experiment:
        check_length(experiment_id, "experiment_id")
        if experiment_id not in self._experiments:
            raise NotFoundError(f"no experiment {experiment_id!r}", field="experiment_id")
        spec, digest, created = self._experiments[experiment_id]
        jobs = [self.jobs[j] for j in self._experiment_jobs.get(experiment_id, [])]
        results = [self._result(j) for j in reversed(jobs) if j.state in TERMINAL_STATES]
        return Experiment(
            spec=spec,
            state=jobs[-1].state if jobs else None,
            create_time=created,
            results=results,
            content_hash=digest,
            job_ids=[j.job_id for j in jobs],
        )

    def list_experiments(
        self, *, cycle_id: int, novelty: NoveltyClass | None, state: JobState | None
    ) -> list[Experiment]:
        out = []
        for experiment_id, (spec, _, _) in self._experiments.items():
            if cycle_id and spec.cycle_id != cycle_id:
                continue
            if novelty is not None and spec.novelty_class is not novelty:
                continue
            experiment = self.experiment(experiment_id)
            if state is not None and experiment.state is not state:
                continue
            out.append(experiment)
        return out

    # --- submission -----------------------------------------------------------------------------

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
        job_id = self._by_request.get(key) if key else None
        job = self.jobs.get(job_id) if job_id else None
        if job is not None and job.request_digest not in ("", submission.request_digest):
            raise _reused(submission.request_field, submission.request_id, f"job {job.job_id}")
        return job

    def _resolve_spec(self, submission: Submission, index: str) -> ExperimentSpec:
        if submission.spec is not None:
            spec = submission.spec
            known = self._experiments.get(spec.experiment_id)
            if known is not None and known[1] != content_hash(spec):
                raise AlreadyExistsError(
                    f"experiment {spec.experiment_id!r} exists with different content; "
                    "submit it by experiment_id or choose a new id",
                    field=f"{index}spec.experiment_id",
                )
            return spec
        if not submission.experiment_id:
            raise InvalidArgumentError(
                "give experiment_id (a stored experiment) or spec", field=f"{index}experiment_id"
            )
        if submission.experiment_id not in self._experiments:
            raise NotFoundError(
                f"no experiment {submission.experiment_id!r}; create it first or send its spec",
                field=f"{index}experiment_id",
            )
        return self._experiments[submission.experiment_id][0]

    def _check(self, submission: Submission, index: str = "") -> ExperimentSpec:
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
        if not 0 <= submission.timeout_seconds <= 7 * 24 * 3600:
            raise InvalidArgumentError(
                f"timeout_seconds must be between 0 and {7 * 24 * 3600} "
                f"(got {submission.timeout_seconds})",
                field=f"{index}timeout_seconds",
            )
        return self._resolve_spec(submission, index)

    async def submit(self, submissions: list[Submission], *, caller: str) -> list[JobRecord]:
        """All-or-nothing: every submission is checked before any job is created."""
        prefix = len(submissions) > 1
        # A request id reused with another body is refused before anything else is read.
        existing = [self._existing(s, caller) for s in submissions]
        if all(e is not None for e in existing):
            return [e for e in existing if e is not None]
        specs = [self._check(s, f"jobs[{i}]." if prefix else "") for i, s in enumerate(submissions)]
        for submission, spec, earlier in zip(submissions, specs, existing, strict=True):
            if earlier is None and len(submissions) > 1 and submission.evaluation is None:
                await self._governance_check(spec, caller=caller, dry_run=True)
        results: list[JobRecord | None] = [None] * len(submissions)
        waits: dict[int, asyncio.Future[JobRecord]] = {}
        new_jobs: list[JobRecord] = []
        new_experiments: list[tuple[ExperimentSpec, str]] = []
        writes = []
        loop = asyncio.get_running_loop()
        # A refusal part way (a governance denial, an id in flight with another body) or a
        # failed commit undoes what this call reserved in memory.
        try:
            for index, (submission, spec, earlier) in enumerate(
                zip(submissions, specs, existing, strict=True)
            ):
                if earlier is not None:
                    results[index] = earlier
                    continue
                job_id = f"job-{uuid.uuid4().hex[:12]}"
                if submission.evaluation is not None:
                    outcome = await self._evaluation_check(
                        submission.evaluation, caller=caller, request_id=f"job:{job_id}"
                    )
                else:
                    outcome = await self._governance_check(
                        spec, caller=caller, dry_run=False, request_id=f"job:{job_id}"
                    )
                # From here to the commit nothing awaits: the request id and the experiment id
                # are reserved in memory, so concurrent submissions need no lock and their
                # writes share one group commit.
                again = self._existing(submission, caller)
                if again is not None:  # a concurrent retry got here first
                    results[index] = again
                    continue
                key = self._key(submission, caller)
                inflight = self._inflight.get(key) if key else None
                if inflight is not None:  # ... and is being committed right now
                    if inflight[0] != submission.request_digest:
                        raise _reused(submission.request_field, submission.request_id, "in flight")
                    waits[index] = inflight[1]
                    continue
                if spec.experiment_id not in self._experiments:
                    digest = content_hash(spec)
                    created_at = _now()
                    self._remember_experiment(spec, digest, created_at)
                    writes.append(self.store.put_experiment(spec, digest, created_at))
                    new_experiments.append((spec, digest))
                self._seq += 1
                job = JobRecord(
                    job_id=job_id,
                    seq=self._seq,
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
                    create_time=_now(),
                    approval=f"job:{job_id}" if outcome is DecisionOutcome.PENDING_APPROVAL else "",
                    evaluation=submission.evaluation,
                )
                writes.append(self.store.put_job(job))
                new_jobs.append(job)
                results[index] = job
                if key:
                    self._inflight[key] = (submission.request_digest, loop.create_future())
            if writes:
                await self.store.write(*writes)  # committed before anyone hears of the jobs
        except BaseException as exc:
            for spec, digest in new_experiments:
                self._forget_experiment(spec.experiment_id, digest)
            for job in new_jobs:
                _, future = self._inflight.pop(
                    (caller, job.request_id, job.batch_index), ("", None)
                )
                if future is not None:
                    future.set_exception(exc)
                    future.exception()  # retrieved: a concurrent retry may not be waiting
            raise
        for job in new_jobs:
            self._index(job)
            self._enqueue(job)
            self._event(
                job,
                state_change=JobStateChange(
                    state=JobState.QUEUED, reason=f"submitted by {caller}", attempt=1
                ),
            )
            _, future = self._inflight.pop((caller, job.request_id, job.batch_index), ("", None))
            if future is not None:
                future.set_result(job)
        for index, future in waits.items():
            results[index] = await future
        for spec, _ in new_experiments:  # a convenience copy; the database has the truth
            self._spec_files.post(spec)
        self._wake.set()
        return [job for job in results if job is not None]

    # --- views -----------------------------------------------------------------------------------

    def queue_position(self, job: JobRecord) -> int:
        if job.state is not JobState.QUEUED:
            return 0
        key = _queue_key(job)
        return int(self._queue.bisect_left(key)) + 1 if key in self._queue else 0

    def pending_reason(self, job: JobRecord) -> str:
        if job.state is JobState.STARTING:
            return f"starting on {job.node}"
        if job.state is not JobState.QUEUED:
            return ""
        position = self.queue_position(job)
        parts = [f"position {position} in the queue"]
        if position > 1:
            first = self._queue[0]
            last = self._queue[position - 2]
            top, bottom = -first[0], -last[0]
            priorities = f"priority {top}" if top == bottom else f"priorities {bottom} to {top}"
            parts[0] = f"position {position}, behind {position - 1} job(s) of {priorities}"
        now = self._clock()
        if job.not_before > now:
            parts.append(
                f"retry {job.retries_used} of {job.max_retries} after backoff, "
                f"in {job.not_before - now:.0f} s"
            )
        if job.approval:
            parts.append(f"waiting for an operator to approve (governance request {job.approval})")
        down = [name for name, node in self.nodes.items() if not node.up]
        if down and len(down) == len(self.nodes):
            parts.append(f"every machine is down ({', '.join(down)})")
        blocked = self._blocked.get(_shape(job))
        if blocked:
            parts.append(f"waiting for a GPU: {blocked}")
        if job.prepared_run_id:
            parts.append(f"its trainer is prepared on {job.prepared_node} ({job.prepared_run_id})")
        return "; ".join(parts)

    def _result(self, job: JobRecord) -> ExperimentResult:
        base = job.result or ExperimentResult()
        return base.model_copy(
            update={
                "experiment_id": job.experiment_id,
                "job_id": job.job_id,
                "state": job.state,
                "error_message": job.error_message or base.error_message,
            }
        )

    def view(self, job: JobRecord) -> Job:
        return Job(
            job_id=job.job_id,
            experiment_id=job.experiment_id,
            state=job.state,
            priority=job.priority,
            attempt=job.attempt,
            max_retries=job.max_retries,
            pending_reason=self.pending_reason(job),
            queue_position=self.queue_position(job),
            create_time=job.create_time,
            start_time=job.start_time,
            end_time=job.end_time,
            result=self._result(job) if job.state in TERMINAL_STATES or job.result else None,
            gpu_indices=list(job.lease.gpu_indices) if job.lease else [],
            node=job.node,
            run_id=job.run_id,
            timeout_seconds=job.timeout_seconds,
            error_message=job.error_message,
            submitted_by=job.caller,
        )

    def ended(self, job_id: str) -> bool:
        """The job is terminal and its final state change is in the event log's queue."""
        return self._finished[job_id].is_set()

    def job(self, job_id: str) -> JobRecord:
        check_length(job_id, "job_id")
        job = self.jobs.get(job_id)
        if job is None:
            raise NotFoundError(f"no job {job_id!r}", field="job_id")
        return job

    def list_jobs(self, *, state: JobState | None, experiment_id: str) -> list[JobRecord]:
        check_length(experiment_id, "experiment_id")
        jobs = (
            [self.jobs[j] for j in self._experiment_jobs.get(experiment_id, [])]
            if experiment_id
            else list(self.jobs.values())
        )
        return [j for j in jobs if state is None or j.state is state]

    async def gpus(self, *, max_age: float = 1.0) -> list[Gpu]:
        out: list[Gpu] = []
        for node in self.nodes.values():
            if node.up and self._clock() - node.gpus_time > max_age:
                try:
                    node.gpus = await node.client.list_gpus()
                    node.gpus_time = self._clock()
                except ArcError as exc:  # down until the probe sees it answer again
                    self._node_failed(node, exc)
            out.extend(node.gpus if node.up else [])
        return out

    def available_gpus(self) -> int:
        """From the last listing (the probe refreshes it every few seconds): answering a
        submission never waits on a machine."""
        return sum(
            1
            for node in self.nodes.values()
            if node.up
            for g in node.gpus
            if not g.reserved and not g.lease_holder
        )

    async def status(self, *, queued_limit: int | None = None) -> SchedulerStatus:
        """Counts and the head of the queue: the cost does not grow with the queue."""
        gpus = await self.gpus()
        limit = self.settings.status_queued_limit if queued_limit is None else queued_limit
        queued = [self.view(self.jobs[key[2]]) for key in self._queue.islice(0, limit)]
        return SchedulerStatus(
            queue_length=len(self._queue),
            running_jobs=len(self._active),
            available_gpus=sum(1 for g in gpus if not g.reserved and not g.lease_holder),
            gpus=gpus,
            queued_jobs=queued,
            down_nodes=[name for name, node in self.nodes.items() if not node.up],
        )

    # --- dispatch -----------------------------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._wake.wait(), timeout=self.settings.dispatch_interval_seconds
                )
            self._wake.clear()
            try:
                await self._dispatch_pass()
            except Exception:
                logger.exception("dispatch pass failed")

    async def _approved(self, job: JobRecord) -> bool:
        if not job.approval or self.governance is None:
            return True
        try:
            if job.evaluation is not None:
                outcome = await self._evaluation_check(
                    job.evaluation, caller=job.caller, request_id=job.approval
                )
            else:
                outcome = await self._governance_check(
                    job.spec, caller=job.caller, dry_run=False, request_id=job.approval
                )
        except ArcError as exc:
            if isinstance(exc, UnavailableError):
                return False
            await self._set_state(
                job, JobState.FAILED, f"not approved: {exc}", error_message=str(exc)
            )
            return False
        if outcome is DecisionOutcome.ALLOWED:
            job.approval = ""
            await self._save(job)
            return True
        return False

    async def _dispatch_pass(self) -> None:
        blocked: dict[tuple[Any, ...], str] = {}
        now = self._clock()
        if not any(node.up for node in self.nodes.values()):
            return
        # In dispatch order, until every kind of GPU request still queued is blocked: a long
        # queue of jobs that cannot start costs one look per kind, not one per job.
        for key in self._in_order():
            if len(blocked) >= len(self._shapes):
                break
            job = self.jobs[key[2]]
            if job.state is not JobState.QUEUED or job.not_before > now:
                continue
            shape = _shape(job)
            if shape in blocked:
                continue
            if job.approval and not await self._approved(job):
                continue
            reason = await self._try_place(job)
            if reason:
                blocked[shape] = reason
                await self._prepare(job)
        self._blocked = blocked

    async def _try_place(self, job: JobRecord) -> str:
        """Launch ``job`` on the first machine with room; otherwise say why it waits."""
        reasons = []
        request_id = f"{job.job_id}:attempt-{job.attempt}"
        for node in sorted(self.nodes.values(), key=lambda n: not n.up):
            if not node.up:
                continue
            try:
                lease = await node.client.acquire(
                    job.job_id,
                    job.spec.gpu_allocation,
                    ttl_seconds=self.settings.lease_ttl_seconds,
                    request_id=request_id,
                )
            except ResourceExhaustedError as exc:
                reasons.append(f"{node.client.name}: {exc.message}")
                continue
            except UnavailableError as exc:
                self._node_failed(node, exc)
                continue
            except AlreadyExistsError as exc:
                # The machine holds this attempt's id for another body (its lease TTL
                # setting changed across a restart, say): the next attempt has a new id.
                await self._requeue(job, f"{node.client.name} refused the attempt's id: {exc}")
                return ""
            except ArcError as exc:
                await self._set_state(
                    job, JobState.FAILED, f"cannot be placed: {exc}", error_message=str(exc)
                )
                return ""
            node.gpus_time = 0.0
            async with self._lock:
                if job.state is not JobState.QUEUED:  # cancelled meanwhile
                    with contextlib.suppress(ArcError):
                        await node.client.release(lease)
                    return ""
                self._dequeue(job)
                await self._set_state(
                    job,
                    JobState.STARTING,
                    f"GPUs {lease.gpu_indices} leased on {node.client.name}",
                    node=node.client.name,
                    lease=lease,
                    start_time=_now(),
                    run_id="",
                    run_sequence=0,
                )
            if job.evaluation is not None:
                self._watchers[job.job_id] = asyncio.create_task(self._evaluate(job, node))
            else:
                await self._start_run(job, node)
            return ""
        if len(reasons) == 1:
            return reasons[0].split(": ", 1)[1] if len(self.nodes) == 1 else reasons[0]
        return " | ".join(reasons) or "no machine is up"

    def _run_config(self, job: JobRecord, gpu_ids: list[int]) -> TrainingJobConfig:
        attempt_dir = f"runs/{job.job_id}/attempt-{job.attempt}"
        # A retry resumes from the last checkpoint of the attempt before (when it is intact).
        resume = (
            f"runs/{job.job_id}/attempt-{job.attempt - 1}/checkpoints/last.pt"
            if job.attempt > 1
            else ""
        )
        return TrainingJobConfig(
            job_id=job.job_id,
            experiment_spec=job.spec,
            gpu_ids=gpu_ids,
            checkpoint_dir=f"{attempt_dir}/checkpoints",
            log_dir=f"{attempt_dir}/logs",
            timeout_seconds=job.timeout_seconds,
            max_retries=job.max_retries,
            resume_from=resume,
            submitted_by=job.caller,
        )

    async def _prepare(self, job: JobRecord) -> None:
        """The first job of its kind waiting for GPUs that running jobs hold: its trainer
        starts ahead on the machine (data opened, model built in host memory, no GPU
        touched), so it trains the moment the GPUs come (``_start_run`` activates it)."""
        limit = self.settings.prepared_per_node
        if (
            limit <= 0
            or not self._active
            or job.prepared_run_id
            or job.evaluation is not None
            or job.approval
            or self._prepare_after.get(job.job_id, 0.0) > self._clock()
        ):
            return
        node = next((n for n in self.nodes.values() if n.up), None)
        if node is None or list(self._prepared.values()).count(node.client.name) >= limit:
            return
        try:
            run = await node.client.prepare_run(
                self._run_config(job, []),
                request_id=f"{job.job_id}:attempt-{job.attempt}:prepared",
            )
        except (
            UnavailableError,
            DeadlineExceededError,
            ResourceExhaustedError,
            AbortedError,
        ) as exc:
            # Perhaps prepared all the same (a lost reply): asked again with the same
            # request id, the executor answers with that run.
            retry = self.settings.prepare_retry_seconds
            self._prepare_after[job.job_id] = self._clock() + retry
            logger.warning(
                "job %s: PrepareRun unanswered (%s); asked again in %.0f s", job.job_id, exc, retry
            )
            return
        except ArcError as exc:
            self._prepare_after[job.job_id] = math.inf
            logger.warning("job %s: no prepared run (%s); it will start cold", job.job_id, exc)
            return
        self._prepare_after.pop(job.job_id, None)
        job.prepared_run_id, job.prepared_node = run.run_id, node.client.name
        self._prepared[job.job_id] = node.client.name
        if job.state is not JobState.QUEUED:  # placed or cancelled meanwhile
            await self._drop_prepared(job)
            return
        await self._save(job)
        logger.info("job %s: trainer prepared ahead on %s", job.job_id, node.client.name)

    def _forget_prepared(self, job: JobRecord) -> tuple[str, str]:
        """Clear the job's prepared run (used or not): its run id and machine."""
        taken = job.prepared_run_id, job.prepared_node
        job.prepared_run_id = job.prepared_node = ""
        self._prepared.pop(job.job_id, None)
        return taken

    async def _drop_prepared(self, job: JobRecord) -> None:
        """Cancel the job's prepared run (it was not used) and forget it."""
        run_id, name = self._forget_prepared(job)
        node = self.nodes.get(name)
        if run_id and node is not None:
            with contextlib.suppress(ArcError):  # gone already (an executor restart)
                await node.client.cancel_run(run_id, "prepared run not used")

    async def _activate_prepared(self, job: JobRecord, node: NodeState) -> Run | None:
        """The job's prepared run, given its lease; None when there is none to use (the
        caller starts one cold)."""
        assert job.lease is not None
        if job.prepared_run_id and job.prepared_node == node.client.name:
            run_id = job.prepared_run_id
            try:
                run = await node.client.activate_run(run_id, job.lease)
            except ArcError as exc:
                logger.warning("job %s: prepared run %s not used: %s", job.job_id, run_id, exc)
            else:
                self._forget_prepared(job)
                return run
        if job.prepared_run_id:
            await self._drop_prepared(job)
        return None

    async def _start_run(self, job: JobRecord, node: NodeState) -> None:
        assert job.lease is not None
        config = self._run_config(job, list(job.lease.gpu_indices))
        try:
            run = await self._activate_prepared(job, node) or await node.client.start_run(
                config, job.lease, request_id=f"{job.job_id}:attempt-{job.attempt}"
            )
        except UnavailableError as exc:
            self._node_failed(node, exc)
            await self._requeue(job, f"{node.client.name} unreachable while starting: {exc}")
            return
        except FailedPreconditionError as exc:
            await self._requeue(job, f"lease went stale before the start: {exc}")
            return
        except ArcError as exc:
            await self._release(job)
            await self._set_state(
                job,
                JobState.FAILED,
                f"the executor refused the job: {exc}",
                error_message=str(exc),
            )
            return
        job.run_id = run.run_id
        await self._save(job)
        if job.cancel_requested:
            with contextlib.suppress(ArcError):
                await node.client.cancel_run(run.run_id, job.cancel_requested)
        self._watch(job)

    async def _evaluate(self, job: JobRecord, node: NodeState) -> None:
        """An evaluation job: the executor's EvaluateCheckpoint on the leased GPU."""
        assert job.lease is not None and job.evaluation is not None
        await self._set_state(job, JobState.RUNNING, f"evaluating on {node.client.name}")
        started = self._clock()
        try:
            report = await node.client.evaluate(
                job.evaluation,
                job.lease,
                request_id=f"{job.job_id}:attempt-{job.attempt}",
                seconds=job.timeout_seconds,
            )
        except asyncio.CancelledError:
            await self._release(job)
            reason = job.cancel_requested or "cancelled"
            await self._set_state(job, JobState.CANCELLED, reason, error_message=reason)
            self._event(job, result=self._result(job))
            raise
        except ArcError as exc:
            await self._on_run_end(job, JobState.FAILED, str(exc), None)
            return
        split = job.evaluation.split or "test"
        names = (
            "auc",
            "auc_ci_lower",
            "auc_ci_upper",
            "accuracy",
            "sensitivity",
            "specificity",
            "sensitivity_at_90_specificity",
            "sensitivity_at_95_specificity",
            "f1",
        )
        metrics = {
            f"{split}_{name}": float(report[name])
            for name in names
            if isinstance(report.get(name), int | float)
        }
        result = ExperimentResult(
            experiment_id=job.experiment_id,
            job_id=job.job_id,
            state=JobState.COMPLETED,
            best_metrics=metrics,
            duration_seconds=self._clock() - started,
        )
        await self._on_run_end(job, JobState.COMPLETED, "evaluated", result)

    async def _relaunch(self, job: JobRecord) -> None:
        node = self.nodes.get(job.node)
        if node is None or job.lease is None:
            await self._requeue(job, "restarted before its run began")
            return
        await self._start_run(job, node)

    async def _release(self, job: JobRecord) -> None:
        node = self.nodes.get(job.node)
        if job.lease is None or node is None or job.lease_released:
            return
        try:
            await node.client.release(job.lease)
        except ArcError as exc:  # it expires by itself: the holder stopped renewing it
            logger.warning("could not release lease of %s: %s", job.job_id, exc)
        node.gpus_time = 0.0  # the cached listing is stale now

    async def _requeue(self, job: JobRecord, reason: str, *, counts: bool = False) -> None:
        """Back into the queue as a new attempt (a retry when ``counts``)."""
        await self._release(job)
        delay = 0.0
        if counts:
            job.retries_used += 1
            delay = min(
                self.settings.retry_backoff_max_seconds,
                self.settings.retry_backoff_seconds * 2 ** (job.retries_used - 1),
            )
        job.attempt += 1
        await self._set_state(
            job,
            JobState.QUEUED,
            reason,
            node="",
            run_id="",
            lease=None,
            lease_released=False,
            run_sequence=0,
            not_before=self._clock() + delay,
        )
        self._enqueue(job)
        self._wake.set()

    # --- following runs -----------------------------------------------------------------------

    def _watch(self, job: JobRecord) -> None:
        task = asyncio.create_task(self._follow(job, job.run_id), name=f"watch-{job.job_id}")
        self._watchers[job.job_id] = task
        task.add_done_callback(functools.partial(self._unwatch, job.job_id))

    def _unwatch(self, job_id: str, _task: asyncio.Task[None]) -> None:
        self._watchers.pop(job_id, None)

    async def _follow(self, job: JobRecord, run_id: str) -> None:
        delay = 0.2
        while job.run_id == run_id and job.state not in TERMINAL_STATES:
            node = self.nodes.get(job.node)
            if node is None:
                await self._requeue(job, f"its machine {job.node} is no longer configured")
                return
            try:
                async for event in node.client.events(run_id, job.run_sequence):
                    await self._on_run_event(job, event)
                    delay = 0.2
                    if job.run_id != run_id or job.state in TERMINAL_STATES:
                        return
                run = await node.client.get_run(run_id)
                if run.state in TERMINAL_STATES:  # the stream ended before we saw the end
                    await self._on_run_end(job, run.state, run.error_message, run.result)
                    return
            except NotFoundError:
                await self._requeue(job, f"{job.node} lost run {run_id}")
                return
            except (UnavailableError, ArcError) as exc:
                if isinstance(exc, UnavailableError) or "UNAVAILABLE" in (exc.status or ""):
                    self._node_failed(node, exc)
                if (
                    not node.up
                    and self._clock() - node.down_since > self.settings.node_down_seconds
                ):
                    await self._requeue(job, f"{job.node} stopped answering: {exc}")
                    return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _on_run_event(self, job: JobRecord, event: RunEvent) -> None:
        job.run_sequence = event.sequence
        source = event.sequence
        if event.metrics is not None:
            if event.metrics.count:  # one stored event, numbered as its metrics
                self._event(
                    job, span=event.metrics.count, metrics=event.metrics, source_sequence=source
                )
                await self._maybe_prune(job, event.metrics)
        elif event.checkpoint is not None:
            self._event(job, checkpoint=event.checkpoint, source_sequence=source)
            job.result = (job.result or ExperimentResult()).model_copy(
                update={"checkpoints": _merge_checkpoints(job.result, event.checkpoint)}
            )
        elif event.result is not None:
            job.result = event.result
        elif event.devices_released is not None and job.state is JobState.RUNNING:
            # Only its last checkpoint write is left: the GPUs go to the next job now.
            await self._release(job)
            job.lease_released = True
            await self._save(job)
            self._wake.set()
        elif event.state_change is not None and event.state_change.state is not None:
            state = event.state_change.state
            if state is JobState.RUNNING and job.state is JobState.STARTING:
                await self._set_state(job, JobState.RUNNING, event.state_change.reason)
            elif state in TERMINAL_STATES:
                await self._on_run_end(job, state, event.state_change.reason, job.result)

    async def _on_run_end(
        self, job: JobRecord, state: JobState, reason: str, result: ExperimentResult | None
    ) -> None:
        if job.state in TERMINAL_STATES or job.state is JobState.QUEUED:
            return
        await self._release(job)
        error = (result.error_message if result else "") or reason
        if result is not None:
            job.result = result
        if job.cancel_requested:
            pruned = job.cancel_requested.startswith("pruned")
            await self._set_state(
                job,
                JobState.PRUNED if pruned else JobState.CANCELLED,
                job.cancel_requested,
                error_message=job.cancel_requested,
            )
        elif state is JobState.COMPLETED:
            await self._set_state(job, JobState.COMPLETED, reason or "completed")
        elif state is JobState.FAILED and error.startswith(LOST_PREFIXES):
            await self._requeue(job, f"attempt {job.attempt} lost ({error}); requeued")
        elif state is JobState.FAILED and job.retries_used < job.max_retries:
            job.error_message = error
            await self._requeue(
                job, f"attempt {job.attempt} failed: {error.splitlines()[0]}", counts=True
            )
        else:
            await self._set_state(job, state, reason, error_message=error)
        if job.state in TERMINAL_STATES:
            self._event(job, result=self._result(job))

    async def _maybe_prune(self, job: JobRecord, metrics: PackedMetrics) -> None:
        early = job.spec.early_stopping
        if not early.median_pruning:
            return  # the batch is not even opened
        for metric in packed.open_batch(metrics).metrics:
            if metric.name == early.monitor and not job.cancel_requested:
                await self._prune_at(job, metric.epoch, metric.value)

    async def _prune_at(self, job: JobRecord, epoch: int, value: float) -> None:
        """Median pruning: stop a job whose monitored value at ``epoch`` is worse than the
        median of the other jobs of its cycle at that epoch."""
        early = job.spec.early_stopping
        curves = self._curves[job.spec.cycle_id]
        curves.setdefault(job.job_id, {})[epoch] = value
        if epoch < max(1, early.warmup_epochs):
            return
        others = [
            values[epoch]
            for other, values in curves.items()
            if other != job.job_id and epoch in values
        ]
        if not others:
            return
        median = statistics.median(others)
        worse = value < median if early.mode is MetricMode.MAX else value > median
        if worse:
            reason = (
                f"pruned: {early.monitor} {value:.4f} at epoch {epoch} is "
                f"{'below' if early.mode is MetricMode.MAX else 'above'} the median "
                f"{median:.4f} of {len(others)} other job(s) of cycle {job.spec.cycle_id}"
            )
            job.cancel_requested = reason
            await self._save(job)
            node = self.nodes.get(job.node)
            if node is not None and job.run_id:
                with contextlib.suppress(ArcError):
                    await node.client.cancel_run(job.run_id, reason)

    # --- cancel ---------------------------------------------------------------------------------

    @staticmethod
    def check_owner(job: JobRecord, caller: Caller) -> None:
        """An agent changes only the jobs it submitted; operators and services any, but a
        job stored without its submitter only an operator."""
        if caller.operator or (job.caller and (caller.service or job.caller == caller.name)):
            return
        owner = f"submitted by {job.caller!r}" if job.caller else "whose submitter is unknown"
        raise PermissionDeniedError(
            f"job {job.job_id} is {owner}; {caller.name!r} may cancel only its own jobs",
            field="job_id",
        )

    async def cancel(
        self,
        job_id: str,
        reason: str,
        *,
        caller: Caller,
        request_id: str = "",
        request_digest: str = "",
        wait: float = 60.0,
    ) -> JobRecord:
        """Ownership first (nothing changes for a caller who may not); a retry under the
        same request id gets the job back, even once it has ended."""
        check_length(reason, "reason", MAX_REASON_LENGTH)
        check_length(request_id, "request_id")
        job = self.job(job_id)
        self.check_owner(job, caller)
        if self._replayed(caller.name, "CancelJob", request_id, request_digest) is not None:
            return job
        reason = reason or "cancelled"
        async with self._lock:
            if self._replayed(caller.name, "CancelJob", request_id, request_digest) is not None:
                return job
            if job.state in TERMINAL_STATES:
                raise FailedPreconditionError(
                    f"job {job_id} already ended {job.state.value}; nothing to cancel",
                    field="job_id",
                )
            done = self._request_write(
                caller.name, "CancelJob", request_id, request_digest, job.job_id
            )
            if job.state is JobState.QUEUED:
                self._dequeue(job)
                await self._set_state(
                    job, JobState.CANCELLED, reason, error_message=reason, also=done
                )
                self._event(job, result=self._result(job))
                return job
            job.cancel_requested = reason
            await self._save(job, also=done)
        node = self.nodes.get(job.node)
        task = self._watchers.get(job_id)
        if job.evaluation is not None and task is not None:
            task.cancel()
        if job.run_id and node is not None:
            try:
                await node.client.cancel_run(job.run_id, reason)
            except FailedPreconditionError:
                pass  # it ended just now; the follower records how
            except UnavailableError as exc:
                raise UnavailableError(
                    f"cannot reach {job.node} to cancel job {job_id}: {exc}; retry"
                ) from exc
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._finished[job_id].wait(), timeout=wait)
        return job

    async def wait(self, job_id: str, seconds: float | None = None) -> JobRecord:
        await asyncio.wait_for(self._finished[self.job(job_id).job_id].wait(), timeout=seconds)
        return self.jobs[job_id]

    # --- machines ----------------------------------------------------------------------------

    def _node_failed(self, node: NodeState, exc: Exception) -> None:
        if node.up:
            node.up = False
            node.down_since = self._clock()
            logger.warning("machine %s marked down: %s", node.client.name, exc)

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.probe_interval_seconds)
            for node in self.nodes.values():
                try:
                    node.gpus = await node.client.list_gpus()
                    node.gpus_time = self._clock()
                except ArcError as exc:
                    self._node_failed(node, exc)
                    continue
                if not node.up:
                    node.up = True
                    logger.info("machine %s is back", node.client.name)
                    self._wake.set()
            self._wake.set()


def _merge_checkpoints(
    result: ExperimentResult | None, checkpoint: CheckpointInfo
) -> list[CheckpointInfo]:
    kept = [c for c in (result.checkpoints if result else []) if c.kind is not checkpoint.kind]
    return [*kept, checkpoint]
