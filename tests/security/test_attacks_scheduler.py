"""Attacks on leases, bounds, request ids and job ownership, through the four services as
processes with an agent's token (issue 19, findings 6, 7, 9 and 10). Each attack is refused
and has no effect. Nothing here trains: the operator holds every unreserved GPU, so the
jobs submitted stay queued."""

from __future__ import annotations

import asyncio
import json
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from grpc import aio

from arc.common.v1 import common_pb2
from arc.executor.v1 import executor_pb2, executor_pb2_grpc
from arc.governance.v1 import governance_pb2, governance_pb2_grpc
from arc.gpu.v1 import gpu_pb2, gpu_pb2_grpc
from arc.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from arc_common.auth import TOKENS_FILE, Role, TokenStore
from arc_common.channel import create_channel
from arc_common.convert import dict_to_proto
from arc_common.synth import generate_dataset
from tests.integration.scheduler.conftest import spec
from tests.security.suite import ProcessSuite

QUEUED = common_pb2.JOB_STATE_QUEUED
SECOND_AGENT = "agent-2"


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessSuite]:
    home = tmp_path_factory.mktemp("attacks-scheduler")
    data = tmp_path_factory.mktemp("attacks-scheduler-data")
    generate_dataset(data / "data" / "fundus", count=12, size=32, seed=5, splits=(0.5, 0.25, 0.25))
    # Two agents: one agent's jobs and request ids are not another's.
    entries = [
        {"name": name, "role": role, "token": secrets.token_urlsafe(32)}
        for name, role in (
            ("agent", "agent"),
            (SECOND_AGENT, "agent"),
            ("operator", "operator"),
            ("service", "service"),
        )
    ]
    (home / TOKENS_FILE).write_text(json.dumps({"tokens": entries}))
    (home / TOKENS_FILE).chmod(0o600)
    processes = ProcessSuite(home, data_root=data, fixed_ports=True)
    asyncio.run(processes.start())
    yield processes
    processes.stop()


class Clients:
    def __init__(self, suite: ProcessSuite) -> None:
        self.suite = suite
        self.tokens = TokenStore.load(suite.home)
        entries = json.loads((suite.home / TOKENS_FILE).read_text())["tokens"]
        self.by_name: dict[str, str] = {e["name"]: e["token"] for e in entries}
        self.channels: list[aio.Channel] = []

    def _channel(self, service: str, token: str) -> aio.Channel:
        port = self.suite.ports()[service]
        channel = create_channel(f"127.0.0.1:{port}", token=token, default_timeout=30)
        self.channels.append(channel)
        return channel

    def token(self, who: Role | str) -> str:
        if isinstance(who, Role):
            return self.tokens.token_for(who)
        return self.by_name[who]

    def gpu(self, who: Role | str) -> gpu_pb2_grpc.GpuManagerServiceStub:
        return gpu_pb2_grpc.GpuManagerServiceStub(self._channel("gpu_manager", self.token(who)))

    def executor(self, who: Role | str) -> executor_pb2_grpc.ExecutorServiceStub:
        return executor_pb2_grpc.ExecutorServiceStub(self._channel("executor", self.token(who)))

    def scheduler(self, who: Role | str) -> scheduler_pb2_grpc.SchedulerServiceStub:
        return scheduler_pb2_grpc.SchedulerServiceStub(self._channel("scheduler", self.token(who)))

    def governance(self) -> governance_pb2_grpc.GovernanceServiceStub:
        channel = self._channel("governance", self.token(Role.OPERATOR))
        return governance_pb2_grpc.GovernanceServiceStub(channel)

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()


@pytest.fixture
async def clients(suite: ProcessSuite) -> AsyncIterator[Clients]:
    out = Clients(suite)
    yield out
    await out.close()


@pytest.fixture
async def held(clients: Clients) -> AsyncIterator[gpu_pb2.Lease]:
    """The operator leases GPUs 0 and 1 (GPU2 is reserved): jobs submitted wait queued."""
    stub = clients.gpu(Role.OPERATOR)
    lease = (
        await stub.AcquireLease(
            gpu_pb2.AcquireLeaseRequest(job_id="operator-hold", gpu_count=2, ttl_seconds=3600)
        )
    ).lease
    yield lease
    await stub.ReleaseLease(
        gpu_pb2.ReleaseLeaseRequest(lease_id=lease.lease_id, fencing_token=lease.fencing_token)
    )


async def refused(call: object, code: grpc.StatusCode, *words: str) -> str:
    with pytest.raises(aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    assert info.value.code() == code, info.value.details()
    details = info.value.details() or ""
    for word in words:
        assert word in details, details
    return details


async def leases(clients: Clients) -> list[tuple[int, str]]:
    reply = await clients.gpu(Role.AGENT).ListGpus(gpu_pb2.ListGpusRequest())
    return [(g.index, g.lease_id) for g in reply.gpus]


async def evaluation_audits(clients: Clients) -> int:
    reply = await clients.governance().ListAuditRecords(
        governance_pb2.ListAuditRecordsRequest(tool=governance_pb2.TOOL_RUN_EVALUATION_JOB)
    )
    return len(reply.records)


def evaluate(lease: gpu_pb2.Lease) -> executor_pb2.EvaluateCheckpointRequest:
    return executor_pb2.EvaluateCheckpointRequest(
        checkpoint_path="runs/any/checkpoints/best.pt",
        data_path="data/fundus",
        lease=lease,
    )


# --- finding 6: forged leases -------------------------------------------------------------


async def test_forged_lease_never_reaches_a_gpu(clients: Clients) -> None:
    before, audits = await leases(clients), await evaluation_audits(clients)
    forged = gpu_pb2.Lease(lease_id="forged", gpu_indices=[2], fencing_token=1)
    await refused(
        clients.executor(Role.AGENT).EvaluateCheckpoint(evaluate(forged)),
        grpc.StatusCode.PERMISSION_DENIED,
        "lease",
    )
    # The operator is trusted, and still checked with the gpu-manager.
    await refused(
        clients.executor(Role.OPERATOR).EvaluateCheckpoint(evaluate(forged)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "lease",
        "forged",
    )
    assert await leases(clients) == before
    assert dict(before)[2] == ""  # the reserved GPU was never given
    assert await evaluation_audits(clients) == audits  # nothing ran, not even the check


async def test_a_real_lease_presented_wrong_is_refused(clients: Clients) -> None:
    service = clients.gpu(Role.SERVICE)
    lease = (
        await service.AcquireLease(gpu_pb2.AcquireLeaseRequest(job_id="eval-x", ttl_seconds=60))
    ).lease
    operator = clients.executor(Role.OPERATOR)
    audits = await evaluation_audits(clients)
    try:
        other_gpus = gpu_pb2.Lease()
        other_gpus.CopyFrom(lease)
        other_gpus.gpu_indices[:] = [2]
        await refused(
            operator.EvaluateCheckpoint(evaluate(other_gpus)),
            grpc.StatusCode.FAILED_PRECONDITION,
            "lease.gpu_indices",
        )
        stale = gpu_pb2.Lease()
        stale.CopyFrom(lease)
        stale.fencing_token += 1
        await refused(
            operator.EvaluateCheckpoint(evaluate(stale)),
            grpc.StatusCode.FAILED_PRECONDITION,
            "lease.fencing_token",
        )
        held = (await service.GetLease(gpu_pb2.GetLeaseRequest(lease_id=lease.lease_id))).lease
        assert held.expire_time == lease.expire_time  # checking renewed nothing
    finally:
        await service.ReleaseLease(
            gpu_pb2.ReleaseLeaseRequest(lease_id=lease.lease_id, fencing_token=lease.fencing_token)
        )
    # Even an operator's own lease of the reserved GPU runs no tool there.
    gpus = clients.gpu(Role.OPERATOR)
    reserved = (
        await gpus.AcquireLease(
            gpu_pb2.AcquireLeaseRequest(
                job_id="op", preference=common_pb2.GPU_PREFERENCE_SPECIFIC, gpu_indices=[2]
            )
        )
    ).lease
    try:
        await refused(
            operator.EvaluateCheckpoint(evaluate(reserved)),
            grpc.StatusCode.PERMISSION_DENIED,
            "reserved",
        )
    finally:
        await gpus.ReleaseLease(
            gpu_pb2.ReleaseLeaseRequest(
                lease_id=reserved.lease_id, fencing_token=reserved.fencing_token
            )
        )
    assert await evaluation_audits(clients) == audits


def run_config(job_id: str) -> common_pb2.TrainingJobConfig:
    config = dict_to_proto(
        {
            "job_id": job_id,
            "checkpoint_dir": f"runs/{job_id}/attempt-1/checkpoints",
            "log_dir": f"runs/{job_id}/attempt-1/logs",
        },
        common_pb2.TrainingJobConfig,
    )
    config.experiment_spec.CopyFrom(spec(job_id))
    return config


FORGED = gpu_pb2.Lease(lease_id="forged", gpu_indices=[2], fencing_token=1)


async def test_start_run_with_a_forged_lease_spawns_nothing(
    suite: ProcessSuite, clients: Clients
) -> None:
    before = await leases(clients)
    executor = clients.executor(Role.SERVICE)
    start = executor_pb2.StartRunRequest(
        request_id="forged-run", config=run_config("forged-run"), lease=FORGED
    )
    await refused(executor.StartRun(start), grpc.StatusCode.FAILED_PRECONDITION, "forged")
    assert not (suite.home / "runs" / "forged-run").exists()
    assert await leases(clients) == before


async def test_a_forged_start_leaves_the_jobs_prepared_run_alone(clients: Clients) -> None:
    """Defence in depth (StartRun takes the service role): the lease is refused before a
    waiting trainer of the job is superseded."""
    executor = clients.executor(Role.SERVICE)
    prepared = (
        await executor.PrepareRun(
            executor_pb2.PrepareRunRequest(request_id="ahead", config=run_config("ahead"))
        )
    ).run
    try:
        start = executor_pb2.StartRunRequest(
            request_id="ahead-cold", config=run_config("ahead"), lease=FORGED
        )
        await refused(executor.StartRun(start), grpc.StatusCode.FAILED_PRECONDITION, "forged")
        run = (await executor.GetRun(executor_pb2.GetRunRequest(run_id=prepared.run_id))).run
        assert run.state == QUEUED, run.error_message
        activate = executor_pb2.ActivateRunRequest(run_id=prepared.run_id, lease=FORGED)
        await refused(executor.ActivateRun(activate), grpc.StatusCode.FAILED_PRECONDITION)
        run = (await executor.GetRun(executor_pb2.GetRunRequest(run_id=prepared.run_id))).run
        assert run.state == QUEUED and not run.HasField("lease")
    finally:
        await executor.CancelRun(executor_pb2.CancelRunRequest(run_id=prepared.run_id))


# --- finding 7 (gpu-manager): unbounded TTLs, bad stored rows ---------------------------------


async def test_hostile_renew_is_refused_and_the_listing_keeps_working(clients: Clients) -> None:
    service = clients.gpu(Role.SERVICE)
    lease = (
        await service.AcquireLease(gpu_pb2.AcquireLeaseRequest(job_id="ttl", ttl_seconds=60))
    ).lease
    try:
        renew = gpu_pb2.RenewLeaseRequest(
            lease_id=lease.lease_id, fencing_token=lease.fencing_token, ttl_seconds=10**12
        )
        await refused(clients.gpu(Role.AGENT).RenewLease(renew), grpc.StatusCode.PERMISSION_DENIED)
        await refused(service.RenewLease(renew), grpc.StatusCode.INVALID_ARGUMENT, "ttl_seconds")
        await refused(
            service.AcquireLease(gpu_pb2.AcquireLeaseRequest(job_id="t2", ttl_seconds=10**12)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "ttl_seconds",
        )
        held = (await service.GetLease(gpu_pb2.GetLeaseRequest(lease_id=lease.lease_id))).lease
        assert held.expire_time == lease.expire_time
        agent = clients.gpu(Role.AGENT)
        listing = await agent.ListGpus(gpu_pb2.ListGpusRequest())
        assert listing.leased_count == 1
        watch = agent.WatchGpus(gpu_pb2.WatchGpusRequest(interval_ms=50))
        first = await watch.read()
        watch.cancel()
        assert isinstance(first, gpu_pb2.WatchGpusResponse) and len(first.gpus) == 3
    finally:
        await service.ReleaseLease(
            gpu_pb2.ReleaseLeaseRequest(lease_id=lease.lease_id, fencing_token=lease.fencing_token)
        )


async def test_a_bad_stored_lease_row_does_not_stop_the_gpu_manager(
    suite: ProcessSuite, clients: Clients
) -> None:
    suite.gpu.kill()
    db = sqlite3.connect(suite.home / "gpu_manager.sqlite3")
    db.execute(
        "INSERT INTO leases (lease_id, job_id, request_id, gpu_indices, fencing_token, "
        "create_time, expire_time, ttl_seconds) VALUES ('planted', 'j', '', '[0]', 1, ?, ?, 1e12)",
        (time.time(), time.time() + 1e12),
    )
    db.commit()
    db.close()
    await suite.gpu.start()
    listing = await clients.gpu(Role.AGENT).ListGpus(gpu_pb2.ListGpusRequest())
    assert listing.leased_count == 0 and all(not g.lease_id for g in listing.gpus)
    assert "quarantined" in suite.gpu.log()


# --- finding 9: request ids per caller, bound to the body --------------------------------------


def submit(name: str, request_id: str, **kw: object) -> scheduler_pb2.SubmitJobRequest:
    return scheduler_pb2.SubmitJobRequest(spec=spec(name), request_id=request_id, **kw)  # type: ignore[arg-type]


async def job_ids(clients: Clients) -> set[str]:
    reply = await clients.scheduler(Role.OPERATOR).ListJobs(
        scheduler_pb2.ListJobsRequest(page_size=1000)
    )
    return {j.job_id for j in reply.jobs}


async def test_request_ids_are_the_callers_own(clients: Clients, held: gpu_pb2.Lease) -> None:
    agent = clients.scheduler(Role.AGENT)
    mine = (await agent.SubmitJob(submit("rid-a", "x"))).job
    jobs = await job_ids(clients)
    # Another body under the same id: refused, and neither a new job nor a changed one.
    await refused(
        agent.SubmitJob(submit("rid-a", "x", priority=10)),
        grpc.StatusCode.ALREADY_EXISTS,
        "request_id",
    )
    assert await job_ids(clients) == jobs
    now = (await agent.GetJob(scheduler_pb2.GetJobRequest(job_id=mine.job_id))).job
    assert (now.state, now.priority) == (QUEUED, mine.priority)
    # The same id of the operator or of another agent is their own key: not the agent's job.
    theirs = (await clients.scheduler(Role.OPERATOR).SubmitJob(submit("rid-a", "x"))).job
    second = (await clients.scheduler(SECOND_AGENT).SubmitJob(submit("rid-a", "x"))).job
    assert len({mine.job_id, theirs.job_id, second.job_id}) == 3
    assert (theirs.submitted_by, second.submitted_by) == ("operator", SECOND_AGENT)
    # A caller's "b:0" and the id SubmitJobs derives for item 0 of batch "b" never meet.
    own = (await agent.SubmitJob(submit("rid-a", "b:0"))).job
    batch = scheduler_pb2.SubmitJobsRequest(request_id="b", jobs=[submit("rid-a", "")])
    [item] = (await agent.SubmitJobs(batch)).results
    assert item.job.job_id != own.job_id
    [again] = (await agent.SubmitJobs(batch)).results
    assert again.job.job_id == item.job.job_id


async def test_lease_request_ids_are_bound_to_the_body(clients: Clients) -> None:
    service = clients.gpu(Role.SERVICE)
    first = gpu_pb2.AcquireLeaseRequest(job_id="idem", request_id="lease-1", ttl_seconds=60)
    lease = (await service.AcquireLease(first)).lease
    try:
        before = await leases(clients)
        for changed in (
            gpu_pb2.AcquireLeaseRequest(
                job_id="idem", request_id="lease-1", ttl_seconds=60, gpu_count=2
            ),
            gpu_pb2.AcquireLeaseRequest(job_id="idem", request_id="lease-1", ttl_seconds=600),
        ):
            await refused(
                service.AcquireLease(changed), grpc.StatusCode.ALREADY_EXISTS, "request_id"
            )
        assert (await service.AcquireLease(first)).lease == lease
        assert await leases(clients) == before
        await refused(
            clients.gpu(Role.AGENT).AcquireLease(first), grpc.StatusCode.PERMISSION_DENIED
        )
    finally:
        await service.ReleaseLease(
            gpu_pb2.ReleaseLeaseRequest(lease_id=lease.lease_id, fencing_token=lease.fencing_token)
        )


# --- finding 10: ownership ----------------------------------------------------------------


async def test_an_agent_cannot_cancel_jobs_it_did_not_submit(
    clients: Clients, held: gpu_pb2.Lease
) -> None:
    operator = clients.scheduler(Role.OPERATOR)
    agent = clients.scheduler(Role.AGENT)
    theirs = (await operator.SubmitJob(submit("own-o", ""))).job
    others = (await clients.scheduler(SECOND_AGENT).SubmitJob(submit("own-2", ""))).job
    for victim in (theirs, others):
        await refused(
            agent.CancelJob(scheduler_pb2.CancelJobRequest(job_id=victim.job_id, reason="mine")),
            grpc.StatusCode.PERMISSION_DENIED,
            victim.job_id,
        )
        after = (await agent.GetJob(scheduler_pb2.GetJobRequest(job_id=victim.job_id))).job
        assert after.state == QUEUED and not after.error_message
    ours = (await agent.SubmitJob(submit("own-a", ""))).job
    reply = await agent.CancelJob(scheduler_pb2.CancelJobRequest(job_id=ours.job_id))
    assert reply.job.state == common_pb2.JOB_STATE_CANCELLED
    for victim, owner in ((theirs, operator), (others, clients.scheduler(SECOND_AGENT))):
        reply = await owner.CancelJob(scheduler_pb2.CancelJobRequest(job_id=victim.job_id))
        assert reply.job.state == common_pb2.JOB_STATE_CANCELLED
