"""Settings of the governance service."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from arc_common.settings import ServiceSettings


class GovernanceSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="ARC_GOVERNANCE_", extra="forbid", frozen=True, populate_by_name=True
    )

    # A SUPERVISED request nobody decides on expires after this.
    pending_ttl_seconds: float = Field(default=3600.0, gt=0)
    # An open transaction whose holder vanished is rolled back after this.
    transaction_timeout_seconds: float = Field(default=3600.0, gt=0)
    # The longest a caller may ask a transaction to stay open (BeginTransaction).
    max_transaction_timeout_seconds: float = Field(default=86400.0, gt=0, le=366 * 86400)
    max_snapshot_bytes: int = Field(default=2 * 1024**3, ge=1024)
    housekeeping_interval_seconds: float = Field(default=1.0, gt=0)
    # How often the audit records added since the last check are verified (also at start).
    audit_verify_interval_seconds: float = Field(default=60.0, gt=0)
