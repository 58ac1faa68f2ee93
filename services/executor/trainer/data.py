"""ImageFolder data: train/val/test folders, or one folder split by fractions with the seed;
with a grouping, by patient."""

from __future__ import annotations

import csv
import re
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.datasets import ImageFolder

from arc_common.models import DatasetSpec, DatasetType, ExperimentSpec, Grouping
from services.executor.trainer.transforms import build_transforms

SPLITS = ("train", "val", "test")


class DataError(ValueError):
    """The dataset cannot be read as the spec says (a failure of the data, not the code)."""


class _Split(Dataset[tuple[torch.Tensor, int]]):
    """A subset of an ImageFolder with its own transform (train augments, eval does not)."""

    def __init__(
        self,
        folder: ImageFolder,
        indices: list[int],
        transform: Any,
        groups: list[str] | None = None,
    ) -> None:
        self.folder = folder
        self.indices = indices
        self.transform = transform
        self.groups = groups  # each image's patient, in order; None: not grouped

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.folder.samples[self.indices[index]]
        image = self.folder.loader(path)
        return self.transform(image), label

    def paths(self) -> list[str]:
        return [self.folder.samples[i][0] for i in self.indices]


@dataclass
class Splits:
    train: _Split
    val: _Split
    test: _Split
    class_names: list[str]


def split_indices(
    labels: Sequence[int],
    fractions: tuple[float, float, float],
    seed: int,
    groups: Sequence[Hashable] | None = None,
) -> list[list[int]]:
    """Train, val and test indices, stratified by label. With ``groups`` whole patients are
    assigned (stratified by their highest label), so no patient is on two sides; without,
    every image is its own patient."""
    keys: Sequence[Hashable] = groups if groups is not None else range(len(labels))
    members: dict[Hashable, list[int]] = {}
    for index, key in enumerate(keys):
        members.setdefault(key, []).append(index)
    stratum = {key: max(labels[i] for i in indices) for key, indices in members.items()}
    generator = torch.Generator().manual_seed(seed)
    parts: list[list[int]] = [[], [], []]
    for label in sorted(set(stratum.values())):
        chosen = [key for key in members if stratum[key] == label]
        order = torch.randperm(len(chosen), generator=generator).tolist()
        chosen = [chosen[i] for i in order]
        n_train = round(len(chosen) * fractions[0])
        n_val = round(len(chosen) * fractions[1])
        cuts = (chosen[:n_train], chosen[n_train : n_train + n_val], chosen[n_train + n_val :])
        for part, keys_of_part in zip(parts, cuts, strict=True):
            for key in keys_of_part:
                part += members[key]
    return [sorted(p) for p in parts]


def patient_ids(paths: Sequence[str], root: Path, grouping: Grouping) -> list[str]:
    """Each image's patient id, by the grouping's file-name pattern or its manifest. An
    image it does not cover is a ValueError naming it (a silent fallback would leak)."""
    if grouping.pattern:
        pattern = re.compile(grouping.pattern)
        group = "patient" if "patient" in pattern.groupindex else 1
        out = []
        for path in paths:
            name = Path(path).name
            found = pattern.search(name)
            if found is None or found.group(group) is None:
                raise DataError(f"{name} does not match grouping.pattern {grouping.pattern!r}")
            out.append(found.group(group))
        return out
    manifest = root / (grouping.manifest or "")
    if not manifest.resolve().is_relative_to(root.resolve()) or not manifest.is_file():
        raise DataError(f"grouping.manifest {grouping.manifest!r} is not a file of {root.name}")
    with manifest.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if not {"image", "patient"} <= set(reader.fieldnames or ()):
            raise DataError("grouping.manifest needs the columns image and patient")
        by_image = {Path(row["image"]).as_posix(): row["patient"] for row in reader}
    out = []
    for path in paths:
        relative = Path(path).relative_to(root).as_posix()
        if relative not in by_image:
            raise DataError(f"{relative} is not in grouping.manifest {grouping.manifest!r}")
        out.append(by_image[relative])
    return out


def _check_no_leak(groups: dict[str, list[str]]) -> None:
    seen: dict[str, str] = {}
    for split, ids in groups.items():
        for patient in ids:
            if seen.setdefault(patient, split) != split:
                raise DataError(
                    f"patient {patient!r} has images in {seen[patient]}/ and {split}/: "
                    "a split by image leaks; regroup the folders or drop dataset_type "
                    "split_folders to let the trainer split by patient"
                )


def unsplit(
    folder: ImageFolder, dataset: DatasetSpec, root: Path, seed: int
) -> tuple[list[list[int]], list[str] | None]:
    """How the trainer splits a folder without split folders: the indices of train, val
    and test, and each image's patient when the dataset is grouped."""
    groups = (
        patient_ids([p for p, _ in folder.samples], root, dataset.grouping)
        if dataset.grouping
        else None
    )
    fractions = (dataset.train_split, dataset.val_split, dataset.test_split)
    return split_indices(folder.targets, fractions, seed, groups), groups


def load_splits(spec: ExperimentSpec, data_path: Path, seed: int, transforms: Any = None) -> Splits:
    """``transforms``: a repository's ``(train, size) -> transform`` instead of the
    preprocessing chain's."""
    chain = spec.preprocessing
    size = spec.dataset.image_size
    if transforms is not None:
        train_tf, eval_tf = transforms(train=True, size=size), transforms(train=False, size=size)
    else:
        train_tf = build_transforms(chain, size, train=True)
        eval_tf = build_transforms(chain, size, train=False)
    has_split_folders = all((data_path / s).is_dir() for s in SPLITS)
    if spec.dataset.dataset_type is DatasetType.SPLIT_FOLDERS or has_split_folders:
        folders = {s: ImageFolder(str(data_path / s)) for s in SPLITS}
        classes = folders["train"].classes
        for name, folder in folders.items():
            if folder.classes != classes:
                raise DataError(
                    f"{data_path / name} has classes {folder.classes}, train has {classes}"
                )
        grouping = spec.dataset.grouping
        split_groups: dict[str, list[str] | None] = dict.fromkeys(SPLITS)
        if grouping:
            found = {
                s: patient_ids([p for p, _ in f.samples], data_path, grouping)
                for s, f in folders.items()
            }
            _check_no_leak(found)
            split_groups.update(found)
        return Splits(
            train=_Split(
                folders["train"],
                list(range(len(folders["train"]))),
                train_tf,
                split_groups["train"],
            ),
            val=_Split(
                folders["val"], list(range(len(folders["val"]))), eval_tf, split_groups["val"]
            ),
            test=_Split(
                folders["test"], list(range(len(folders["test"]))), eval_tf, split_groups["test"]
            ),
            class_names=classes,
        )
    folder = ImageFolder(str(data_path))
    (train_idx, val_idx, test_idx), groups = unsplit(folder, spec.dataset, data_path, seed)

    def part(indices: list[int], transform: Any) -> _Split:
        return _Split(folder, indices, transform, [groups[i] for i in indices] if groups else None)

    return Splits(
        train=part(train_idx, train_tf),
        val=part(val_idx, eval_tf),
        test=part(test_idx, eval_tf),
        class_names=folder.classes,
    )


def loader(
    dataset: Dataset[Any], *, batch_size: int, shuffle: bool, seed: int, workers: int, cuda: bool
) -> DataLoader[Any]:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        pin_memory=cuda,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )


__all__ = ["Splits", "Subset", "load_splits", "loader"]
