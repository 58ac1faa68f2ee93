"""ArcClient: one typed async client for the four services.

It connects with the workspace's operator token by default (or any token given), sets a
deadline on every unary call, returns domain models and raises ``arc_common.errors``
(``ArcError`` and its subclasses, with ``.status`` naming the gRPC code), never
``grpc.RpcError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from grpc import aio

from arc.common.v1 import common_pb2
from arc.executor.v1 import executor_pb2, executor_pb2_grpc
from arc.governance.v1 import governance_pb2_grpc
from arc.gpu.v1 import gpu_pb2, gpu_pb2_grpc
from arc.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from arc_common.channel import create_channel
from arc_common.convert import enum_value, to_model, to_proto
from arc_common.governance_client import AuditCheck, GovernanceClient
from arc_common.models import (
    TERMINAL_STATES,
    AuditRecord,
    Decision,
    Experiment,
    ExperimentSpec,
    Gpu,
    Job,
    JobEvent,
    JobState,
    Mode,
    PendingRequest,
    SchedulerStatus,
    Tool,
)
from arc_common.rpc import stream, unary
from clients.research_tools import ResearchTools
from clients.sweeps import SweepClient

DEFAULT_PORT_BASE = 50051


@dataclass(frozen=True)
class Addresses:
    scheduler: str
    gpu_manager: str
    governance: str
    executor: str

    @classmethod
    def from_port_base(cls, base: int = DEFAULT_PORT_BASE, host: str = "127.0.0.1") -> Addresses:
        return cls(
            f"{host}:{base}", f"{host}:{base + 1}", f"{host}:{base + 2}", f"{host}:{base + 3}"
        )


def default_home() -> Path:
    return Path(os.environ.get("ARC_HOME", ".arc"))


class ArcClient:
    def __init__(
        self,
        addresses: Addresses | None = None,
        *,
        token: str | None = None,
        home: Path | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.addresses = addresses or Addresses.from_port_base()
        if token is None:
            token_file = (home or default_home()) / "auth_token"
            token = token_file.read_text().strip() if token_file.exists() else None
        self._token = token
        self._timeout = timeout
        self._channels: dict[str, aio.Channel] = {}
        self._governance_client: GovernanceClient | None = None

    def _channel(self, target: str) -> aio.Channel:
        if target not in self._channels:
            self._channels[target] = create_channel(
                target, token=self._token, default_timeout=self._timeout
            )
        return self._channels[target]

    @property
    def scheduler(self) -> scheduler_pb2_grpc.SchedulerServiceStub:
        return scheduler_pb2_grpc.SchedulerServiceStub(self._channel(self.addresses.scheduler))

    @property
    def gpu_manager(self) -> gpu_pb2_grpc.GpuManagerServiceStub:
        return gpu_pb2_grpc.GpuManagerServiceStub(self._channel(self.addresses.gpu_manager))

    @property
    def governance(self) -> governance_pb2_grpc.GovernanceServiceStub:
        return governance_pb2_grpc.GovernanceServiceStub(self._channel(self.addresses.governance))

    @property
    def executor(self) -> executor_pb2_grpc.ExecutorServiceStub:
        return executor_pb2_grpc.ExecutorServiceStub(self._channel(self.addresses.executor))

    @property
    def sweeps(self) -> SweepClient:
        """Sweeps the scheduler runs itself (clients.sweeps)."""
        return SweepClient(self._channel(self.addresses.scheduler), self._timeout)

    @property
    def tools(self) -> ResearchTools:
        """Preprocessing, DVC sync, checkpoints and code patches (clients.research_tools)."""
        return ResearchTools(self.executor, self._timeout)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
        self._governance_client = None

    async def __aenter__(self) -> ArcClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- scheduler ---------------------------------------------------------------------------

    async def create_experiment(self, spec: ExperimentSpec) -> tuple[Experiment, str]:
        reply = await unary(
            self.scheduler.CreateExperiment(
                scheduler_pb2.CreateExperimentRequest(
                    spec=to_proto(spec, common_pb2.ExperimentSpec)
                )
            )
        )
        return to_model(reply.experiment, Experiment), reply.duplicate_of

    def _submit_request(
        self,
        spec: ExperimentSpec | None,
        *,
        experiment_id: str = "",
        priority: int | None = None,
        max_retries: int = 0,
        timeout_seconds: int = 0,
        request_id: str = "",
        evaluation: scheduler_pb2.EvaluationJob | None = None,
    ) -> scheduler_pb2.SubmitJobRequest:
        request = scheduler_pb2.SubmitJobRequest(
            experiment_id=experiment_id,
            max_retries=max_retries,
            timeout_seconds=timeout_seconds,
            request_id=request_id,
        )
        if spec is not None:
            request.spec.CopyFrom(to_proto(spec, common_pb2.ExperimentSpec))
        if priority is not None:
            request.priority = priority
        if evaluation is not None:
            request.evaluation.CopyFrom(evaluation)  # the scheduler validates it
        return request

    async def submit(self, spec: ExperimentSpec | None = None, **options: Any) -> Job:
        reply = await unary(self.scheduler.SubmitJob(self._submit_request(spec, **options)))
        return to_model(reply.job, Job)

    async def submit_many(
        self, specs: list[ExperimentSpec], *, request_id: str = "", **options: Any
    ) -> list[Job]:
        reply = await unary(
            self.scheduler.SubmitJobs(
                scheduler_pb2.SubmitJobsRequest(
                    request_id=request_id,
                    jobs=[self._submit_request(spec, **options) for spec in specs],
                )
            )
        )
        return [to_model(r.job, Job) for r in reply.results]

    async def job(self, job_id: str) -> Job:
        reply = await unary(self.scheduler.GetJob(scheduler_pb2.GetJobRequest(job_id=job_id)))
        return to_model(reply.job, Job)

    async def jobs(self, *, state: JobState | None = None, experiment_id: str = "") -> list[Job]:
        out: list[Job] = []
        token = ""
        while True:
            reply = await unary(
                self.scheduler.ListJobs(
                    scheduler_pb2.ListJobsRequest(
                        page_size=500,
                        page_token=token,
                        experiment_id=experiment_id,
                        state=enum_value(common_pb2.JobState, state)
                        if state
                        else common_pb2.JOB_STATE_UNSPECIFIED,
                    )
                )
            )
            out += [to_model(j, Job) for j in reply.jobs]
            token = reply.next_page_token
            if not token:
                return out

    async def cancel(self, job_id: str, reason: str = "") -> Job:
        reply = await unary(
            self.scheduler.CancelJob(scheduler_pb2.CancelJobRequest(job_id=job_id, reason=reason))
        )
        return to_model(reply.job, Job)

    async def status(self, *, queued_limit: int = 0) -> SchedulerStatus:
        """Counts, GPUs and the head of the queue (``queued_limit`` jobs; 0: the server's
        default of 20)."""
        reply = await unary(
            self.scheduler.GetSchedulerStatus(
                scheduler_pb2.GetSchedulerStatusRequest(queued_limit=queued_limit)
            )
        )
        return to_model(reply.status, SchedulerStatus)

    async def experiment(self, experiment_id: str) -> Experiment:
        reply = await unary(
            self.scheduler.GetExperiment(
                scheduler_pb2.GetExperimentRequest(experiment_id=experiment_id)
            )
        )
        return to_model(reply.experiment, Experiment)

    async def watch(
        self,
        job_id: str,
        from_sequence: int = 0,
        *,
        batch: int = 256,
        batch_metrics: bool = False,
    ) -> AsyncIterator[JobEvent]:
        """A job's events after ``from_sequence``, until it ends; they arrive up to
        ``batch`` per message (1: one per message). With ``batch_metrics`` the metrics a
        trainer sent together come as one event (``event.metrics``, still packed:
        ``arc_common.packed.unpack`` opens it), numbered by its last metric: far fewer
        events for a client that follows many jobs; resuming after that number goes on
        after the batch."""
        call = self.scheduler.WatchJob(
            scheduler_pb2.WatchJobRequest(
                job_id=job_id,
                from_sequence=from_sequence,
                max_events_per_response=batch,
                batch_metrics=batch_metrics,
            )
        )
        async with contextlib.aclosing(stream(call)) as replies:
            async for reply in replies:
                for event in reply.events if batch > 1 else [reply.event]:
                    yield to_model(event, JobEvent)

    async def wait(self, job_id: str, *, poll_seconds: float = 0.5) -> Job:
        while True:
            job = await self.job(job_id)
            if job.state in TERMINAL_STATES:
                return job
            await asyncio.sleep(poll_seconds)

    # --- gpu-manager -------------------------------------------------------------------------

    async def gpus(self) -> list[Gpu]:
        reply = await unary(self.gpu_manager.ListGpus(gpu_pb2.ListGpusRequest()))
        return [to_model(g, Gpu) for g in reply.gpus]

    # --- governance ----------------------------------------------------------------------------

    @property
    def _governance(self) -> GovernanceClient:
        if self._governance_client is None:
            self._governance_client = GovernanceClient(
                self._channel(self.addresses.governance), timeout=self._timeout
            )
        return self._governance_client

    async def validate(
        self, tool: Tool, parameters: dict[str, Any], *, dry_run: bool = True
    ) -> Decision:
        return await self._governance.validate(tool, parameters, dry_run=dry_run)

    async def mode(self) -> tuple[Mode, str]:
        status = await self._governance.mode()
        return status.mode, status.policy_version

    async def set_mode(self, mode: Mode, reason: str = "") -> Mode:
        return await self._governance.set_mode(mode, reason=reason)

    async def pending(self) -> list[PendingRequest]:
        return await self._governance.pending(limit=1000)

    async def decide(
        self, pending_request_id: str, *, approve: bool, reason: str = ""
    ) -> PendingRequest:
        return await self._governance.decide(pending_request_id, approve=approve, reason=reason)

    async def audit(self, **filters: Any) -> tuple[list[AuditRecord], str]:
        """Audit records and the next page's token (GovernanceClient.audit's filters)."""
        return await self._governance.audit(**filters)

    async def verify_audit(self) -> AuditCheck:
        return await self._governance.verify_audit()

    # --- executor tools ------------------------------------------------------------------------

    async def visualize(
        self,
        checkpoint_path: str,
        data_path: str,
        *,
        split: str = "test",
        num_images: int = 8,
        output_dir: str = "",
    ) -> tuple[list[dict[str, Any]], str]:
        reply = await unary(
            self.executor.GenerateVisualizations(
                executor_pb2.GenerateVisualizationsRequest(
                    checkpoint_path=checkpoint_path,
                    data_path=data_path,
                    split=split,
                    num_images=num_images,
                    output_dir=output_dir,
                ),
                timeout=max(self._timeout, 600),
            )
        )
        images = [
            {
                "path": i.path,
                "true_class": i.true_class,
                "predicted_class": i.predicted_class,
                "probability": i.probability,
            }
            for i in reply.images
        ]
        return images, reply.index_path

    async def reveal_test(self, experiment_id: str, *, reason: str = "") -> Experiment:
        """Operator: release a sealed experiment's test figures to agent tokens."""
        reply = await unary(
            self.scheduler.RevealTestMetrics(
                scheduler_pb2.RevealTestMetricsRequest(experiment_id=experiment_id, reason=reason),
                timeout=self._timeout,
            )
        )
        return to_model(reply.experiment, Experiment)

    async def history(
        self, spec: ExperimentSpec, *, limit: int = 0, metric: str = ""
    ) -> scheduler_pb2.GetHistoryResponse:
        """The completed trainings nearest to ``spec`` on its data, the best per family."""
        reply: scheduler_pb2.GetHistoryResponse = await unary(
            self.scheduler.GetHistory(
                scheduler_pb2.GetHistoryRequest(
                    spec=to_proto(spec, common_pb2.ExperimentSpec), limit=limit, metric=metric
                ),
                timeout=self._timeout,
            )
        )
        return reply

    async def compare(
        self,
        checkpoint_path_a: str,
        checkpoint_path_b: str,
        data_path: str,
        *,
        split: str = "test",
        dataset_id: str = "",
        with_scores: bool = False,
    ) -> dict[str, Any]:
        """Paired DeLong comparison of two checkpoints on the same images (b minus a);
        ``with_scores``: each image's label and both scores too."""
        reply = await unary(
            self.executor.CompareCheckpoints(
                executor_pb2.CompareCheckpointsRequest(
                    checkpoint_path_a=checkpoint_path_a,
                    checkpoint_path_b=checkpoint_path_b,
                    data_path=data_path,
                    split=split,
                    dataset_id=dataset_id,
                    with_scores=with_scores,
                ),
                timeout=max(self._timeout, 600),
            )
        )
        return _with_zeros(reply.comparison)

    async def evaluate(
        self,
        checkpoint_path: str,
        data_path: str,
        *,
        split: str = "test",
        bootstrap_samples: int = 1000,
        seed: int = 0,
        dataset_id: str = "",
    ) -> dict[str, Any]:
        reply = await unary(
            self.executor.EvaluateCheckpoint(
                executor_pb2.EvaluateCheckpointRequest(
                    checkpoint_path=checkpoint_path,
                    data_path=data_path,
                    split=split,
                    bootstrap_samples=bootstrap_samples,
                    seed=seed,
                    dataset_id=dataset_id,
                ),
                timeout=max(self._timeout, 600),
            )
        )
        return _with_zeros(reply.report)


def _with_zeros(message: Message) -> dict[str, Any]:
    """A report as a dict, zeros included: a sensitivity of 0 is a figure, not a gap."""
    out: dict[str, Any] = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return out
