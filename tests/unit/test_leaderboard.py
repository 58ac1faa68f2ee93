"""The leaderboard ``arc results`` and the demo print: ranked by validation, zeros kept."""

from __future__ import annotations

import json
import math

import pytest

from arc_common.models import (
    ExperimentResult,
    Job,
    JobState,
    MetricMode,
    Provenance,
    SplitEvaluation,
)
from clients.display import LEADERBOARD, Out, leaderboard_rows, leaderboard_table


def job(
    job_id: str,
    *,
    val: float,
    test: float,
    experiment: str = "",
    kind: str = "training",
    selected_by: str = "val_auc",
    mode: MetricMode = MetricMode.MAX,
    degenerate: bool = False,
    split: str = "test",
    dataset: str = "fundus",
) -> Job:
    metrics = {
        f"{split}_auc": test,
        f"{split}_auc_ci_lower": test - 0.1,
        f"{split}_auc_ci_upper": min(test + 0.1, 1.0),
        f"{split}_sensitivity": 0.0,
        f"{split}_specificity": 1.0,
    }
    if kind == "training":
        metrics[selected_by] = val
    return Job(
        job_id=job_id,
        experiment_id=experiment or f"exp-{job_id}",
        state=JobState.COMPLETED,
        result=ExperimentResult(
            kind=kind,
            best_metrics=metrics,
            selected_by=selected_by if kind == "training" else "",
            selected_mode=mode if kind == "training" else None,
            evaluations=[
                SplitEvaluation(
                    split=split, degenerate=degenerate, degenerate_reason="scores within 1e-7"
                )
            ],
            provenance=Provenance(dataset_id=dataset),
        ),
    )


def test_ranked_by_validation_never_by_test() -> None:
    rows = leaderboard_rows(
        [job("a", val=0.70, test=0.99), job("b", val=0.90, test=0.60), job("c", val=0.80, test=0.8)]
    )
    assert [r["job"] for r in rows] == ["b", "c", "a"]
    assert [r["rank"] for r in rows] == [1, 2, 3]


def test_a_metric_to_minimise_ranks_the_smallest_first() -> None:
    rows = leaderboard_rows(
        [
            job("a", val=0.3, test=0.9, selected_by="val_loss", mode=MetricMode.MIN),
            job("b", val=0.1, test=0.8, selected_by="val_loss", mode=MetricMode.MIN),
            job("c", val=math.nan, test=0.99, selected_by="val_loss", mode=MetricMode.MIN),
        ]
    )
    assert [r["job"] for r in rows] == ["b", "a", "c"]  # no figure: last


def test_zeros_print_as_zeros_and_nan_as_null() -> None:
    [row] = leaderboard_rows([job("a", val=0.5, test=0.5)])
    assert row["sensitivity"] == 0.0
    [cells] = leaderboard_table([row])
    assert set(cells) == set(LEADERBOARD)
    assert cells["auc [95% ci]"] == "0.500 [0.400, 0.600]"
    assert cells["sens"] == 0.0 and cells["ranked by"] == "val_auc 0.500"


def test_json_keeps_zeros_and_writes_null_for_nan(capsys: pytest.CaptureFixture[str]) -> None:
    Out(True).data(leaderboard_rows([job("a", val=0.5, test=0.5)]))
    [row] = json.loads(capsys.readouterr().out)
    assert row["sensitivity"] == 0.0 and row["threshold"] is None


def test_degenerate_rows_are_flagged_with_the_reason() -> None:
    [row] = leaderboard_rows([job("a", val=0.5, test=0.78, degenerate=True)])
    assert row["flag"] == "degenerate" and "1e-7" in row["flag_reason"]


def test_evaluation_rows_sit_under_their_experiment_labelled_with_the_dataset() -> None:
    jobs = [
        job("t1", val=0.9, test=0.9, experiment="e1"),
        job("t2", val=0.8, test=0.8, experiment="e2"),
        job("v1", val=0, test=0.7, experiment="e1", kind="evaluation", dataset="refuge"),
        job(
            "v2",
            val=0,
            test=0.6,
            experiment="e1",
            kind="evaluation",
            dataset="drishti",
            split="val",
        ),
    ]
    assert [r["job"] for r in leaderboard_rows(jobs)] == ["t1", "t2"]
    rows = leaderboard_rows(jobs, evaluations=True)
    assert [r["job"] for r in rows] == ["t1", "v1", "v2", "t2"]
    assert [r["on"] for r in rows] == ["fundus/test", "refuge/test", "drishti/val", "fundus/test"]
    assert rows[2]["auc"] == 0.6 and "rank" not in rows[2]
