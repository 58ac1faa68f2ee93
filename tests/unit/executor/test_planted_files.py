"""What a sandboxed trainer may leave in the folders it writes (links, FIFOs, a huge or
linked tree in its repository) neither hangs the executor nor leads it elsewhere."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from arc_common.errors import PermissionDeniedError, ResourceExhaustedError
from arc_common.models import CodeSource
from services.executor import code_sources
from services.executor.registry import CheckpointRegistry, mac_path
from services.executor.tools.checkpoints import list_checkpoints
from services.executor.trainer.checkpoint_io import save_checkpoint
from tests.security.suite import git


def saved(folder: Path, name: str, registry: CheckpointRegistry) -> Path:
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    assert registry.register(path, save_checkpoint(path, {"w": torch.zeros(1)}))
    return path


def test_fifos_and_links_in_a_checkpoint_folder_do_not_hang_the_tools(tmp_path: Path) -> None:
    registry = CheckpointRegistry(tmp_path)
    folder = tmp_path / "runs" / "job-1" / "attempt-1" / "checkpoints"
    good = saved(folder, "good.pt", registry)
    os.mkfifo(folder / "good.pt.json")  # its metadata, a FIFO nobody writes
    os.mkfifo(folder / "fifo.pt")
    (folder / "link.pt").symlink_to(tmp_path / "tokens.json")
    listed = list_checkpoints(folder, tmp_path)
    assert [info.path for info in listed] == [str(good.relative_to(tmp_path))]
    assert listed[0].size_bytes == good.stat().st_size  # listed without its metadata
    mac = mac_path(good)
    mac.unlink()
    os.mkfifo(mac)
    with pytest.raises(PermissionDeniedError):
        registry.verify(good, field="checkpoint_path")


def repository(tmp_path: Path) -> tuple[Path, CodeSource]:
    repo = tmp_path / "code" / "models"
    (repo / "acuvue").mkdir(parents=True)
    (repo / "acuvue" / "nets.py").write_text("WIDTH = 4\n")
    (repo / "acuvue" / "secret.py").symlink_to("/etc/passwd")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "models")
    commit = git(repo, "rev-parse", "HEAD").strip()
    source = CodeSource(repository="models", revision="main", entrypoint="acuvue.nets:f")
    return repo, source.model_copy(update={"commit": commit})


def test_an_export_holds_regular_files_only(tmp_path: Path) -> None:
    _, source = repository(tmp_path)
    dest = tmp_path / "export"
    code_sources.export(tmp_path, {"models": "code/models"}, source, dest)
    assert (dest / "acuvue" / "nets.py").read_text() == "WIDTH = 4\n"
    assert not os.path.lexists(dest / "acuvue" / "secret.py")
    assert not (dest / "acuvue" / "nets.py").stat().st_mode & 0o222


def test_a_tree_too_large_is_refused_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, source = repository(tmp_path)
    monkeypatch.setattr(code_sources, "MAX_EXPORT_BYTES", 5)
    dest = tmp_path / "export"
    with pytest.raises(ResourceExhaustedError) as refused:
        code_sources.export(tmp_path, {"models": "code/models"}, source, dest)
    assert refused.value.field == "source"
    assert not dest.exists()
