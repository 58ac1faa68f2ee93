"""The gpu-manager's domain object: backend + lease core + telemetry cache; no grpc."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime

from arc_common.models import Gpu, GpuProcess, Lease
from services.gpu_manager.backends import Backend, GpuSample
from services.gpu_manager.core import Clock, LeaseCore
from services.gpu_manager.settings import SIMULATED_DEFAULT_RESERVED, GpuManagerSettings
from services.gpu_manager.store import LeaseRecord, LeaseStore

logger = logging.getLogger(__name__)

MIB = 1024 * 1024


def _when(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


class GpuManager:
    def __init__(
        self,
        settings: GpuManagerSettings,
        *,
        backend: Backend,
        store: LeaseStore,
        clock: Clock = time.time,
    ) -> None:
        self.settings = settings
        self.backend = backend
        self._store = store
        reserved = settings.reserved_gpus
        if reserved is None:
            reserved = SIMULATED_DEFAULT_RESERVED if backend.kind.value == "simulated" else ()
        self._samples: dict[int, GpuSample] = {}
        self.core = LeaseCore(
            gpu_indices=range(backend.device_count()),
            reserved=reserved,
            store=store,
            clock=clock,
            default_ttl_seconds=settings.default_lease_ttl_seconds,
            max_ttl_seconds=settings.max_lease_ttl_seconds,
            free_memory=self._free_mib,
        )
        self._tasks: list[asyncio.Task[None]] = []

    def _free_mib(self, index: int) -> int | None:
        sample = self._samples.get(index)
        return sample.memory_free_bytes // MIB if sample else None

    async def start(self) -> None:
        await self._store.open()
        await self.core.open()
        await self.refresh()
        self._tasks = [
            asyncio.create_task(self._sample_loop(), name="gpu-telemetry"),
            asyncio.create_task(self._reap_loop(), name="lease-reaper"),
        ]
        logger.info(
            "gpu-manager ready: backend %s, %d GPUs, reserved %s",
            self.backend.kind.value,
            len(self.core.gpu_indices),
            sorted(self.core.reserved),
        )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._store.close()
        self.backend.close()

    async def refresh(self) -> None:
        leased = {i for i in self.core.gpu_indices if self.core.holder_of(i) is not None}
        try:
            samples = await self.backend.sample(leased)
        except Exception:
            logger.exception("telemetry sample failed; keeping the previous one")
            return
        self._samples = {s.index: s for s in samples}

    async def _sample_loop(self) -> None:
        interval = self.settings.telemetry_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            await self.refresh()

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reap_interval_seconds)
            try:
                await self.core.reap()
            except Exception:
                logger.exception("lease reaper failed")

    def gpus(self) -> list[Gpu]:
        """Latest telemetry merged with lease state."""
        out = []
        for index in self.core.gpu_indices:
            sample = self._samples.get(index)
            holder = self.core.holder_of(index)
            out.append(
                Gpu(
                    index=index,
                    uuid=sample.uuid if sample else "",
                    name=sample.name if sample else "",
                    memory_total_bytes=sample.memory_total_bytes if sample else 0,
                    memory_used_bytes=sample.memory_used_bytes if sample else 0,
                    memory_free_bytes=sample.memory_free_bytes if sample else 0,
                    utilization_percent=sample.utilization_percent if sample else 0.0,
                    temperature_celsius=sample.temperature_celsius if sample else 0.0,
                    power_watts=sample.power_watts if sample else 0.0,
                    reserved=index in self.core.reserved,
                    lease_holder=holder.job_id if holder else "",
                    lease_id=holder.lease_id if holder else "",
                    lease_expire_time=_when(holder.expire_time) if holder else None,
                    processes=[
                        GpuProcess(pid=pid, used_memory_bytes=used)
                        for pid, used in (sample.processes if sample else ())
                    ],
                    backend=self.backend.kind,
                    node=self.settings.node_name,
                )
            )
        return out

    def lease_model(self, record: LeaseRecord) -> Lease:
        return Lease(
            lease_id=record.lease_id,
            job_id=record.job_id,
            gpu_indices=list(record.gpu_indices),
            fencing_token=record.fencing_token,
            expire_time=_when(record.expire_time),
            create_time=_when(record.create_time),
            node=self.settings.node_name,
        )
