"""Where GPU facts come from: NVML on a real machine, a simulation everywhere else.

NVML calls block, so the NVML backend runs them in a worker thread. The simulated backend
makes utilization and memory follow the leases, so the suite behaves as on a real machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, Protocol

from arc_common.models import GpuBackend

logger = logging.getLogger(__name__)

MIB = 1024 * 1024


@dataclass(frozen=True)
class GpuSample:
    index: int
    uuid: str
    name: str
    memory_total_bytes: int
    memory_used_bytes: int
    memory_free_bytes: int
    utilization_percent: float
    temperature_celsius: float
    power_watts: float
    processes: tuple[tuple[int, int], ...] = field(default=())  # (pid, used bytes)


class Backend(Protocol):
    kind: GpuBackend

    def device_count(self) -> int: ...

    async def sample(self, leased: Collection[int]) -> list[GpuSample]: ...

    def close(self) -> None: ...


class NvmlBackend:
    """Real GPUs through nvidia-ml-py (``import pynvml``)."""

    kind = GpuBackend.NVML

    def __init__(self, nvml: Any) -> None:
        self._nvml = nvml
        self._count = int(nvml.nvmlDeviceGetCount())

    @classmethod
    def start(cls) -> NvmlBackend:
        import pynvml

        pynvml.nvmlInit()
        return cls(pynvml)

    def device_count(self) -> int:
        return self._count

    def _optional(self, call: Any, *args: Any, default: Any = 0) -> Any:
        try:
            return call(*args)
        except self._nvml.NVMLError:
            return default

    def _sample_one(self, index: int) -> GpuSample:
        nvml = self._nvml
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        name = nvml.nvmlDeviceGetName(handle)
        uuid = nvml.nvmlDeviceGetUUID(handle)
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        util = self._optional(nvml.nvmlDeviceGetUtilizationRates, handle, default=None)
        temperature = self._optional(
            nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU
        )
        power_mw = self._optional(nvml.nvmlDeviceGetPowerUsage, handle)
        processes = self._optional(nvml.nvmlDeviceGetComputeRunningProcesses, handle, default=[])
        return GpuSample(
            index=index,
            uuid=name_str(uuid),
            name=name_str(name),
            memory_total_bytes=int(memory.total),
            memory_used_bytes=int(memory.used),
            memory_free_bytes=int(memory.free),
            utilization_percent=float(util.gpu) if util is not None else 0.0,
            temperature_celsius=float(temperature),
            power_watts=float(power_mw) / 1000.0,
            processes=tuple((int(p.pid), int(p.usedGpuMemory or 0)) for p in processes),
        )

    def _sample_all(self) -> list[GpuSample]:
        return [self._sample_one(i) for i in range(self._count)]

    async def sample(self, leased: Collection[int]) -> list[GpuSample]:
        return await asyncio.to_thread(self._sample_all)

    def close(self) -> None:
        with contextlib.suppress(self._nvml.NVMLError):  # harmless at shutdown
            self._nvml.nvmlShutdown()


def name_str(value: str | bytes) -> str:
    """Older NVML bindings return bytes."""
    return value.decode() if isinstance(value, bytes) else value


class SimulatedBackend:
    """N simulated GPUs whose load follows their leases (for machines without a driver)."""

    kind = GpuBackend.SIMULATED

    def __init__(
        self, count: int = 3, memory_mib: int = 81_920, name: str = "Simulated GPU"
    ) -> None:
        self._count = count
        self._memory = memory_mib * MIB
        self._name = name
        self._tick = 0

    def device_count(self) -> int:
        return self._count

    async def sample(self, leased: Collection[int]) -> list[GpuSample]:
        self._tick += 1
        samples = []
        for index in range(self._count):
            busy = index in leased
            # Deterministic wobble so watchers see telemetry move.
            wobble = math.sin(self._tick / 3 + index)
            util = 90.0 + 6.0 * wobble if busy else max(0.0, 1.0 + wobble)
            used = int(self._memory * (0.55 + 0.05 * wobble)) if busy else 512 * MIB
            samples.append(
                GpuSample(
                    index=index,
                    uuid=f"GPU-SIM-{index:02d}-0000-0000-000000000000",
                    name=self._name,
                    memory_total_bytes=self._memory,
                    memory_used_bytes=used,
                    memory_free_bytes=self._memory - used,
                    utilization_percent=round(util, 1),
                    temperature_celsius=round(33.0 + util * 0.45, 1),
                    power_watts=round(60.0 + util * 6.0, 1),
                )
            )
        return samples

    def close(self) -> None:
        return None


def create_backend(kind: str, *, simulated_count: int, simulated_memory_mib: int) -> Backend:
    """``auto`` tries NVML and falls back to simulation when there is no driver."""
    if kind in {"auto", "nvml"}:
        try:
            backend = NvmlBackend.start()
        except Exception as exc:
            if kind == "nvml":
                raise
            logger.warning(
                "NVML unavailable (%s: %s); using %d simulated GPUs",
                type(exc).__name__,
                exc,
                simulated_count,
            )
        else:
            logger.info("GPU backend: NVML, %d devices", backend.device_count())
            return backend
    logger.info("GPU backend: simulated, %d devices", simulated_count)
    return SimulatedBackend(simulated_count, simulated_memory_mib)
