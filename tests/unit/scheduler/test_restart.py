"""A restarted scheduler takes up where it stopped, from its store alone."""

from __future__ import annotations

from arc_common.models import JobState
from services.scheduler.admission import Submission
from tests.unit.scheduler.conftest import Factory, experiment


async def test_running_jobs_are_followed_again_and_queued_ones_keep_their_place(
    make: Factory,
) -> None:
    h = await make(gpus=1)
    running = await h.submit("running")
    await h.running(running)
    later = await h.submit("later", priority=3)
    sooner = await h.submit("sooner", priority=7)

    s = await h.restart()
    running, later, sooner = (s.job(j.job_id) for j in (running, later, sooner))
    assert running.state is JobState.RUNNING and running.run_id
    assert [s.queue_position(j) for j in (sooner, later)] == [1, 2]
    h.node.end(running.job_id)
    await h.state(running, JobState.COMPLETED)
    assert running.result is not None and running.result.best_metrics == {"val_auc": 0.8}
    await h.running(sooner)
    assert h.node.started_jobs() == [running.job_id, sooner.job_id]
    await s.events.flush()
    events = await s.events.read(running.job_id, 0)
    assert [e.state_change.state for e in events if e.state_change] == [
        JobState.QUEUED,
        JobState.STARTING,
        JobState.RUNNING,
        JobState.COMPLETED,
    ]


async def test_request_ids_and_experiments_survive_a_restart(make: Factory) -> None:
    h = await make(gpus=1)
    submission = Submission(spec=experiment("kept"), request_id="r-1", request_digest="d")
    [first] = await h.scheduler.submit([submission], caller="agent")
    s = await h.restart()
    [again] = await s.submit([submission], caller="agent")
    assert again.job_id == first.job_id
    assert s.experiment("kept").job_ids == [first.job_id]


async def test_an_evaluation_under_way_is_requeued(make: Factory) -> None:
    h = await make(gpus=1)
    payload = {"checkpoint_path": "runs/x/best.pt", "data_path": "data/fundus"}
    [job] = await h.scheduler.submit(
        [Submission(spec=experiment("eval"), kind="evaluation", payload=payload)],
        caller="agent",
    )
    await h.state(job, JobState.COMPLETED)
    # A stored evaluation caught RUNNING by a restart is done again from the queue.
    job.state = JobState.RUNNING
    await h.scheduler.store.write(h.scheduler.store.put_job(job))  # as a crash leaves it
    s = await h.restart()
    again = s.job(job.job_id)
    await h.until(lambda: again.attempt == 2, "requeued as a new attempt")
    await h.state(again, JobState.COMPLETED)
    assert len(h.node.evaluations) == 2


async def test_a_job_leased_but_not_yet_started_is_started_again(make: Factory) -> None:
    h = await make(gpus=1)
    job = await h.submit("leased")
    await h.running(job)
    # As a crash between the lease and StartRun's answer leaves it: STARTING, no run id.
    job.state, job.run_id, job.run_sequence = JobState.STARTING, "", 0
    await h.scheduler.store.write(h.scheduler.store.put_job(job))
    s = await h.restart()
    again = s.job(job.job_id)
    await h.state(again, JobState.RUNNING)
    # The same attempt's request id: the executor answers with the run it already has.
    assert again.attempt == 1 and len(h.node.runs) == 1
    h.node.end(job.job_id)
    await h.state(again, JobState.COMPLETED)
