"""best.pt of an earlier epoch than last.pt keeps the weights, not the optimizer state
that only resuming from last.pt needs."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from arc_common.models import CheckpointKind
from services.executor.trainer.checkpoint_io import RESUME_ONLY, Serialized, slim_best


def _save(path: Path, payload: dict[str, Any]) -> None:
    torch.save(payload, path)


def test_an_earlier_best_is_written_again_without_the_optimizer(tmp_path: Path) -> None:
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.zeros(1, 4)).sum().backward()
    optimizer.step()
    payload = {
        "model_state_dict": model.state_dict(),
        "optimizer_state_dict": optimizer.state_dict(),
        "scheduler_state_dict": None,
        "epoch": 3,
        "metrics": {"val_auc": 0.9},
    }
    _save(tmp_path / "best.pt", payload)
    written: list[tuple[CheckpointKind, int, dict[str, float], Serialized]] = []

    def write(
        kind: CheckpointKind, epoch: int, metrics: dict[str, float], data: Serialized
    ) -> Path:
        written.append((kind, epoch, metrics, data))
        return tmp_path / "best.pt"

    slim_best(tmp_path, write)
    [(kind, epoch, metrics, data)] = written
    assert (kind, epoch, metrics) == (CheckpointKind.BEST, 3, {"val_auc": 0.9})
    slim = torch.load(io.BytesIO(data.data), weights_only=True)
    assert not set(RESUME_ONLY) & set(slim)
    for name, tensor in model.state_dict().items():
        assert torch.equal(slim["model_state_dict"][name], tensor)
    assert len(data.data) < (tmp_path / "best.pt").stat().st_size

    _save(tmp_path / "best.pt", slim)  # already slim: nothing to write
    slim_best(tmp_path, write)
    assert len(written) == 1
