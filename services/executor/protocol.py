"""What the executor and its trainer child say to each other (no torch here).

The executor writes a ``TrainerInput`` as JSON for the child; the child writes JSON lines
to its metrics pipe, one message per line, metrics batched and packed. The executor validates every
line against ``TrainerMessage`` and never trusts the pipe blindly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from arc_common.models import (
    CheckpointInfo,
    ExperimentResult,
    Failure,
    PackedMetrics,
    TrainingJobConfig,
)
from arc_common.untrusted import read_text_no_follow, sha256_no_follow

CHECKSUM_SUFFIX = ".sha256"
META_SUFFIX = ".json"


class Sandbox(BaseModel):
    """A trainer running repository code: the user it drops to (when the executor runs as
    root; -1 keeps the executor's), its folder (cwd and HOME) and its resource limits
    (0: the platform's)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    uid: int = -1
    gid: int = -1
    home: str
    open_files: int = 0
    processes: int = 0
    address_space_mb: int = 0


class TrainerInput(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    run_id: str
    config: TrainingJobConfig
    workspace: str
    data_path: str
    checkpoint_dir: str
    log_dir: str
    workers: int = 0
    log_every_steps: int = 10
    # Absolute path of an earlier attempt's checkpoint to resume from ("" for a fresh start).
    resume_from: str = ""
    # Its SHA-256 as the executor registered it; the trainer loads only bytes that match
    # ("" when it is unregistered or torn: a fresh start).
    resume_sha256: str = ""
    # A fault or probe for the tests and the benchmark only (trainer.faults), from the
    # executor's test-only setting trainer_faults (never from the API).
    inject: str = ""
    # Prepared ahead of its GPUs (ExecutorService.PrepareRun): open the data and build the
    # model in host memory, then wait for one JSON line {"gpu_indices": [...]} on stdin
    # before anything touches a GPU (end of stdin: the run was cancelled, leave).
    standby: bool = False
    # Fine-tune (the spec's init_from): weights to start from, when not resuming, and
    # their SHA-256 as registered (the trainer loads only bytes that match).
    init_from: str = ""
    init_sha256: str = ""
    # A code-defined spec's export of its commit (read-only; "" for torchvision models).
    source_dir: str = ""
    # Who the trainer becomes before it imports repository code, and its limits.
    sandbox: Sandbox | None = None


class TrainerMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # "released": the trainer is done with its GPUs (only its last checkpoint write is left).
    kind: Literal["state", "metrics", "checkpoint", "result", "log", "released"]
    state: str = ""
    reason: str = ""
    # With state "failed": why, as the trainer can tell (out of memory, or any other error).
    cause: Literal["", "failed", "oom"] = ""
    # With state "failed" or "pruned": the failure's class and where it was raised.
    failure: Failure | None = None
    # One serialized MetricBatch (arc_common.packed), not one JSON object a metric.
    metrics: PackedMetrics | None = None
    checkpoint: CheckpointInfo | None = None
    result: ExperimentResult | None = None
    lines: list[str] = Field(default_factory=list)


file_sha256 = sha256_no_follow


def checkpoint_is_intact(path: Path) -> bool:
    """A checkpoint counts only with a matching checksum file beside it (no torn files)."""
    try:
        words = read_text_no_follow(path.with_name(path.name + CHECKSUM_SUFFIX)).split()
        return bool(words) and words[0] == sha256_no_follow(path)
    except (OSError, ValueError):
        return False


def dump(message: TrainerMessage) -> str:
    return message.model_dump_json(exclude_defaults=True)


def load_message(line: str | bytes) -> TrainerMessage:
    return TrainerMessage.model_validate_json(line)


__all__ = ["Any"]
