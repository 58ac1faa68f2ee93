"""Job kinds: evaluation as the scheduler runs it, and a new kind added by a test alone."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from arc_common.errors import InvalidArgumentError
from arc_common.models import (
    ExperimentResult,
    ExperimentSpec,
    JobState,
    Lease,
    OperatingPoint,
    SplitEvaluation,
    Tool,
)
from services.scheduler.admission import Submission
from services.scheduler.core import Caller
from services.scheduler.ports import NodeClient
from services.scheduler.store import JobRecord
from tests.unit.scheduler.conftest import Factory, experiment


class SleepKind:
    """Sleeps on the leased GPU for ``seconds``: the smallest kind there can be."""

    name = "sleep"
    tool = Tool.RUN_EVALUATION_JOB
    checked_before_batch = False

    def parse(self, payload: dict[str, Any], *, field: str) -> dict[str, Any]:
        seconds = payload.get("seconds")
        if not isinstance(seconds, int | float) or not 0 <= seconds <= 60:
            raise InvalidArgumentError("seconds must be a number in [0, 60]", field=field)
        return {"seconds": float(seconds)}

    def governance_request(
        self, spec: ExperimentSpec, payload: dict[str, Any]
    ) -> tuple[dict[str, Any], int]:
        return {"sleep_seconds": payload["seconds"]}, spec.cycle_id

    async def execute(
        self, job: JobRecord, node: NodeClient, lease: Lease, *, request_id: str
    ) -> ExperimentResult:
        await asyncio.sleep(job.payload["seconds"])
        return ExperimentResult(best_metrics={"slept_seconds": job.payload["seconds"]})


def sleep(seconds: float, experiment_id: str = "nap") -> Submission:
    return Submission(spec=experiment(experiment_id), kind="sleep", payload={"seconds": seconds})


async def test_a_kind_registered_by_a_test_runs_through_the_scheduler(make: Factory) -> None:
    h = await make(gpus=1, open_now=False)
    await h.open(before_open=lambda s: s.register_kind(SleepKind()))
    [job] = await h.scheduler.submit([sleep(0.01)], caller="agent")
    assert job.kind == "sleep"
    await h.state(job, JobState.COMPLETED)
    view = h.scheduler.view(job)
    assert view.result is not None and view.result.best_metrics == {"slept_seconds": 0.01}
    assert view.result.duration_seconds >= 0
    tool, parameters, dry_run, _ = h.governance.calls[-1]
    assert (tool, parameters, dry_run) == (Tool.RUN_EVALUATION_JOB, {"sleep_seconds": 0.01}, False)
    assert h.node.leases == {}  # its lease went back

    with pytest.raises(InvalidArgumentError) as bad:
        await h.scheduler.submit([sleep(-1)], caller="agent")
    assert bad.value.field == "sleep"


async def test_a_sleeping_job_is_cancelled_like_any_other(make: Factory) -> None:
    h = await make(gpus=1, open_now=False)
    await h.open(before_open=lambda s: s.register_kind(SleepKind()))
    [job] = await h.scheduler.submit([sleep(30)], caller="agent")
    await h.state(job, JobState.RUNNING)
    await h.scheduler.cancel(job.job_id, "enough", caller=Caller("agent"))
    assert job.state is JobState.CANCELLED
    assert job.error_message == "enough"
    assert h.node.leases == {}


async def test_an_unknown_kind_is_refused_naming_the_field(make: Factory) -> None:
    h = await make()
    with pytest.raises(InvalidArgumentError) as refused:
        await h.scheduler.submit([sleep(1)], caller="agent")
    assert refused.value.field == "kind"
    assert "training" in str(refused.value) and "evaluation" in str(refused.value)


async def test_an_evaluation_job_reports_its_metrics_by_split(make: Factory) -> None:
    h = await make(gpus=1)
    # A sensitivity of zero is a figure, not a missing one.
    h.node.report = SplitEvaluation(
        split="val",
        positive_class="glaucoma",
        auc=0.91,
        accuracy=0.5,
        operating_points=[OperatingPoint(name="youden", chosen_on="val", specificity=1.0)],
    )
    payload = {"checkpoint_path": "runs/x/best.pt", "data_path": "data/fundus", "split": "val"}
    [job] = await h.scheduler.submit(
        [Submission(spec=experiment("eval"), kind="evaluation", payload=payload)],
        caller="agent",
    )
    await h.state(job, JobState.COMPLETED)
    assert job.result is not None
    metrics = job.result.best_metrics
    assert metrics["val_auc"] == 0.91 and metrics["val_sensitivity"] == 0.0
    assert metrics["val_specificity"] == 1.0
    assert job.result.kind == "evaluation" and job.result.evaluation("val") == h.node.report
    assert job.result.provenance is not None and job.result.provenance.dataset_id == "fake"
    [(evaluation, seconds)] = h.node.evaluations
    assert evaluation.split == "val" and seconds == job.timeout_seconds
    tool, parameters, _, _ = h.governance.calls[-1]
    assert tool is Tool.RUN_EVALUATION_JOB and parameters["checkpoint_path"] == "runs/x/best.pt"


async def test_a_bad_evaluation_names_its_field(make: Factory) -> None:
    h = await make()
    with pytest.raises(InvalidArgumentError) as refused:
        await h.scheduler.submit(
            [Submission(spec=experiment("e"), kind="evaluation", payload={"data_path": "d"})],
            caller="agent",
        )
    assert refused.value.field == "evaluation.checkpoint_path"
    assert len(h.scheduler.jobs) == 0


async def test_stored_jobs_of_a_kind_gone_fail_and_the_rest_go_on(make: Factory) -> None:
    h = await make(gpus=1, open_now=False)
    await h.open(before_open=lambda s: s.register_kind(SleepKind()))
    running, queued = await h.scheduler.submit([sleep(30), sleep(30, "nap-2")], caller="agent")
    await h.state(running, JobState.RUNNING)
    assert queued.state is JobState.QUEUED
    s = await h.restart()  # this scheduler has no sleep kind
    for job in (running, queued):
        orphan = s.job(job.job_id)
        assert orphan.state is JobState.FAILED
        assert "'sleep'" in orphan.error_message
    assert h.node.leases == {}
    other = await h.submit("after")
    await h.state(other, JobState.RUNNING)
