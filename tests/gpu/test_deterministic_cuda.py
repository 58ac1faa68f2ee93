"""Deterministic training on CUDA, and one checkpoint scoring the same through the
trainer's test pass and the evaluation tool (run on a GPU machine)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from arc_common.models import ExperimentResult, TrainingJobConfig
from arc_common.synth import generate_dataset
from services.executor.protocol import TrainerInput, file_sha256
from services.executor.tools import scoring
from services.executor.trainer.train import Reporter, train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def run(root: Path, data: Path, *, deterministic: bool) -> ExperimentResult:
    config = TrainingJobConfig.model_validate(
        {
            "job_id": "determinism",
            "checkpoint_dir": "ckpt",
            "log_dir": "logs",
            "experiment_spec": {
                "experiment_id": "determinism",
                "architecture": {"family": "resnet", "variant": "resnet18"},
                "hyperparameters": {
                    "batch_size": 16,
                    "epochs": 2,
                    "optimizer": {"learning_rate": 0.001},
                    "seed": 7,
                    "deterministic": deterministic,
                },
                "dataset": {
                    "dataset_id": "d",
                    "data_path": str(data),
                    "image_size": 64,
                    "dataset_type": "split_folders",
                },
            },
        }
    )
    nothing: Any = lambda *args, **kwargs: None  # noqa: E731
    return train(
        TrainerInput(
            run_id="d",
            config=config,
            workspace=str(root),
            data_path=str(data),
            checkpoint_dir=str(root / "ckpt"),
            log_dir=str(root / "logs"),
            workers=2,
            log_every_steps=1,
        ),
        Reporter(
            metric=nothing,
            checkpoint=nothing,
            state=nothing,
            release=nothing,
            await_devices=lambda: [0],
        ),
    )


def weights(root: Path) -> dict[str, torch.Tensor]:
    payload = torch.load(root / "ckpt" / "best.pt", map_location="cpu", weights_only=True)
    state: dict[str, torch.Tensor] = payload["model_state_dict"]
    return state


def test_deterministic_cuda_training_repeats_bit_for_bit(tmp_path: Path) -> None:
    data = tmp_path / "data"
    generate_dataset(data, count=96, size=64, seed=3, splits=(0.5, 0.25, 0.25))
    first, second = tmp_path / "a", tmp_path / "b"
    results = [run(root, data, deterministic=True) for root in (first, second)]
    assert all(r.provenance is not None and r.provenance.deterministic for r in results)
    assert all(r.provenance is not None and r.provenance.device.startswith("cuda") for r in results)
    a, b = weights(first), weights(second)
    assert a.keys() == b.keys()
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert different == []
    figures = [
        {k: v for k, v in r.best_metrics.items() if k != "images_per_second"} for r in results
    ]
    assert figures[0] == figures[1]
    # The same checkpoint through the evaluation tool: the trainer's test figures.
    checkpoint = first / "ckpt" / "best.pt"
    report = scoring.evaluate(
        checkpoint,
        data,
        "test",
        sha256=file_sha256(checkpoint),
        bootstrap=1000,
        seed=7,
        dataset_id="d",
        data_path_name=str(data),
    )
    assert report["provenance"]["precision"] == "fp32"
    assert report["auc"] == pytest.approx(results[0].best_metrics["test_auc"], abs=1e-6)
    assert report["sensitivity"] == pytest.approx(
        results[0].best_metrics["test_sensitivity"], abs=1e-6
    )


def test_without_the_option_cuda_training_says_it_is_not_deterministic(tmp_path: Path) -> None:
    data = tmp_path / "data"
    generate_dataset(data, count=32, size=64, seed=3, splits=(0.5, 0.25, 0.25))
    result = run(tmp_path / "a", data, deterministic=False)
    assert result.provenance is not None and not result.provenance.deterministic
