"""The lease core: who may use which GPU, until when, with which fencing token.

No grpc here. One asyncio lock serialises every change, and each change is written to the
store before it is visible, so concurrent AcquireLease calls can never hand out the same GPU
twice and a restart finds exactly what was acknowledged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from arc_common.digest import params_digest
from arc_common.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    PermissionDeniedError,
    ResourceExhaustedError,
)
from arc_common.models import GpuPreference
from services.gpu_manager.store import LeaseRecord, LeaseStore

logger = logging.getLogger(__name__)

Clock = Callable[[], float]
# Free memory of a GPU in MiB from the latest telemetry (None when unknown).
FreeMemory = Callable[[int], int | None]


@dataclass(frozen=True)
class AcquireRequest:
    job_id: str
    preference: GpuPreference = GpuPreference.AUTO
    gpu_indices: tuple[int, ...] = ()
    gpu_count: int = 1
    min_free_memory_mib: int = 0
    ttl_seconds: float = 0.0
    request_id: str = ""


@dataclass(frozen=True)
class GpuAccounting:
    total: int
    leased: int
    free: int
    reserved: int


# Ids are stored and echoed in messages: longer ones are refused, not truncated.
MAX_ID_LENGTH = 256
MAX_FREE_MEMORY_MIB = 1 << 30  # 1 PiB: more than any GPU has


def _check_id(value: str, field: str) -> None:
    if len(value) > MAX_ID_LENGTH:
        raise InvalidArgumentError(
            f"{field} is at most {MAX_ID_LENGTH} characters (got {len(value)})", field=field
        )


def request_digest(request: AcquireRequest) -> str:
    """What an AcquireLease asked for, without its request id."""
    body = dataclasses.asdict(request)
    del body["request_id"]
    return params_digest(body)


def _fmt_seconds(seconds: float) -> str:
    return f"{max(0.0, seconds):.0f} s"


class LeaseCore:
    def __init__(
        self,
        *,
        gpu_indices: Sequence[int],
        reserved: Sequence[int],
        store: LeaseStore,
        clock: Clock,
        default_ttl_seconds: float = 60.0,
        max_ttl_seconds: float = 3600.0,
        free_memory: FreeMemory | None = None,
    ) -> None:
        self._gpus = sorted(set(gpu_indices))
        self._reserved = frozenset(i for i in reserved if i in self._gpus)
        self._store = store
        self._clock = clock
        self._default_ttl = default_ttl_seconds
        self._max_ttl = max_ttl_seconds
        self._free_memory = free_memory or (lambda _index: None)
        self._lock = asyncio.Lock()
        self._live: dict[str, LeaseRecord] = {}
        self._holder: dict[int, str] = {}  # gpu index -> lease id
        self._tokens: dict[int, int] = {}

    # --- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        """Load the durable state; leases that expired while we were down are reaped, and a
        row that cannot be a lease of this machine is quarantined (logged, kept, not live)
        instead of stopping the service."""
        self._tokens = await self._store.load_tokens()
        quarantined = 0
        for loaded in await self._store.load_live():
            if isinstance(loaded, LeaseRecord):
                lease_id, why = loaded.lease_id, self._unusable(loaded)
            else:
                lease_id, why = loaded
            if why or not isinstance(loaded, LeaseRecord):
                logger.error("lease row %r quarantined: %s", lease_id, why)
                await self._store.quarantine(lease_id, why)
                quarantined += 1
                continue
            self._live[lease_id] = loaded
            for index in loaded.gpu_indices:
                self._holder[index] = lease_id
                # A token on a lease but not on its GPU (should not happen) still counts.
                self._tokens[index] = max(self._tokens.get(index, 0), loaded.fencing_token)
        expired = await self.reap()
        logger.info(
            "lease state loaded: %d live leases, %d reaped on start, %d quarantined",
            len(self._live),
            len(expired),
            quarantined,
        )

    def _unusable(self, record: LeaseRecord) -> str:
        """Why a stored lease cannot be live here ('' when it can)."""
        indices = record.gpu_indices
        if not indices or not all(type(i) is int and i in self._gpus for i in indices):
            return f"gpu_indices {list(indices)} are not GPUs of this machine {self._gpus}"
        if len(set(indices)) != len(indices):
            return f"gpu_indices {list(indices)} repeat a GPU"
        held = [i for i in indices if i in self._holder]
        if held:
            return f"GPU{held[0]} is already held by lease {self._holder[held[0]]}"
        if type(record.fencing_token) is not int or record.fencing_token < 1:
            return f"fencing_token {record.fencing_token!r} is not a positive integer"
        times = (record.create_time, record.expire_time, record.ttl_seconds)
        if not all(isinstance(t, int | float) and math.isfinite(t) for t in times):
            return f"times {times!r} are not finite numbers"
        if record.expire_time > self._clock() + self._max_ttl:
            return f"expire_time is more than the longest TTL ({self._max_ttl:.0f} s) from now"
        return ""

    # --- queries -------------------------------------------------------------------------

    @property
    def gpu_indices(self) -> list[int]:
        return list(self._gpus)

    @property
    def reserved(self) -> frozenset[int]:
        return self._reserved

    def holder_of(self, index: int) -> LeaseRecord | None:
        lease_id = self._holder.get(index)
        return self._live.get(lease_id) if lease_id else None

    def live_leases(self) -> list[LeaseRecord]:
        return list(self._live.values())

    def accounting(self) -> GpuAccounting:
        """leased + free + reserved = total; a reserved GPU leased by an operator is leased."""
        leased = len(self._holder)
        reserved = len([i for i in self._reserved if i not in self._holder])
        return GpuAccounting(
            total=len(self._gpus),
            leased=leased,
            free=len(self._gpus) - leased - reserved,
            reserved=reserved,
        )

    def last_token(self, index: int) -> int:
        return self._tokens.get(index, 0)

    # --- commands ------------------------------------------------------------------------

    async def acquire(
        self, request: AcquireRequest, *, caller: str = "", operator: bool = False
    ) -> LeaseRecord:
        """A request id is the caller's own: the same body again gets the first lease (live
        or not), another body under it is ALREADY_EXISTS."""
        self._validate(request)
        digest = request_digest(request)
        async with self._lock:
            if request.request_id:
                earlier = await self._store.find_by_request_id(caller, request.request_id)
                if earlier is not None:
                    if earlier.request_digest != digest:
                        raise AlreadyExistsError(
                            f"request_id {request.request_id!r} was already used for another "
                            f"request (job {earlier.job_id!r}); use a new request_id",
                            field="request_id",
                        )
                    return self._live.get(earlier.lease_id, earlier)
            await self._reap_locked()
            chosen = self._choose(request, operator=operator)
            now = self._clock()
            ttl = self._ttl(request.ttl_seconds)
            token = max(self._tokens.get(i, 0) for i in chosen) + 1
            record = LeaseRecord(
                lease_id=uuid.uuid4().hex,
                job_id=request.job_id,
                request_id=request.request_id,
                gpu_indices=tuple(chosen),
                fencing_token=token,
                create_time=now,
                expire_time=now + ttl,
                ttl_seconds=ttl,
                caller=caller,
                request_digest=digest,
            )
            await self._store.grant(record)
            self._live[record.lease_id] = record
            for index in chosen:
                self._holder[index] = record.lease_id
                self._tokens[index] = token
            logger.info(
                "lease %s granted to job %s: GPUs %s, token %d, ttl %.0fs",
                record.lease_id,
                record.job_id,
                list(chosen),
                token,
                ttl,
            )
            return record

    async def renew(
        self, lease_id: str, fencing_token: int, ttl_seconds: float = 0.0
    ) -> LeaseRecord:
        self._check_lease_id(lease_id)
        self._check_ttl(ttl_seconds)
        async with self._lock:
            await self._reap_locked()
            record = self._live.get(lease_id)
            if record is None:
                raise FailedPreconditionError(await self._why_not_live(lease_id), field="lease_id")
            self._check_token(record, fencing_token)
            ttl = self._ttl(ttl_seconds) if ttl_seconds else record.ttl_seconds
            renewed = replace(record, expire_time=self._clock() + ttl, ttl_seconds=ttl)
            await self._store.update(renewed)
            self._live[lease_id] = renewed
            return renewed

    async def get(self, lease_id: str) -> LeaseRecord:
        """The live lease, changing nothing; FailedPreconditionError when it is not live."""
        self._check_lease_id(lease_id)
        async with self._lock:
            await self._reap_locked()
            record = self._live.get(lease_id)
            if record is None:
                raise FailedPreconditionError(await self._why_not_live(lease_id), field="lease_id")
            return record

    async def release(self, lease_id: str, fencing_token: int) -> bool:
        """Idempotent: False when the lease is already gone (released or expired)."""
        self._check_lease_id(lease_id)
        async with self._lock:
            record = self._live.get(lease_id)
            if record is None:
                return False
            self._check_token(record, fencing_token)
            await self._store.release_many([lease_id])
            self._drop(record)
            logger.info("lease %s of job %s released", lease_id, record.job_id)
            return True

    async def reap(self) -> list[LeaseRecord]:
        async with self._lock:
            return await self._reap_locked()

    # --- internals -------------------------------------------------------------------------

    async def _reap_locked(self) -> list[LeaseRecord]:
        now = self._clock()
        expired = [r for r in self._live.values() if r.expire_time <= now]
        if expired:
            await self._store.release_many([r.lease_id for r in expired])
            for record in expired:
                self._drop(record)
                logger.warning(
                    "lease %s of job %s expired (no heartbeat); GPUs %s freed",
                    record.lease_id,
                    record.job_id,
                    list(record.gpu_indices),
                )
        return expired

    def _drop(self, record: LeaseRecord) -> None:
        self._live.pop(record.lease_id, None)
        for index in record.gpu_indices:
            if self._holder.get(index) == record.lease_id:
                del self._holder[index]

    def _check_token(self, record: LeaseRecord, fencing_token: int) -> None:
        if fencing_token != record.fencing_token:
            raise FailedPreconditionError(
                f"stale fencing token {fencing_token} for lease {record.lease_id} "
                f"(current token is {record.fencing_token}); this holder no longer owns "
                f"GPUs {list(record.gpu_indices)}",
                field="fencing_token",
            )

    async def _why_not_live(self, lease_id: str) -> str:
        record = await self._store.find(lease_id)
        if record is None:
            return f"unknown lease {lease_id!r}"
        owners = sorted(
            {
                f"GPU{i} is now held by job {holder.job_id}"
                for i in record.gpu_indices
                if (holder := self.holder_of(i)) is not None
            }
        )
        tail = f"; {', '.join(owners)}" if owners else ""
        return (
            f"lease {lease_id} of job {record.job_id} is no longer live (expired or released){tail}"
        )

    def _ttl(self, requested: float) -> float:
        return self._default_ttl if requested <= 0 else requested

    @staticmethod
    def _check_lease_id(lease_id: str) -> None:
        if not lease_id:
            raise InvalidArgumentError("lease_id is required", field="lease_id")
        _check_id(lease_id, "lease_id")

    def _check_ttl(self, ttl_seconds: float) -> None:
        if not 0 <= ttl_seconds <= self._max_ttl:  # NaN fails too
            raise InvalidArgumentError(
                f"ttl_seconds must be between 1 and {self._max_ttl:.0f} "
                f"(got {ttl_seconds:g}; 0 uses the default {self._default_ttl:.0f})",
                field="ttl_seconds",
            )

    def _validate(self, request: AcquireRequest) -> None:
        if not request.job_id:
            raise InvalidArgumentError("job_id is required", field="job_id")
        _check_id(request.job_id, "job_id")
        _check_id(request.request_id, "request_id")
        self._check_ttl(request.ttl_seconds)
        if not 0 <= request.min_free_memory_mib <= MAX_FREE_MEMORY_MIB:
            raise InvalidArgumentError(
                f"min_free_memory_mib must be between 0 and {MAX_FREE_MEMORY_MIB} "
                f"(got {request.min_free_memory_mib})",
                field="min_free_memory_mib",
            )
        if request.preference is GpuPreference.SPECIFIC:
            if not request.gpu_indices:
                raise InvalidArgumentError(
                    "preference SPECIFIC needs gpu_indices", field="gpu_indices"
                )
            unknown = [i for i in request.gpu_indices if i not in self._gpus]
            if unknown:
                raise InvalidArgumentError(
                    f"GPU {unknown[0]} does not exist on this machine (GPUs here: {self._gpus})",
                    field="gpu_indices",
                )
            if len(set(request.gpu_indices)) != len(request.gpu_indices):
                raise InvalidArgumentError(
                    f"gpu_indices repeats a GPU: {list(request.gpu_indices)}", field="gpu_indices"
                )
        else:
            if request.gpu_indices:
                raise InvalidArgumentError(
                    "gpu_indices are only used with preference SPECIFIC", field="gpu_indices"
                )
            usable = len(self._gpus) - len(self._reserved)
            if request.gpu_count < 1 or request.gpu_count > usable:
                raise InvalidArgumentError(
                    f"gpu_count must be between 1 and {usable}, the unreserved GPUs of this "
                    f"machine (got {request.gpu_count})",
                    field="gpu_count",
                )

    def _fits_memory(self, index: int, minimum: int) -> bool:
        if minimum <= 0:
            return True
        free = self._free_memory(index)
        return free is None or free >= minimum

    def _choose(self, request: AcquireRequest, *, operator: bool) -> list[int]:
        if request.preference is GpuPreference.SPECIFIC:
            wanted = list(request.gpu_indices)
            reserved = [i for i in wanted if i in self._reserved]
            if reserved and not operator:
                raise PermissionDeniedError(
                    f"GPU{reserved[0]} is reserved (kept for the orchestrator); only the "
                    "operator role may lease it",
                    field="gpu_indices",
                )
            busy = [i for i in wanted if i in self._holder]
            short = [i for i in wanted if not self._fits_memory(i, request.min_free_memory_mib)]
            if busy or short:
                raise ResourceExhaustedError(self._exhausted_message(request, wanted))
            return wanted
        candidates = [
            i
            for i in self._gpus
            if i not in self._reserved
            and i not in self._holder
            and self._fits_memory(i, request.min_free_memory_mib)
        ]
        if len(candidates) < request.gpu_count:
            raise ResourceExhaustedError(self._exhausted_message(request, self._gpus))
        return candidates[: request.gpu_count]

    def _exhausted_message(self, request: AcquireRequest, considered: Sequence[int]) -> str:
        now = self._clock()
        parts: list[str] = []
        expiries: list[float] = []
        for index in considered:
            holder = self.holder_of(index)
            if holder is not None:
                expiries.append(holder.expire_time)
                parts.append(
                    f"GPU{index} busy with job {holder.job_id} "
                    f"(lease expires in {_fmt_seconds(holder.expire_time - now)})"
                )
            elif index in self._reserved:
                parts.append(f"GPU{index} reserved for the orchestrator")
            elif not self._fits_memory(index, request.min_free_memory_mib):
                parts.append(
                    f"GPU{index} has {self._free_memory(index)} MiB free, "
                    f"less than the {request.min_free_memory_mib} MiB asked"
                )
        need = len(request.gpu_indices) or request.gpu_count
        wanted = (
            f"GPUs {list(request.gpu_indices)}"
            if request.preference is GpuPreference.SPECIFIC
            else f"{need} GPU(s)"
        )
        message = f"no GPU available for job {request.job_id} (needs {wanted}): " + "; ".join(parts)
        if expiries:
            message += f"; the earliest lease expires in {_fmt_seconds(min(expiries) - now)}"
        return message + "; retry later or cancel a running job"
