"""Settings shared by every service; each service subclasses with its own env prefix."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_PORTS = {"scheduler": 50051, "gpu_manager": 50052, "governance": 50053, "executor": 50054}


class ServiceSettings(BaseSettings):
    """What every service process needs: where it listens, its workspace, TLS, limits.

    ``home`` is read from ``ARC_HOME`` for all services (one workspace, many services);
    the rest from ``ARC_<SERVICE>_<FIELD>``.
    """

    model_config = SettingsConfigDict(
        env_prefix="ARC_", extra="forbid", frozen=True, populate_by_name=True
    )

    # Only ARC_HOME: an alias "home" would match $HOME (env names ignore case).
    home: Path = Field(default=Path(".arc"), validation_alias="ARC_HOME")
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)
    # Written with the bound port once listening (useful with port 0).
    port_file: Path | None = None
    grace_seconds: float = Field(default=5.0, ge=0.0, le=300.0)
    max_message_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    log_level: str = "INFO"
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # With a client CA, clients must present a certificate it signed (mTLS).
    tls_client_ca_file: Path | None = None
    # Name of this machine as shown in GPU listings and job placement.
    node_name: str = "local"
