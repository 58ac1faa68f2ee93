"""The executor's seal on resolved paths (services.executor.sealed), against the folder
shapes a workspace may hold: a data root beside the workspace, split folders that are
links, links inside links, copies of a self-sealed unsplit dataset."""

from __future__ import annotations

from pathlib import Path

import pytest

from arc_common.errors import PermissionDeniedError
from arc_common.synth import generate_dataset
from services.executor.registry import CheckpointRegistry
from services.executor.sealed import SealGuard

SEALED = "datasets/fundus"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    out = tmp_path / "ws"
    generate_dataset(out / SEALED, count=8, size=8, seed=1, splits=(0.5, 0.25, 0.25))
    return out


def refused(call: object, *args: object, **kwargs: object) -> str:
    with pytest.raises(PermissionDeniedError) as info:
        call(*args, **kwargs)  # type: ignore[operator]
    return str(info.value)


def test_a_folder_in_the_workspace_does_not_hide_the_sealed_one_in_the_data_root(
    tmp_path: Path,
) -> None:
    home, data_root = tmp_path / "ws", tmp_path / "data"
    generate_dataset(data_root / SEALED, count=8, size=8, seed=1, splits=(0.5, 0.25, 0.25))
    guard = SealGuard(home, data_root, CheckpointRegistry(home))
    roots = guard.roots([SEALED])
    assert (data_root / SEALED).resolve() in roots and home.resolve() / SEALED in roots
    # The copy that would shadow it is refused, and reading its test folder too.
    source = data_root / SEALED / "train"
    assert "sealed dataset" in refused(
        guard.check_copy, [SEALED], source, home.resolve() / SEALED, shown=("a", "b")
    )
    test = (data_root / SEALED / "test").resolve()
    assert "sealed" in refused(guard.check_tool, [SEALED], test, "train", [], shown="x")


def test_a_split_folder_that_is_a_link_to_the_sealed_test_is_refused(home: Path) -> None:
    variant = home / "datasets" / "v2"
    for split in ("train", "val"):
        (variant / split).mkdir(parents=True)
    (variant / "test").symlink_to(home / SEALED / "test", target_is_directory=True)
    guard = SealGuard(home, None, CheckpointRegistry(home))
    assert "sealed" in refused(guard.check_tool, [SEALED], variant, "test", [], shown="v2")
    guard.check_tool([SEALED], variant, "val", [], shown="v2")  # its own splits are open


def test_only_a_sealed_dataset_keeps_its_test_folder_for_the_training(home: Path) -> None:
    guard = SealGuard(home, None, CheckpointRegistry(home))
    roots = guard.roots([SEALED])
    guard.check_read((home / SEALED).resolve(), roots, field="f", shown="s", training=True)
    other = home / "datasets" / "v3" / "test" / "glaucoma"
    other.mkdir(parents=True)
    image = next((home / SEALED / "test" / "glaucoma").iterdir())
    (other / image.name).symlink_to(image)
    assert "links to" in refused(
        guard.check_read, home / "datasets" / "v3", roots, field="f", shown="v3", training=True
    )


def test_a_link_reached_through_a_link_is_refused_not_a_crash(home: Path) -> None:
    hop = home / "datasets" / "hop"
    hop.mkdir()
    (hop / "z").symlink_to(home / SEALED / "test", target_is_directory=True)
    top = home / "datasets" / "x" / "a"
    top.mkdir(parents=True)
    (top / "link").symlink_to(hop, target_is_directory=True)
    guard = SealGuard(home, None, CheckpointRegistry(home))
    assert "'z' in it links to" in refused(
        guard.check_read, home / "datasets" / "x", guard.roots([SEALED]), field="f", shown="x"
    )


def test_a_self_sealed_checkpoint_on_an_unsplit_folder_is_refused_test_on_any_copy(
    home: Path,
) -> None:
    own = home / "datasets" / "open"
    generate_dataset(own, count=8, size=8, seed=2)
    copy = home / "datasets" / "copy"
    generate_dataset(copy, count=8, size=8, seed=2)
    checkpoint = home / "runs" / "job-1" / "attempt-1" / "checkpoints"
    checkpoint.mkdir(parents=True)
    guard = SealGuard(home, None, CheckpointRegistry(home))
    guard.registry.seal(checkpoint, own.resolve())
    best = checkpoint / "best.pt"
    for data in (own, copy):
        assert "seals its test split" in refused(
            guard.check_checkpoint, best, data.resolve(), "test", field="f", shown="d"
        )
        guard.check_checkpoint(best, data.resolve(), "val", field="f", shown="d")
    # A dataset with its own test folder is another test set.
    guard.check_checkpoint(best, (home / SEALED).resolve(), "test", field="f", shown="d")
