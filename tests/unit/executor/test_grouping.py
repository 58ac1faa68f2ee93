"""Patients, not images: a grouped dataset never puts one patient on two sides of a split."""

from __future__ import annotations

from pathlib import Path

import pytest

from arc_common.models import ExperimentSpec
from arc_common.synth import generate_dataset
from services.executor.trainer.data import Splits, load_splits

PATTERN = r"^(?P<patient>p\d+)_"


def spec(grouping: dict[str, str] | None, dataset_type: str = "image_folder") -> ExperimentSpec:
    dataset: dict[str, object] = {
        "dataset_id": "eyes",
        "data_path": "eyes",
        "image_size": 16,
        "dataset_type": dataset_type,
        "train_split": 0.5,
        "val_split": 0.25,
        "test_split": 0.25,
    }
    if grouping:
        dataset["grouping"] = grouping
    return ExperimentSpec.model_validate(
        {
            "experiment_id": "g",
            "architecture": {"family": "resnet", "variant": "resnet18"},
            "hyperparameters": {
                "batch_size": 4,
                "epochs": 1,
                "optimizer": {"learning_rate": 0.001},
            },
            "dataset": dataset,
        }
    )


def patients(splits: Splits) -> list[set[str]]:
    return [
        {Path(p).name.split("_")[0] for p in s.paths()}
        for s in (splits.train, splits.val, splits.test)
    ]


def overlaps(parts: list[set[str]]) -> set[str]:
    return (parts[0] & parts[1]) | (parts[0] & parts[2]) | (parts[1] & parts[2])


@pytest.mark.parametrize("seed", range(4))
def test_no_patient_on_both_sides_of_a_split(tmp_path: Path, seed: int) -> None:
    generate_dataset(tmp_path, count=90, size=16, seed=seed, images_per_patient=3)
    grouped = load_splits(spec({"pattern": PATTERN}), tmp_path, seed)
    parts = patients(grouped)
    assert overlaps(parts) == set()
    assert sum(len(p) for p in parts) == 30 and all(parts)
    assert grouped.test.groups == [Path(p).name.split("_")[0] for p in grouped.test.paths()]
    # The same folder split by image puts patients on two sides: what grouping prevents.
    assert overlaps(patients(load_splits(spec(None), tmp_path, seed))) != set()


def test_a_manifest_groups_as_the_pattern_does(tmp_path: Path) -> None:
    generate_dataset(tmp_path, count=40, size=16, seed=1, images_per_patient=2)
    rows = ["image,patient"] + [
        f"{p.relative_to(tmp_path).as_posix()},{p.name.split('_')[0]}"
        for p in sorted(tmp_path.rglob("*.png"))
    ]
    (tmp_path / "patients.csv").write_text("\n".join(rows) + "\n")
    by_manifest = load_splits(spec({"manifest": "patients.csv"}), tmp_path, 3)
    by_pattern = load_splits(spec({"pattern": PATTERN}), tmp_path, 3)
    assert by_manifest.test.paths() == by_pattern.test.paths()
    assert by_manifest.test.groups == by_pattern.test.groups
    (tmp_path / "patients.csv").write_text("\n".join(rows[:-1]) + "\n")
    with pytest.raises(ValueError, match=r"is not in grouping\.manifest"):
        load_splits(spec({"manifest": "patients.csv"}), tmp_path, 3)


def test_an_image_the_pattern_does_not_match_is_named(tmp_path: Path) -> None:
    generate_dataset(tmp_path, count=8, size=16, seed=1)  # fundus_00000.png: no patient
    with pytest.raises(ValueError, match=r"fundus_\d+\.png does not match grouping.pattern"):
        load_splits(spec({"pattern": PATTERN}), tmp_path, 0)


def test_split_folders_that_leak_a_patient_are_refused(tmp_path: Path) -> None:
    generate_dataset(
        tmp_path, count=24, size=16, seed=1, splits=(0.5, 0.25, 0.25), images_per_patient=2
    )
    load_splits(spec({"pattern": PATTERN}, "split_folders"), tmp_path, 0)  # by patient: fine
    moved = next((tmp_path / "train").rglob("p*_0.png"))
    target = tmp_path / "test" / moved.parent.name / moved.name
    moved.rename(target)  # one eye in test, the other still in train
    with pytest.raises(ValueError, match=f"patient '{moved.name.split('_')[0]}' has images in"):
        load_splits(spec({"pattern": PATTERN}, "split_folders"), tmp_path, 0)


def test_training_records_the_grouping_and_counts_patients(tmp_path: Path) -> None:
    from arc_common.models import TrainingJobConfig
    from services.executor.protocol import TrainerInput
    from services.executor.trainer.train import Reporter, train

    generate_dataset(tmp_path / "eyes", count=48, size=16, seed=2, images_per_patient=2)
    config = TrainingJobConfig(
        job_id="g1",
        experiment_spec=spec({"pattern": PATTERN}),
        checkpoint_dir="runs/g1/checkpoints",
        log_dir="runs/g1/logs",
    )
    result = train(
        TrainerInput(
            run_id="g1",
            config=config,
            workspace=str(tmp_path),
            data_path=str(tmp_path / "eyes"),
            checkpoint_dir=str(tmp_path / "runs/g1/checkpoints"),
            log_dir=str(tmp_path / "runs/g1/logs"),
        ),
        Reporter(metric=lambda *a, **k: None, checkpoint=lambda c: None, state=lambda s, r: None),
    )
    assert result.provenance is not None
    assert result.provenance.grouping == f"pattern {PATTERN}"
    test = result.evaluation("test")
    assert test is not None and test.num_groups == 6 and test.num_samples == 12
    # Its ROC curve and reliability diagram lie in the run folder, named workspace-relative.
    assert test.roc_curve_png == "runs/g1/evaluation/test-roc.png"
    for figure in (test.roc_curve_png, test.reliability_diagram_png):
        assert (tmp_path / figure).read_bytes().startswith(b"\x89PNG")


def test_a_tool_reads_the_trainers_patients_on_an_unsplit_folder(tmp_path: Path) -> None:
    from services.executor.tools.torchwork import split_samples

    generate_dataset(tmp_path, count=60, size=16, seed=4, images_per_patient=3)
    trained = spec({"pattern": PATTERN})
    splits = load_splits(trained, tmp_path, 5)
    payload = {
        "class_names": splits.class_names,
        "dataset": trained.dataset.model_dump(mode="json"),
        "seed": 5,
    }
    samples, groups = split_samples(tmp_path, "test", payload)
    assert [str(p) for p, _ in samples] == splits.test.paths()
    assert groups == splits.test.groups
