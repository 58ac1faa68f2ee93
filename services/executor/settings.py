"""Settings of the executor service."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from arc_common.settings import ServiceSettings
from services.executor.sandbox_users import parse_range


class ExecutorSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="ARC_EXECUTOR_", extra="forbid", frozen=True, populate_by_name=True
    )

    # The gpu-manager of this machine (leases are checked and renewed there).
    gpu_manager_address: str = "127.0.0.1:50052"
    # Token for calls to other services; empty reads the service token of the workspace.
    service_token: str = ""
    # Datasets may also live here (outside the workspace); empty means workspace only.
    data_root: Path | None = None
    # Seconds between lease renewals while a run lives; 0 means a third of the lease's TTL.
    heartbeat_seconds: float = Field(default=0.0, ge=0)
    # SIGTERM to the run's process group, then SIGKILL after this many seconds.
    cancel_grace_seconds: float = Field(default=5.0, ge=0)
    # DataLoader workers per run; -1 picks 0 on CPU and up to 4 on CUDA.
    dataloader_workers: int = Field(default=-1, ge=-1, le=32)
    log_every_steps: int = Field(default=10, ge=1)
    # Fork trainers from a process with torch already imported (off: each run cold-starts
    # a Python process that imports torch, seconds per run).
    warm_pool: bool = True
    # Events are committed in groups at most this often (one fsync per group, not per event).
    event_flush_ms: int = Field(default=20, ge=1, le=1000)
    stderr_tail_lines: int = Field(default=20, ge=1, le=500)
    # Every tool call is checked and transacted there; empty refuses all tool calls.
    governance_address: str = "127.0.0.1:50053"
    # How long a tool call waits for an operator's approval in SUPERVISED mode.
    approval_wait_seconds: int = Field(default=20, ge=0, le=300)
    # Git repositories agents may patch: name -> path inside the workspace.
    repositories: dict[str, str] = Field(default_factory=lambda: {"models": "code/models"})
    # DVC remote for SyncDatasets; empty uses a local directory remote in the workspace.
    dvc_remote: str = ""
    # At most this many dataset ids in one SyncDatasets call.
    max_sync_datasets: int = Field(default=100, ge=1, le=10_000)
    # Seconds a tool child process (evaluation, visualization) may run.
    tool_timeout_seconds: float = Field(default=600.0, gt=0)
    # A trainer running repository code (a spec's source) drops to this user when the
    # executor runs as root; it gets read access to its checkout and data, write access
    # to its run folder, and no credentials in its environment.
    sandbox_user: str = "nobody"
    # Each such trainer becomes a uid of its own from this range (uid = gid), so that runs
    # cannot touch each other and all of a run's processes end with it
    # (services.executor.sandbox_users); empty: every run is sandbox_user.
    sandbox_uids: str = "60600-61183"
    # Its resource limits (setrlimit); 0 leaves the platform's. An address-space limit
    # breaks CUDA (it maps far more than it uses): set it on CPU machines only.
    sandbox_open_files: int = Field(default=4096, ge=0, le=1_048_576)
    sandbox_processes: int = Field(default=4096, ge=0, le=1_000_000)
    sandbox_address_space_mb: int = Field(default=0, ge=0, le=16_777_216)
    # Runs start only while runs/ holds less than this (GB); 0: no quota.
    checkpoint_quota_gb: float = Field(default=0.0, ge=0, le=1_000_000)
    # For tests and the benchmark only, never in production: a fault or probe every
    # trainer runs (services.executor.trainer.faults), e.g. "nan_loss_at_step:2".
    trainer_faults: str = ""

    @field_validator("sandbox_uids")
    @classmethod
    def _uid_range(cls, value: str) -> str:
        parse_range(value)
        return value
