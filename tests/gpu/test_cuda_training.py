"""A few training steps on CUDA with mixed precision (run on a GPU machine)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from arc_common.models import TrainingJobConfig
from arc_common.synth import generate_dataset
from services.executor.protocol import TrainerInput
from services.executor.trainer.train import Reporter, train

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("prepared", [False, True], ids=["started", "prepared-then-activated"])
def test_trainer_runs_on_cuda_with_amp(tmp_path: Path, prepared: bool) -> None:
    """Also as a prepared run: its model is built before any GPU is visible, and the GPU it
    gets at activation is the one it trains on; it gives the GPU back before the end."""
    generate_dataset(tmp_path / "data", count=64, size=64, seed=2, splits=(0.5, 0.25, 0.25))
    config = TrainingJobConfig.model_validate(
        {
            "job_id": "gpu-check",
            "checkpoint_dir": "ckpt",
            "log_dir": "logs",
            "experiment_spec": {
                "experiment_id": "gpu-check",
                "architecture": {"family": "resnet", "variant": "resnet18"},
                "hyperparameters": {
                    "batch_size": 16,
                    "epochs": 2,
                    "optimizer": {"learning_rate": 0.001},
                },
                "dataset": {
                    "dataset_id": "d",
                    "data_path": "data",
                    "image_size": 64,
                    "dataset_type": "split_folders",
                },
            },
        }
    )
    states: list[str] = []
    released: list[int] = []
    seen: list[tuple[str, float]] = []
    result = train(
        TrainerInput(
            run_id="g",
            config=config,
            workspace=str(tmp_path),
            data_path=str(tmp_path / "data"),
            checkpoint_dir=str(tmp_path / "ckpt"),
            log_dir=str(tmp_path / "logs"),
            workers=2,
            log_every_steps=1,
            standby=prepared,
        ),
        Reporter(
            metric=lambda name, value, **_: seen.append((name, value)),
            checkpoint=lambda c: None,
            state=lambda s, r: states.append(r),
            release=lambda: released.append(torch.cuda.memory_allocated()),
            await_devices=lambda: [0],
        ),
    )
    assert torch.cuda.is_available()
    running = [r for r in states if r.startswith("training on")]
    assert running and "cuda" in running[0]
    assert ("prepared" in states[0]) == prepared
    assert len(released) == 1 and released[0] < 64 << 20  # the model left the GPU first
    assert result.best_metrics["test_auc"] >= 0.0
    speeds = [value for name, value in seen if name == "images_per_second"]
    print(f"{torch.cuda.get_device_name(0)}: images/s per epoch {speeds}")
