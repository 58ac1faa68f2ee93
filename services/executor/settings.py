"""Settings of the executor service."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from arc_common.settings import ServiceSettings


class ExecutorSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="ARC_EXECUTOR_", extra="forbid", frozen=True, populate_by_name=True
    )
