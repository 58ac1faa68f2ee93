"""GpuManagerService: converts requests, calls the manager, converts back. Nothing more."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from arc.gpu.v1 import gpu_pb2, gpu_pb2_grpc
from arc_common import auth
from arc_common.convert import enum_field, enum_value, to_proto
from arc_common.errors import InvalidArgumentError
from arc_common.models import GpuPreference
from arc_common.pagination import paginate
from services.gpu_manager.core import AcquireRequest
from services.gpu_manager.manager import GpuManager

MIN_WATCH_INTERVAL_MS = 20
MAX_WATCH_INTERVAL_MS = 60_000


def _is_operator() -> bool:
    identity = auth.current_identity.get()
    return identity is not None and identity.role is auth.Role.OPERATOR


def _caller() -> str:
    identity = auth.current_identity.get()
    return identity.name if identity is not None else ""


class GpuManagerServicer(gpu_pb2_grpc.GpuManagerServiceServicer):
    def __init__(self, manager: GpuManager) -> None:
        self._manager = manager

    def _gpus(self) -> list[gpu_pb2.Gpu]:
        return [to_proto(gpu, gpu_pb2.Gpu) for gpu in self._manager.gpus()]

    async def ListGpus(
        self, request: gpu_pb2.ListGpusRequest, context: Any
    ) -> gpu_pb2.ListGpusResponse:
        page, next_token = paginate(self._gpus(), request.page_size, request.page_token)
        counts = self._manager.core.accounting()
        return gpu_pb2.ListGpusResponse(
            gpus=page,
            next_page_token=next_token,
            backend=enum_value(gpu_pb2.GpuBackend, self._manager.backend.kind),
            total_count=counts.total,
            leased_count=counts.leased,
            free_count=counts.free,
            reserved_count=counts.reserved,
        )

    async def AcquireLease(
        self, request: gpu_pb2.AcquireLeaseRequest, context: Any
    ) -> gpu_pb2.AcquireLeaseResponse:
        preference = enum_field(request, "preference", GpuPreference, default=GpuPreference.AUTO)
        record = await self._manager.core.acquire(
            AcquireRequest(
                job_id=request.job_id,
                preference=preference,
                gpu_indices=tuple(request.gpu_indices),
                gpu_count=request.gpu_count or max(1, len(request.gpu_indices)),
                min_free_memory_mib=request.min_free_memory_mib,
                ttl_seconds=float(request.ttl_seconds),
                request_id=request.request_id,
            ),
            caller=_caller(),
            operator=_is_operator(),
        )
        return gpu_pb2.AcquireLeaseResponse(
            lease=to_proto(self._manager.lease_model(record), gpu_pb2.Lease)
        )

    async def RenewLease(
        self, request: gpu_pb2.RenewLeaseRequest, context: Any
    ) -> gpu_pb2.RenewLeaseResponse:
        record = await self._manager.core.renew(
            request.lease_id, request.fencing_token, float(request.ttl_seconds)
        )
        return gpu_pb2.RenewLeaseResponse(
            lease=to_proto(self._manager.lease_model(record), gpu_pb2.Lease)
        )

    async def GetLease(
        self, request: gpu_pb2.GetLeaseRequest, context: Any
    ) -> gpu_pb2.GetLeaseResponse:
        record = await self._manager.core.get(request.lease_id)
        reserved = self._manager.core.reserved
        return gpu_pb2.GetLeaseResponse(
            lease=to_proto(self._manager.lease_model(record), gpu_pb2.Lease),
            reserved_gpu_indices=[i for i in record.gpu_indices if i in reserved],
        )

    async def ReleaseLease(
        self, request: gpu_pb2.ReleaseLeaseRequest, context: Any
    ) -> gpu_pb2.ReleaseLeaseResponse:
        released = await self._manager.core.release(request.lease_id, request.fencing_token)
        return gpu_pb2.ReleaseLeaseResponse(released=released)

    async def WatchGpus(
        self, request: gpu_pb2.WatchGpusRequest, context: Any
    ) -> AsyncIterator[gpu_pb2.WatchGpusResponse]:
        interval_ms = request.interval_ms or self._manager.settings.telemetry_interval_ms
        if not MIN_WATCH_INTERVAL_MS <= interval_ms <= MAX_WATCH_INTERVAL_MS:
            raise InvalidArgumentError(
                f"interval_ms must be between {MIN_WATCH_INTERVAL_MS} and "
                f"{MAX_WATCH_INTERVAL_MS} (got {interval_ms}; 0 uses the server's "
                f"{self._manager.settings.telemetry_interval_ms})",
                field="interval_ms",
            )
        # Each watcher reads the shared telemetry cache on its own schedule: a slow watcher
        # only slows its own stream (gRPC flow control), never the sampler or the leases.
        while True:
            now = Timestamp()
            now.FromDatetime(datetime.now(UTC))
            yield gpu_pb2.WatchGpusResponse(gpus=self._gpus(), time=now)
            await asyncio.sleep(interval_ms / 1000)
