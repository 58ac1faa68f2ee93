"""ImageFolder data: train/val/test folders, or one folder split by fractions with the seed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.datasets import ImageFolder

from arc_common.models import DatasetType, ExperimentSpec
from services.executor.trainer.transforms import build_transforms

SPLITS = ("train", "val", "test")


class _Split(Dataset[tuple[torch.Tensor, int]]):
    """A subset of an ImageFolder with its own transform (train augments, eval does not)."""

    def __init__(self, folder: ImageFolder, indices: list[int], transform: Any) -> None:
        self.folder = folder
        self.indices = indices
        self.transform = transform

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


def _stratified(
    labels: list[int], fractions: tuple[float, float, float], seed: int
) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    parts: list[list[int]] = [[], [], []]
    for label in sorted(set(labels)):
        members = [i for i, y in enumerate(labels) if y == label]
        order = torch.randperm(len(members), generator=generator).tolist()
        members = [members[i] for i in order]
        n_train = round(len(members) * fractions[0])
        n_val = round(len(members) * fractions[1])
        parts[0] += members[:n_train]
        parts[1] += members[n_train : n_train + n_val]
        parts[2] += members[n_train + n_val :]
    return [sorted(p) for p in parts]


def load_splits(spec: ExperimentSpec, data_path: Path, seed: int) -> Splits:
    chain = spec.preprocessing
    size = spec.dataset.image_size
    train_tf = build_transforms(chain, size, train=True)
    eval_tf = build_transforms(chain, size, train=False)
    has_split_folders = all((data_path / s).is_dir() for s in SPLITS)
    if spec.dataset.dataset_type is DatasetType.SPLIT_FOLDERS or has_split_folders:
        folders = {s: ImageFolder(str(data_path / s)) for s in SPLITS}
        classes = folders["train"].classes
        for name, folder in folders.items():
            if folder.classes != classes:
                raise ValueError(
                    f"{data_path / name} has classes {folder.classes}, train has {classes}"
                )
        return Splits(
            train=_Split(folders["train"], list(range(len(folders["train"]))), train_tf),
            val=_Split(folders["val"], list(range(len(folders["val"]))), eval_tf),
            test=_Split(folders["test"], list(range(len(folders["test"]))), eval_tf),
            class_names=classes,
        )
    folder = ImageFolder(str(data_path))
    fractions = (spec.dataset.train_split, spec.dataset.val_split, spec.dataset.test_split)
    train_idx, val_idx, test_idx = _stratified(folder.targets, fractions, seed)
    return Splits(
        train=_Split(folder, train_idx, train_tf),
        val=_Split(folder, val_idx, eval_tf),
        test=_Split(folder, test_idx, eval_tf),
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
