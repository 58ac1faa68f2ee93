"""A sweep's search space and its trial ledger (Optuna in a journal file): parameters
checked at create, trials never repeated, and after a crash exactly the trials that were
promised, found again by their request ids."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from optuna.trial import TrialState

from arc_common.errors import InvalidArgumentError, NotFoundError, ResourceExhaustedError
from services.scheduler.sweeps import space
from services.scheduler.sweeps.ledger import SweepLedger, best_of
from services.scheduler.sweeps.plan import Direction, Plan, Sampler
from services.scheduler.sweeps.space import Parameter
from tests.unit.scheduler.conftest import experiment

LR = Parameter(path="hyperparameters.optimizer.learning_rate", log_uniform=(1e-5, 1e-1))
BATCH = Parameter(path="hyperparameters.batch_size", int_range=(4, 32), step=4)
VARIANT = Parameter(path="architecture.variant", categorical=["resnet18", "resnet34"])


def test_a_trials_parameters_become_its_spec() -> None:
    base = experiment("base")
    made = space.apply(
        base,
        {LR.path: 0.01, BATCH.path: 16, VARIANT.path: "resnet34"},
        experiment_id="base-t3",
    )
    assert made.experiment_id == "base-t3"
    assert made.hyperparameters.optimizer.learning_rate == 0.01
    assert made.hyperparameters.batch_size == 16
    assert made.architecture.variant == "resnet34"
    assert made.dataset == base.dataset


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ({"path": "hyperparameters.epochs"}, "exactly one"),
        ({"path": "hyperparameters.epochs", "uniform": (5, 1)}, "must go up"),
        ({"path": "hyperparameters.optimizer.learning_rate", "log_uniform": (0, 1)}, "positive"),
        ({"path": "dataset.data_path", "categorical": ["a", "b"]}, "fixed"),
        ({"path": "Bad Path", "uniform": (0, 1)}, "pattern"),
    ],
)
def test_a_parameter_that_is_no_distribution_is_refused(given: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        Parameter.model_validate(given)


def test_a_space_whose_corner_makes_no_valid_spec_is_refused_at_create() -> None:
    base = experiment("base")
    space.check(base, [LR, BATCH])
    with pytest.raises(InvalidArgumentError) as too_big:
        space.check(base, [Parameter(path="hyperparameters.batch_size", int_range=(1, 10**7))])
    assert too_big.value.field == "parameters[0].path"
    with pytest.raises(InvalidArgumentError) as unknown:
        space.check(base, [Parameter(path="hyperparameters.no_such", uniform=(0, 1))])
    assert unknown.value.field == "parameters[0].path"
    assert "no field" in unknown.value.message


def plan(**overrides: Any) -> Plan:
    given: dict[str, Any] = {"parameters": [LR, BATCH, VARIANT], "max_trials": 64}
    return Plan(**(given | overrides))


def test_eight_parallel_suggestions_are_all_different(tmp_path: Path) -> None:
    ledger = SweepLedger(tmp_path / "sweeps.journal")
    # A small discrete space (8 x 2 = 16 points): TPE alone would repeat some of them.
    small = plan(parameters=[BATCH, VARIANT], max_trials=16)
    ledger.create("s1", small)
    for _ in range(2):  # two waves of eight, the first one told
        wave = [ledger.ask("s1") for _ in range(8)]
        for trial in wave:
            ledger.tell("s1", trial.number, float(trial.params[BATCH.path]), TrialState.COMPLETE)
    keys = [tuple(sorted(t.params.items())) for t in ledger.trials("s1")]
    assert len(keys) == 16 and len(set(keys)) == 16
    with pytest.raises(ResourceExhaustedError):
        ledger.ask("s1")


def test_after_a_crash_the_promised_trials_are_found_again(tmp_path: Path) -> None:
    path = tmp_path / "sweeps.journal"
    first = SweepLedger(path)
    first.create("s1", plan(max_trials=6))
    made = [first.ask("s1") for _ in range(3)]
    first.tell("s1", made[0].number, 0.7, TrialState.COMPLETE)
    del first  # the scheduler is killed here
    again = SweepLedger(path)
    pending = again.pending("s1")
    assert [t.request_id for t in pending] == [t.request_id for t in made[1:]]
    assert len({t.request_id for t in made}) == 3
    for trial in pending:
        again.tell("s1", trial.number, 0.5, TrialState.COMPLETE)
    more = [again.ask("s1") for _ in range(3)]
    assert {t.number for t in more}.isdisjoint({t.number for t in made})
    with pytest.raises(ResourceExhaustedError):
        again.ask("s1")
    trials = again.trials("s1")
    assert len(trials) == 6 and all(t.state is TrialState.RUNNING for t in trials[3:])
    again.tell("s1", made[0].number, 0.1, TrialState.COMPLETE)  # told twice: the first stands
    assert again.trials("s1")[0].value == 0.7


def test_the_best_trial_follows_the_direction(tmp_path: Path) -> None:
    ledger = SweepLedger(tmp_path / "sweeps.journal")
    ledger.create("up", plan(max_trials=3, sampler=Sampler.RANDOM))
    ledger.create("down", plan(max_trials=3, sampler=Sampler.RANDOM, direction=Direction.MINIMIZE))
    for sweep in ("up", "down"):
        for value in (0.2, 0.9, 0.5):
            ledger.tell(sweep, ledger.ask(sweep).number, value, TrialState.COMPLETE)
    best_up = best_of(ledger.trials("up"), Direction.MAXIMIZE)
    best_down = best_of(ledger.trials("down"), Direction.MINIMIZE)
    assert best_up is not None and best_up.value == 0.9
    assert best_down is not None and best_down.value == 0.2
    with pytest.raises(NotFoundError):
        ledger.trials("absent")


def test_a_pruned_or_failed_trial_has_no_value(tmp_path: Path) -> None:
    ledger = SweepLedger(tmp_path / "sweeps.journal")
    ledger.create("s1", plan(max_trials=3))
    pruned, failed, done = (ledger.ask("s1") for _ in range(3))
    ledger.report("s1", pruned.number, 1, 0.4)
    ledger.tell("s1", pruned.number, 0.4, TrialState.PRUNED)
    ledger.tell("s1", failed.number, None, TrialState.COMPLETE)  # no objective: failed
    ledger.tell("s1", done.number, 0.8, TrialState.COMPLETE)
    states = [(t.state, t.value) for t in ledger.trials("s1")]
    assert states == [
        (TrialState.PRUNED, None),
        (TrialState.FAIL, None),
        (TrialState.COMPLETE, 0.8),
    ]


@pytest.mark.parametrize("sampler", [Sampler.GP, Sampler.CMA_ES, Sampler.QMC])
def test_every_sampler_suggests_points_of_the_space(tmp_path: Path, sampler: Sampler) -> None:
    ledger = SweepLedger(tmp_path / "sweeps.journal")
    decay = Parameter(path="hyperparameters.optimizer.weight_decay", uniform=(0.0, 0.1))
    ledger.create("s", plan(parameters=[LR, decay], sampler=sampler, max_trials=12))
    for _ in range(12):  # past the 8 random start-up trials: the sampler's own points
        trial = ledger.ask("s")
        lr = trial.params[LR.path]
        assert 1e-5 <= lr <= 1e-1 and 0.0 <= trial.params[decay.path] <= 0.1
        ledger.tell("s", trial.number, -abs(math.log10(lr) + 3), TrialState.COMPLETE)
    points = {tuple(sorted(t.params.items())) for t in ledger.trials("s")}
    assert len(points) == 12
