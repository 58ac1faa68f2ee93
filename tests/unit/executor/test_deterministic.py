"""A spec that asks for deterministic training repeats bit for bit and says so (the CUDA
half of this is tests/gpu/test_deterministic_cuda.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from arc_common.models import ExperimentResult, TrainingJobConfig
from arc_common.synth import generate_dataset
from services.executor.protocol import TrainerInput
from services.executor.trainer.train import Reporter, train


def run(root: Path, data: Path) -> ExperimentResult:
    config = TrainingJobConfig.model_validate(
        {
            "job_id": "det",
            "checkpoint_dir": "ckpt",
            "log_dir": "logs",
            "experiment_spec": {
                "experiment_id": "det",
                "architecture": {"family": "resnet", "variant": "resnet18"},
                "hyperparameters": {
                    "batch_size": 8,
                    "epochs": 1,
                    "optimizer": {"learning_rate": 0.01},
                    "seed": 3,
                    "deterministic": True,
                },
                "dataset": {
                    "dataset_id": "d",
                    "data_path": "data",
                    "image_size": 16,
                    "dataset_type": "split_folders",
                },
            },
        }
    )
    return train(
        TrainerInput(
            run_id="det",
            config=config,
            workspace=str(root),
            data_path=str(data),
            checkpoint_dir=str(root / "ckpt"),
            log_dir=str(root / "logs"),
        ),
        Reporter(metric=lambda *a, **k: None, checkpoint=lambda c: None, state=lambda s, r: None),
    )


def test_a_deterministic_run_repeats_and_records_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    data = tmp_path / "data"
    generate_dataset(data, count=32, size=16, seed=1, splits=(0.5, 0.25, 0.25))
    results = [run(tmp_path / name, data) for name in ("a", "b")]
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"  # set before any CUDA work
    assert all(r.provenance is not None and r.provenance.deterministic for r in results)
    weights = [
        torch.load(tmp_path / name / "ckpt" / "best.pt", weights_only=True)["model_state_dict"]
        for name in ("a", "b")
    ]
    assert [k for k in weights[0] if not torch.equal(weights[0][k], weights[1][k])] == []
    timing = {"images_per_second"}
    figures = [{k: v for k, v in r.best_metrics.items() if k not in timing} for r in results]
    assert figures[0] == figures[1]
