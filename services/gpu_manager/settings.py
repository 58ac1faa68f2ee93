"""Settings of the gpu-manager service."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from arc_common.settings import ServiceSettings

# The ARC machine: GPU0 and GPU1 for experiments, GPU2 kept for the orchestrator.
SIMULATED_DEFAULT_RESERVED = (2,)
MAX_LEASE_TTL_SECONDS = 24 * 3600.0


class GpuManagerSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="ARC_GPU_MANAGER_", extra="forbid", frozen=True, populate_by_name=True
    )

    # auto: NVML when a driver is there, else simulated GPUs.
    backend: Literal["auto", "nvml", "simulated"] = "auto"
    simulated_count: int = Field(default=3, ge=1, le=64)
    simulated_memory_mib: int = Field(default=81_920, ge=1024)
    # GPUs never leased to jobs. Unset: GPU2 with the simulated backend, none with NVML.
    reserved_gpus: tuple[int, ...] | None = None
    telemetry_interval_ms: int = Field(default=1000, ge=20, le=60_000)
    # The longest TTL an AcquireLease or RenewLease may ask for (a day at most: a lease
    # whose holder died must come back within bounded time).
    default_lease_ttl_seconds: float = Field(default=60.0, gt=0, le=MAX_LEASE_TTL_SECONDS)
    max_lease_ttl_seconds: float = Field(default=3600.0, gt=0, le=MAX_LEASE_TTL_SECONDS)
    reap_interval_seconds: float = Field(default=1.0, gt=0)
