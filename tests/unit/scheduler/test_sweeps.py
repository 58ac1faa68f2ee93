"""Sweeps over the scheduler with fake machines: trials are the caller's jobs, at most
``max_parallel`` at once, each told its objective; a restart takes the sweep up with
exactly the trials it promised; a cancel stops the running trials."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest
from optuna.trial import TrialState

from arc_common.errors import (
    InvalidArgumentError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnavailableError,
)
from arc_common.models import DecisionOutcome, JobState
from services.scheduler.core import Caller
from services.scheduler.sweeps.driver import MAX_REFUSALS, gpu_seconds
from services.scheduler.sweeps.ledger import SweepLedger
from services.scheduler.sweeps.manager import SchedulerJobs, SweepManager, SweepView
from services.scheduler.sweeps.plan import Plan
from services.scheduler.sweeps.pruners import PrunerKind, PrunerSpec
from services.scheduler.sweeps.space import Parameter
from tests.unit.scheduler.conftest import Factory, Harness, experiment
from tests.unit.scheduler.replay import ReplayNode

LR = Parameter(path="hyperparameters.optimizer.learning_rate", log_uniform=(1e-4, 1e-1))


def auc_of(learning_rate: float) -> float:
    """The curve the sweep climbs: best at a learning rate of 1e-2."""
    return 0.9 - 0.1 * abs(math.log10(learning_rate) + 2)


async def manager_over(h: Harness) -> SweepManager:
    manager = SweepManager(SweepLedger(h.home / "sweeps.journal"), SchedulerJobs(h.scheduler))
    await manager.open()
    return manager


def running_jobs(h: Harness) -> list[str]:
    return [
        fake.run.job_id
        for fake in h.node.runs.values()
        if fake.run.state is JobState.RUNNING and not fake.prepared
    ]


async def end_one(h: Harness) -> str:
    """Wait for a trial's job to train, and end it with its curve's value."""
    await h.until(lambda: bool(running_jobs(h)), "a trial running")
    job_id = running_jobs(h)[0]
    config = h.node.run_of(job_id).run.config
    assert config is not None
    value = auc_of(config.experiment_spec.hyperparameters.optimizer.learning_rate)
    h.node.end(job_id, metrics={"val_auc": value})
    await h.state(h.scheduler.job(job_id), JobState.COMPLETED)
    return job_id


async def until_state(manager: SweepManager, sweep_id: str, state: str) -> SweepView:
    async with asyncio.timeout(10):
        async for view, _ in manager.watch(sweep_id):
            if view.state == state:
                return view
    raise AssertionError(f"sweep {sweep_id} ended {view.state}, not {state}")


async def test_a_sweep_runs_its_trials_two_at_a_time_and_finds_the_best(make: Factory) -> None:
    h = await make(gpus=2)
    manager = await manager_over(h)
    plan = Plan(parameters=[LR], max_trials=6, max_parallel=2, base=experiment("lr"))
    sweep_id = await manager.create(plan, caller="agent")
    ended = []
    for _ in range(6):
        ended.append(await end_one(h))
        assert len(running_jobs(h)) <= 2
    view = await until_state(manager, sweep_id, "completed")
    assert len(view.trials) == 6 and len(set(ended)) == 6
    assert {t.job_id for t in view.trials} == set(ended)
    assert all(t.state is TrialState.COMPLETE for t in view.trials)
    assert view.best is not None
    assert view.best.value == max(t.value or 0 for t in view.trials)
    jobs = [h.scheduler.job(job_id) for job_id in ended]
    assert {job.caller for job in jobs} == {"agent"}  # the caller's jobs, its governance
    assert len({job.spec.experiment_id for job in jobs if job.spec}) == 6
    await manager.close()


async def test_a_restart_takes_up_exactly_the_promised_trials(make: Factory) -> None:
    h = await make(gpus=2)
    manager = await manager_over(h)
    plan = Plan(parameters=[LR], max_trials=5, max_parallel=2, base=experiment("again"))
    sweep_id = await manager.create(plan, caller="agent")
    first = await end_one(h)
    await h.until(lambda: len(running_jobs(h)) == 2, "two trials running")
    in_flight = set(running_jobs(h))
    await manager.close()
    await h.restart()  # the scheduler dies with two trials training
    manager = await manager_over(h)
    ended = [first]
    for _ in range(4):
        ended.append(await end_one(h))
    view = await until_state(manager, sweep_id, "completed")
    assert in_flight <= set(ended)  # re-attached, not submitted again
    assert len(view.trials) == 5 and sorted(t.job_id for t in view.trials) == sorted(ended)
    assert len(h.node.started_jobs()) == 5
    await manager.close()


async def test_a_cancel_stops_the_running_trials_and_only_its_owner_may(make: Factory) -> None:
    h = await make(gpus=2)
    manager = await manager_over(h)
    plan = Plan(parameters=[LR], max_trials=8, max_parallel=2, base=experiment("stop"))
    sweep_id = await manager.create(plan, caller="agent")
    await h.until(lambda: len(running_jobs(h)) == 2, "two trials running")
    with pytest.raises(PermissionDeniedError):
        await manager.cancel(sweep_id, Caller("another-agent"), "mine now")
    view = await manager.cancel(sweep_id, Caller("agent"), "enough")
    assert view.state == "cancelled"
    assert all(t.state is TrialState.FAIL for t in view.trials) and len(view.trials) == 2
    for trial in view.trials:
        await h.state(h.scheduler.job(trial.job_id), JobState.CANCELLED)
    await manager.close()


async def test_a_space_the_base_spec_refuses_is_refused_at_create(
    make: Factory, tmp_path: Path
) -> None:
    h = await make()
    manager = await manager_over(h)
    batch = Parameter(path="hyperparameters.batch_size", int_range=(0, 8))
    with pytest.raises(InvalidArgumentError) as refused:
        await manager.create(Plan(parameters=[batch], base=experiment("b")), caller="agent")
    assert refused.value.field == "parameters[0].path"
    assert await manager.ids() == []
    await manager.close()


async def test_the_pruner_stops_trials_below_the_floor_and_the_median(make: Factory) -> None:
    h = await make(gpus=1)
    manager = await manager_over(h)
    pruner = PrunerSpec(kind=PrunerKind.MEDIAN, min_trials=1, floor=0.6, floor_after_epochs=1)
    plan = Plan(parameters=[LR], max_trials=4, pruner=pruner, base=experiment("prune"))
    sweep_id = await manager.create(plan, caller="agent")
    curves = [[0.8, 0.8], [0.5], [0.7], [0.85, 0.9]]  # done, floor, median, done
    jobs = []
    for curve in curves:
        await h.until(lambda: bool(running_jobs(h)), "a trial running")
        [job_id] = running_jobs(h)
        jobs.append(job_id)
        for epoch, value in enumerate(curve, start=1):
            h.node.metric(job_id, "val_auc", epoch, value)
        if len(curve) == 2:
            h.node.end(job_id, metrics={"val_auc": curve[-1]})
        job = h.scheduler.job(job_id)
        await h.until(lambda: job.state.is_terminal, f"{job_id} ended")  # noqa: B023
    view = await until_state(manager, sweep_id, "completed")
    states = [trial.state for trial in view.trials]
    assert states == [
        TrialState.COMPLETE,
        TrialState.PRUNED,
        TrialState.PRUNED,
        TrialState.COMPLETE,
    ]
    assert [h.scheduler.job(job_id).state for job_id in jobs] == [
        JobState.COMPLETED,
        JobState.PRUNED,
        JobState.PRUNED,
        JobState.COMPLETED,
    ]
    [(reason, pruned)] = h.node.run_of(jobs[1]).cancel_reasons
    assert pruned and "below the floor 0.6" in reason
    [(reason, pruned)] = h.node.run_of(jobs[2]).cancel_reasons
    assert pruned and "median" in reason
    assert view.trials[2].last_value == 0.7 and view.trials[2].last_epoch == 1
    assert view.best is not None and view.best.number == view.trials[3].number
    await manager.close()


async def test_trials_refused_again_and_again_end_the_sweep_failed(make: Factory) -> None:
    h = await make(gpus=2)
    manager = await manager_over(h)
    plan = Plan(parameters=[LR], max_trials=50, max_parallel=2, base=experiment("denied"))
    h.governance.outcome = DecisionOutcome.ALLOWED
    sweep_id = await manager.create(plan, caller="agent")
    h.governance.outcome = DecisionOutcome.DENIED  # the policy now refuses every trial
    view = await until_state(manager, sweep_id, "failed")
    assert "refused" in view.reason and len(view.trials) <= MAX_REFUSALS + plan.max_parallel
    assert all(t.state is TrialState.FAIL for t in view.trials)
    assert not h.scheduler.list_jobs(state=None, experiment_id="")
    await manager.close()


async def test_an_engine_error_fails_the_sweep_and_stops_its_trials(
    make: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = await make(gpus=2)
    manager = await manager_over(h)
    asked = 0
    real_ask = SweepLedger.ask

    def ask(self: SweepLedger, sweep_id: str, *, tag: str = "") -> Any:
        nonlocal asked
        asked += 1
        if asked == 3:
            raise OSError(28, "No space left on device")
        return real_ask(self, sweep_id, tag=tag)

    monkeypatch.setattr(SweepLedger, "ask", ask)
    plan = Plan(parameters=[LR], max_trials=8, max_parallel=2, base=experiment("broken"))
    sweep_id = await manager.create(plan, caller="agent")
    await h.until(lambda: len(running_jobs(h)) == 2, "two trials running")
    first = running_jobs(h)[0]
    h.node.end(first, metrics={"val_auc": 0.7})  # its slot's next ask fails
    view = await until_state(manager, sweep_id, "failed")
    assert "No space left on device" in view.reason
    [done, stopped] = sorted(view.trials, key=lambda t: t.job_id != first)
    assert done.state is TrialState.COMPLETE and stopped.state is TrialState.FAIL
    await h.state(h.scheduler.job(stopped.job_id), JobState.CANCELLED)
    await manager.close()


async def test_concurrent_creates_keep_the_per_caller_limit(make: Factory, tmp_path: Path) -> None:
    h = await make(gpus=1)
    manager = SweepManager(
        SweepLedger(h.home / "sweeps.journal"),
        SchedulerJobs(h.scheduler),
        max_running_per_caller=2,
    )
    await manager.open()
    plan = Plan(parameters=[LR], max_trials=4, base=experiment("many"))
    made = await asyncio.gather(
        *(manager.create(plan, caller="agent", request_id=f"r{n}") for n in range(6)),
        return_exceptions=True,
    )
    assert sum(isinstance(m, str) for m in made) == 2
    assert all(isinstance(m, ResourceExhaustedError) for m in made if not isinstance(m, str))
    await manager.close()


async def test_a_trial_waits_out_governance_being_unreachable(
    make: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = await make(gpus=1)
    manager = await manager_over(h)
    plan = Plan(parameters=[LR], max_trials=1, base=experiment("blip"))
    sweep_id = await manager.create(plan, caller="agent")
    answered = h.governance.validate
    down = 2

    async def validate(*args: Any, **kwargs: Any) -> Any:
        nonlocal down
        if down:
            down -= 1
            raise UnavailableError("governance restarting")
        return await answered(*args, **kwargs)

    monkeypatch.setattr(h.governance, "validate", validate)
    job_id = await end_one(h)
    view = await until_state(manager, sweep_id, "completed")
    assert [t.state for t in view.trials] == [TrialState.COMPLETE] and view.trials[
        0
    ].job_id == job_id
    assert down == 0
    await manager.close()


async def test_a_gpu_hour_budget_stops_new_trials(make: Factory) -> None:
    class Tenths(ReplayNode):
        epoch_seconds = 0.1  # three epochs: a trial trains about 0.3 s

    h = await make(gpus=1, node_type=Tenths)
    manager = await manager_over(h)
    budget = 0.5 / 3600  # half a GPU-second
    base = experiment("hours", hyperparameters={"epochs": 3})
    plan = Plan(parameters=[LR], max_trials=20, max_gpu_hours=budget, base=base)
    sweep_id = await manager.create(plan, caller="agent")
    view = await until_state(manager, sweep_id, "completed")
    assert "GPU-hour budget is spent" in view.reason
    used = [gpu_seconds(h.scheduler.job(t.job_id)) / 3600 for t in view.trials]
    assert sum(used[:-1]) < budget <= sum(used) and len(used) < 20  # the last one spent it
    await manager.close()


async def test_a_wall_time_budget_stops_the_sweep_and_its_trials(make: Factory) -> None:
    h = await make(gpus=1)
    manager = await manager_over(h)
    plan = Plan(parameters=[LR], max_trials=10, max_wall_seconds=1, base=experiment("wall"))
    sweep_id = await manager.create(plan, caller="agent")
    view = await until_state(manager, sweep_id, "completed")
    assert "wall-time budget of 1 s" in view.reason
    [trial] = view.trials  # its one trial trains until the budget cancels it
    assert trial.state is TrialState.FAIL
    await h.state(h.scheduler.job(trial.job_id), JobState.CANCELLED)
    await manager.close()
