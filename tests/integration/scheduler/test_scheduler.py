"""The scheduler through real servers: queue order, retries, cancel, timeouts, machines."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest
from grpc import aio

from arc.common.v1 import common_pb2
from arc.gpu.v1 import gpu_pb2, gpu_pb2_grpc
from arc.scheduler.v1 import scheduler_pb2
from arc_common.auth import Role
from arc_common.channel import create_channel
from services.scheduler.store import SchedulerStore, Write
from tests.integration.scheduler.conftest import Factory, Suite, spec

RUNNING = common_pb2.JOB_STATE_RUNNING


async def hold_the_gpu(suite: Suite) -> None:
    """The operator leases machine m0's only GPU, so jobs submitted now stay QUEUED."""
    channel = create_channel(
        f"127.0.0.1:{suite.servers[1].port}", token=suite.tokens.token_for(Role.OPERATOR)
    )
    suite.channels.append(channel)
    await gpu_pb2_grpc.GpuManagerServiceStub(channel).AcquireLease(
        gpu_pb2.AcquireLeaseRequest(job_id="held-by-the-operator", ttl_seconds=3600)
    )


def started_order(suite: Suite) -> list[str]:
    lines = (suite.home / "scheduler_events.jsonl").read_text().splitlines()
    return [entry["job_id"] for entry in map(json.loads, lines) if entry["state"] == "starting"]


async def test_priority_order_with_one_gpu(make_suite: Factory) -> None:
    suite = await make_suite()
    blocker = await suite.submit(spec("blocker", epochs=300), priority=10)
    await suite.wait(blocker.job_id, lambda j: j.state == RUNNING)
    jobs = []
    for n, priority in enumerate([1, 9, 5, 9, 0]):
        jobs.append(await suite.submit(spec(f"p{n}"), priority=priority))
    waiting = await suite.job(jobs[2].job_id)
    assert waiting.queue_position == 3
    assert "position 3, behind 2 job(s) of priority 9" in waiting.pending_reason
    assert f"GPU0 busy with job {blocker.job_id}" in waiting.pending_reason
    await suite.stub().CancelJob(scheduler_pb2.CancelJobRequest(job_id=blocker.job_id))
    for job in jobs:
        final = await suite.wait(job.job_id)
        assert final.state == common_pb2.JOB_STATE_COMPLETED, final.error_message
    expected = [jobs[i].job_id for i in (1, 3, 2, 0, 4)]
    assert started_order(suite)[1:] == expected


async def test_idempotent_submit_and_batch(make_suite: Factory) -> None:
    suite = await make_suite()
    first = await suite.submit(spec("idem", epochs=300), request_id="req-1")
    again = await suite.submit(spec("idem", epochs=300), request_id="req-1")
    assert again.job_id == first.job_id
    listing = await suite.stub().ListJobs(scheduler_pb2.ListJobsRequest())
    assert [j.job_id for j in listing.jobs] == [first.job_id]
    with pytest.raises(aio.AioRpcError) as info:
        await suite.stub().SubmitJobs(
            scheduler_pb2.SubmitJobsRequest(
                jobs=[
                    scheduler_pb2.SubmitJobRequest(spec=spec("ok-1")),
                    scheduler_pb2.SubmitJobRequest(
                        spec=spec("bad", epochs=300, priority=3), priority=12
                    ),
                ]
            )
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "jobs[1].priority" in (info.value.details() or "")
    listing = await suite.stub().ListJobs(scheduler_pb2.ListJobsRequest())
    assert len(listing.jobs) == 1  # all or nothing
    await suite.stub().CancelJob(scheduler_pb2.CancelJobRequest(job_id=first.job_id))


async def test_request_ids_are_per_caller_and_bound_to_the_body(make_suite: Factory) -> None:
    suite = await make_suite()
    await hold_the_gpu(suite)  # every job here waits in the queue: nothing trains
    agent, operator = suite.stub(Role.AGENT), suite.stub(Role.OPERATOR)
    first = (
        await agent.SubmitJob(scheduler_pb2.SubmitJobRequest(spec=spec("rid"), request_id="x"))
    ).job
    assert first.submitted_by == "agent"
    for changed in (
        scheduler_pb2.SubmitJobRequest(spec=spec("rid"), request_id="x", priority=9),
        scheduler_pb2.SubmitJobRequest(spec=spec("rid", epochs=2), request_id="x"),
    ):
        with pytest.raises(aio.AioRpcError) as info:
            await agent.SubmitJob(changed)
        assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert "request_id" in (info.value.details() or "")
    # The operator's "x" is its own: a new job, not the agent's.
    theirs = (
        await operator.SubmitJob(scheduler_pb2.SubmitJobRequest(spec=spec("rid"), request_id="x"))
    ).job
    assert theirs.job_id != first.job_id and theirs.submitted_by == "operator"
    # A batch's derived item ids never meet a caller's own "x:0".
    own = (
        await agent.SubmitJob(scheduler_pb2.SubmitJobRequest(spec=spec("rid"), request_id="b:0"))
    ).job
    batch = scheduler_pb2.SubmitJobsRequest(
        request_id="b", jobs=[scheduler_pb2.SubmitJobRequest(spec=spec("rid"))]
    )
    [item] = (await agent.SubmitJobs(batch)).results
    assert item.job.job_id not in (own.job_id, first.job_id)
    [again] = (await agent.SubmitJobs(batch)).results
    assert again.job.job_id == item.job.job_id
    listing = await agent.ListJobs(scheduler_pb2.ListJobsRequest())
    assert len(listing.jobs) == 4
    # At the same time: two bodies under one id make one job and one refusal; one body
    # sent twice makes one job.
    results = await asyncio.gather(
        agent.SubmitJob(scheduler_pb2.SubmitJobRequest(spec=spec("rid"), request_id="race")),
        agent.SubmitJob(scheduler_pb2.SubmitJobRequest(spec=spec("rid-2"), request_id="race")),
        return_exceptions=True,
    )
    refusals = [r for r in results if isinstance(r, aio.AioRpcError)]
    assert len(refusals) == 1 and refusals[0].code() == grpc.StatusCode.ALREADY_EXISTS
    same = scheduler_pb2.SubmitJobRequest(spec=spec("rid"), request_id="twice")
    a, b = await asyncio.gather(agent.SubmitJob(same), agent.SubmitJob(same))
    assert a.job.job_id == b.job.job_id
    listing = await agent.ListJobs(scheduler_pb2.ListJobsRequest())
    assert len(listing.jobs) == 6
    # CreateExperiment and CancelJob: a replay gets the first answer, another body refused.
    create = scheduler_pb2.CreateExperimentRequest(spec=spec("made"), request_id="c")
    made = await agent.CreateExperiment(create)
    assert (await agent.CreateExperiment(create)).experiment == made.experiment
    with pytest.raises(aio.AioRpcError) as info:
        await agent.CreateExperiment(
            scheduler_pb2.CreateExperimentRequest(spec=spec("other"), request_id="c")
        )
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    cancel = scheduler_pb2.CancelJobRequest(job_id=first.job_id, request_id="k")
    assert (await agent.CancelJob(cancel)).job.state == common_pb2.JOB_STATE_CANCELLED
    assert (await agent.CancelJob(cancel)).job.state == common_pb2.JOB_STATE_CANCELLED
    with pytest.raises(aio.AioRpcError) as info:
        await agent.CancelJob(scheduler_pb2.CancelJobRequest(job_id=own.job_id, request_id="k"))
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert (await suite.job(own.job_id)).state == common_pb2.JOB_STATE_QUEUED


async def test_an_agent_cancels_only_its_own_jobs(make_suite: Factory) -> None:
    suite = await make_suite()
    await hold_the_gpu(suite)
    agent, operator = suite.stub(Role.AGENT), suite.stub(Role.OPERATOR)
    ours = (await agent.SubmitJob(scheduler_pb2.SubmitJobRequest(spec=spec("own-a")))).job
    theirs = (await operator.SubmitJob(scheduler_pb2.SubmitJobRequest(spec=spec("own-o")))).job
    with pytest.raises(aio.AioRpcError) as info:
        await agent.CancelJob(scheduler_pb2.CancelJobRequest(job_id=theirs.job_id))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert theirs.job_id in (info.value.details() or "")
    assert (await suite.job(theirs.job_id)).state == common_pb2.JOB_STATE_QUEUED
    reply = await agent.CancelJob(scheduler_pb2.CancelJobRequest(job_id=ours.job_id))
    assert reply.job.state == common_pb2.JOB_STATE_CANCELLED
    reply = await suite.stub(Role.SERVICE).CancelJob(
        scheduler_pb2.CancelJobRequest(job_id=theirs.job_id)
    )
    assert reply.job.state == common_pb2.JOB_STATE_CANCELLED


async def test_cancel_in_each_state(make_suite: Factory) -> None:
    suite = await make_suite()
    running = await suite.submit(spec("c-run", epochs=300))
    queued = await suite.submit(spec("c-queued", epochs=300))
    await suite.wait(running.job_id, lambda j: j.state == RUNNING)
    stub = suite.stub()
    reply = await stub.CancelJob(scheduler_pb2.CancelJobRequest(job_id=queued.job_id))
    assert reply.job.state == common_pb2.JOB_STATE_CANCELLED
    reply = await stub.CancelJob(
        scheduler_pb2.CancelJobRequest(job_id=running.job_id, reason="not needed")
    )
    assert reply.job.state == common_pb2.JOB_STATE_CANCELLED
    assert "not needed" in reply.job.error_message
    status = await stub.GetSchedulerStatus(scheduler_pb2.GetSchedulerStatusRequest())
    assert status.status.available_gpus == 1 and status.status.queue_length == 0
    assert all(not g.lease_holder for g in status.status.gpus)
    with pytest.raises(aio.AioRpcError) as info:
        await stub.CancelJob(scheduler_pb2.CancelJobRequest(job_id=running.job_id))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(aio.AioRpcError) as info:
        await stub.CancelJob(scheduler_pb2.CancelJobRequest(job_id="job-nope"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_spec_error_fails_once_whatever_the_retries(make_suite: Factory) -> None:
    """A variant torchvision does not have would fail the same way on every attempt: the
    job fails at once with SPEC_INVALID (how many retries a failure gets that can pass
    is tests/unit/scheduler/test_retries.py's)."""
    suite = await make_suite()
    job = await suite.submit(
        spec("crash", architecture={"family": "resnet", "variant": "resnet999"}), max_retries=2
    )
    final = await suite.wait(job.job_id)
    assert final.state == common_pb2.JOB_STATE_FAILED
    assert final.attempt == 1
    assert "resnet999" in final.error_message
    assert final.failure.failure_class == common_pb2.FAILURE_CLASS_SPEC_INVALID
    assert "resnet999" in final.failure.message and final.failure.summary.startswith("SPEC_INVALID")
    assert started_order(suite).count(job.job_id) == 1


async def test_timeout_ends_timed_out_and_frees_the_gpu(make_suite: Factory) -> None:
    suite = await make_suite()
    job = await suite.submit(spec("slow", epochs=300), timeout_seconds=4)
    final = await suite.wait(job.job_id)
    assert final.state == common_pb2.JOB_STATE_TIMED_OUT
    assert "timed out" in final.error_message
    status = await suite.stub().GetSchedulerStatus(scheduler_pb2.GetSchedulerStatusRequest())
    assert status.status.available_gpus == 1


async def test_two_machines_in_parallel(make_suite: Factory) -> None:
    suite = await make_suite(machines=2)
    a = await suite.submit(spec("par-a", epochs=300))
    b = await suite.submit(spec("par-b", epochs=300))
    ja = await suite.wait(a.job_id, lambda j: j.state == RUNNING)
    jb = await suite.wait(b.job_id, lambda j: j.state == RUNNING)
    assert {ja.node, jb.node} == {"m0", "m1"}
    status = await suite.stub().GetSchedulerStatus(scheduler_pb2.GetSchedulerStatusRequest())
    assert status.status.running_jobs == 2
    assert {g.node for g in status.status.gpus} == {"m0", "m1"}
    for job in (a, b):
        await suite.stub().CancelJob(scheduler_pb2.CancelJobRequest(job_id=job.job_id))


async def test_watch_job_resumes_without_gap_or_duplicate(make_suite: Factory) -> None:
    suite = await make_suite()
    job = await suite.submit(spec("watch", epochs=2))
    stub = suite.stub()
    full = [r.event async for r in stub.WatchJob(scheduler_pb2.WatchJobRequest(job_id=job.job_id))]
    assert [e.sequence for e in full] == list(range(1, len(full) + 1))
    kinds = {e.WhichOneof("payload") for e in full}
    assert {"state_change", "metric", "checkpoint", "result"} <= kinds
    assert full[-1].result.state == common_pb2.JOB_STATE_COMPLETED
    middle = full[len(full) // 2].sequence
    rest = [
        r.event
        async for r in stub.WatchJob(
            scheduler_pb2.WatchJobRequest(job_id=job.job_id, from_sequence=middle)
        )
    ]
    assert rest == full[middle:]
    # Batched: the same events, at most 4 to a message; resuming works the same way.
    sizes: list[int] = []
    batched: list[scheduler_pb2.JobEvent] = []
    request = scheduler_pb2.WatchJobRequest(job_id=job.job_id, max_events_per_response=4)
    async for reply in stub.WatchJob(request):
        assert not reply.HasField("event")
        sizes.append(len(reply.events))
        batched.extend(reply.events)
    assert batched == full and max(sizes) <= 4 and min(sizes) >= 1
    request.from_sequence = middle
    assert [e async for r in stub.WatchJob(request) for e in r.events] == full[middle:]
    # Metric batches as one event each: the same metrics under the same numbers.

    async def as_batches(after: int) -> list[scheduler_pb2.JobEvent]:
        ask = scheduler_pb2.WatchJobRequest(
            job_id=job.job_id, from_sequence=after, max_events_per_response=8, batch_metrics=True
        )
        return [e async for r in stub.WatchJob(ask) for e in r.events]

    def expanded(events: list[scheduler_pb2.JobEvent]) -> list[tuple[int, object]]:
        out: list[tuple[int, object]] = []
        for e in events:
            if e.WhichOneof("payload") == "metrics":
                first = e.sequence - len(e.metrics.metrics) + 1
                out.extend((first + i, m) for i, m in enumerate(e.metrics.metrics))
            else:
                out.append((e.sequence, e))
        return out

    def singles(events: list[scheduler_pb2.JobEvent]) -> list[tuple[int, object]]:
        return [(e.sequence, e.metric if e.HasField("metric") else e) for e in events]

    whole = await as_batches(0)
    assert "metric" not in {e.WhichOneof("payload") for e in whole}
    assert len(whole) < len(full) and expanded(whole) == singles(full)
    big = next(e for e in whole if len(e.metrics.metrics) >= 2)  # an epoch's summary
    inside = big.sequence - 1  # resumed inside it: only its last metric is left
    assert expanded(await as_batches(inside)) == singles(full[inside:])
    assert len((await as_batches(inside))[0].metrics.metrics) == 1
    for bad in (-1, 1001):
        with pytest.raises(aio.AioRpcError) as info:
            request.max_events_per_response = bad
            async for _ in stub.WatchJob(request):
                pass
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "max_events_per_response" in (info.value.details() or "")
    final = await suite.job(job.job_id)
    assert final.result.best_metrics["test_auc"] >= 0
    experiment = await stub.GetExperiment(scheduler_pb2.GetExperimentRequest(experiment_id="watch"))
    assert experiment.experiment.results[0].job_id == job.job_id


async def test_experiments_duplicates_and_governance(make_suite: Factory) -> None:
    suite = await make_suite()
    stub = suite.stub()
    created = await stub.CreateExperiment(scheduler_pb2.CreateExperimentRequest(spec=spec("e1")))
    assert created.experiment.spec.experiment_id == "e1" and not created.duplicate_of
    assert (suite.home / "experiments" / "e1" / "spec.json").exists()
    with pytest.raises(aio.AioRpcError) as info:
        await stub.CreateExperiment(scheduler_pb2.CreateExperimentRequest(spec=spec("e1")))
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    twin = spec("e2")
    twin.description = "the same run under another name"
    reply = await stub.CreateExperiment(scheduler_pb2.CreateExperimentRequest(spec=twin))
    assert reply.duplicate_of == "e1"
    bad = spec("e3", hyperparameters={"optimizer": {"learning_rate": 0.5}, "batch_size": 4096})
    with pytest.raises(aio.AioRpcError) as info:
        await stub.CreateExperiment(scheduler_pb2.CreateExperimentRequest(spec=bad))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    details = info.value.details() or ""
    assert "learning_rate" in details and "try 0.1" in details and "batch_size" in details
    invalid = spec("e4")
    invalid.dataset.train_split = 0.9
    with pytest.raises(aio.AioRpcError) as info:
        await stub.CreateExperiment(scheduler_pb2.CreateExperimentRequest(spec=invalid))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "spec.dataset" in (info.value.details() or "")
    listing = await stub.ListExperiments(scheduler_pb2.ListExperimentsRequest(cycle_id=1))
    assert [e.spec.experiment_id for e in listing.experiments] == ["e1", "e2"]


async def test_gpu_lease_released_after_completion(make_suite: Factory) -> None:
    suite = await make_suite()
    job = await suite.submit(spec("release"))
    final = await suite.wait(job.job_id)
    assert final.state == common_pb2.JOB_STATE_COMPLETED
    status = await suite.stub(Role.OPERATOR).GetSchedulerStatus(
        scheduler_pb2.GetSchedulerStatusRequest()
    )
    assert [g.lease_holder for g in status.status.gpus] == [""]
    assert status.status.gpus[0].backend == gpu_pb2.GPU_BACKEND_SIMULATED


async def test_the_next_job_gets_the_gpu_while_the_last_checkpoint_is_written(
    make_suite: Factory,
) -> None:
    """The job queued behind a running one gets its trainer prepared ahead (data opened,
    model built, no GPU). A run that is done with its GPU (training and test split over,
    its last checkpoint in host memory) gives it back before writing that checkpoint: the
    prepared run is activated on it before the first job is COMPLETED, and both complete."""
    suite = await make_suite()
    first = await suite.submit(spec("first", epochs=6), priority=9)
    await suite.wait(first.job_id, lambda j: j.state == RUNNING)
    second = await suite.submit(spec("second"), priority=5)
    waiting = await suite.wait(
        second.job_id, lambda j: "its trainer is prepared on" in j.pending_reason
    )
    prepared_run = waiting.pending_reason.rsplit("(", 1)[1].rstrip(")")
    assert prepared_run.startswith(second.job_id)
    for job in (first, second):
        final = await suite.wait(job.job_id)
        assert final.state == common_pb2.JOB_STATE_COMPLETED, final.error_message
        assert {c.kind for c in final.result.checkpoints} == {
            common_pb2.CHECKPOINT_KIND_LAST,
            common_pb2.CHECKPOINT_KIND_BEST,
        }
    lines = (suite.home / "scheduler_events.jsonl").read_text().splitlines()
    order = [(e["job_id"], e["state"]) for e in map(json.loads, lines)]
    second_placed = order.index((second.job_id, "starting"))
    first_completed = order.index((first.job_id, "completed"))
    assert second_placed < first_completed, order
    assert (await suite.job(second.job_id)).run_id == prepared_run  # the prepared one ran
    status = await suite.stub(Role.OPERATOR).GetSchedulerStatus(
        scheduler_pb2.GetSchedulerStatusRequest()
    )
    assert [g.lease_holder for g in status.status.gpus] == [""]  # released once, not twice


async def test_malformed_values_are_invalid_argument_and_audited(make_suite: Factory) -> None:
    from arc.governance.v1 import governance_pb2, governance_pb2_grpc
    from arc_common.channel import create_channel

    suite = await make_suite()
    bad = spec(
        "malformed",
        hyperparameters={"optimizer": {"learning_rate": float("nan")}, "batch_size": -4},
    )
    with pytest.raises(aio.AioRpcError) as info:
        await suite.submit(bad, priority=11)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = info.value.details() or ""
    assert "spec.hyperparameters.optimizer.learning_rate" in details
    assert "spec.hyperparameters.batch_size" in details
    channel = create_channel(
        f"127.0.0.1:{suite.servers[0].port}", token=suite.tokens.token_for(Role.OPERATOR)
    )
    suite.channels.append(channel)
    records = await governance_pb2_grpc.GovernanceServiceStub(channel).ListAuditRecords(
        governance_pb2.ListAuditRecordsRequest(decision=governance_pb2.DECISION_OUTCOME_DENIED)
    )
    invalid = [r for r in records.records if r.action == "invalid_request"]
    assert len(invalid) == 1 and invalid[0].caller == "agent"
    assert "learning_rate" in invalid[0].outcome


async def test_status_lists_the_head_of_the_queue_and_counts_the_rest(make_suite: Factory) -> None:
    suite = await make_suite()
    running = await suite.submit(spec("head-run", epochs=300))
    await suite.wait(running.job_id, lambda j: j.state == RUNNING)
    stub = suite.stub()
    batch = scheduler_pb2.SubmitJobsRequest(
        jobs=[
            scheduler_pb2.SubmitJobRequest(spec=spec(f"head-{n}"), priority=n % 3)
            for n in range(30)
        ]
    )
    await stub.SubmitJobs(batch)
    status = (await stub.GetSchedulerStatus(scheduler_pb2.GetSchedulerStatusRequest())).status
    assert status.queue_length == 30 and status.running_jobs == 1
    assert len(status.queued_jobs) == 20  # the head; ListJobs pages through the rest
    assert [j.queue_position for j in status.queued_jobs] == list(range(1, 21))
    assert [j.priority for j in status.queued_jobs][:10] == [2] * 10
    wider = await stub.GetSchedulerStatus(scheduler_pb2.GetSchedulerStatusRequest(queued_limit=25))
    assert len(wider.status.queued_jobs) == 25
    assert [j.job_id for j in wider.status.queued_jobs[:20]] == [
        j.job_id for j in status.queued_jobs
    ]
    with pytest.raises(aio.AioRpcError) as info:
        await stub.GetSchedulerStatus(scheduler_pb2.GetSchedulerStatusRequest(queued_limit=1001))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "queued_limit" in (info.value.details() or "")
    await stub.CancelJob(scheduler_pb2.CancelJobRequest(job_id=running.job_id))
    after = (await stub.GetSchedulerStatus(scheduler_pb2.GetSchedulerStatusRequest())).status
    assert after.running_jobs <= 1  # the next job of the queue may be starting already
    for job in (await stub.ListJobs(scheduler_pb2.ListJobsRequest(page_size=100))).jobs:
        if job.state in (common_pb2.JOB_STATE_QUEUED, RUNNING, common_pb2.JOB_STATE_STARTING):
            await stub.CancelJob(scheduler_pb2.CancelJobRequest(job_id=job.job_id))


async def test_watch_ends_with_the_final_state_change_even_when_the_save_is_slow(
    make_suite: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job turns terminal in memory before its state change is appended (the row is saved
    first): a watcher that wakes in between must still wait for that event."""
    original = SchedulerStore.write

    async def slow_write(self: SchedulerStore, *writes: Write) -> None:
        await original(self, *writes)
        if any(w.table == "jobs" and w.values[4] == "cancelled" for w in writes):
            await asyncio.sleep(1.5)  # longer than a watcher's idle wake-up (1 s)

    monkeypatch.setattr(SchedulerStore, "write", slow_write)
    suite = await make_suite()
    running = await suite.submit(spec("w-run", epochs=300))
    await suite.wait(running.job_id, lambda j: j.state == RUNNING)
    stub = suite.stub()
    queued = await suite.submit(spec("w-queued"))
    seen: list[int] = []

    async def watch() -> None:
        async for reply in stub.WatchJob(scheduler_pb2.WatchJobRequest(job_id=queued.job_id)):
            if reply.event.WhichOneof("payload") == "state_change":
                seen.append(reply.event.state_change.state)

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0.3)
    await stub.CancelJob(scheduler_pb2.CancelJobRequest(job_id=queued.job_id))
    await asyncio.wait_for(watcher, 30)
    assert seen[-1] == common_pb2.JOB_STATE_CANCELLED
    await stub.CancelJob(scheduler_pb2.CancelJobRequest(job_id=running.job_id))
