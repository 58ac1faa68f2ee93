"""Lease checks against the gpu-manager, over gRPC, and the heartbeat of a run's lease.

A lease a caller presents is a claim, not a fact: before anything runs on its GPUs the
gpu-manager is asked that the lease is live, that its fencing token is the one presented
and that it holds exactly the GPUs named. ``verify`` asks without renewing (GetLease), so a
caller shown someone else's lease cannot keep it alive; ``renew`` is the holder's heartbeat.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Protocol

from grpc import aio

from arc.gpu.v1 import gpu_pb2, gpu_pb2_grpc
from arc_common.convert import to_model
from arc_common.errors import (
    ArcError,
    FailedPreconditionError,
    InvalidArgumentError,
    PermissionDeniedError,
    UnavailableError,
)
from arc_common.models import Lease
from arc_common.rpc import unary

logger = logging.getLogger(__name__)

RPC_TIMEOUT = 10.0


class LeaseVerifier(Protocol):
    async def verify(self, lease: Lease) -> Lease:
        """The lease as the gpu-manager holds it, when it matches the one presented."""


def check_same(presented: Lease, held: Lease) -> None:
    """Refuse a presented lease whose token or GPUs differ from the gpu-manager's."""
    if presented.fencing_token != held.fencing_token:
        raise FailedPreconditionError(
            f"lease {presented.lease_id}: fencing token {presented.fencing_token} is not the "
            "lease's current token",
            field="lease.fencing_token",
        )
    named = presented.gpu_indices
    if len(set(named)) != len(named) or sorted(named) != sorted(held.gpu_indices):
        raise FailedPreconditionError(
            f"lease {presented.lease_id} holds GPUs {sorted(held.gpu_indices)}, not {named}",
            field="lease.gpu_indices",
        )
    if presented.job_id and presented.job_id != held.job_id:
        raise FailedPreconditionError(
            f"lease {presented.lease_id} belongs to job {held.job_id!r}, not {presented.job_id!r}",
            field="lease.job_id",
        )


def check_for_job(job_id: str, lease: Lease) -> None:
    """A lease presented to run ``job_id``: that job's (when it names one), with GPUs."""
    if lease.job_id and lease.job_id != job_id:
        raise FailedPreconditionError(
            f"lease {lease.lease_id} belongs to job {lease.job_id}, not {job_id}", field="lease"
        )
    if not lease.gpu_indices:
        raise InvalidArgumentError("lease.gpu_indices is empty", field="lease")


class GrpcLeaseChecker:
    def __init__(self, channel: aio.Channel) -> None:
        self._stub = gpu_pb2_grpc.GpuManagerServiceStub(channel)

    async def renew(self, lease: Lease) -> Lease:
        """The holder's heartbeat; the renewed lease must be the one presented."""
        reply = await unary(
            self._stub.RenewLease(
                gpu_pb2.RenewLeaseRequest(
                    lease_id=lease.lease_id, fencing_token=lease.fencing_token
                ),
                timeout=RPC_TIMEOUT,
            )
        )
        renewed = to_model(reply.lease, Lease)
        check_same(lease, renewed)
        return renewed

    async def verify(self, lease: Lease) -> Lease:
        """Read-only: refused unless live, same token, same GPUs and none of them reserved."""
        if not lease.lease_id:
            raise FailedPreconditionError("lease.lease_id is required", field="lease.lease_id")
        try:
            reply = await unary(
                self._stub.GetLease(
                    gpu_pb2.GetLeaseRequest(lease_id=lease.lease_id), timeout=RPC_TIMEOUT
                )
            )
        except UnavailableError:
            raise
        except ArcError as exc:  # unknown, expired, malformed: not a lease to run on
            raise FailedPreconditionError(
                f"lease {lease.lease_id!r} refused by the gpu-manager: {exc}", field="lease"
            ) from exc
        held = to_model(reply.lease, Lease)
        check_same(lease, held)
        if reply.reserved_gpu_indices:
            raise PermissionDeniedError(
                f"lease {lease.lease_id} holds reserved GPU{reply.reserved_gpu_indices[0]}; "
                "no tool runs on a reserved GPU",
                field="lease.gpu_indices",
            )
        return held


class LeaseChecker(Protocol):
    async def renew(self, lease: Lease) -> Lease:
        """Renew the lease; FailedPreconditionError when its token is stale."""
        ...


def renew_interval(lease: Lease, heartbeat_seconds: float) -> float:
    """``heartbeat_seconds``, or when 0 a third of what is left of the lease's TTL."""
    ttl = 30.0
    if lease.expire_time is not None:
        ttl = max(1.0, (lease.expire_time - datetime.now(UTC)).total_seconds())
    return heartbeat_seconds or max(0.2, ttl / 3)


async def keep_renewed(
    leases: LeaseChecker, lease: Lease, *, interval: float, run_id: str
) -> FailedPreconditionError:
    """Renew ``lease`` every ``interval`` seconds until it is refused (a stale token:
    someone else holds the GPUs now); that refusal is returned. A renewal that fails
    otherwise (the gpu-manager is down) is retried at the next beat."""
    while True:
        await asyncio.sleep(interval)
        try:
            await leases.renew(lease)
        except FailedPreconditionError as exc:
            return exc
        except ArcError as exc:
            logger.warning("run %s: lease renewal failed (%s); retrying", run_id, exc)
