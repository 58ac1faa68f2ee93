"""Lease checks against the gpu-manager, over gRPC."""

from __future__ import annotations

from grpc import aio

from arc.gpu.v1 import gpu_pb2, gpu_pb2_grpc
from arc_common.convert import to_model
from arc_common.models import Lease
from arc_common.rpc import unary


class GrpcLeaseChecker:
    def __init__(self, channel: aio.Channel) -> None:
        self._stub = gpu_pb2_grpc.GpuManagerServiceStub(channel)

    async def renew(self, lease: Lease) -> Lease:
        reply = await unary(
            self._stub.RenewLease(
                gpu_pb2.RenewLeaseRequest(
                    lease_id=lease.lease_id, fencing_token=lease.fencing_token
                ),
                timeout=10,
            )
        )
        return to_model(reply.lease, Lease)
