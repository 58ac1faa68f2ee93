"""ExecutorService: converts requests, calls the RunManager or the Tools, converts back."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from google.protobuf.message import Message

from arc.common.v1 import common_pb2
from arc.executor.v1 import executor_pb2, executor_pb2_grpc
from arc_common import auth, sealing
from arc_common.convert import (
    dict_to_proto,
    enum_field,
    enum_to_str,
    to_model,
    to_proto,
)
from arc_common.errors import InvalidArgumentError, PermissionDeniedError
from arc_common.ledger import RequestLedger
from arc_common.models import (
    ArchitectureSpec,
    CodeSource,
    DatasetSpec,
    Lease,
    MetricMode,
    PreprocessingChain,
    TrainingJobConfig,
)
from arc_common.models.specs import DEFAULT_BOOTSTRAP
from arc_common.pagination import paginate
from services.executor.pretrained import PretrainedWeights
from services.executor.runs import RunManager
from services.executor.tools.service import Tools

M = TypeVar("M", bound=Message)


def _identity() -> auth.Identity:
    identity = auth.current_identity.get()
    if identity is None:  # pragma: no cover - the interceptor always sets one
        raise PermissionDeniedError("no caller identity")
    return identity


MAX_LEASE_GPUS = 64
VISUALIZATION_METHODS = {
    executor_pb2.VISUALIZATION_METHOD_UNSPECIFIED: "gradcam",
    executor_pb2.VISUALIZATION_METHOD_GRAD_CAM: "gradcam",
    executor_pb2.VISUALIZATION_METHOD_ATTENTION: "attention",
}


def _lease(request: Any) -> Lease:
    """The request's lease; its GPU list bounded before anything uses it."""
    if len(request.lease.gpu_indices) > MAX_LEASE_GPUS:
        raise InvalidArgumentError(
            f"lease.gpu_indices may name at most {MAX_LEASE_GPUS} GPUs", field="lease.gpu_indices"
        )
    return to_model(request.lease, Lease, prefix="lease")


def _seals(config: TrainingJobConfig | None) -> bool:
    """An agent reads a sealed experiment's run without its test figures (releasing them
    is the scheduler's: RevealTestMetrics)."""
    return (
        config is not None
        and config.experiment_spec.seal_test
        and _identity().role is auth.Role.AGENT
    )


class ExecutorServicer(executor_pb2_grpc.ExecutorServiceServicer):
    def __init__(self, runs: RunManager, tools: Tools, ledger: RequestLedger) -> None:
        self._runs = runs
        self._tools = tools
        self._pretrained = PretrainedWeights()
        self._ledger = ledger

    async def _once(
        self, rpc: str, request: Any, response_type: type[M], call: Callable[[], Awaitable[M]]
    ) -> M:
        return await self._ledger.call(_identity().name, rpc, request, response_type, call)

    async def StartRun(
        self, request: executor_pb2.StartRunRequest, context: Any
    ) -> executor_pb2.StartRunResponse:
        if not request.HasField("config"):
            raise InvalidArgumentError("config is required", field="config")
        if not request.HasField("lease"):
            raise InvalidArgumentError(
                "lease is required: acquire one from the gpu-manager first", field="lease"
            )
        config = to_model(request.config, TrainingJobConfig, prefix="config")
        lease = _lease(request)
        run = await self._runs.start(config, lease, request_id=request.request_id)
        return executor_pb2.StartRunResponse(run=to_proto(run, executor_pb2.Run))

    async def PrepareRun(
        self, request: executor_pb2.PrepareRunRequest, context: Any
    ) -> executor_pb2.PrepareRunResponse:
        if not request.HasField("config"):
            raise InvalidArgumentError("config is required", field="config")
        config = to_model(request.config, TrainingJobConfig, prefix="config")
        run = await self._runs.prepare(config, request_id=request.request_id)
        return executor_pb2.PrepareRunResponse(run=to_proto(run, executor_pb2.Run))

    async def ActivateRun(
        self, request: executor_pb2.ActivateRunRequest, context: Any
    ) -> executor_pb2.ActivateRunResponse:
        if not request.run_id:
            raise InvalidArgumentError("run_id is required", field="run_id")
        if not request.HasField("lease"):
            raise InvalidArgumentError(
                "lease is required: acquire one from the gpu-manager first", field="lease"
            )
        lease = _lease(request)

        async def activate() -> executor_pb2.ActivateRunResponse:
            run = await self._runs.activate(request.run_id, lease)
            return executor_pb2.ActivateRunResponse(run=to_proto(run, executor_pb2.Run))

        # A retried activation (same request_id) gets the first answer.
        return await self._once("ActivateRun", request, executor_pb2.ActivateRunResponse, activate)

    async def GetRun(
        self, request: executor_pb2.GetRunRequest, context: Any
    ) -> executor_pb2.GetRunResponse:
        run = await self._runs.get(request.run_id)
        message = to_proto(run, executor_pb2.Run)
        if _seals(run.config) and message.HasField("result"):
            sealing.seal_result(message.result)
        return executor_pb2.GetRunResponse(run=message)

    async def CancelRun(
        self, request: executor_pb2.CancelRunRequest, context: Any
    ) -> executor_pb2.CancelRunResponse:
        async def cancel() -> executor_pb2.CancelRunResponse:
            run = await self._runs.cancel(request.run_id, request.reason, prune=request.prune)
            return executor_pb2.CancelRunResponse(run=to_proto(run, executor_pb2.Run))

        # A retried cancel (same request_id) gets the first answer, not FAILED_PRECONDITION.
        return await self._once("CancelRun", request, executor_pb2.CancelRunResponse, cancel)

    async def StreamRunEvents(
        self, request: executor_pb2.StreamRunEventsRequest, context: Any
    ) -> AsyncIterator[executor_pb2.StreamRunEventsResponse]:
        if request.from_sequence < 0:
            raise InvalidArgumentError(
                f"from_sequence must be >= 0 (got {request.from_sequence})",
                field="from_sequence",
            )
        run = await self._runs.get(request.run_id)  # NOT_FOUND for an unknown run
        sealed = _seals(run.config)
        run_id = request.run_id
        async for event in self._runs.events.follow(
            run_id, request.from_sequence, is_finished=lambda: self._runs.is_finished(run_id)
        ):
            message = to_proto(event, executor_pb2.RunEvent)
            if sealed and not sealing.seal_event(message):
                continue
            yield executor_pb2.StreamRunEventsResponse(event=message)

    # --- tools ------------------------------------------------------------------------------

    async def PreprocessDataset(
        self, request: executor_pb2.PreprocessDatasetRequest, context: Any
    ) -> executor_pb2.PreprocessDatasetResponse:
        return await self._once(
            "PreprocessDataset",
            request,
            executor_pb2.PreprocessDatasetResponse,
            lambda: self._PreprocessDataset(request),
        )

    async def _PreprocessDataset(
        self, request: executor_pb2.PreprocessDatasetRequest
    ) -> executor_pb2.PreprocessDatasetResponse:
        chain = to_model(request.chain, PreprocessingChain, prefix="chain")
        result = await self._tools.preprocess(
            caller=_identity().name,
            request_id=request.request_id,
            dataset_id=request.dataset_id,
            input_path=request.input_path,
            output_path=request.output_path,
            chain=chain,
            role=_identity().role,
        )
        manifest = {
            k: v
            for k, v in result.manifest.items()
            if k in executor_pb2.DatasetManifest.DESCRIPTOR.fields_by_name
        }
        return executor_pb2.PreprocessDatasetResponse(
            manifest=dict_to_proto(manifest, executor_pb2.DatasetManifest),
            failed_images=result.failed,
            reused=result.reused,
        )

    async def EvaluateCheckpoint(
        self, request: executor_pb2.EvaluateCheckpointRequest, context: Any
    ) -> executor_pb2.EvaluateCheckpointResponse:
        return await self._once(
            "EvaluateCheckpoint",
            request,
            executor_pb2.EvaluateCheckpointResponse,
            lambda: self._EvaluateCheckpoint(request),
        )

    async def _EvaluateCheckpoint(
        self, request: executor_pb2.EvaluateCheckpointRequest
    ) -> executor_pb2.EvaluateCheckpointResponse:
        lease = _lease(request) if request.HasField("lease") else None
        if lease is not None and _identity().role is auth.Role.AGENT:
            # Agents hold no leases (AcquireLease is not theirs): one an agent shows is
            # someone else's. A GPU evaluation is a scheduler job (SubmitJob.evaluation).
            raise PermissionDeniedError(
                "an agent may not pass a lease; submit an evaluation job to the scheduler",
                field="lease",
            )
        report, path = await self._tools.evaluate(
            caller=_identity().name,
            request_id=request.request_id,
            checkpoint_path=request.checkpoint_path,
            data_path=request.data_path,
            split=request.split,
            bootstrap=(
                request.bootstrap_samples
                if request.HasField("bootstrap_samples")
                else DEFAULT_BOOTSTRAP
            ),
            seed=int(request.seed),
            dataset_id=request.dataset_id,
            lease=lease,
            role=_identity().role,
            operator_job=request.operator_job,
        )
        fields = executor_pb2.EvaluationReport.DESCRIPTOR.fields_by_name
        return executor_pb2.EvaluateCheckpointResponse(
            report=dict_to_proto(
                {k: v for k, v in report.items() if k in fields}, executor_pb2.EvaluationReport
            ),
            report_path=path,
        )

    async def CompareCheckpoints(
        self, request: executor_pb2.CompareCheckpointsRequest, context: Any
    ) -> executor_pb2.CompareCheckpointsResponse:
        return await self._once(
            "CompareCheckpoints",
            request,
            executor_pb2.CompareCheckpointsResponse,
            lambda: self._CompareCheckpoints(request),
        )

    async def _CompareCheckpoints(
        self, request: executor_pb2.CompareCheckpointsRequest
    ) -> executor_pb2.CompareCheckpointsResponse:
        report, path = await self._tools.compare(
            caller=_identity().name,
            request_id=request.request_id,
            checkpoint_paths=(request.checkpoint_path_a, request.checkpoint_path_b),
            role=_identity().role,
            data_path=request.data_path,
            split=request.split,
            dataset_id=request.dataset_id,
        )
        fields = set(executor_pb2.CheckpointComparison.DESCRIPTOR.fields_by_name)
        if not request.with_scores:
            fields -= {"labels", "scores_a", "scores_b"}
        return executor_pb2.CompareCheckpointsResponse(
            comparison=dict_to_proto(
                {k: v for k, v in report.items() if k in fields},
                executor_pb2.CheckpointComparison,
            ),
            report_path=path,
        )

    async def ListCheckpoints(
        self, request: executor_pb2.ListCheckpointsRequest, context: Any
    ) -> executor_pb2.ListCheckpointsResponse:
        items = await self._tools.list_checkpoints(
            caller=_identity().name, checkpoint_dir=request.checkpoint_dir, run_id=request.run_id
        )
        page, token = paginate(items, request.page_size, request.page_token)
        return executor_pb2.ListCheckpointsResponse(
            checkpoints=[to_proto(c, common_pb2.CheckpointInfo) for c in page],
            next_page_token=token,
        )

    async def DeleteCheckpoint(
        self, request: executor_pb2.DeleteCheckpointRequest, context: Any
    ) -> executor_pb2.DeleteCheckpointResponse:
        return await self._once(
            "DeleteCheckpoint",
            request,
            executor_pb2.DeleteCheckpointResponse,
            lambda: self._DeleteCheckpoint(request),
        )

    async def _DeleteCheckpoint(
        self, request: executor_pb2.DeleteCheckpointRequest
    ) -> executor_pb2.DeleteCheckpointResponse:
        identity = _identity()
        retention = None
        if request.WhichOneof("target") == "retention":
            rule = request.retention
            mode = enum_field(
                rule, "mode", MetricMode, default=MetricMode.MAX, path="retention.mode"
            )
            retention = (rule.checkpoint_dir, rule.keep_best, rule.metric, mode)
        deleted, transaction_id = await self._tools.delete(
            caller=identity.name,
            role=identity.role,
            request_id=request.request_id,
            path=request.path,
            retention=retention,
        )
        return executor_pb2.DeleteCheckpointResponse(
            deleted_paths=deleted, transaction_id=transaction_id
        )

    async def GenerateVisualizations(
        self, request: executor_pb2.GenerateVisualizationsRequest, context: Any
    ) -> executor_pb2.GenerateVisualizationsResponse:
        return await self._once(
            "GenerateVisualizations",
            request,
            executor_pb2.GenerateVisualizationsResponse,
            lambda: self._GenerateVisualizations(request),
        )

    async def _GenerateVisualizations(
        self, request: executor_pb2.GenerateVisualizationsRequest
    ) -> executor_pb2.GenerateVisualizationsResponse:
        identity = _identity()
        method = VISUALIZATION_METHODS.get(request.method)
        if method is None:  # a value this server does not know
            raise InvalidArgumentError("method must be GRAD_CAM or ATTENTION", field="method")
        images, index = await self._tools.visualize(
            caller=identity.name,
            role=identity.role,
            request_id=request.request_id,
            checkpoint_path=request.checkpoint_path,
            data_path=request.data_path,
            split=request.split,
            count=request.num_images,
            output_dir=request.output_dir,
            method=method,
        )
        return executor_pb2.GenerateVisualizationsResponse(
            images=[dict_to_proto(i, executor_pb2.VisualizationImage) for i in images],
            index_path=index,
        )

    async def SyncDatasets(
        self, request: executor_pb2.SyncDatasetsRequest, context: Any
    ) -> executor_pb2.SyncDatasetsResponse:
        return await self._once(
            "SyncDatasets",
            request,
            executor_pb2.SyncDatasetsResponse,
            lambda: self._SyncDatasets(request),
        )

    async def _SyncDatasets(
        self, request: executor_pb2.SyncDatasetsRequest
    ) -> executor_pb2.SyncDatasetsResponse:
        direction = enum_to_str(executor_pb2.SyncDirection.DESCRIPTOR, request.direction)
        if direction not in {"push", "pull"}:  # unset or a value this server does not know
            raise InvalidArgumentError("direction must be PUSH or PULL", field="direction")
        transfers = await self._tools.sources.sync(
            caller=_identity().name,
            request_id=request.request_id,
            push=direction == "push",
            dataset_ids=list(request.dataset_ids),
            remote=request.remote,
        )
        return executor_pb2.SyncDatasetsResponse(
            transfers=[
                executor_pb2.DatasetTransfer(
                    dataset_id=t.dataset_id,
                    files_transferred=t.files,
                    bytes_transferred=t.bytes,
                    revision=t.revision,
                )
                for t in transfers
            ]
        )

    async def ApplyCodePatch(
        self, request: executor_pb2.ApplyCodePatchRequest, context: Any
    ) -> executor_pb2.ApplyCodePatchResponse:
        return await self._once(
            "ApplyCodePatch",
            request,
            executor_pb2.ApplyCodePatchResponse,
            lambda: self._ApplyCodePatch(request),
        )

    async def _ApplyCodePatch(
        self, request: executor_pb2.ApplyCodePatchRequest
    ) -> executor_pb2.ApplyCodePatchResponse:
        sha, plan = await self._tools.sources.patch(
            caller=_identity().name,
            request_id=request.request_id,
            repository=request.repository,
            patch=request.patch,
            message=request.message,
        )
        return executor_pb2.ApplyCodePatchResponse(
            commit_sha=sha,
            patch_sha256=plan.sha256,
            files_changed=plan.files,
            lines_added=plan.added,
            lines_removed=plan.removed,
        )

    async def ResolveSource(
        self, request: executor_pb2.ResolveSourceRequest, context: Any
    ) -> executor_pb2.ResolveSourceResponse:
        if not request.HasField("source"):
            raise InvalidArgumentError("source is required", field="source")
        source = to_model(request.source, CodeSource, prefix="source")
        resolved = await self._tools.sources.resolve(source)
        return executor_pb2.ResolveSourceResponse(source=to_proto(resolved, common_pb2.CodeSource))

    async def CheckDataset(
        self, request: executor_pb2.CheckDatasetRequest, context: Any
    ) -> executor_pb2.CheckDatasetResponse:
        if not request.HasField("dataset"):
            raise InvalidArgumentError("dataset is required", field="dataset")
        dataset = to_model(request.dataset, DatasetSpec, prefix="dataset")
        sealed = list(request.sealed_test_datasets)[:1000]
        classes, split = await self._tools.sources.check_dataset(dataset, sealed)
        if request.HasField("architecture"):
            architecture = to_model(request.architecture, ArchitectureSpec, prefix="architecture")
            await self._pretrained.check(architecture)
        return executor_pb2.CheckDatasetResponse(class_names=classes, split_folders=split)
