"""Submissions: all or nothing, request ids bound to bodies, governance's word, cancel."""

from __future__ import annotations

import pytest

from arc_common.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    PermissionDeniedError,
    UnavailableError,
)
from arc_common.models import DecisionOutcome, JobState, Tool
from services.scheduler.admission import Submission
from services.scheduler.core import Caller
from tests.unit.scheduler.conftest import Factory, experiment


async def test_a_retry_gets_the_first_job_and_another_body_is_refused(make: Factory) -> None:
    h = await make()
    first = Submission(spec=experiment("a"), request_id="r", request_digest="body-1")
    [job] = await h.scheduler.submit([first], caller="agent")
    [again] = await h.scheduler.submit([first], caller="agent")
    assert again is job
    other = Submission(spec=experiment("b"), request_id="r", request_digest="body-2")
    with pytest.raises(AlreadyExistsError):
        await h.scheduler.submit([other], caller="agent")
    [theirs] = await h.scheduler.submit([other], caller="someone-else")  # their own id
    assert theirs.job_id != job.job_id


async def test_a_batch_is_checked_whole_before_any_job_exists(make: Factory) -> None:
    h = await make()
    good = Submission(spec=experiment("good"))
    bad = Submission(spec=experiment("bad"), priority=11)
    with pytest.raises(InvalidArgumentError) as refused:
        await h.scheduler.submit([good, bad], caller="agent")
    assert refused.value.field == "jobs[1].priority"
    assert len(h.scheduler.jobs) == 0
    jobs = await h.scheduler.submit([good, Submission(spec=experiment("fine"))], caller="agent")
    dry_runs = [c for c in h.governance.calls if c[2]]
    assert len(dry_runs) == 2 and {c[0] for c in dry_runs} == {Tool.RUN_TRAINING_JOB}
    assert [h.scheduler.queue_position(j) for j in jobs] == [1, 2]


async def test_a_denied_submission_makes_no_job(make: Factory) -> None:
    h = await make()
    h.governance.outcome = DecisionOutcome.DENIED
    with pytest.raises(PermissionDeniedError):
        await h.submit("denied")
    assert len(h.scheduler.jobs) == 0
    assert h.scheduler.list_experiments(cycle_id=0, novelty=None, state=None) == []


async def test_cancel_a_queued_and_a_running_job(make: Factory) -> None:
    h = await make(gpus=1)
    running = await h.submit("running")
    await h.running(running)
    queued = await h.submit("queued")
    owner = Caller("agent")
    with pytest.raises(PermissionDeniedError):
        await h.scheduler.cancel(queued.job_id, "mine now", caller=Caller("intruder"))
    await h.scheduler.cancel(queued.job_id, "not needed", caller=owner)
    assert queued.state is JobState.CANCELLED
    await h.scheduler.cancel(running.job_id, "stop", caller=owner, request_id="c-1")
    assert running.state is JobState.CANCELLED
    assert h.node.run_of(running.job_id).cancel_reasons == [("stop", False)]
    # The same cancel again is answered, not refused; a new one is.
    await h.scheduler.cancel(running.job_id, "stop", caller=owner, request_id="c-1")
    with pytest.raises(FailedPreconditionError):
        await h.scheduler.cancel(running.job_id, "stop", caller=owner)


async def test_a_cancel_retried_after_its_machine_was_unreachable_reaches_it(
    make: Factory,
) -> None:
    h = await make(gpus=1)
    job = await h.submit("hard-to-stop")
    await h.running(job)
    h.node.down = True
    with pytest.raises(UnavailableError):
        await h.scheduler.cancel(job.job_id, "stop", caller=Caller("agent"), request_id="c")
    assert h.scheduler.view(job).state is JobState.RUNNING
    h.node.down = False
    await h.scheduler.cancel(job.job_id, "stop", caller=Caller("agent"), request_id="c")
    assert h.scheduler.view(job).state is JobState.CANCELLED
    assert h.node.run_of(job.job_id).cancel_reasons == [("stop", False)]


async def test_a_dataset_a_machine_cannot_train_on_is_refused_at_submit(make: Factory) -> None:
    h = await make(gpus=1)
    h.node.missing_datasets.add("data/gone")
    with pytest.raises(FailedPreconditionError) as refused:
        await h.submit("gone", spec={"dataset": {"data_path": "data/gone"}})
    assert refused.value.field == "spec.dataset.data_path"
    assert len(h.scheduler.jobs) == 0 and not h.node.leases
    await h.submit("there")  # another dataset is asked about and passes


async def test_gpus_no_machine_has_are_refused_at_submit(make: Factory) -> None:
    h = await make(gpus=2)
    await h.scheduler.nodes.gpus(max_age=0)  # what the probe lists
    specific = {"preference": "specific", "gpu_indices": [7]}
    with pytest.raises(FailedPreconditionError) as refused:
        await h.submit("seven", spec={"gpu_allocation": specific})
    assert refused.value.field == "spec.gpu_allocation.gpu_indices"
    assert f"{h.node.name}: 0, 1" in refused.value.message
    with pytest.raises(FailedPreconditionError) as too_many:
        await h.submit("four", spec={"gpu_allocation": {"gpu_count": 4}})
    assert too_many.value.field == "spec.gpu_allocation.gpu_count"
    assert len(h.scheduler.jobs) == 0
    await h.submit("one", spec={"gpu_allocation": {"preference": "specific", "gpu_indices": [1]}})
