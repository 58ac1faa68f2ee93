"""Bearer-token authentication and the one authorization table of the engine.

Tokens live in ``ARC_HOME/tokens.json`` (mode 0600), created on first start with one token
per role; the operator's token is also written to ``ARC_HOME/auth_token`` (mode 0600) so
the ``arc`` command and grpcurl users can read it. Health and reflection stay open.
"""

from __future__ import annotations

import contextvars
import fcntl
import hmac
import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from arc_common.errors import PermissionDeniedError, UnauthenticatedError

TOKENS_FILE = "tokens.json"
OPERATOR_TOKEN_FILE = "auth_token"
MIN_TOKEN_LENGTH = 16


class Role(StrEnum):
    AGENT = "agent"
    OPERATOR = "operator"
    SERVICE = "service"


@dataclass(frozen=True)
class Identity:
    name: str
    role: Role


current_identity: contextvars.ContextVar[Identity | None] = contextvars.ContextVar(
    "current_identity", default=None
)

# Methods that need no token: health checks and reflection, so grpcurl can list and probe.
OPEN_SERVICE_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)

_ALL = frozenset(Role)
_OPS = frozenset({Role.OPERATOR})
_OPS_SVC = frozenset({Role.OPERATOR, Role.SERVICE})

# The documented authorization table: every RPC of every service and the roles allowed.
# A method missing here is denied to everyone (default deny).
#
# Ownership, on top of the table (the scheduler enforces it, PERMISSION_DENIED naming the
# job): a job belongs to the identity that submitted it (its name in tokens.json, shown as
# Job.submitted_by). An agent may cancel only the jobs it submitted; operators and services
# may cancel any job, except that a job stored without a submitter (from before owners
# were kept) only an operator may cancel. The executor applies the same rule to the files a
# job wrote: an agent deletes checkpoints or writes visualizations only in the folders of its
# own jobs (services.executor.registry). Request ids are per identity too: one caller's
# request_id never answers with another caller's job, lease or experiment.
AUTHORIZATION: dict[str, frozenset[Role]] = {
    # scheduler: agents drive experiments; everyone reads.
    "/arc.scheduler.v1.SchedulerService/CreateExperiment": _ALL,
    "/arc.scheduler.v1.SchedulerService/GetExperiment": _ALL,
    "/arc.scheduler.v1.SchedulerService/ListExperiments": _ALL,
    "/arc.scheduler.v1.SchedulerService/SubmitJob": _ALL,
    "/arc.scheduler.v1.SchedulerService/SubmitJobs": _ALL,
    "/arc.scheduler.v1.SchedulerService/GetJob": _ALL,
    "/arc.scheduler.v1.SchedulerService/ListJobs": _ALL,
    "/arc.scheduler.v1.SchedulerService/CancelJob": _ALL,  # an agent: its own jobs only
    "/arc.scheduler.v1.SchedulerService/GetSchedulerStatus": _ALL,
    "/arc.scheduler.v1.SchedulerService/WatchJob": _ALL,
    "/arc.scheduler.v1.SchedulerService/GetHistory": _ALL,  # sealed figures redacted
    # Sealed test figures (arc_common.sealing) are released by an operator only.
    "/arc.scheduler.v1.SchedulerService/RevealTestMetrics": _OPS,
    # sweeps: an agent's trials are its own jobs, governed one by one; it cancels only the
    # sweeps it created.
    "/arc.scheduler.v1.SweepService/CreateSweep": _ALL,
    "/arc.scheduler.v1.SweepService/GetSweep": _ALL,
    "/arc.scheduler.v1.SweepService/ListSweeps": _ALL,
    "/arc.scheduler.v1.SweepService/WatchSweep": _ALL,
    "/arc.scheduler.v1.SweepService/CancelSweep": _ALL,
    "/arc.scheduler.v1.SweepService/SuggestTrials": _ALL,  # its own sweeps only
    "/arc.scheduler.v1.SweepService/ReportTrial": _ALL,  # its own sweeps only
    # gpu-manager: only the scheduler/executor (service) or an operator hold leases.
    "/arc.gpu.v1.GpuManagerService/ListGpus": _ALL,
    "/arc.gpu.v1.GpuManagerService/WatchGpus": _ALL,
    "/arc.gpu.v1.GpuManagerService/AcquireLease": _OPS_SVC,
    "/arc.gpu.v1.GpuManagerService/RenewLease": _OPS_SVC,
    # Read-only: the executor checks a lease it is shown (token, GPUs) without renewing it.
    "/arc.gpu.v1.GpuManagerService/GetLease": _OPS_SVC,
    "/arc.gpu.v1.GpuManagerService/ReleaseLease": _OPS_SVC,
    # governance: agents ask; services transact; operators decide and read the audit.
    "/arc.governance.v1.GovernanceService/ValidateToolRequest": _ALL,
    "/arc.governance.v1.GovernanceService/BeginTransaction": _OPS_SVC,
    "/arc.governance.v1.GovernanceService/CommitTransaction": _OPS_SVC,
    "/arc.governance.v1.GovernanceService/RollbackTransaction": _OPS_SVC,
    "/arc.governance.v1.GovernanceService/GetMode": _ALL,
    "/arc.governance.v1.GovernanceService/SetMode": _OPS,
    "/arc.governance.v1.GovernanceService/ListPendingRequests": _ALL,
    "/arc.governance.v1.GovernanceService/ApproveRequest": _OPS,
    "/arc.governance.v1.GovernanceService/RejectRequest": _OPS,
    "/arc.governance.v1.GovernanceService/ListAuditRecords": _OPS_SVC,
    "/arc.governance.v1.GovernanceService/VerifyAuditLog": _OPS_SVC,
    # executor: runs are started by the scheduler; tools are agents' (governed by policy).
    "/arc.executor.v1.ExecutorService/StartRun": _OPS_SVC,
    "/arc.executor.v1.ExecutorService/PrepareRun": _OPS_SVC,
    "/arc.executor.v1.ExecutorService/ActivateRun": _OPS_SVC,
    "/arc.executor.v1.ExecutorService/GetRun": _ALL,
    "/arc.executor.v1.ExecutorService/CancelRun": _OPS_SVC,
    "/arc.executor.v1.ExecutorService/StreamRunEvents": _ALL,
    "/arc.executor.v1.ExecutorService/PreprocessDataset": _ALL,
    "/arc.executor.v1.ExecutorService/EvaluateCheckpoint": _ALL,
    "/arc.executor.v1.ExecutorService/CompareCheckpoints": _ALL,
    "/arc.executor.v1.ExecutorService/ListCheckpoints": _ALL,
    "/arc.executor.v1.ExecutorService/DeleteCheckpoint": _ALL,
    "/arc.executor.v1.ExecutorService/GenerateVisualizations": _ALL,
    "/arc.executor.v1.ExecutorService/SyncDatasets": _ALL,
    "/arc.executor.v1.ExecutorService/ApplyCodePatch": _ALL,
    "/arc.executor.v1.ExecutorService/ResolveSource": _ALL,
    "/arc.executor.v1.ExecutorService/CheckDataset": _ALL,
}


def is_open_method(method: str) -> bool:
    return method.startswith(OPEN_SERVICE_PREFIXES)


def authorize(method: str, identity: Identity) -> None:
    """Raise PermissionDeniedError unless the table lets ``identity`` call ``method``."""
    allowed = AUTHORIZATION.get(method)
    if allowed is None or identity.role not in allowed:
        roles = ", ".join(sorted(r.value for r in allowed)) if allowed else "nobody"
        raise PermissionDeniedError(
            f"role {identity.role.value!r} ({identity.name}) may not call {method}; "
            f"allowed: {roles}"
        )


def parse_bearer(header: str | None) -> str:
    """The token from an ``authorization`` header value, or UnauthenticatedError."""
    if not header:
        raise UnauthenticatedError(
            "missing 'authorization' metadata; send 'authorization: Bearer <token>' "
            "(the operator token is in $ARC_HOME/auth_token)"
        )
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise UnauthenticatedError("malformed 'authorization' metadata; expected 'Bearer <token>'")
    return token


@dataclass(frozen=True)
class TokenEntry:
    name: str
    role: Role
    token: str


class TokenStore:
    """The workspace's tokens; lookups compare in constant time."""

    def __init__(self, entries: list[TokenEntry]) -> None:
        self._entries = list(entries)

    @classmethod
    def load(cls, home: Path) -> TokenStore:
        data = json.loads((home / TOKENS_FILE).read_text())
        return cls(
            [
                TokenEntry(name=e["name"], role=Role(e["role"]), token=e["token"])
                for e in data["tokens"]
            ]
        )

    @classmethod
    def ensure(cls, home: Path) -> TokenStore:
        """Load the tokens file, creating it (and ``auth_token``) on first start."""
        home.mkdir(parents=True, exist_ok=True)
        path = home / TOKENS_FILE
        with _locked(home / ".tokens.lock"):
            if not path.exists():
                entries = [
                    TokenEntry(name=role.value, role=role, token=secrets.token_urlsafe(32))
                    for role in Role
                ]
                payload = {
                    "tokens": [
                        {"name": e.name, "role": e.role.value, "token": e.token} for e in entries
                    ]
                }
                _write_private(path, json.dumps(payload, indent=2) + "\n")
                operator = next(e for e in entries if e.role is Role.OPERATOR)
                _write_private(home / OPERATOR_TOKEN_FILE, operator.token + "\n")
        return cls.load(home)

    def authenticate(self, token: str) -> Identity:
        found: TokenEntry | None = None
        for entry in self._entries:
            # Check every entry so timing does not reveal which one matched.
            if hmac.compare_digest(entry.token.encode(), token.encode()):
                found = entry
        if found is None:
            raise UnauthenticatedError("unknown token")
        return Identity(name=found.name, role=found.role)

    def token_for(self, role: Role) -> str:
        for entry in self._entries:
            if entry.role is role:
                return entry.token
        raise UnauthenticatedError(f"no {role.value} token in the tokens file")


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
