"""What a result needs to be repeated: seed, code and library versions, device, precision,
the dataset's identity and the checkpoint the figures came from."""

from __future__ import annotations

import hashlib
import subprocess
from functools import cache
from importlib import metadata
from pathlib import Path

import torch
import torchvision

from arc_common.models import CheckpointInfo, ExperimentSpec, Provenance

REPO_ROOT = Path(__file__).resolve().parents[3]


@cache
def engine_version() -> str:
    """The package version, and the git commit when the engine runs from a checkout."""
    version = metadata.version("arc-experiment-engine")
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return version
    return f"{version}+{commit}" if commit else version


def dataset_hash(data_path: Path, images: list[str]) -> str:
    """SHA-256 over every image's path (relative to the dataset) and size, in split order:
    a file added, removed, renamed or rewritten to another size changes it."""
    digest = hashlib.sha256()
    for image in images:
        path = Path(image)
        name = path.relative_to(data_path).as_posix() if path.is_relative_to(data_path) else image
        digest.update(f"{name}\0{path.stat().st_size}\n".encode())
    return f"sha256:{digest.hexdigest()}"


def provenance(
    spec: ExperimentSpec,
    *,
    seed: int,
    device: str,
    precision: str,
    data_path: Path,
    images: list[str],
    checkpoint: CheckpointInfo | None,
    parameter_count: int = 0,
) -> Provenance:
    return Provenance(
        seed=seed,
        engine_version=engine_version(),
        torch_version=torch.__version__,
        torchvision_version=torchvision.__version__,
        device=device,
        precision=precision,
        # The CPU trainer always runs torch's deterministic algorithms; CUDA when asked.
        deterministic=device == "cpu" or spec.hyperparameters.deterministic,
        dataset_id=spec.dataset.dataset_id,
        data_path=spec.dataset.data_path,
        dataset_hash=dataset_hash(data_path, images),
        checkpoint_path=checkpoint.path if checkpoint else "",
        checkpoint_sha256=checkpoint.sha256 if checkpoint else "",
        grouping=spec.dataset.grouping.describe() if spec.dataset.grouping else "",
        source=spec.source,
        parameter_count=parameter_count,
    )
