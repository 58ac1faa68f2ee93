"""manage_checkpoints: list checkpoints (from their metadata files, no torch), and pick
what a retention rule deletes."""

from __future__ import annotations

import math
from pathlib import Path
from stat import S_ISREG

from arc_common.models import CheckpointInfo, MetricMode
from arc_common.untrusted import read_no_follow
from services.executor.protocol import CHECKSUM_SUFFIX, META_SUFFIX, checkpoint_is_intact
from services.executor.registry import MAC_SUFFIX

META_LIMIT = 1 << 20  # a trainer's metadata file is a few kB


def _metadata(meta: Path) -> CheckpointInfo:
    """What the trainer wrote beside the weights; a missing, unreadable or malformed file
    lists the checkpoint without it (its path, size and checksum only)."""
    try:
        return CheckpointInfo.model_validate_json(read_no_follow(meta, limit=META_LIMIT))
    except (OSError, ValueError):
        return CheckpointInfo(path="")


def list_checkpoints(folder: Path, workspace: Path) -> list[CheckpointInfo]:
    out = []
    for path in sorted(folder.rglob("*.pt")):
        stat = path.lstat()
        if not S_ISREG(stat.st_mode):  # a link or a FIFO a sandboxed trainer left
            continue
        info = _metadata(path.with_name(path.name + META_SUFFIX))
        out.append(
            info.model_copy(
                update={
                    "path": str(path.relative_to(workspace)),
                    "size_bytes": stat.st_size,
                    "sha256": info.sha256 if checkpoint_is_intact(path) else "",
                }
            )
        )
    return out


def companions(path: Path) -> list[Path]:
    """The checkpoint and the files that travel with it."""
    return [
        path,
        path.with_name(path.name + CHECKSUM_SUFFIX),
        path.with_name(path.name + META_SUFFIX),
        path.with_name(path.name + MAC_SUFFIX),
    ]


def retention_victims(
    checkpoints: list[CheckpointInfo], *, keep: int, metric: str, mode: MetricMode
) -> list[CheckpointInfo]:
    """Everything but the best ``keep`` by ``metric`` (checkpoints without it go first)."""

    def score(info: CheckpointInfo) -> float:
        value = info.metrics.get(metric, math.nan)
        if math.isnan(value):
            return -math.inf
        return value if mode is MetricMode.MAX else -value

    ranked = sorted(checkpoints, key=score, reverse=True)
    return ranked[keep:]
