"""ExecutorService (run half): converts requests, calls the RunManager, converts back.

The tool RPCs (PreprocessDataset, EvaluateCheckpoint, ...) answer UNIMPLEMENTED until
the tools land (issue 7)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from arc.executor.v1 import executor_pb2, executor_pb2_grpc
from arc_common.convert import to_model, to_proto
from arc_common.errors import InvalidArgumentError
from arc_common.models import Lease, TrainingJobConfig
from services.executor.runs import RunManager


class ExecutorServicer(executor_pb2_grpc.ExecutorServiceServicer):
    def __init__(self, runs: RunManager) -> None:
        self._runs = runs

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
        lease = to_model(request.lease, Lease, prefix="lease")
        run = await self._runs.start(config, lease, request_id=request.request_id)
        return executor_pb2.StartRunResponse(run=to_proto(run, executor_pb2.Run))

    async def GetRun(
        self, request: executor_pb2.GetRunRequest, context: Any
    ) -> executor_pb2.GetRunResponse:
        run = await self._runs.get(request.run_id)
        return executor_pb2.GetRunResponse(run=to_proto(run, executor_pb2.Run))

    async def CancelRun(
        self, request: executor_pb2.CancelRunRequest, context: Any
    ) -> executor_pb2.CancelRunResponse:
        run = await self._runs.cancel(request.run_id, request.reason)
        return executor_pb2.CancelRunResponse(run=to_proto(run, executor_pb2.Run))

    async def StreamRunEvents(
        self, request: executor_pb2.StreamRunEventsRequest, context: Any
    ) -> AsyncIterator[executor_pb2.StreamRunEventsResponse]:
        if request.from_sequence < 0:
            raise InvalidArgumentError(
                f"from_sequence must be >= 0 (got {request.from_sequence})",
                field="from_sequence",
            )
        await self._runs.get(request.run_id)  # NOT_FOUND for an unknown run
        run_id = request.run_id
        async for event in self._runs.events.follow(
            run_id, request.from_sequence, is_finished=lambda: self._runs.is_finished(run_id)
        ):
            yield executor_pb2.StreamRunEventsResponse(event=to_proto(event, executor_pb2.RunEvent))
