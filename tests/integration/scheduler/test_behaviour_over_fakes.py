"""One suite of behaviour, run against the core directly and through the real servicer (an
in-process server on 127.0.0.1:0), both over the unit suite's fake machines."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import grpc
import pytest

from arc.common.v1 import common_pb2
from arc.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from arc_common import sqlite
from arc_common.auth import Role, TokenStore
from arc_common.channel import create_channel
from arc_common.convert import enum_member, to_proto
from arc_common.ledger import RequestLedger
from arc_common.models import ExperimentResult, JobState, RunEndCause
from arc_common.server import Registration, ServerHandle, start_server
from services.scheduler.admission import Submission
from services.scheduler.core import Caller
from services.scheduler.servicer import SchedulerServicer
from services.scheduler.settings import SchedulerSettings
from tests.unit.scheduler.conftest import DEFAULTS, Harness, experiment
from tests.unit.scheduler.fakes import FakeClock, FakeGovernance, FakeNode


@dataclass
class Seen:
    state: JobState
    attempt: int
    queue_position: int
    pending_reason: str


class Driver(Protocol):
    async def submit(self, experiment_id: str, priority: int, request_id: str = "") -> str: ...
    async def get(self, job_id: str) -> Seen: ...
    async def cancel(self, job_id: str, request_id: str) -> JobState: ...


class CoreDriver:
    def __init__(self, harness: Harness) -> None:
        self._s = harness.scheduler

    async def submit(self, experiment_id: str, priority: int, request_id: str = "") -> str:
        submission = Submission(
            spec=experiment(experiment_id),
            priority=priority,
            request_id=request_id,
            request_digest=experiment_id,
        )
        [job] = await self._s.submit([submission], caller="agent")
        return job.job_id

    async def get(self, job_id: str) -> Seen:
        job = self._s.view(self._s.job(job_id))
        assert job.state is not None
        return Seen(job.state, job.attempt, job.queue_position, job.pending_reason)

    async def cancel(self, job_id: str, request_id: str) -> JobState:
        job = await self._s.cancel(job_id, "stop", caller=Caller("agent"), request_id=request_id)
        return job.state


class GrpcDriver:
    def __init__(self, stub: scheduler_pb2_grpc.SchedulerServiceStub) -> None:
        self.stub = stub

    async def submit(self, experiment_id: str, priority: int, request_id: str = "") -> str:
        reply: scheduler_pb2.SubmitJobResponse = await self.stub.SubmitJob(
            scheduler_pb2.SubmitJobRequest(
                spec=to_proto(experiment(experiment_id), common_pb2.ExperimentSpec),
                priority=priority,
                request_id=request_id,
            )
        )
        job_id: str = reply.job.job_id
        return job_id

    async def get(self, job_id: str) -> Seen:
        job = (await self.stub.GetJob(scheduler_pb2.GetJobRequest(job_id=job_id))).job
        state = enum_member(common_pb2.JobState, job.state, JobState)
        return Seen(state, job.attempt, job.queue_position, job.pending_reason)

    async def cancel(self, job_id: str, request_id: str) -> JobState:
        reply = await self.stub.CancelJob(
            scheduler_pb2.CancelJobRequest(job_id=job_id, reason="stop", request_id=request_id)
        )
        return enum_member(common_pb2.JobState, reply.job.state, JobState)


@dataclass
class Setup:
    harness: Harness
    driver: Driver


@pytest.fixture(params=["core", "grpc"])
async def setup(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Setup]:
    harness = Harness(
        home=tmp_path,
        settings=SchedulerSettings(home=tmp_path, port=0, **DEFAULTS),
        nodes=[FakeNode("node-0", gpus=1)],
        governance=FakeGovernance(),
        clock=FakeClock(),
    )
    scheduler = await harness.open()
    server: ServerHandle | None = None
    if request.param == "core":
        driver: Driver = CoreDriver(harness)
    else:
        tokens = TokenStore.ensure(tmp_path)
        ledger_db = await sqlite.connect(tmp_path / "ledger.sqlite3")
        ledger = RequestLedger(ledger_db, table="requests")
        await ledger.open()
        registration = Registration(
            servicer=SchedulerServicer(scheduler, ledger=ledger),
            add_to_server=scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server,
            descriptor=scheduler_pb2.DESCRIPTOR.services_by_name["SchedulerService"],
        )
        server = await start_server(harness.settings, [registration], tokens=tokens)
        channel = create_channel(
            f"127.0.0.1:{server.port}", token=tokens.token_for(Role.AGENT), default_timeout=30
        )
        driver = GrpcDriver(scheduler_pb2_grpc.SchedulerServiceStub(channel))
    yield Setup(harness, driver)
    if server is not None:
        await channel.close()
        await server.stop(0)
        await ledger_db.close()
    await harness.close()


async def test_priority_order_and_what_a_waiting_job_is_told(setup: Setup) -> None:
    h, d = setup.harness, setup.driver
    blocker = await d.submit("blocker", 5)
    await h.until(lambda: h.node.started_jobs() == [blocker], "the blocker runs")
    low = await d.submit("low", 1)
    high = await d.submit("high", 9)
    seen = await d.get(low)
    assert (seen.state, seen.queue_position) == (JobState.QUEUED, 2)
    assert seen.pending_reason.startswith("position 2, behind 1 job(s) of priority 9")
    h.node.end(blocker)
    await h.until(lambda: h.node.started_jobs()[-1:] == [high], "the high job runs next")
    h.node.end(high)
    await h.until(lambda: h.node.started_jobs()[-1:] == [low], "then the low one")
    assert (await d.get(high)).state is JobState.COMPLETED


async def test_a_lost_lease_requeues_and_a_cancel_replays(setup: Setup) -> None:
    h, d = setup.harness, setup.driver
    job = await d.submit("lost", 5, request_id="submit-1")
    assert await d.submit("lost", 5, request_id="submit-1") == job
    await h.until(lambda: h.node.started_jobs() == [job], "running")
    h.node.end(job, JobState.FAILED, RunEndCause.LOST_LEASE, "the lease expired")
    record = h.scheduler.job(job)
    await h.until(lambda: record.attempt == 2 and record.state is JobState.RUNNING, "running again")
    assert h.node.started_jobs() == [job, job]
    seen = await d.get(job)
    assert (seen.state, seen.attempt) == (JobState.RUNNING, 2)
    assert await d.cancel(job, "cancel-1") is JobState.CANCELLED
    assert await d.cancel(job, "cancel-1") is JobState.CANCELLED  # a replay, not refused


async def test_create_experiment_answers_with_the_decision_and_replays_it(
    setup: Setup,
) -> None:
    if not isinstance(setup.driver, GrpcDriver):
        pytest.skip("the response message is the servicer's")
    stub = setup.driver.stub
    body = to_proto(experiment("created"), common_pb2.ExperimentSpec)
    request = scheduler_pb2.CreateExperimentRequest(request_id="c-1", spec=body)
    first: scheduler_pb2.CreateExperimentResponse = await stub.CreateExperiment(request)
    assert first.decision.allowed
    assert first.experiment.spec.experiment_id == "created"
    assert await stub.CreateExperiment(request) == first
    other = scheduler_pb2.CreateExperimentRequest(
        request_id="c-1", spec=to_proto(experiment("other"), common_pb2.ExperimentSpec)
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.CreateExperiment(other)
    assert refused.value.code() is grpc.StatusCode.ALREADY_EXISTS


async def test_a_sealed_retry_waiting_in_the_queue_shows_an_agent_no_test_figure(
    setup: Setup,
) -> None:
    """A failed attempt's result stays on the job while it waits to retry: every view of
    it an agent reads (GetJob, GetSchedulerStatus) leaves its test figures out."""
    if not isinstance(setup.driver, GrpcDriver):
        pytest.skip("redaction is the servicer's")
    h, stub = setup.harness, setup.driver.stub
    sealed = experiment("sealed").model_copy(update={"seal_test": True})
    reply = await stub.SubmitJob(
        scheduler_pb2.SubmitJobRequest(
            spec=to_proto(sealed, common_pb2.ExperimentSpec), max_retries=1
        )
    )
    job = reply.job.job_id
    await h.running(h.scheduler.job(job))  # RUNNING and followed: its events are read
    figures = {"val_auc": 0.8, "test_auc": 0.7}
    h.node.run_of(job).emit(result=ExperimentResult(best_metrics=figures))
    h.node.end(job, JobState.FAILED, RunEndCause.CRASHED, "crashed after its test pass")
    record = h.scheduler.job(job)
    await h.until(lambda: record.state is JobState.QUEUED and record.attempt == 2, "waits")
    assert record.result is not None and record.result.best_metrics == figures
    status = await stub.GetSchedulerStatus(scheduler_pb2.GetSchedulerStatusRequest())
    [queued] = [j for j in status.status.queued_jobs if j.job_id == job]
    got = (await stub.GetJob(scheduler_pb2.GetJobRequest(job_id=job))).job
    for seen in (queued, got):
        assert seen.result.test_sealed and dict(seen.result.best_metrics) == {"val_auc": 0.8}
