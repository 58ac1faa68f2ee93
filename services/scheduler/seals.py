"""A submission against sealed test splits (arc_common.sealing), on the paths as written:
an untrusted caller's job may not read a sealed test folder; a training on a sealed
dataset, or an evaluation of a sealed experiment's own test split, is sealed.

The executor checks the same rule again on resolved paths (symlinks), with the list this
puts in the job.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from arc_common.errors import PermissionDeniedError
from arc_common.models import ExperimentSpec
from arc_common.paths import check_relative_path
from arc_common.sealing import TEST, breach, normalized, read_by_split


@dataclass(frozen=True)
class Seal:
    spec: ExperimentSpec
    # The job's test figures are kept from agent tokens until released.
    test_sealed: bool
    # What the executor enforces for it (empty for an operator's job).
    sealed_test_datasets: list[str]
    trusted: bool


def _refuse(field: str, path: str, reason: str) -> PermissionDeniedError:
    return PermissionDeniedError(
        f"{field} {path!r} may not be read: {reason}; test figures of a sealed dataset come "
        "from the engine's own test pass, and an operator releases them",
        field=field,
    )


def seal(
    kind: str,
    spec: ExperimentSpec,
    payload: dict[str, Any],
    sealed: list[str],
    *,
    trusted: bool,
    prefix: str = "",
) -> Seal:
    """``trusted``: an operator's submission (refused nothing, sealed all the same)."""
    roots = [PurePosixPath(r) for r in normalized(sealed)]
    enforced = [] if trusted else [str(r) for r in roots]
    own = PurePosixPath(check_relative_path(spec.dataset.data_path))
    if kind != "evaluation":
        reason = breach(own, roots, training=True)
        if reason is not None and not trusted:
            raise _refuse(f"{prefix}spec.dataset.data_path", str(own), reason)
        if own in roots and not spec.seal_test:
            spec = spec.model_copy(update={"seal_test": True})
        return Seal(spec, spec.seal_test, enforced, trusted)
    data = PurePosixPath(check_relative_path(str(payload["data_path"])))
    split = str(payload.get("split") or TEST)
    reason = breach(read_by_split(data, split, roots), roots)
    if reason is None and spec.seal_test and split == TEST and data == own:
        reason = f"experiment {spec.experiment_id!r} seals its test split"
    if reason is not None and not trusted:
        raise _refuse(f"{prefix}evaluation.data_path", str(data), reason)
    return Seal(spec, reason is not None, enforced, trusted)
