"""SchedulerService: converts requests, calls the Scheduler, converts back."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeVar

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from arc.common.v1 import common_pb2
from arc.governance.v1 import governance_pb2
from arc.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from arc_common import auth, packed
from arc_common.convert import (
    enum_to_str,
    fill_metric,
    message_to_dict,
    set_timestamp,
    to_model,
    to_proto,
)
from arc_common.digest import message_digest
from arc_common.errors import InvalidArgumentError, PermissionDeniedError
from arc_common.ledger import RequestLedger
from arc_common.models import (
    EvaluationJob,
    Experiment,
    ExperimentSpec,
    JobEvent,
    JobState,
    NoveltyClass,
    Tool,
)
from arc_common.pagination import paginate
from services.scheduler.admission import check_length
from services.scheduler.core import Caller, Scheduler, Submission
from services.scheduler.redaction import Redaction
from services.scheduler.store import JobRecord

M = TypeVar("M", bound=Message)


def _identity() -> auth.Identity:
    identity = auth.current_identity.get()
    if identity is None:  # pragma: no cover - the interceptor always sets one
        raise PermissionDeniedError("no caller identity")
    return identity


def _caller() -> str:
    return _identity().name


def _agent() -> bool:
    """An agent's token: sealed test figures are left out of what it reads."""
    return _identity().role is auth.Role.AGENT


def _trusted() -> bool:
    """The operator: trusted with sealed test splits (agents and services are not)."""
    return _identity().role is auth.Role.OPERATOR


def _who() -> Caller:
    identity = _identity()
    return Caller(
        name=identity.name,
        operator=identity.role is auth.Role.OPERATOR,
        service=identity.role is auth.Role.SERVICE,
    )


def _state_filter(value: int) -> JobState | None:
    name = enum_to_str(common_pb2.JobState.DESCRIPTOR, value)
    if name is None:
        return None
    try:
        return JobState(name)
    except ValueError:
        raise InvalidArgumentError(f"state {value} is not a JobState", field="state") from None


def _submission(
    request: scheduler_pb2.SubmitJobRequest,
    prefix: str = "",
    *,
    batch_id: str = "",
    batch_index: int = -1,
) -> Submission:
    """``batch_id``: the SubmitJobs request id, for an item without an id of its own."""
    spec = (
        to_model(request.spec, ExperimentSpec, prefix=f"{prefix}spec")
        if request.HasField("spec")
        else None
    )
    evaluation = (
        to_model(request.evaluation, EvaluationJob, prefix=f"{prefix}evaluation")
        if request.HasField("evaluation")
        else None
    )
    return Submission(
        kind="evaluation" if evaluation is not None else "training",
        payload=evaluation.model_dump(mode="json") if evaluation is not None else {},
        spec=spec,
        experiment_id=request.experiment_id,
        priority=request.priority if request.HasField("priority") else None,
        max_retries=request.max_retries,
        timeout_seconds=int(request.timeout_seconds),
        request_id=request.request_id or batch_id,
        request_digest=message_digest(request),
        batch_index=batch_index if batch_id and not request.request_id else -1,
        request_field=(
            f"{prefix}request_id" if request.request_id or not batch_id else "request_id"
        ),
    )


MAX_EVENTS_PER_RESPONSE = 1000


def event_to_proto(event: JobEvent) -> scheduler_pb2.JobEvent:
    """A job event as its message; metric events, most of a training's, by a direct path."""
    if event.metric is None:
        return to_proto(event, scheduler_pb2.JobEvent)
    message = scheduler_pb2.JobEvent(
        sequence=event.sequence, job_id=event.job_id, source_sequence=event.source_sequence
    )
    if event.time is not None:
        set_timestamp(message.time, event.time)
    fill_metric(message.metric, event.metric)
    return message


def event_messages(
    event: JobEvent, *, after: int, batch_metrics: bool
) -> list[scheduler_pb2.JobEvent]:
    """A stored event as what a watcher gets: a metric batch as one ``metrics`` event
    (``batch_metrics``) or one ``metric`` event per metric, without those numbered up to
    ``after`` (a watch may resume inside a batch)."""
    if event.metrics is None:
        return [event_to_proto(event)]
    first = event.sequence - event.metrics.count + 1
    seen = max(0, after + 1 - first)
    common: dict[str, Any] = {"job_id": event.job_id, "source_sequence": event.source_sequence}
    if event.time is not None:
        common["time"] = stamp = Timestamp()
        set_timestamp(stamp, event.time)
    if batch_metrics:
        message = scheduler_pb2.JobEvent(sequence=event.sequence, **common)
        message.metrics.MergeFromString(event.metrics.data)  # parsed in C, as stored
        if seen:
            del message.metrics.metrics[:seen]
        return [message]
    return [
        scheduler_pb2.JobEvent(sequence=first + index, metric=metric, **common)
        for index, metric in enumerate(packed.open_batch(event.metrics).metrics)
        if index >= seen
    ]


class SchedulerServicer(scheduler_pb2_grpc.SchedulerServiceServicer):
    def __init__(self, scheduler: Scheduler, *, ledger: RequestLedger | None = None) -> None:
        """``ledger``: a replayed CreateExperiment or CancelJob gets its first answer (the
        scheduler's own request ids still make each change happen once without it)."""
        self._s = scheduler
        self._ledger = ledger
        self._redact = Redaction(scheduler.reveals)

    async def _once(
        self, rpc: str, request: Any, response_type: type[M], call: Callable[[], Awaitable[M]]
    ) -> M:
        if self._ledger is None:
            return await call()
        # Not the ledger's own length check: the scheduler's names the field the same way.
        check_length(request.request_id, "request_id")
        return await self._ledger.call(_caller(), rpc, request, response_type, call)

    def _job(self, job_id: str) -> scheduler_pb2.Job:
        return self._job_proto(self._s.job(job_id))

    def _job_proto(self, job: JobRecord) -> scheduler_pb2.Job:
        message = to_proto(self._s.view(job), scheduler_pb2.Job)
        if _agent():
            self._redact.job(message)
        return message

    def _experiment(self, experiment: Experiment) -> scheduler_pb2.Experiment:
        message = to_proto(experiment, scheduler_pb2.Experiment)
        if _agent():
            self._redact.experiment(message)
        else:
            self._redact.mark(message)
        return message

    async def _audited(self, request: Message, error: InvalidArgumentError) -> NoReturn:
        """A malformed request is refused with INVALID_ARGUMENT and its denial audited."""
        await self._s.audit_invalid(
            Tool.RUN_TRAINING_JOB, message_to_dict(request), str(error), caller=_caller()
        )
        raise error

    async def CreateExperiment(
        self, request: scheduler_pb2.CreateExperimentRequest, context: Any
    ) -> scheduler_pb2.CreateExperimentResponse:
        if not request.HasField("spec"):
            raise InvalidArgumentError("spec is required", field="spec")
        try:
            spec = to_model(request.spec, ExperimentSpec, prefix="spec")
        except InvalidArgumentError as exc:
            await self._audited(request, exc)

        async def create() -> scheduler_pb2.CreateExperimentResponse:
            experiment, duplicate, decision = await self._s.create_experiment(
                spec,
                caller=_caller(),
                request_id=request.request_id,
                request_digest=message_digest(request),
            )
            response = scheduler_pb2.CreateExperimentResponse(
                experiment=self._experiment(experiment), duplicate_of=duplicate
            )
            if decision is not None:
                response.decision.CopyFrom(to_proto(decision, governance_pb2.Decision))
            if duplicate:
                for result in self._s.experiment(duplicate).results:
                    message = to_proto(result, common_pb2.ExperimentResult)
                    if _agent():
                        self._redact.result(message)
                    response.duplicate_results.append(message)
            return response

        return await self._once(
            "CreateExperiment", request, scheduler_pb2.CreateExperimentResponse, create
        )

    async def GetExperiment(
        self, request: scheduler_pb2.GetExperimentRequest, context: Any
    ) -> scheduler_pb2.GetExperimentResponse:
        experiment = self._s.experiment(request.experiment_id)
        return scheduler_pb2.GetExperimentResponse(experiment=self._experiment(experiment))

    async def ListExperiments(
        self, request: scheduler_pb2.ListExperimentsRequest, context: Any
    ) -> scheduler_pb2.ListExperimentsResponse:
        novelty_name = enum_to_str(common_pb2.NoveltyClass.DESCRIPTOR, request.novelty_class)
        try:
            novelty = NoveltyClass(novelty_name) if novelty_name else None
        except ValueError:
            raise InvalidArgumentError(
                f"novelty_class {request.novelty_class} is unknown", field="novelty_class"
            ) from None
        if request.cycle_id < 0:
            raise InvalidArgumentError("cycle_id must be >= 0", field="cycle_id")
        experiments = self._s.list_experiments(
            cycle_id=request.cycle_id, novelty=novelty, state=_state_filter(request.state)
        )
        page, token = paginate(experiments, request.page_size, request.page_token)
        return scheduler_pb2.ListExperimentsResponse(
            experiments=[self._experiment(e) for e in page],
            next_page_token=token,
        )

    async def _reply(self, job_id: str) -> scheduler_pb2.SubmitJobResponse:
        job = self._s.jobs[job_id]
        return scheduler_pb2.SubmitJobResponse(
            job=self._job(job_id),
            queue_position=self._s.queue_position(job),
            available_gpus=self._s.available_gpus(),
        )

    async def SubmitJob(
        self, request: scheduler_pb2.SubmitJobRequest, context: Any
    ) -> scheduler_pb2.SubmitJobResponse:
        try:
            submission = _submission(request)
        except InvalidArgumentError as exc:
            await self._audited(request, exc)
        [job] = await self._s.submit([submission], caller=_caller(), trusted=_trusted())
        return await self._reply(job.job_id)

    async def SubmitJobs(
        self, request: scheduler_pb2.SubmitJobsRequest, context: Any
    ) -> scheduler_pb2.SubmitJobsResponse:
        if not request.jobs:
            raise InvalidArgumentError("jobs must list at least one job", field="jobs")
        if len(request.jobs) > 1000:
            raise InvalidArgumentError(
                f"at most 1000 jobs per batch (got {len(request.jobs)})", field="jobs"
            )
        submissions = []
        for index, item in enumerate(request.jobs):
            try:
                submissions.append(
                    _submission(
                        item, f"jobs[{index}].", batch_id=request.request_id, batch_index=index
                    )
                )
            except InvalidArgumentError as exc:
                await self._audited(item, exc)
        jobs = await self._s.submit(submissions, caller=_caller(), trusted=_trusted())
        return scheduler_pb2.SubmitJobsResponse(
            results=[await self._reply(job.job_id) for job in jobs]
        )

    async def GetJob(
        self, request: scheduler_pb2.GetJobRequest, context: Any
    ) -> scheduler_pb2.GetJobResponse:
        return scheduler_pb2.GetJobResponse(job=self._job(request.job_id))

    async def ListJobs(
        self, request: scheduler_pb2.ListJobsRequest, context: Any
    ) -> scheduler_pb2.ListJobsResponse:
        jobs = self._s.list_jobs(
            state=_state_filter(request.state), experiment_id=request.experiment_id
        )
        page, token = paginate(jobs, request.page_size, request.page_token)
        return scheduler_pb2.ListJobsResponse(
            jobs=[self._job_proto(j) for j in page],
            next_page_token=token,
        )

    async def CancelJob(
        self, request: scheduler_pb2.CancelJobRequest, context: Any
    ) -> scheduler_pb2.CancelJobResponse:
        async def cancel() -> scheduler_pb2.CancelJobResponse:
            job = await self._s.cancel(
                request.job_id,
                request.reason or f"cancelled by {_caller()}",
                caller=_who(),
                request_id=request.request_id,
                request_digest=message_digest(request),
            )
            return scheduler_pb2.CancelJobResponse(job=self._job(job.job_id))

        return await self._once("CancelJob", request, scheduler_pb2.CancelJobResponse, cancel)

    async def GetSchedulerStatus(
        self, request: scheduler_pb2.GetSchedulerStatusRequest, context: Any
    ) -> scheduler_pb2.GetSchedulerStatusResponse:
        if not 0 <= request.queued_limit <= 1000:
            raise InvalidArgumentError(
                f"queued_limit must be between 0 and 1000 (got {request.queued_limit})",
                field="queued_limit",
            )
        status = await self._s.status(queued_limit=request.queued_limit or None)
        message = to_proto(status, scheduler_pb2.SchedulerStatus)
        if _agent():  # a queued retry keeps its last attempt's result
            for job in message.queued_jobs:
                self._redact.job(job)
        return scheduler_pb2.GetSchedulerStatusResponse(status=message)

    async def WatchJob(
        self, request: scheduler_pb2.WatchJobRequest, context: Any
    ) -> AsyncIterator[scheduler_pb2.WatchJobResponse]:
        if request.from_sequence < 0:
            raise InvalidArgumentError(
                f"from_sequence must be >= 0 (got {request.from_sequence})", field="from_sequence"
            )
        size = request.max_events_per_response
        if not 0 <= size <= MAX_EVENTS_PER_RESPONSE:
            raise InvalidArgumentError(
                f"max_events_per_response must be 0..{MAX_EVENTS_PER_RESPONSE} (got {size})",
                field="max_events_per_response",
            )
        job = self._s.job(request.job_id)
        agent = _agent()
        async for batch in self._s.events.follow_batches(
            job.job_id,
            request.from_sequence,
            # Not job.state: it turns terminal before the state change is appended (the
            # row is saved first), and a watcher must not stop short of that event.
            is_finished=lambda: self._s.ended(job.job_id),
            limit=max(size, 500),
        ):
            events = [
                message
                for event in batch
                for message in event_messages(
                    event, after=request.from_sequence, batch_metrics=request.batch_metrics
                )
            ]
            if agent:
                events = self._redact.events(job.job_id, events)
            if size <= 1:
                for event in events:
                    yield scheduler_pb2.WatchJobResponse(event=event)
            else:
                for first in range(0, len(events), size):
                    yield scheduler_pb2.WatchJobResponse(events=events[first : first + size])

    async def GetHistory(
        self, request: scheduler_pb2.GetHistoryRequest, context: Any
    ) -> scheduler_pb2.GetHistoryResponse:
        if not request.HasField("spec"):
            raise InvalidArgumentError("spec is required", field="spec")
        spec = to_model(request.spec, ExperimentSpec, prefix="spec")
        found = self._s.history(spec, limit=request.limit, metric=request.metric or "val_auc")
        return scheduler_pb2.GetHistoryResponse(
            dataset_hash=found.dataset_hash,
            nearest=[
                scheduler_pb2.PriorRun(
                    job=self._job_proto(n.job), distance=n.distance, differences=n.differences
                )
                for n in found.nearest
            ],
            best_per_family=[self._job_proto(job) for job in found.best_per_family],
            identical=self._job_proto(found.identical) if found.identical else None,
        )

    async def RevealTestMetrics(
        self, request: scheduler_pb2.RevealTestMetricsRequest, context: Any
    ) -> scheduler_pb2.RevealTestMetricsResponse:
        await self._s.reveals.reveal(request.experiment_id, by=_caller(), reason=request.reason)
        experiment = self._s.experiment(request.experiment_id)
        return scheduler_pb2.RevealTestMetricsResponse(experiment=self._experiment(experiment))
