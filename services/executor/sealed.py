"""Sealed test splits on disk (arc_common.sealing, after following symlinks).

The scheduler refuses an agent's job that names a sealed test folder; here every path an
agent's tool call or job reads is resolved, and so is every symlink inside the folder it
reads, because an image folder loader follows them. A checkpoint of a sealed experiment
carries the seal itself (``runs/<job>/.sealed``, written when its run starts, kept by the
checkpoint registry like the owner record): no agent scores it on its own test split under
any path.

Blocking: call these off the event loop.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from arc_common.errors import ArcError, PermissionDeniedError
from arc_common.paths import resolve_in_root
from arc_common.sealing import TEST, breach
from services.executor.registry import CheckpointRegistry

SPLITS = ("train", "val", "test")
# A folder with more entries than this is refused rather than walked to the end.
MAX_ENTRIES = 1_000_000


def has_split_folders(data: Path) -> bool:
    return all((data / split).is_dir() for split in SPLITS)


def split_folder(data: Path, split: str) -> Path:
    """What a tool reads for ``split``: the split's folder, or all of an unsplit one."""
    return data / split if has_split_folders(data) else data


def _refused(field: str, shown: str, reason: str) -> PermissionDeniedError:
    return PermissionDeniedError(
        f"{field} {shown!r} may not be read by an agent: {reason}; a sealed test split is "
        "scored by the engine's own test pass, and an operator releases the figures",
        field=field,
    )


class SealGuard:
    def __init__(self, home: Path, data_root: Path | None, registry: CheckpointRegistry) -> None:
        self.home = home.resolve()
        self.data_root = data_root
        self.registry = registry

    def roots(self, sealed: Iterable[str]) -> list[Path]:
        """The sealed datasets as resolved folders, in the workspace and in the data root
        both: a data path may be found in either, and a folder made in one must not hide
        the sealed one in the other (a name that cannot be one is skipped: governance
        refuses such a policy)."""
        bases = [self.home] + ([self.data_root] if self.data_root is not None else [])
        out = []
        for relative in sealed:
            for base in bases:
                try:
                    out.append(resolve_in_root(base, relative, field="sealed"))
                except ArcError:
                    continue
            # Its DVC revisions' copies are the same data (services.executor.tools.dvcsync).
            parts = relative.strip("/").split("/")
            if len(parts) == 2 and parts[0] == "datasets":
                revisions = self.home / "datasets" / ".revisions" / parts[1]
                if revisions.is_dir():
                    out += [d for d in revisions.iterdir() if d.is_dir() and not d.is_symlink()]
        return out

    @staticmethod
    def close_to_others(roots: list[Path]) -> None:
        """Sealed test folders readable by their owner only: a sandboxed trainer runs as
        another user, so repository code cannot open them whatever path it tries. Blocking."""
        for root in roots:
            # A test/ that is a link is closed where it leads (the operator made it).
            test = Path(os.path.realpath(root / "test"))
            if test.is_dir():
                mode = test.stat().st_mode & 0o7777
                if mode & 0o077:
                    test.chmod(mode & ~0o077)

    def check_read(
        self, folder: Path, roots: list[Path], *, field: str, shown: str, training: bool = False
    ) -> None:
        """Refuse reading all of ``folder`` (resolved) when it, or anything a symlink in it
        leads to, is in or holds a sealed test folder."""
        if not roots:
            return
        folder = Path(os.path.realpath(folder))  # a split folder may itself be a link
        reason = breach(folder, roots, training=training)
        if reason is None and folder.is_dir():
            # Only a sealed dataset's own test folder is the engine's to read.
            own = folder / TEST if training and folder in roots else None
            reason = self._walk(folder, roots, skip=own)
        if reason is not None:
            raise _refused(field, shown, reason)

    def _walk(self, top: Path, roots: list[Path], *, skip: Path | None) -> str | None:
        seen = {top}
        stack = [top]
        entries = 0
        while stack:
            folder = stack.pop()
            try:
                with os.scandir(folder) as listing:
                    items = list(listing)
            except OSError:
                continue
            for entry in items:
                entries += 1
                if entries > MAX_ENTRIES:
                    return f"it holds more than {MAX_ENTRIES} entries to check"
                path = Path(entry.path)
                if entry.is_symlink():
                    real = Path(os.path.realpath(path))
                    reason = breach(real, roots)
                    if reason is not None:
                        return f"{entry.name!r} in it links to a place where {reason}"
                    path = real
                if entry.is_dir() and path not in seen and path != skip:
                    seen.add(path)
                    stack.append(path)
        return None

    def check_checkpoint(
        self, checkpoint: Path, data: Path, split: str, *, field: str, shown: str
    ) -> None:
        """Refuse scoring a sealed experiment's checkpoint on that experiment's test split."""
        own = self.registry.sealed_data(checkpoint)
        if own is None:
            return
        if has_split_folders(own):
            self.check_read(split_folder(data, split), [own], field=field, shown=shown)
        elif split == TEST and not has_split_folders(data):
            # On any unsplit folder (a copy of its own included) the checkpoint's seed and
            # fractions pick its held-out images again.
            raise _refused(field, shown, "its checkpoint's experiment seals its test split")

    def check_tool(
        self,
        sealed: list[str],
        data: Path,
        split: str,
        checkpoints: list[Path],
        *,
        shown: str,
        field: str = "data_path",
    ) -> None:
        """An agent's evaluation-like call: ``split`` of ``data`` scored by ``checkpoints``."""
        read = split_folder(data, split)
        self.check_read(read, self.roots(sealed), field=field, shown=shown)
        for checkpoint in checkpoints:
            self.check_checkpoint(checkpoint, data, split, field=field, shown=shown)

    def check_copy(
        self, sealed: list[str], source: Path, output: Path, *, shown: tuple[str, str]
    ) -> None:
        """An agent's copy (preprocessing) reads no sealed test folder and writes into no
        sealed dataset."""
        roots = self.roots(sealed)
        self.check_read(source, roots, field="input_path", shown=shown[0])
        for root in roots:
            if output == root or output.is_relative_to(root) or root.is_relative_to(output):
                raise PermissionDeniedError(
                    f"output_path {shown[1]!r} may not be written by an agent: it is in or "
                    f"holds the sealed dataset {root}",
                    field="output_path",
                )
