"""Settings of the scheduler service."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import SettingsConfigDict

from arc_common.settings import ServiceSettings


class NodeAddress(BaseModel):
    """One machine: its gpu-manager and the executor beside it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    gpu_manager: str
    executor: str


class SchedulerSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="ARC_SCHEDULER_", extra="forbid", frozen=True, populate_by_name=True
    )

    # Every (gpu-manager, executor) pair to use, as JSON in ARC_SCHEDULER_NODES.
    nodes: tuple[NodeAddress, ...] = (
        NodeAddress(name="local", gpu_manager="127.0.0.1:50052", executor="127.0.0.1:50054"),
    )
    # Governance checks every experiment and job; empty turns the checks off (tests only).
    governance_address: str = "127.0.0.1:50053"
    service_token: str = ""
    lease_ttl_seconds: int = Field(default=60, ge=5, le=3600)
    # Seconds before retry n: base * 2**(n-1), capped.
    retry_backoff_seconds: float = Field(default=2.0, ge=0)
    retry_backoff_max_seconds: float = Field(default=60.0, ge=0)
    # A node that does not answer this long has its running jobs requeued.
    node_down_seconds: float = Field(default=30.0, gt=0)
    probe_interval_seconds: float = Field(default=2.0, gt=0)
    dispatch_interval_seconds: float = Field(default=1.0, gt=0)
    event_flush_ms: int = Field(default=20, ge=1, le=1000)
    # The first job waiting for GPUs that a running job holds gets its trainer prepared
    # ahead (data opened, model built, no GPU touched) on that machine, at most this many
    # per machine; it starts training the moment the GPUs are released. 0 turns it off.
    prepared_per_node: int = Field(default=1, ge=0, le=16)
    # A PrepareRun that went unanswered (machine busy or unreachable, reply lost) is asked
    # again, with the same request id, after this many seconds; a refusal is final.
    prepare_retry_seconds: float = Field(default=10.0, gt=0)
    # GetSchedulerStatus lists at most this many queued jobs (queue_length counts all).
    status_queued_limit: int = Field(default=20, ge=0, le=1000)
    # Sweeps one caller may have running at once (each trial is still its own job).
    sweeps_per_caller: int = Field(default=8, ge=1, le=1000)
