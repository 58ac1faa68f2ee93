"""Nearness between specs: each field's gap scaled so that 1 is a large change."""

from __future__ import annotations

import math

import pytest

from services.scheduler.history import distance
from tests.unit.scheduler.conftest import experiment


def test_the_same_spec_is_at_no_distance() -> None:
    assert distance(experiment("a"), experiment("b")) == (0.0, [])


def test_two_decades_of_learning_rate_and_eight_times_the_batch_are_one_each() -> None:
    lr = experiment("a", hyperparameters={"optimizer": {"learning_rate": 1e-1}})
    found, what = distance(experiment("b"), lr)  # 1e-3 -> 1e-1
    assert found == pytest.approx(1.0)
    assert what == ["hyperparameters.optimizer.learning_rate: 0.001 -> 0.1"]
    both = experiment("c", hyperparameters={"batch_size": 64, "optimizer": {"learning_rate": 1e-1}})
    found, what = distance(experiment("d"), both)  # batch 8 -> 64 too
    assert found == pytest.approx(math.sqrt(2)) and len(what) == 2


def test_another_family_is_far() -> None:
    other = experiment("a", architecture={"family": "mobilenet", "variant": "mobilenet_v3_small"})
    found, what = distance(experiment("b"), other)
    assert found == pytest.approx(math.sqrt(1 + 0.25))
    assert what[0] == "architecture.family: resnet -> mobilenet"
