"""What each tool may touch: one table, enforced here for every path field of every tool.

- checkpoint_path (evaluation, visualizations): a checkpoint under runs/ the executor
  registered (services.executor.registry);
- checkpoint_dir, path, retention.checkpoint_dir (manage_checkpoints): under runs/;
- data_path, input_path (evaluation, visualizations, preprocess): under datasets/, or in
  the configured data root;
- output_path (preprocess): under datasets/; output_dir (visualizations): under runs/;
- dataset_ids[i] (sync): one short name under datasets/;
- remote (sync): in the workspace, but neither in nor holding runs/, datasets/ or a
  repository;
- a patch's files (apply_code_patch): inside its repository, never .git/ (tools.patches).

Everywhere, after following symlinks: nothing reserved (``arc_common.paths.reserved_reason``:
tokens, policy, databases, governance/, dot-names) and nothing outside the workspace but the
data root. A refusal is PERMISSION_DENIED naming the field.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from arc_common.errors import InvalidArgumentError, PermissionDeniedError
from arc_common.paths import check_relative_path, reserved_reason, resolve_in_root

RUNS = "runs"
DATASETS = "datasets"
MAX_DATASET_ID = 128
DATASET_ID = re.compile(rf"[A-Za-z0-9_-][A-Za-z0-9._-]{{0,{MAX_DATASET_ID - 1}}}")


@dataclass(frozen=True)
class Reach:
    under: str  # the workspace folder it must lie in; "" for anywhere not excluded
    data_root: bool = False  # also the configured data root (outside the workspace)
    excluded: tuple[str, ...] = ()  # folders it must not lie in
    repositories_excluded: bool = False


TABLE: dict[str, Reach] = {
    "checkpoint_path": Reach(RUNS),
    "checkpoint_path_a": Reach(RUNS),
    "checkpoint_path_b": Reach(RUNS),
    "checkpoint_dir": Reach(RUNS),
    "path": Reach(RUNS),
    "retention.checkpoint_dir": Reach(RUNS),
    "data_path": Reach(DATASETS, data_root=True),
    "input_path": Reach(DATASETS, data_root=True),
    "output_path": Reach(DATASETS),
    "output_dir": Reach(RUNS),
    "dataset_ids": Reach(DATASETS),
    "remote": Reach("", excluded=(RUNS, DATASETS), repositories_excluded=True),
}


def _within(relative: str, folder: str) -> bool:
    return relative == folder or relative.startswith(folder + "/")


def _refuse(field: str, message: str) -> PermissionDeniedError:
    return PermissionDeniedError(f"{field} {message}", field=field)


class Access:
    def __init__(self, home: Path, data_root: Path | None, repositories: Iterable[str]) -> None:
        self.home = home.resolve()
        self.data_root = data_root.resolve() if data_root is not None else None
        self._repositories = [check_relative_path(r) for r in repositories]

    def _lexical(self, relative: str, field: str) -> str:
        try:
            checked = check_relative_path(relative)
        except ValueError as exc:
            raise InvalidArgumentError(f"{field} {exc} (got {relative!r})", field=field) from exc
        if reason := reserved_reason(checked):
            raise _refuse(field, f"may not name {relative!r}: {reason}")
        return checked

    def _in_workspace(self, resolved: Path, field: str, reach: Reach, shown: str) -> Path:
        inside = str(resolved.relative_to(self.home)) if resolved != self.home else "."
        if reason := reserved_reason(inside):  # a symlink into a reserved place
            raise _refuse(field, f"may not reach {shown!r}: {reason}")
        if reach.under and not _within(inside, reach.under):
            raise _refuse(field, f"must lie under {reach.under}/ (got {shown!r})")
        excluded = list(reach.excluded)
        if reach.repositories_excluded:
            excluded += self._repositories
        for folder in excluded:
            if _within(inside, folder) or _within(folder, inside):
                raise _refuse(field, f"may not lie in or hold {folder}/ (got {shown!r})")
        return resolved

    def path(self, field: str, relative: str) -> Path:
        """``relative`` resolved in the workspace, if ``field`` may name it."""
        reach = TABLE[field.split("[", maxsplit=1)[0]]
        checked = self._lexical(relative, field)
        resolved = resolve_in_root(self.home, checked, field=field)
        return self._in_workspace(resolved, field, reach, relative)

    def data(self, field: str, relative: str) -> Path:
        """A dataset: under datasets/ in the workspace, else inside the data root."""
        reach = TABLE[field]
        checked = self._lexical(relative, field)
        if _within(checked, reach.under):
            inside = self._in_workspace(
                resolve_in_root(self.home, checked, field=field), field, reach, relative
            )
            if inside.exists() or self.data_root is None:
                return inside
        if self.data_root is None:
            raise _refuse(field, f"must lie under {reach.under}/ (got {relative!r})")
        resolved = resolve_in_root(self.data_root, checked, field=field)
        if resolved.is_relative_to(self.home):  # a data root holding the workspace
            return self._in_workspace(resolved, field, reach, relative)
        return resolved

    def dataset_id(self, field: str, dataset_id: str) -> str:
        """One short plain name of a dataset under datasets/."""
        if not DATASET_ID.fullmatch(dataset_id):
            raise InvalidArgumentError(
                f"a dataset id is 1-{MAX_DATASET_ID} letters, digits, '.', '_' or '-', "
                f"not starting with '.' (got {dataset_id[:80]!r})",
                field=field,
            )
        self.path(field, f"{DATASETS}/{dataset_id}")
        return dataset_id
