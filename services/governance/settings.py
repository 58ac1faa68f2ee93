"""Settings of the governance service."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from arc_common.settings import ServiceSettings


class GovernanceSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="ARC_GOVERNANCE_", extra="forbid", frozen=True, populate_by_name=True
    )
