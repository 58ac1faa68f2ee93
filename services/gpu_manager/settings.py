"""Settings of the gpu-manager service."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from arc_common.settings import ServiceSettings


class GpuManagerSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="ARC_GPU_MANAGER_", extra="forbid", frozen=True, populate_by_name=True
    )
