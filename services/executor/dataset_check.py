"""Whether a dataset can be trained on: asked at submit (ExecutorService.CheckDataset),
so that a missing folder or a single class is refused before a GPU is leased. Cheap: it
looks for the first image of each class folder, never reads one."""

from __future__ import annotations

import os
from pathlib import Path

from arc_common.errors import FailedPreconditionError, NotFoundError
from arc_common.models import DatasetSpec, DatasetType
from arc_common.paths import IMAGE_SUFFIXES
from services.executor.sealed import SPLITS

# Entries looked at per class folder before it counts as holding no image.
MAX_SCAN = 100_000
FIELD = "dataset.data_path"


def _has_image(folder: Path) -> bool:
    seen = 0
    for _root, _dirs, files in os.walk(folder, followlinks=True):
        for name in files:
            if os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES:
                return True
            seen += 1
            if seen > MAX_SCAN:
                return False
    return False


def _folders(folder: Path) -> list[str]:
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _classes(folder: Path, shown: str) -> list[str]:
    classes = _folders(folder)
    with_images = [name for name in classes if _has_image(folder / name)]
    if len(with_images) < 2:
        found = ", ".join(with_images) or "none"
        raise FailedPreconditionError(
            f"{FIELD} {shown!r} has {len(with_images)} class folder(s) with images ({found}); "
            "a classifier needs at least two (one folder per class: <data>/<class>/<image>)",
            field=FIELD,
        )
    return with_images


def check(path: Path, dataset: DatasetSpec) -> tuple[list[str], bool]:
    """The class names of ``dataset`` (found at ``path``, resolved) and whether it has
    split folders. Blocking."""
    shown = dataset.data_path
    if not path.is_dir():
        raise NotFoundError(f"{FIELD} {shown!r} is not a folder here", field=FIELD)
    split = all((path / name).is_dir() for name in SPLITS)
    if dataset.dataset_type is DatasetType.SPLIT_FOLDERS and not split:
        raise FailedPreconditionError(
            f"{FIELD} {shown!r} needs train/, val/ and test/ folders for dataset_type "
            "split_folders",
            field=FIELD,
        )
    if not split:
        return _classes(path, shown), False
    # Images are needed to train; a small val or test split may hold none of a class.
    found = {name: _folders(path / name) for name in SPLITS}
    found["train"] = _classes(path / "train", f"{shown}/train")
    if len({tuple(classes) for classes in found.values()}) != 1:
        raise FailedPreconditionError(
            f"{FIELD} {shown!r}: its splits have different classes ({found})", field=FIELD
        )
    return found["train"], True
