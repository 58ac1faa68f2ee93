"""The NVML backend against a patched ``pynvml``, and the fallback when there is no driver."""

from __future__ import annotations

import sys
import types
from typing import Any

import pynvml
import pytest

from arc_common.models import GpuBackend
from services.gpu_manager.backends import NvmlBackend, SimulatedBackend, create_backend

GIB = 1024**3


class FakeNvml(types.SimpleNamespace):
    """Two devices; device 1 does not support power readings (as some boards don't)."""

    NVMLError = pynvml.NVMLError
    NVML_TEMPERATURE_GPU = 0

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.shutdown = False

    def nvmlInit(self) -> None:
        self.calls.append("init")

    def nvmlShutdown(self) -> None:
        self.shutdown = True

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> Any:
        return b"NVIDIA H200" if handle == 0 else "NVIDIA H200"

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return f"GPU-fake-{handle}"

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        return types.SimpleNamespace(total=141 * GIB, used=(handle + 1) * GIB, free=0)

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        return types.SimpleNamespace(gpu=37 + handle, memory=5)

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        return 41 + handle

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        if handle == 1:
            raise pynvml.NVMLError_NotSupported()
        return 123_500

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[Any]:
        if handle == 0:
            return [types.SimpleNamespace(pid=4242, usedGpuMemory=2 * GIB)]
        return [types.SimpleNamespace(pid=99, usedGpuMemory=None)]


async def test_nvml_backend_reads_every_field() -> None:
    fake = FakeNvml()
    backend = NvmlBackend(fake)
    samples = await backend.sample(leased=())
    assert [s.index for s in samples] == [0, 1]
    first, second = samples
    assert first.name == "NVIDIA H200" and first.uuid == "GPU-fake-0"
    assert first.memory_total_bytes == 141 * GIB and first.memory_used_bytes == GIB
    assert first.utilization_percent == 37 and first.temperature_celsius == 41
    assert first.power_watts == pytest.approx(123.5)
    assert first.processes == ((4242, 2 * GIB),)
    assert second.power_watts == 0.0  # NotSupported is not fatal
    assert second.processes == ((99, 0),)
    backend.close()
    assert fake.shutdown


def test_no_driver_falls_back_to_simulated(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_library() -> None:
        raise pynvml.NVMLError_LibraryNotFound()

    monkeypatch.setattr(pynvml, "nvmlInit", no_library)
    backend = create_backend("auto", simulated_count=3, simulated_memory_mib=8192)
    assert backend.kind is GpuBackend.SIMULATED
    assert backend.device_count() == 3
    with pytest.raises(pynvml.NVMLError_LibraryNotFound):
        create_backend("nvml", simulated_count=3, simulated_memory_mib=8192)


def test_auto_uses_nvml_when_driver_present(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeNvml()
    fake_module = types.ModuleType("pynvml")
    for name in dir(fake):
        if name.startswith(("nvml", "NVML")):
            setattr(fake_module, name, getattr(fake, name))
    monkeypatch.setitem(sys.modules, "pynvml", fake_module)
    backend = create_backend("auto", simulated_count=3, simulated_memory_mib=8192)
    assert backend.kind is GpuBackend.NVML
    assert backend.device_count() == 2
    assert fake.calls == ["init"]


async def test_simulated_load_follows_leases() -> None:
    backend = SimulatedBackend(3, 16_384)
    idle = await backend.sample(leased=())
    busy = await backend.sample(leased={1})
    assert all(s.utilization_percent < 5 for s in idle)
    assert busy[1].utilization_percent > 80
    assert busy[1].memory_used_bytes > busy[0].memory_used_bytes
    for sample in busy:
        assert sample.memory_used_bytes + sample.memory_free_bytes == sample.memory_total_bytes
