"""The gpu-manager through a real grpc.aio server and through a real process (SIGKILL)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc import aio

from arc.common.v1 import common_pb2
from arc.gpu.v1 import gpu_pb2, gpu_pb2_grpc
from arc_common.auth import Role, TokenStore
from arc_common.channel import create_channel
from arc_common.server import ServerHandle
from services.gpu_manager import __main__ as gpu_main
from services.gpu_manager.settings import GpuManagerSettings
from tests.helpers import ServiceProcess

SIM_ENV = {"ARC_GPU_MANAGER_BACKEND": "simulated", "ARC_GPU_MANAGER_SIMULATED_COUNT": "3"}


@dataclass
class Running:
    handle: ServerHandle
    tokens: TokenStore
    channels: list[aio.Channel]

    def stub(self, role: Role | None) -> gpu_pb2_grpc.GpuManagerServiceStub:
        token = self.tokens.token_for(role) if role else None
        channel = create_channel(f"127.0.0.1:{self.handle.port}", token=token, default_timeout=15)
        self.channels.append(channel)
        return gpu_pb2_grpc.GpuManagerServiceStub(channel)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Running]:
    settings = GpuManagerSettings(
        home=tmp_path, port=0, backend="simulated", telemetry_interval_ms=50
    )
    tokens = TokenStore.ensure(tmp_path)
    handle = await gpu_main.start(settings, tokens)
    running = Running(handle, tokens, [])
    yield running
    for channel in running.channels:
        await channel.close()
    await handle.stop(0)


def check_accounting(reply: gpu_pb2.ListGpusResponse) -> None:
    assert reply.leased_count + reply.free_count + reply.reserved_count == reply.total_count, reply


async def test_list_gpus_shows_backend_and_arc_layout(server: Running) -> None:
    reply = await server.stub(Role.AGENT).ListGpus(gpu_pb2.ListGpusRequest())
    assert reply.backend == gpu_pb2.GPU_BACKEND_SIMULATED
    assert [g.index for g in reply.gpus] == [0, 1, 2]
    assert [g.reserved for g in reply.gpus] == [False, False, True]
    assert all(g.memory_total_bytes > 0 and g.uuid for g in reply.gpus)
    check_accounting(reply)
    assert (reply.free_count, reply.reserved_count) == (2, 1)
    page = await server.stub(Role.AGENT).ListGpus(gpu_pb2.ListGpusRequest(page_size=2))
    assert len(page.gpus) == 2 and page.next_page_token
    rest = await server.stub(Role.AGENT).ListGpus(
        gpu_pb2.ListGpusRequest(page_size=2, page_token=page.next_page_token)
    )
    assert [g.index for g in rest.gpus] == [2] and not rest.next_page_token


async def test_hundred_concurrent_acquires_grant_exactly_two(server: Running) -> None:
    stub = server.stub(Role.SERVICE)
    watcher = server.stub(Role.AGENT)
    samples: list[gpu_pb2.ListGpusResponse] = []
    stop = asyncio.Event()

    async def sample() -> None:
        while not stop.is_set():
            samples.append(await watcher.ListGpus(gpu_pb2.ListGpusRequest()))
            await asyncio.sleep(0)

    sampler = asyncio.create_task(sample())
    calls = [
        stub.AcquireLease(gpu_pb2.AcquireLeaseRequest(job_id=f"job-{n}", ttl_seconds=60))
        for n in range(100)
    ]
    results = await asyncio.gather(*calls, return_exceptions=True)
    stop.set()
    await sampler
    granted = [r for r in results if isinstance(r, gpu_pb2.AcquireLeaseResponse)]
    refused = [r for r in results if isinstance(r, aio.AioRpcError)]
    assert len(granted) == 2 and len(refused) == 98
    assert sorted(r.lease.gpu_indices[0] for r in granted) == [0, 1]
    assert {e.code() for e in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    detail = refused[0].details() or ""
    assert "busy with job" in detail and "GPU2 reserved" in detail and "expires in" in detail
    assert samples
    for reply in samples:
        check_accounting(reply)


async def test_leased_gpu_shows_holder_and_load(server: Running) -> None:
    lease = (
        await server.stub(Role.SERVICE).AcquireLease(
            gpu_pb2.AcquireLeaseRequest(
                job_id="exp-7",
                preference=common_pb2.GPU_PREFERENCE_SPECIFIC,
                gpu_indices=[1],
                request_id="r1",
            )
        )
    ).lease
    await asyncio.sleep(0.2)  # one telemetry tick
    gpus = (await server.stub(Role.AGENT).ListGpus(gpu_pb2.ListGpusRequest())).gpus
    assert gpus[1].lease_holder == "exp-7" and gpus[1].lease_id == lease.lease_id
    assert gpus[1].utilization_percent > 50 > gpus[0].utilization_percent


async def test_roles(server: Running) -> None:
    request = gpu_pb2.AcquireLeaseRequest(
        job_id="x", preference=common_pb2.GPU_PREFERENCE_SPECIFIC, gpu_indices=[2]
    )
    with pytest.raises(aio.AioRpcError) as info:
        await server.stub(Role.AGENT).AcquireLease(request)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(aio.AioRpcError) as info:
        await server.stub(Role.SERVICE).AcquireLease(request)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "reserved" in (info.value.details() or "")
    lease = (await server.stub(Role.OPERATOR).AcquireLease(request)).lease
    assert list(lease.gpu_indices) == [2]
    with pytest.raises(aio.AioRpcError) as info:
        await server.stub(None).ListGpus(gpu_pb2.ListGpusRequest())
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_renew_release_and_stale_token(server: Running) -> None:
    stub = server.stub(Role.SERVICE)
    lease = (await stub.AcquireLease(gpu_pb2.AcquireLeaseRequest(job_id="a", ttl_seconds=30))).lease
    renewed = (
        await stub.RenewLease(
            gpu_pb2.RenewLeaseRequest(lease_id=lease.lease_id, fencing_token=lease.fencing_token)
        )
    ).lease
    assert renewed.expire_time.ToDatetime() >= lease.expire_time.ToDatetime()
    with pytest.raises(aio.AioRpcError) as info:
        await stub.RenewLease(
            gpu_pb2.RenewLeaseRequest(
                lease_id=lease.lease_id, fencing_token=lease.fencing_token + 5
            )
        )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    release = gpu_pb2.ReleaseLeaseRequest(
        lease_id=lease.lease_id, fencing_token=lease.fencing_token
    )
    assert (await stub.ReleaseLease(release)).released is True
    assert (await stub.ReleaseLease(release)).released is False
    with pytest.raises(aio.AioRpcError) as info:
        await stub.RenewLease(
            gpu_pb2.RenewLeaseRequest(lease_id=lease.lease_id, fencing_token=lease.fencing_token)
        )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_idempotent_acquire(server: Running) -> None:
    stub = server.stub(Role.SERVICE)
    request = gpu_pb2.AcquireLeaseRequest(job_id="a", request_id="same")
    first, second = [(await stub.AcquireLease(request)).lease for _ in range(2)]
    assert first == second
    for changed in (
        gpu_pb2.AcquireLeaseRequest(job_id="a", request_id="same", gpu_count=2),
        gpu_pb2.AcquireLeaseRequest(job_id="a", request_id="same", ttl_seconds=30),
    ):
        with pytest.raises(aio.AioRpcError) as info:
            await stub.AcquireLease(changed)
        assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert "request_id" in (info.value.details() or "")
    # The operator's "same" is another key than the service's.
    other = (await server.stub(Role.OPERATOR).AcquireLease(request)).lease
    assert other.lease_id != first.lease_id
    reply = await stub.ListGpus(gpu_pb2.ListGpusRequest())
    assert reply.leased_count == 2


async def test_get_lease_reads_without_renewing(server: Running) -> None:
    stub = server.stub(Role.SERVICE)
    lease = (await stub.AcquireLease(gpu_pb2.AcquireLeaseRequest(job_id="a", ttl_seconds=30))).lease
    reply = await stub.GetLease(gpu_pb2.GetLeaseRequest(lease_id=lease.lease_id))
    assert reply.lease == lease and not reply.reserved_gpu_indices
    reserved = (
        await server.stub(Role.OPERATOR).AcquireLease(
            gpu_pb2.AcquireLeaseRequest(
                job_id="o", preference=common_pb2.GPU_PREFERENCE_SPECIFIC, gpu_indices=[2]
            )
        )
    ).lease
    reply = await stub.GetLease(gpu_pb2.GetLeaseRequest(lease_id=reserved.lease_id))
    assert list(reply.reserved_gpu_indices) == [2]
    with pytest.raises(aio.AioRpcError) as info:
        await stub.GetLease(gpu_pb2.GetLeaseRequest(lease_id="forged"))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "forged" in (info.value.details() or "")
    with pytest.raises(aio.AioRpcError) as info:
        await server.stub(Role.AGENT).GetLease(gpu_pb2.GetLeaseRequest(lease_id=lease.lease_id))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_hostile_renew_ttl_refused_and_listing_still_works(server: Running) -> None:
    stub = server.stub(Role.SERVICE)
    lease = (await stub.AcquireLease(gpu_pb2.AcquireLeaseRequest(job_id="a", ttl_seconds=30))).lease
    for ttl in (10**12, 2**63 - 1, 3601):
        with pytest.raises(aio.AioRpcError) as info:
            await stub.RenewLease(
                gpu_pb2.RenewLeaseRequest(
                    lease_id=lease.lease_id, fencing_token=lease.fencing_token, ttl_seconds=ttl
                )
            )
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "ttl_seconds" in (info.value.details() or "")
    held = (await stub.GetLease(gpu_pb2.GetLeaseRequest(lease_id=lease.lease_id))).lease
    assert held.expire_time == lease.expire_time
    reply = await server.stub(Role.AGENT).ListGpus(gpu_pb2.ListGpusRequest())
    assert reply.leased_count == 1


@pytest.mark.parametrize(
    ("request_kw", "field"),
    [
        ({"job_id": ""}, "job_id"),
        ({"job_id": "j", "gpu_count": 5}, "gpu_count"),
        ({"job_id": "j", "ttl_seconds": -1}, "ttl_seconds"),
        ({"job_id": "j", "ttl_seconds": 10**12}, "ttl_seconds"),
        ({"job_id": "j", "min_free_memory_mib": 2**62}, "min_free_memory_mib"),
        (
            {"job_id": "j", "preference": common_pb2.GPU_PREFERENCE_SPECIFIC, "gpu_indices": [9]},
            "gpu_indices",
        ),
        ({"job_id": "j", "preference": 42}, "preference"),
    ],
)
async def test_bad_acquire_is_invalid_argument(
    server: Running, request_kw: dict[str, object], field: str
) -> None:
    with pytest.raises(aio.AioRpcError) as info:
        await server.stub(Role.SERVICE).AcquireLease(gpu_pb2.AcquireLeaseRequest(**request_kw))  # type: ignore[arg-type]
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (info.value.details() or "")


async def test_watch_gpus_slow_watcher_does_not_delay_others(server: Running) -> None:
    fast = server.stub(Role.AGENT).WatchGpus(gpu_pb2.WatchGpusRequest(interval_ms=50))
    slow = server.stub(Role.AGENT).WatchGpus(gpu_pb2.WatchGpusRequest(interval_ms=50))
    first_slow = await slow.read()  # then never read again: its buffers fill up
    assert len(first_slow.gpus) == 3
    loop = asyncio.get_running_loop()
    start = loop.time()
    received = 0
    async for update in fast:
        assert len(update.gpus) == 3
        received += 1
        if received == 10:
            break
    elapsed = loop.time() - start
    assert elapsed < 5, "the fast watcher was held up"
    lease = await server.stub(Role.SERVICE).AcquireLease(gpu_pb2.AcquireLeaseRequest(job_id="w"))
    assert lease.lease.gpu_indices
    fast.cancel()
    slow.cancel()
    with pytest.raises(aio.AioRpcError) as info:
        await server.stub(Role.AGENT).WatchGpus(gpu_pb2.WatchGpusRequest(interval_ms=1)).read()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_sigkill_restart_keeps_leases_and_tokens(tmp_path: Path) -> None:
    service = ServiceProcess("services.gpu_manager", tmp_path, env=SIM_ENV)
    try:
        await service.start()
        token = TokenStore.load(tmp_path).token_for(Role.SERVICE)
        channel = service.channel(token)
        stub = gpu_pb2_grpc.GpuManagerServiceStub(channel)
        leases = [
            (await stub.AcquireLease(gpu_pb2.AcquireLeaseRequest(job_id=j, ttl_seconds=300))).lease
            for j in ("a", "b")
        ]
        await channel.close()
        assert await service.signal_and_wait(signal.SIGKILL) == -signal.SIGKILL

        await service.start()
        channel = service.channel(token)
        stub = gpu_pb2_grpc.GpuManagerServiceStub(channel)
        reply = await stub.ListGpus(gpu_pb2.ListGpusRequest())
        check_accounting(reply)
        holders = {g.lease_id: g.lease_holder for g in reply.gpus if g.lease_id}
        assert holders == {lease.lease_id: lease.job_id for lease in leases}
        for lease in leases:
            renewed = await stub.RenewLease(
                gpu_pb2.RenewLeaseRequest(
                    lease_id=lease.lease_id, fencing_token=lease.fencing_token
                )
            )
            assert renewed.lease.fencing_token == lease.fencing_token
        with pytest.raises(aio.AioRpcError) as info:
            await stub.AcquireLease(gpu_pb2.AcquireLeaseRequest(job_id="c"))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        await stub.ReleaseLease(
            gpu_pb2.ReleaseLeaseRequest(
                lease_id=leases[0].lease_id, fencing_token=leases[0].fencing_token
            )
        )
        newer = (await stub.AcquireLease(gpu_pb2.AcquireLeaseRequest(job_id="c"))).lease
        assert list(newer.gpu_indices) == list(leases[0].gpu_indices)
        assert newer.fencing_token > leases[0].fencing_token
        await channel.close()
    finally:
        service.kill()
