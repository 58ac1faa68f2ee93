"""Sweeps through the real services: an agent's sweep trains real models as its own jobs,
a floor prunes trials while they train, and what a caller may not do is refused."""

from __future__ import annotations

import math
from collections.abc import Awaitable

import grpc
import pytest
from google.protobuf import struct_pb2
from grpc import aio

from arc.common.v1 import common_pb2
from arc.scheduler.v1 import scheduler_pb2, sweep_pb2
from arc_common.auth import Role
from arc_common.evaluation.ablation import paired_difference
from clients.arc_client import Addresses, ArcClient
from clients.orchestrator import Orchestrator
from tests.integration.scheduler.conftest import Factory, Suite, spec

LR = sweep_pb2.SearchParameter(
    path="hyperparameters.optimizer.learning_rate",
    log_uniform=sweep_pb2.FloatRange(low=1e-4, high=1e-2),
)


def sweep(name: str, *parameters: sweep_pb2.SearchParameter, **fields: object) -> sweep_pb2.Sweep:
    return sweep_pb2.Sweep(
        display_name=name,
        base_spec=spec(name, epochs=2),
        parameters=list(parameters) or [LR],
        **fields,  # type: ignore[arg-type]
    )


async def watch_to_end(suite: Suite, sweep_id: str) -> list[sweep_pb2.WatchSweepResponse]:
    seen = []
    request = sweep_pb2.WatchSweepRequest(sweep_id=sweep_id)
    async for response in suite.sweeps().WatchSweep(request, timeout=300):
        seen.append(response)
    return seen


async def test_an_agents_sweep_trains_its_trials_as_its_own_jobs(make_suite: Factory) -> None:
    suite = await make_suite()
    batch = sweep_pb2.SearchParameter(
        path="hyperparameters.batch_size",
        categorical=sweep_pb2.Choices(values=[struct_pb2.Value(number_value=n) for n in (4, 8)]),
    )
    made = await suite.sweeps().CreateSweep(
        sweep_pb2.CreateSweepRequest(
            request_id="lr-1", sweep=sweep("lr", LR, batch, max_trials=3, max_parallel=1)
        )
    )
    sweep_id = made.sweep.sweep_id
    assert made.sweep.state == sweep_pb2.SWEEP_STATE_RUNNING and made.sweep.created_by == "agent"
    again = await suite.sweeps().CreateSweep(
        sweep_pb2.CreateSweepRequest(
            request_id="lr-1", sweep=sweep("lr", LR, batch, max_trials=3, max_parallel=1)
        )
    )
    assert again.sweep.sweep_id == sweep_id  # a retry: the same sweep, not a second
    events = await watch_to_end(suite, sweep_id)
    final = events[-1].sweep
    assert final.state == sweep_pb2.SWEEP_STATE_COMPLETED
    assert len(final.trials) == 3
    assert all(t.state == sweep_pb2.TRIAL_STATE_COMPLETE for t in final.trials)
    assert {e.trial.number for e in events if e.HasField("trial")} == {0, 1, 2}
    assert final.best_trial.value == max(t.value for t in final.trials)
    for trial in final.trials:
        job = await suite.job(trial.job_id)
        assert job.state == common_pb2.JOB_STATE_COMPLETED and job.submitted_by == "agent"
        assert job.result.best_metrics["val_auc"] == pytest.approx(trial.value)
        lr = trial.params["hyperparameters.optimizer.learning_rate"]
        assert isinstance(lr, float) and 1e-4 <= lr <= 1e-2
        assert trial.params["hyperparameters.batch_size"] in (4, 8)
        assert trial.last_epoch >= 1  # its epochs' objective reached the ledger
    listed = await suite.sweeps().ListSweeps(sweep_pb2.ListSweepsRequest())
    assert [s.sweep_id for s in listed.sweeps] == [sweep_id] and not listed.sweeps[0].trials
    # What the engine now knows: its trials, nearest first, and one identical to a trial.
    known = await suite.stub().GetHistory(scheduler_pb2.GetHistoryRequest(spec=spec("new")))
    assert {n.job.job_id for n in known.nearest} == {t.job_id for t in final.trials}
    assert [n.distance for n in known.nearest] == sorted(n.distance for n in known.nearest)
    assert known.dataset_hash and not known.HasField("identical")
    assert [job.job_id for job in known.best_per_family] == [final.best_trial.job_id]
    first = final.trials[0]
    trained = spec("same-content", epochs=2)  # the sweep's base, at trial 0's point
    trained.hyperparameters.optimizer.learning_rate = first.params[LR.path]  # type: ignore[assignment]
    trained.hyperparameters.batch_size = int(first.params["hyperparameters.batch_size"])  # type: ignore[arg-type]
    same = await suite.stub().GetHistory(scheduler_pb2.GetHistoryRequest(spec=trained))
    assert same.identical.job_id == first.job_id
    assert same.nearest[0].distance == 0 and not same.nearest[0].differences
    await refused(
        suite.stub().GetHistory(scheduler_pb2.GetHistoryRequest(spec=trained, limit=101)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "limit",
    )
    await refused(
        suite.stub().GetHistory(scheduler_pb2.GetHistoryRequest(spec=trained, metric="test_auc")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "metric",
    )


async def test_a_floor_prunes_trials_while_they_train(make_suite: Factory) -> None:
    suite = await make_suite()
    pruner = sweep_pb2.Pruner(floor=1.01, floor_after_epochs=1)  # no AUC reaches it
    base = sweep("floor", max_trials=2, pruner=pruner)
    base.base_spec.hyperparameters.epochs = 50
    made = await suite.sweeps().CreateSweep(sweep_pb2.CreateSweepRequest(sweep=base))
    events = await watch_to_end(suite, made.sweep.sweep_id)
    final = events[-1].sweep
    assert [t.state for t in final.trials] == [sweep_pb2.TRIAL_STATE_PRUNED] * 2
    assert not final.HasField("best_trial")
    for trial in final.trials:
        job = await suite.job(trial.job_id)
        assert job.state == common_pb2.JOB_STATE_PRUNED and "floor" in job.error_message
        assert trial.last_epoch < 50


async def refused(call: object, code: grpc.StatusCode, field: str) -> None:
    with pytest.raises(aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    assert info.value.code() == code, info.value.details()
    assert field in (info.value.details() or ""), info.value.details()


async def test_what_a_caller_may_not_do_is_refused_and_changes_nothing(
    make_suite: Factory,
) -> None:
    suite = await make_suite(agents=("agent-2",))
    stub = suite.sweeps()
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    no_base = sweep_pb2.Sweep(parameters=[LR])
    await refused(
        stub.CreateSweep(sweep_pb2.CreateSweepRequest(sweep=no_base)), invalid, "base_spec"
    )
    fixed = sweep_pb2.SearchParameter(
        path="dataset.data_path",
        categorical=sweep_pb2.Choices(values=[struct_pb2.Value(string_value="../../etc")]),
    )

    def choices(path: str, *values: struct_pb2.Value) -> sweep_pb2.SearchParameter:
        return sweep_pb2.SearchParameter(path=path, categorical=sweep_pb2.Choices(values=values))

    def numbers(*values: float) -> list[struct_pb2.Value]:
        return [struct_pb2.Value(number_value=v) for v in values]

    wide = [choices(f"architecture.{p}", *numbers(*range(256))) for p in ("dropout",)]
    wide += [choices("hyperparameters.epochs", *numbers(*range(1, 257)))]
    attacks = (
        # A test figure is never a sweep's objective: it would tune on the test split.
        (sweep("a", objective="test_auc"), "sweep.objective"),
        # Grids the scheduler would have to list, or cannot.
        (sweep("a", sampler=sweep_pb2.SAMPLER_GRID), "sampler grid needs"),
        (sweep("a", *wide, sampler=sweep_pb2.SAMPLER_GRID), "at most 10000"),
        # Values with no JSON, or that Optuna would take for each other.
        (sweep("a", choices("architecture.dropout", *numbers(math.nan))), "values[0]"),
        (
            sweep(
                "a",
                choices(
                    "architecture.pretrained",
                    struct_pb2.Value(number_value=1),
                    struct_pb2.Value(bool_value=True),
                ),
            ),
            "do not mix",
        ),
        # A float range on an integer field: every trial would fail.
        (
            sweep(
                "a",
                sweep_pb2.SearchParameter(
                    path="hyperparameters.batch_size", uniform=sweep_pb2.FloatRange(low=1, high=9)
                ),
            ),
            "parameters[0]",
        ),
        # The cycle picks the GPU-hour budget: not a trial's to choose.
        (sweep("a", choices("cycle_id", *numbers(1, 2))), "fixed for every trial"),
        # Choices that would fill the journal.
        (
            sweep("a", choices("description", struct_pb2.Value(string_value="x" * 300))),
            "sweep.parameters[0].categorical",
        ),
    )
    for bad, field in (
        *attacks,
        (sweep("a", fixed), "sweep.parameters[0]"),
        (
            sweep("a", sweep_pb2.SearchParameter(path="hyperparameters.optimizer.learning_rate")),
            "exactly one",
        ),
        (
            sweep(
                "a",
                sweep_pb2.SearchParameter(
                    path="nothing.here", uniform=sweep_pb2.FloatRange(low=0, high=1)
                ),
            ),
            "nothing.here",
        ),
        (
            sweep(
                "a",
                sweep_pb2.SearchParameter(
                    path="hyperparameters.batch_size", int_range=sweep_pb2.IntRange(low=0, high=8)
                ),
            ),
            "parameters[0]",
        ),
        (sweep("a", max_trials=10_001), "sweep.max_trials"),
        (sweep("a", max_parallel=65), "sweep.max_parallel"),
        (sweep("a", sampler=99), "sweep.sampler"),
        (
            sweep("a", pruner=sweep_pb2.Pruner(reduction_factor=101)),
            "sweep.pruner.reduction_factor",
        ),
    ):
        await refused(stub.CreateSweep(sweep_pb2.CreateSweepRequest(sweep=bad)), invalid, field)
    # The policy's create_sweep limits hold for an agent: at most 4 trials at once.
    await refused(
        stub.CreateSweep(sweep_pb2.CreateSweepRequest(sweep=sweep("wide", max_parallel=5))),
        grpc.StatusCode.PERMISSION_DENIED,
        "max_parallel",
    )
    assert not (await stub.ListSweeps(sweep_pb2.ListSweepsRequest())).sweeps
    await refused(
        stub.GetSweep(sweep_pb2.GetSweepRequest(sweep_id="sweep-none")),
        grpc.StatusCode.NOT_FOUND,
        "sweep_id",
    )
    # No one takes a trial's experiment id before its sweep does.
    squat = spec("sweep-0123456789abcdef-t3")
    await refused(
        suite.stub("agent-2").SubmitJob(scheduler_pb2.SubmitJobRequest(spec=squat)),
        invalid,
        "spec.experiment_id",
    )
    await refused(
        suite.stub("agent-2").CreateExperiment(scheduler_pb2.CreateExperimentRequest(spec=squat)),
        invalid,
        "spec.experiment_id",
    )
    slow = sweep("mine", max_trials=2)
    slow.base_spec.hyperparameters.epochs = 300
    mine = (await stub.CreateSweep(sweep_pb2.CreateSweepRequest(sweep=slow))).sweep
    # Another agent may read it, not cancel it, nor take its request id's sweep.
    other = suite.sweeps("agent-2")
    await refused(
        other.CancelSweep(sweep_pb2.CancelSweepRequest(sweep_id=mine.sweep_id)),
        grpc.StatusCode.PERMISSION_DENIED,
        "sweep_id",
    )
    read = (await other.GetSweep(sweep_pb2.GetSweepRequest(sweep_id=mine.sweep_id))).sweep
    assert read.state == sweep_pb2.SWEEP_STATE_RUNNING
    cancelled = await stub.CancelSweep(
        sweep_pb2.CancelSweepRequest(sweep_id=mine.sweep_id, reason="enough")
    )
    assert cancelled.sweep.state == sweep_pb2.SWEEP_STATE_CANCELLED
    for trial in cancelled.sweep.trials:
        assert trial.state == sweep_pb2.TRIAL_STATE_FAILED
        job = await suite.wait(trial.job_id)
        assert job.state == common_pb2.JOB_STATE_CANCELLED
    await refused(
        stub.CancelSweep(sweep_pb2.CancelSweepRequest(sweep_id=mine.sweep_id)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "sweep_id",
    )
    status = await suite.stub(Role.OPERATOR).GetSchedulerStatus(
        scheduler_pb2.GetSchedulerStatusRequest()
    )
    assert status.status.queue_length == 0


async def test_the_orchestrator_sweeps_from_a_proposal_and_says_what_happened(
    make_suite: Factory,
) -> None:
    suite = await make_suite()
    address = f"127.0.0.1:{suite.port}"
    token = suite.tokens.token_for(Role.AGENT)
    async with ArcClient(Addresses(address, address, address, address), token=token) as client:
        orchestrator = Orchestrator(client)
        base = {"model": "resnet18", "epochs": 1, "batch": 8, "image_size": 32}
        base |= {"data_path": "data/fundus", "dataset": "fundus"}
        space = {"hyperparameters.optimizer.learning_rate": {"log_uniform": [1e-4, 1e-2]}}
        done = await orchestrator.sweep(base, space, max_trials=2, name="agent-sweep")
        assert done.sweep is not None and done.sweep.state == sweep_pb2.SWEEP_STATE_COMPLETED
        assert "2 trials, 2 complete" in done.feedback and "Best val_auc" in done.feedback
        assert [row["rank"] for row in done.trials] == [1, 2]
        known = await orchestrator.history(base)  # its two trials: near, learning rate apart
        assert known.count("differs: hyperparameters.optimizer.learning_rate") == 2, known
        assert "Best per architecture family: " in known
        loose = await orchestrator.sweep({"model": "resnet1800"}, space)
        assert loose.sweep is None and "resnet1800" in loose.feedback
        wide = await orchestrator.sweep(base, space, max_parallel=5)
        assert wide.sweep is None and "PERMISSION_DENIED" in wide.feedback
        assert "max_parallel" in wide.feedback


async def test_an_agent_drives_its_own_search_with_suggest_and_report(
    make_suite: Factory,
) -> None:
    suite = await make_suite(agents=("agent-2",))
    stub = suite.sweeps()
    pruner = sweep_pb2.Pruner(floor=0.5, floor_after_epochs=1)
    own = sweep("own", max_trials=3, max_parallel=2, pruner=pruner, driven_by_caller=True)
    sweep_id = (await stub.CreateSweep(sweep_pb2.CreateSweepRequest(sweep=own))).sweep.sweep_id

    def suggest(count: int, request_id: str = "") -> Awaitable[sweep_pb2.SuggestTrialsResponse]:
        request = sweep_pb2.SuggestTrialsRequest(
            sweep_id=sweep_id, count=count, request_id=request_id
        )
        call: Awaitable[sweep_pb2.SuggestTrialsResponse] = stub.SuggestTrials(request)
        return call

    def report(
        number: int, state: sweep_pb2.TrialState.ValueType, value: float | None = None, **kw: int
    ) -> Awaitable[sweep_pb2.ReportTrialResponse]:
        request = sweep_pb2.ReportTrialRequest(sweep_id=sweep_id, number=number, state=state, **kw)
        if value is not None:
            request.value = value
        call: Awaitable[sweep_pb2.ReportTrialResponse] = stub.ReportTrial(request)
        return call

    await refused(suggest(3), grpc.StatusCode.RESOURCE_EXHAUSTED, "count")  # > max_parallel
    await refused(suggest(0), grpc.StatusCode.INVALID_ARGUMENT, "count")
    first = (await suggest(2, "ask-1")).trials
    again = (await suggest(2, "ask-1")).trials
    assert [t.number for t in first] == [t.number for t in again] and len(first) == 2
    a, b = first
    said = await report(a.number, sweep_pb2.TRIAL_STATE_RUNNING, 0.4, epoch=1)
    assert "floor" in said.prune_reason
    await report(a.number, sweep_pb2.TRIAL_STATE_PRUNED)
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    await refused(report(b.number, sweep_pb2.TRIAL_STATE_COMPLETE), invalid, "value")
    await refused(report(b.number, sweep_pb2.TRIAL_STATE_RUNNING, math.nan), invalid, "value")
    await refused(report(b.number, sweep_pb2.TRIAL_STATE_UNSPECIFIED, 0.7), invalid, "state")
    await refused(report(99, sweep_pb2.TRIAL_STATE_FAILED), grpc.StatusCode.NOT_FOUND, "number")
    other = sweep_pb2.ReportTrialRequest(
        sweep_id=sweep_id, number=b.number, state=sweep_pb2.TRIAL_STATE_FAILED
    )
    await refused(
        suite.sweeps("agent-2").ReportTrial(other), grpc.StatusCode.PERMISSION_DENIED, "sweep_id"
    )
    await report(b.number, sweep_pb2.TRIAL_STATE_COMPLETE, 0.8)
    await report(b.number, sweep_pb2.TRIAL_STATE_COMPLETE, 0.8)  # the same end again: fine
    await refused(
        report(b.number, sweep_pb2.TRIAL_STATE_COMPLETE, 0.9),
        grpc.StatusCode.FAILED_PRECONDITION,
        "number",
    )
    [last] = (await suggest(2)).trials  # one trial left to make
    await report(last.number, sweep_pb2.TRIAL_STATE_COMPLETE, 0.6)
    done = (await stub.GetSweep(sweep_pb2.GetSweepRequest(sweep_id=sweep_id))).sweep
    assert done.state == sweep_pb2.SWEEP_STATE_COMPLETED and done.driven_by_caller
    assert done.best_trial.number == b.number and done.best_trial.value == 0.8
    jobs = await suite.stub().ListJobs(scheduler_pb2.ListJobsRequest())
    assert not jobs.jobs  # the engine submitted nothing for it
    engine = (await stub.CreateSweep(sweep_pb2.CreateSweepRequest(sweep=sweep("eng")))).sweep
    await refused(
        stub.SuggestTrials(sweep_pb2.SuggestTrialsRequest(sweep_id=engine.sweep_id, count=1)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "driven_by_caller",
    )
    await stub.CancelSweep(sweep_pb2.CancelSweepRequest(sweep_id=engine.sweep_id))


async def test_an_ablation_reports_each_arm_against_the_base_paired_by_seed(
    make_suite: Factory,
) -> None:
    suite = await make_suite()
    scheduler = f"127.0.0.1:{suite.port}"
    gpu, executor = (f"127.0.0.1:{server.port}" for server in suite.servers[1:3])
    addresses = Addresses(scheduler, gpu, f"127.0.0.1:{suite.servers[0].port}", executor)
    token = suite.tokens.token_for(Role.AGENT)
    async with ArcClient(addresses, token=token) as client:
        base = {"model": "resnet18", "epochs": 1, "batch": 8, "image_size": 32, "lr": 1e-3}
        base |= {"data_path": "data/fundus", "dataset": "fundus"}
        arms = {"tiny-lr": {"hyperparameters.optimizer.learning_rate": 1e-6}}
        done = await Orchestrator(client).ablate(base, arms, seeds=[0, 1], name="lr-matters")
    assert done.sweep is not None, done.feedback
    assert done.sweep.state == sweep_pb2.SWEEP_STATE_COMPLETED
    names = sorted(t.params["arm"] for t in done.sweep.trials)  # type: ignore[type-var]
    assert names == ["base", "base", "tiny-lr", "tiny-lr"]
    jobs = {t.job_id for t in done.sweep.trials}
    assert len(jobs) == 4
    base_row, arm_row = done.trials
    assert (base_row["arm"], base_row["seeds"], arm_row["arm"]) == ("base", 2, "tiny-lr")
    assert "difference" not in base_row
    by = {str(t.params["arm"]): [] for t in done.sweep.trials}  # type: ignore[var-annotated]
    for trial in sorted(done.sweep.trials, key=lambda t: t.params["hyperparameters.seed"]):  # type: ignore[arg-type,return-value]
        by[str(trial.params["arm"])].append(trial.value)
    expected = paired_difference("tiny-lr", by["base"], by["tiny-lr"])
    assert arm_row["difference"] == pytest.approx(expected.mean)
    assert arm_row["t_p"] == pytest.approx(expected.p_value, nan_ok=True)
    assert arm_row["pooled_images"] == 2 * 6  # both seeds' validation images, pooled
    assert -1 <= arm_row["delong_difference"] <= 1 and 0 <= arm_row["delong_p"] <= 1
    assert "tiny-lr:" in done.feedback and "paired t" in done.feedback
