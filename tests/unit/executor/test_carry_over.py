"""A retry carries the best checkpoint over from its earlier attempt, a folder the
earlier trainer (sandboxed, perhaps hostile) could write: what it planted there is not
followed, does not hang the executor, and is not registered."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.executor.protocol import CHECKSUM_SUFFIX, META_SUFFIX
from services.executor.registry import CheckpointRegistry
from services.executor.run_inputs import RunInputs
from services.executor.settings import ExecutorSettings
from services.executor.trainer.checkpoint_io import save_checkpoint


@pytest.fixture
def inputs(tmp_path: Path) -> RunInputs:
    settings = ExecutorSettings(home=tmp_path)
    return RunInputs(settings, CheckpointRegistry(tmp_path))


def earlier_attempt(inputs: RunInputs) -> tuple[Path, Path]:
    import torch

    folder = inputs.home / "runs" / "job-1" / "attempt-1" / "checkpoints"
    folder.mkdir(parents=True)
    for name in ("last.pt", "best.pt"):
        digest = save_checkpoint(folder / name, {"model_state_dict": {"w": torch.zeros(2)}})
        assert inputs.checkpoints.register(folder / name, digest)
    target = inputs.home / "runs" / "job-1" / "attempt-2" / "checkpoints"
    return folder, target


def test_a_clean_best_checkpoint_travels_and_is_registered(inputs: RunInputs) -> None:
    folder, target = earlier_attempt(inputs)
    (folder / f"best.pt{META_SUFFIX}").write_text('{"epoch": 1}')
    assert inputs._carry_over(folder / "last.pt", target)
    assert inputs.checkpoints.verify(target / "best.pt", field="f")
    assert (target / f"best.pt{META_SUFFIX}").read_text() == '{"epoch": 1}'


def test_a_planted_link_is_not_copied_through(inputs: RunInputs) -> None:
    folder, target = earlier_attempt(inputs)
    secret = inputs.home / "tokens.json"
    secret.write_text('{"agent": "secret"}')
    (folder / f"best.pt{META_SUFFIX}").symlink_to(secret)
    assert inputs._carry_over(folder / "last.pt", target)  # the resume point still holds
    copied = target / f"best.pt{META_SUFFIX}"
    assert not copied.exists() or "secret" not in copied.read_text()


def test_a_planted_fifo_does_not_hang_the_executor(inputs: RunInputs) -> None:
    folder, target = earlier_attempt(inputs)
    sidecar = folder / f"best.pt{CHECKSUM_SUFFIX}"
    sidecar.unlink()
    os.mkfifo(sidecar)  # nobody writes it: a blocking open would wait forever
    assert inputs._carry_over(folder / "last.pt", target)
    assert not (target / "best.pt").exists()  # not carried: nothing half-copied registered


def test_a_resume_point_that_is_a_link_to_another_jobs_checkpoint_is_not_used(
    inputs: RunInputs,
) -> None:
    folder, target = earlier_attempt(inputs)
    victim = inputs.home / "runs" / "job-sealed" / "attempt-1" / "checkpoints"
    saved = earlier_attempt_of(inputs, victim)
    (folder / "last.pt").unlink()
    (folder / "last.pt").symlink_to(saved)  # left by the earlier, sandboxed trainer
    relative = str((folder / "last.pt").relative_to(inputs.home))
    assert inputs._resume_point(relative, target) == ""
    honest = str(saved.relative_to(inputs.home))
    assert inputs._resume_point(honest, target) == ""  # not this job's folder either
    assert inputs._resume_point(relative.replace("last.pt", "best.pt"), target)


def earlier_attempt_of(inputs: RunInputs, folder: Path) -> Path:
    import torch

    folder.mkdir(parents=True)
    path = folder / "last.pt"
    digest = save_checkpoint(path, {"model_state_dict": {"w": torch.ones(2)}})
    assert inputs.checkpoints.register(path, digest)
    return path
