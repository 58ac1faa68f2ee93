"""The gRPC implementation of the scheduler's NodeClient port (services.scheduler.ports);
its GovernanceClient is arc_common.governance_client's."""

from __future__ import annotations

from collections.abc import AsyncIterator

from grpc import aio

from arc.common.v1 import common_pb2
from arc.executor.v1 import executor_pb2, executor_pb2_grpc
from arc.gpu.v1 import gpu_pb2, gpu_pb2_grpc
from arc_common.convert import enum_value, to_model, to_proto
from arc_common.models import (
    ArchitectureSpec,
    CodeSource,
    DatasetSpec,
    EvaluationJob,
    Gpu,
    GpuAllocation,
    GpuPreference,
    Lease,
    Provenance,
    Run,
    RunEvent,
    SplitEvaluation,
    TrainingJobConfig,
)
from arc_common.rpc import unary
from arc_common.status import error_from_status
from services.scheduler.ports import GovernanceClient, NodeClient

__all__ = ["GovernanceClient", "GrpcNode", "NodeClient"]

RPC_TIMEOUT = 30.0


class GrpcNode:
    def __init__(self, name: str, gpu_channel: aio.Channel, executor_channel: aio.Channel) -> None:
        self.name = name
        self._gpu = gpu_pb2_grpc.GpuManagerServiceStub(gpu_channel)
        self._executor = executor_pb2_grpc.ExecutorServiceStub(executor_channel)

    async def acquire(
        self, job_id: str, allocation: GpuAllocation, *, ttl_seconds: int, request_id: str
    ) -> Lease:
        specific = allocation.preference is GpuPreference.SPECIFIC
        request = gpu_pb2.AcquireLeaseRequest(
            request_id=request_id,
            job_id=job_id,
            preference=enum_value(common_pb2.GpuPreference, allocation.preference),
            gpu_indices=allocation.gpu_indices if specific else [],
            gpu_count=allocation.count,
            min_free_memory_mib=allocation.min_free_memory_mib,
            ttl_seconds=ttl_seconds,
        )
        reply = await unary(self._gpu.AcquireLease(request, timeout=RPC_TIMEOUT))
        return to_model(reply.lease, Lease)

    async def release(self, lease: Lease) -> None:
        await unary(
            self._gpu.ReleaseLease(
                gpu_pb2.ReleaseLeaseRequest(
                    lease_id=lease.lease_id, fencing_token=lease.fencing_token
                ),
                timeout=RPC_TIMEOUT,
            )
        )

    async def list_gpus(self) -> list[Gpu]:
        reply = await unary(self._gpu.ListGpus(gpu_pb2.ListGpusRequest(), timeout=3))
        return [to_model(g, Gpu).model_copy(update={"node": self.name}) for g in reply.gpus]

    async def start_run(self, config: TrainingJobConfig, lease: Lease, *, request_id: str) -> Run:
        reply = await unary(
            self._executor.StartRun(
                executor_pb2.StartRunRequest(
                    request_id=request_id,
                    config=to_proto(config, common_pb2.TrainingJobConfig),
                    lease=to_proto(lease, gpu_pb2.Lease),
                ),
                timeout=RPC_TIMEOUT,
            )
        )
        return to_model(reply.run, Run)

    async def prepare_run(self, config: TrainingJobConfig, *, request_id: str) -> Run:
        reply = await unary(
            self._executor.PrepareRun(
                executor_pb2.PrepareRunRequest(
                    request_id=request_id, config=to_proto(config, common_pb2.TrainingJobConfig)
                ),
                timeout=RPC_TIMEOUT,
            )
        )
        return to_model(reply.run, Run)

    async def activate_run(self, run_id: str, lease: Lease, *, request_id: str) -> Run:
        reply = await unary(
            self._executor.ActivateRun(
                executor_pb2.ActivateRunRequest(
                    run_id=run_id, lease=to_proto(lease, gpu_pb2.Lease), request_id=request_id
                ),
                timeout=RPC_TIMEOUT,
            )
        )
        return to_model(reply.run, Run)

    async def get_run(self, run_id: str) -> Run:
        reply = await unary(
            self._executor.GetRun(executor_pb2.GetRunRequest(run_id=run_id), timeout=RPC_TIMEOUT)
        )
        return to_model(reply.run, Run)

    async def cancel_run(self, run_id: str, reason: str, *, prune: bool = False) -> Run:
        reply = await unary(
            self._executor.CancelRun(
                executor_pb2.CancelRunRequest(run_id=run_id, reason=reason, prune=prune),
                timeout=120,
            )
        )
        return to_model(reply.run, Run)

    async def evaluate(
        self,
        evaluation: EvaluationJob,
        lease: Lease,
        *,
        request_id: str,
        seconds: float,
        operator_job: bool = False,
    ) -> tuple[SplitEvaluation, Provenance]:
        reply = await unary(
            self._executor.EvaluateCheckpoint(
                executor_pb2.EvaluateCheckpointRequest(
                    request_id=request_id,
                    checkpoint_path=evaluation.checkpoint_path,
                    data_path=evaluation.data_path,
                    split=evaluation.split,
                    bootstrap_samples=evaluation.bootstrap_samples,
                    dataset_id=evaluation.dataset_id,
                    lease=to_proto(lease, gpu_pb2.Lease),
                    operator_job=operator_job,
                ),
                timeout=seconds,
            )
        )
        # Typed, not MessageToDict: that drops every field equal to zero.
        return (
            to_model(reply.report.evaluation, SplitEvaluation),
            to_model(reply.report.provenance, Provenance),
        )

    async def check_dataset(
        self, dataset: DatasetSpec, sealed: list[str], architecture: ArchitectureSpec
    ) -> None:
        await unary(
            self._executor.CheckDataset(
                executor_pb2.CheckDatasetRequest(
                    dataset=to_proto(dataset, common_pb2.DatasetSpec),
                    sealed_test_datasets=sealed,
                    architecture=to_proto(architecture, common_pb2.ArchitectureSpec),
                ),
                timeout=RPC_TIMEOUT,
            )
        )

    async def resolve_source(self, source: CodeSource) -> CodeSource:
        reply = await unary(
            self._executor.ResolveSource(
                executor_pb2.ResolveSourceRequest(source=to_proto(source, common_pb2.CodeSource)),
                timeout=RPC_TIMEOUT,
            )
        )
        return to_model(reply.source, CodeSource)

    async def events(self, run_id: str, after: int) -> AsyncIterator[RunEvent]:
        call = self._executor.StreamRunEvents(
            executor_pb2.StreamRunEventsRequest(run_id=run_id, from_sequence=after)
        )
        try:
            async for reply in call:
                yield to_model(reply.event, RunEvent)
        except aio.AioRpcError as exc:
            raise error_from_status(exc.code(), exc.details() or exc.code().name) from None
        finally:
            call.cancel()
