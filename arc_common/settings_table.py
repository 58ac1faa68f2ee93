"""docs/configuration.md's table, generated from the services' settings models.

``python -m arc_common.settings_table`` prints the table; ``--write docs/configuration.md``
replaces what stands between the markers there. ``tests/unit/test_settings_table.py`` fails
when that table is not the generated one or when a setting has no description, so the
table cannot drift from the code.

A description comes from the field's ``Field(description=...)``; where a field has none,
from ``FALLBACK`` below, keyed by the variable's name. The services are found, not listed:
every ``services/<name>/settings.py`` that defines a ``ServiceSettings`` subclass. The
settings every service shares are shown once, with ``<SERVICE>`` in their name.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import pkgutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from arc_common.settings import DEFAULT_PORTS, ServiceSettings

BEGIN = "<!-- settings:begin -->"
END = "<!-- settings:end -->"
SHARED = "<SERVICE>"

# Services in the order a reader meets them; any other service follows, by name.
ORDER = tuple(DEFAULT_PORTS)

# Read from the environment outside the settings models.
EXTRA: dict[str, tuple[str, str]] = {
    "ARC_SECRETS_DIR": ("`$ARC_HOME/.secrets`", "secret keys (see docs/security.md)"),
}

# Descriptions of the fields that have no ``Field(description=...)``.
FALLBACK: dict[str, str] = {
    "ARC_HOME": "the workspace: databases, tokens, policy, runs, data",
    "ARC_<SERVICE>_HOST": "address to listen on",
    "ARC_<SERVICE>_PORT": "port to listen on (0: any free one)",
    "ARC_<SERVICE>_PORT_FILE": "write the bound port here",
    "ARC_<SERVICE>_GRACE_SECONDS": "time in-flight calls get on SIGTERM",
    "ARC_<SERVICE>_MAX_MESSAGE_BYTES": "larger ones are RESOURCE_EXHAUSTED",
    "ARC_<SERVICE>_LOG_LEVEL": "DEBUG, INFO, WARNING or ERROR",
    "ARC_<SERVICE>_TLS_CERT_FILE": "serve TLS with this certificate",
    "ARC_<SERVICE>_TLS_KEY_FILE": "its private key",
    "ARC_<SERVICE>_TLS_CLIENT_CA_FILE": "mTLS: clients need a certificate it signed",
    "ARC_<SERVICE>_NODE_NAME": "this machine's name in listings",
    "ARC_SCHEDULER_NODES": "the machines, as JSON",
    "ARC_SCHEDULER_GOVERNANCE_ADDRESS": "governance (empty: no checks, tests only)",
    "ARC_SCHEDULER_SERVICE_TOKEN": "token for calls out (empty: the workspace's)",
    "ARC_SCHEDULER_LEASE_TTL_SECONDS": "TTL of a job's lease (renewed)",
    "ARC_SCHEDULER_RETRY_BACKOFF_SECONDS": "retry n waits this times 2^(n-1)",
    "ARC_SCHEDULER_RETRY_BACKOFF_MAX_SECONDS": "the longest retry delay",
    "ARC_SCHEDULER_NODE_DOWN_SECONDS": "silence before a machine's jobs requeue",
    "ARC_SCHEDULER_PROBE_INTERVAL_SECONDS": "how often each machine is probed",
    "ARC_SCHEDULER_DISPATCH_INTERVAL_SECONDS": "longest pause between placement passes",
    "ARC_SCHEDULER_EVENT_FLUSH_MS": "job events are committed in groups this often",
    "ARC_SCHEDULER_SWEEPS_PER_CALLER": "sweeps one caller may have running at once",
    "ARC_SCHEDULER_PREPARED_PER_NODE": "trainers prepared ahead per machine (0: off)",
    "ARC_SCHEDULER_PREPARE_RETRY_SECONDS": "an unanswered PrepareRun is retried after",
    "ARC_SCHEDULER_STATUS_QUEUED_LIMIT": "queued jobs GetSchedulerStatus lists",
    "ARC_GPU_MANAGER_BACKEND": "`auto` (NVML, else simulated), `nvml`, `simulated`",
    "ARC_GPU_MANAGER_SIMULATED_COUNT": "simulated GPUs",
    "ARC_GPU_MANAGER_SIMULATED_MEMORY_MIB": "memory of each simulated GPU",
    "ARC_GPU_MANAGER_RESERVED_GPUS": "never leased (unset: GPU2 simulated, none on NVML)",
    "ARC_GPU_MANAGER_TELEMETRY_INTERVAL_MS": "WatchGpus period",
    "ARC_GPU_MANAGER_DEFAULT_LEASE_TTL_SECONDS": "TTL of a lease that asks for none",
    "ARC_GPU_MANAGER_MAX_LEASE_TTL_SECONDS": "the longest TTL a lease may ask for",
    "ARC_GPU_MANAGER_REAP_INTERVAL_SECONDS": "how often expired leases are reaped",
    "ARC_GOVERNANCE_PENDING_TTL_SECONDS": "an undecided SUPERVISED request expires",
    "ARC_GOVERNANCE_TRANSACTION_TIMEOUT_SECONDS": "an abandoned transaction rolls back",
    "ARC_GOVERNANCE_MAX_TRANSACTION_TIMEOUT_SECONDS": "the longest a transaction may ask",
    "ARC_GOVERNANCE_MAX_SNAPSHOT_BYTES": "largest snapshot of a transaction",
    "ARC_GOVERNANCE_HOUSEKEEPING_INTERVAL_SECONDS": "how often expiries and timeouts run",
    "ARC_GOVERNANCE_AUDIT_VERIFY_INTERVAL_SECONDS": "how often new audit records are verified",
    "ARC_EXECUTOR_GPU_MANAGER_ADDRESS": "this machine's gpu-manager",
    "ARC_EXECUTOR_SERVICE_TOKEN": "token for calls out (empty: the workspace's)",
    "ARC_EXECUTOR_DATA_ROOT": "datasets may also live here",
    "ARC_EXECUTOR_HEARTBEAT_SECONDS": "lease renewal period (0: a third of the TTL)",
    "ARC_EXECUTOR_CANCEL_GRACE_SECONDS": "SIGTERM, then SIGKILL after this",
    "ARC_EXECUTOR_DATALOADER_WORKERS": "DataLoader workers (-1: 0 on CPU, up to 4 on CUDA)",
    "ARC_EXECUTOR_LOG_EVERY_STEPS": "a step-loss metric every N steps",
    "ARC_EXECUTOR_WARM_POOL": "fork trainers from the warm pool",
    "ARC_EXECUTOR_EVENT_FLUSH_MS": "run events are committed in groups this often",
    "ARC_EXECUTOR_STDERR_TAIL_LINES": "stderr lines kept in a failed run's error",
    "ARC_EXECUTOR_GOVERNANCE_ADDRESS": "governance (empty: every tool call refused)",
    "ARC_EXECUTOR_APPROVAL_WAIT_SECONDS": "a tool call's wait for approval (SUPERVISED)",
    "ARC_EXECUTOR_REPOSITORIES": "git repositories agents may patch",
    "ARC_EXECUTOR_DVC_REMOTE": "DVC remote (empty: `$ARC_HOME/dvc-remote`)",
    "ARC_EXECUTOR_MAX_SYNC_DATASETS": "dataset ids one SyncDatasets may name",
    "ARC_EXECUTOR_TOOL_TIMEOUT_SECONDS": "longest run of a tool child process",
    "ARC_EXECUTOR_CHECKPOINT_QUOTA_GB": "runs start only while runs/ holds less (0: none)",
    "ARC_EXECUTOR_SANDBOX_UIDS": "uids a trainer of repository code becomes, one per run "
    "(as root; uid = gid); empty: all become SANDBOX_USER",
    "ARC_EXECUTOR_SANDBOX_USER": "the user every such trainer becomes when SANDBOX_UIDS is empty",
    "ARC_EXECUTOR_SANDBOX_OPEN_FILES": "its open-file limit (0: the platform's)",
    "ARC_EXECUTOR_SANDBOX_PROCESSES": "its process limit (0: the platform's)",
    "ARC_EXECUTOR_SANDBOX_ADDRESS_SPACE_MB": "its address-space limit (0: none; CPU only)",
    "ARC_EXECUTOR_TRAINER_FAULTS": "tests and benchmark only: a fault every trainer runs",
}


@dataclass(frozen=True)
class Row:
    variable: str
    default: str
    description: str  # empty when the field has none and FALLBACK has none


def service_models() -> list[tuple[str, type[ServiceSettings]]]:
    """(service, settings model) for every ``services/<name>/settings.py``."""
    package = importlib.import_module("services")
    found: list[tuple[str, type[ServiceSettings]]] = []
    for info in pkgutil.iter_modules(package.__path__):
        if not info.ispkg:
            continue
        try:
            module = importlib.import_module(f"services.{info.name}.settings")
        except ModuleNotFoundError as exc:
            if exc.name != f"services.{info.name}.settings":
                raise
            continue
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, ServiceSettings) and cls.__module__ == module.__name__:
                found.append((info.name, cls))
    rank = {name: index for index, name in enumerate(ORDER)}
    return sorted(found, key=lambda item: (rank.get(item[0], len(rank)), item[0]))


def env_name(model: type[ServiceSettings], name: str, field: FieldInfo) -> str:
    """The variable a field is read from: its ``ARC_...`` alias, else prefix + name."""
    alias = field.validation_alias
    choices = alias.choices if isinstance(alias, AliasChoices) else [alias] if alias else []
    for choice in choices:
        if isinstance(choice, str) and choice.startswith("ARC_"):
            return choice
    return f"{model.model_config.get('env_prefix', '')}{name}".upper()


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    return value


def render_default(name: str, field: FieldInfo) -> str:
    if name == "port":
        ports = ", ".join(f"{p} {s.replace('_', '-')}" for s, p in DEFAULT_PORTS.items())
        return ports
    value = field.get_default(call_default_factory=True)
    if value is PydanticUndefined:
        return "required"
    if value is None or value == "":
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and name.endswith("_bytes"):
        for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
            if value % size == 0:
                return f"{value // size} {unit}"
    if isinstance(value, int | float):
        return str(value)
    plain = _plain(value)
    text = plain if isinstance(plain, str) else json.dumps(plain, separators=(",", ":"))
    return f"`{text}`"


def _row(variable: str, name: str, field: FieldInfo) -> Row:
    description = field.description or FALLBACK.get(variable, "")
    return Row(variable, render_default(name, field), description)


def rows() -> Iterator[Row]:
    """Shared settings first (once), then each service's own, then the extra ones."""
    base = ServiceSettings.model_fields
    for name, field in base.items():
        variable = env_name(ServiceSettings, name, field)
        if variable != "ARC_HOME":
            variable = f"ARC_{SHARED}_{name.upper()}"
        yield _row(variable, name, field)
    for _, model in service_models():
        for name, field in model.model_fields.items():
            shared = base.get(name)
            if shared is not None and repr(shared.default) == repr(field.default):
                continue  # shown once above
            yield _row(env_name(model, name, field), name, field)
    for variable, (default, description) in EXTRA.items():
        yield Row(variable, default, description)


def table() -> str:
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for row in rows():
        lines.append(f"| `{row.variable}` | {row.default} | {row.description} |")
    return "\n".join(lines)


def replace_between_markers(text: str, body: str) -> str:
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the markers {BEGIN} and {END} are missing")
    return f"{text[: start + len(BEGIN)]}\n{body}\n{text[end:]}"


def between_markers(text: str) -> str:
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the markers {BEGIN} and {END} are missing")
    return text[start + len(BEGIN) : end].strip("\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m arc_common.settings_table")
    parser.add_argument("--write", type=Path, help="replace the table between the markers")
    args = parser.parse_args(argv)
    missing = [row.variable for row in rows() if not row.description]
    if missing:
        print(f"settings without a description: {', '.join(missing)}", file=sys.stderr)
        return 1
    if args.write is None:
        print(table())
        return 0
    text = args.write.read_text()
    args.write.write_text(replace_between_markers(text, table()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
