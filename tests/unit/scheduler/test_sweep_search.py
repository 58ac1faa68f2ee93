"""Sweeps at scale on machines that replay learning curves in milliseconds: 64 trials
survive a restart with exactly the trials promised, 8 parallel suggestions never repeat,
and successive halving finds the best trial on a fraction of the epochs."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import pytest
from optuna.trial import TrialState
from pydantic import ValidationError

from arc_common.errors import InvalidArgumentError
from arc_common.models import ExperimentSpec, JobState
from services.scheduler.sweeps.ledger import PRIOR, SweepLedger
from services.scheduler.sweeps.manager import SchedulerJobs, SweepManager, SweepView
from services.scheduler.sweeps.plan import Arm, Plan, Sampler
from services.scheduler.sweeps.pruners import PrunerKind, PrunerSpec
from services.scheduler.sweeps.space import Parameter
from tests.unit.scheduler.conftest import Factory, Harness, experiment
from tests.unit.scheduler.replay import ReplayNode

LR = Parameter(path="hyperparameters.optimizer.learning_rate", log_uniform=(1e-4, 1e-1))


async def manager_over(h: Harness) -> SweepManager:
    manager = SweepManager(SweepLedger(h.home / "sweeps.journal"), SchedulerJobs(h.scheduler))
    await manager.open()
    return manager


async def until(manager: SweepManager, sweep_id: str, done: object) -> SweepView:
    assert callable(done)
    async with asyncio.timeout(60):
        async for view, _ in manager.watch(sweep_id):
            if done(view):
                return view
    return await manager.get(sweep_id)


def base(name: str, epochs: int) -> ExperimentSpec:
    return experiment(name, hyperparameters={"epochs": epochs})


async def test_64_trials_survive_a_restart_at_trial_30_exactly(make: Factory) -> None:
    h = await make(gpus=2, node_type=ReplayNode)
    manager = await manager_over(h)
    plan = Plan(parameters=[LR], max_trials=64, max_parallel=2, base=base("crash", 3))
    sweep_id = await manager.create(plan, caller="agent")
    await until(manager, sweep_id, lambda view: len(view.trials) >= 30)
    await manager.close()
    await h.restart()  # trials running on the machines, others never asked for yet
    manager = await manager_over(h)
    view = await until(manager, sweep_id, lambda view: view.state == "completed")
    assert len(view.trials) == 64 and [t.number for t in view.trials] == sorted(
        t.number for t in view.trials
    )
    assert all(t.state is TrialState.COMPLETE for t in view.trials)
    assert len({json.dumps(t.params, sort_keys=True) for t in view.trials}) == 64
    jobs = {t.job_id for t in view.trials}
    assert len(jobs) == 64 and all(h.scheduler.job(j).state is JobState.COMPLETED for j in jobs)
    runs = Counter(config.job_id for config in h.node.started)
    assert set(runs) == jobs and max(runs.values()) <= 2  # re-attached, or requeued once
    await manager.close()


class SlowReplay(ReplayNode):
    epoch_seconds = 0.1  # long enough for all 8 to train at once


async def test_eight_parallel_suggestions_never_repeat(make: Factory) -> None:
    h = await make(gpus=8, node_type=SlowReplay)
    manager = await manager_over(h)
    space = [
        Parameter(path="hyperparameters.batch_size", int_range=(4, 16), step=4),
        Parameter(path="hyperparameters.optimizer.learning_rate", categorical=[1e-3, 1e-2]),
        Parameter(path="architecture.variant", categorical=["resnet18", "resnet34"]),
    ]
    plan = Plan(parameters=space, max_trials=16, max_parallel=8, base=base("wide", 2))
    sweep_id = await manager.create(plan, caller="agent")
    view = await until(manager, sweep_id, lambda view: view.state == "completed")
    points = [json.dumps(t.params, sort_keys=True) for t in view.trials]
    assert len(points) == 16 and len(set(points)) == 16  # every point of the space, once
    assert isinstance(h.node, ReplayNode) and h.node.most_at_once == 8
    # Only the learning rate moves the replayed curve: it explains the best trials.
    assert max(view.importance, key=view.importance.__getitem__) == LR.path, view.importance
    await manager.close()


class EpochReplay(ReplayNode):
    # Slow enough that a prune lands within the epoch it was decided at, as with real
    # epochs of seconds; the sweep still takes about a second.
    epoch_seconds = 0.005


async def _sweep(make: Factory, pruner: PrunerSpec) -> tuple[SweepView, int]:
    h = await make(gpus=2, node_type=EpochReplay)
    manager = await manager_over(h)
    plan = Plan(
        parameters=[LR],
        sampler=Sampler.RANDOM,  # the same trials in both sweeps: only the pruner differs
        max_trials=27,
        max_parallel=2,
        seed=7,
        pruner=pruner,
        base=base("asha", 27),
    )
    sweep_id = await manager.create(plan, caller="agent")
    view = await until(manager, sweep_id, lambda view: view.state == "completed")
    await manager.close()
    node = h.node
    assert isinstance(node, ReplayNode)
    return view, node.epochs_trained


async def test_successive_halving_finds_the_best_on_half_the_epochs(make: Factory) -> None:
    full, full_epochs = await _sweep(make, PrunerSpec())
    halving = PrunerSpec(kind=PrunerKind.SUCCESSIVE_HALVING, min_epochs=1, reduction_factor=3)
    pruned, pruned_epochs = await _sweep(make, halving)
    assert full_epochs == 27 * 27
    assert pruned_epochs <= full_epochs / 2
    assert sum(t.state is TrialState.PRUNED for t in pruned.trials) >= 13
    assert full.best is not None and pruned.best is not None
    assert pruned.best.params == full.best.params  # the known best is never pruned


async def test_an_ablation_trains_every_arm_at_every_seed(make: Factory) -> None:
    h = await make(gpus=2, node_type=ReplayNode)
    manager = await manager_over(h)
    slow = Arm(name="slow-lr", changes={"hyperparameters.optimizer.learning_rate": 1e-4})
    plan = Plan(arms=[slow], seeds=[3, 4], max_parallel=2, base=base("abl", 3))
    assert plan.max_trials == 4 and plan.sampler is Sampler.GRID
    sweep_id = await manager.create(plan, caller="agent")
    view = await until(manager, sweep_id, lambda view: view.state == "completed")
    made = {}
    for trial in view.trials:
        spec = h.scheduler.job(trial.job_id).spec
        assert spec is not None
        made[spec.experiment_id] = (
            spec.hyperparameters.seed,
            spec.hyperparameters.optimizer.learning_rate,
        )
    assert made == {
        f"{sweep_id}-base-s3": (3, 0.001),
        f"{sweep_id}-base-s4": (4, 0.001),
        f"{sweep_id}-slow-lr-s3": (3, 1e-4),
        f"{sweep_id}-slow-lr-s4": (4, 1e-4),
    }
    with pytest.raises(InvalidArgumentError, match="sweeps' trials'") as taken:
        await h.submit(f"{sweep_id}-t9")  # no one takes a trial's name first
    assert taken.value.field == "spec.experiment_id"
    with pytest.raises(ValidationError, match="same for every arm"):
        Arm(name="moved", changes={"dataset.data_path": "elsewhere"})
    with pytest.raises(ValidationError, match="each name once"):
        Plan(arms=[slow, slow], base=base("twice", 1))
    bad = Arm(name="bad", changes={"hyperparameters.batch_size": 0})
    with pytest.raises(InvalidArgumentError) as refused:
        await manager.create(Plan(arms=[bad], base=base("bad", 1)), caller="agent")
    assert (refused.value.field or "").startswith("arms[0].changes")
    await manager.close()


async def test_a_trial_trained_before_is_not_trained_again(make: Factory) -> None:
    h = await make(gpus=2, node_type=ReplayNode)
    manager = await manager_over(h)
    lrs = Parameter(path=LR.path, categorical=[1e-3, 1e-2])
    first_plan = Plan(parameters=[lrs], sampler=Sampler.GRID, max_parallel=2, base=base("re", 2))
    first = await manager.create(first_plan, caller="agent")
    done = await until(manager, first, lambda view: view.state == "completed")
    runs = len(h.node.started)
    again = await manager.create(first_plan, caller="agent-2")  # the same space and base
    view = await until(manager, again, lambda view: view.state == "completed")
    assert len(h.node.started) == runs  # nothing trained: each trial is an earlier job
    assert {t.job_id for t in view.trials} == {t.job_id for t in done.trials}
    assert sorted(t.value or 0 for t in view.trials) == sorted(t.value or 0 for t in done.trials)
    repeated = first_plan.model_copy(update={"repeat": True})
    once_more = await manager.create(repeated, caller="agent")
    await until(manager, once_more, lambda view: view.state == "completed")
    assert len(h.node.started) == runs + 2  # asked to repeat: trained again
    # A warm start learns from those jobs before its first trial: points of its space.
    warm = Plan(parameters=[LR], max_trials=1, warm_start=True, base=base("re", 2))
    warmed = await manager.create(warm, caller="agent")
    await until(manager, warmed, lambda view: view.state == "completed")
    study = manager.ledger.storage.get_study_id_from_name(warmed)
    priors = [t for t in manager.ledger.storage.get_all_trials(study) if PRIOR in t.user_attrs]
    assert len(priors) == 4 and {t.params[LR.path] for t in priors} == {1e-3, 1e-2}
    assert len((await manager.get(warmed)).trials) == 1  # priors are not its trials
    await manager.close()
