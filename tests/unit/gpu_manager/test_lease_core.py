"""The lease core with a fake clock over the real SQLite store."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from arc_common.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    PermissionDeniedError,
    ResourceExhaustedError,
)
from arc_common.models import GpuPreference
from services.gpu_manager.core import AcquireRequest, LeaseCore
from services.gpu_manager.store import SqliteLeaseStore


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


async def open_core(
    path: Path, clock: FakeClock, free: dict[int, int] | None = None
) -> tuple[LeaseCore, SqliteLeaseStore]:
    store = SqliteLeaseStore(path)
    await store.open()
    core = LeaseCore(
        gpu_indices=[0, 1, 2],
        reserved=[2],
        store=store,
        clock=clock,
        default_ttl_seconds=60,
        max_ttl_seconds=600,
        free_memory=free.get if free is not None else None,
    )
    await core.open()
    return core, store


@pytest.fixture
async def core(tmp_path: Path, clock: FakeClock) -> AsyncIterator[LeaseCore]:
    core, store = await open_core(tmp_path / "leases.db", clock)
    yield core
    await store.close()


def req(job: str, **kw: object) -> AcquireRequest:
    return AcquireRequest(job_id=job, **kw)  # type: ignore[arg-type]


def assert_accounting(core: LeaseCore) -> None:
    counts = core.accounting()
    assert counts.leased + counts.free + counts.reserved == counts.total


async def test_grant_auto_skips_reserved(core: LeaseCore, clock: FakeClock) -> None:
    a = await core.acquire(req("a"))
    b = await core.acquire(req("b"))
    assert {a.gpu_indices, b.gpu_indices} == {(0,), (1,)}
    assert a.expire_time == clock.now + 60
    with pytest.raises(ResourceExhaustedError) as info:
        await core.acquire(req("c"))
    message = str(info.value)
    assert "GPU0 busy with job a" in message and "GPU1 busy with job b" in message
    assert "GPU2 reserved" in message
    assert "earliest lease expires in 60 s" in message
    assert_accounting(core)
    assert core.accounting().free == 0


async def test_renew_extends_and_stale_token_refused(core: LeaseCore, clock: FakeClock) -> None:
    lease = await core.acquire(req("a", ttl_seconds=30))
    clock.advance(20)
    renewed = await core.renew(lease.lease_id, lease.fencing_token)
    assert renewed.expire_time == clock.now + 30
    with pytest.raises(FailedPreconditionError, match="stale fencing token"):
        await core.renew(lease.lease_id, lease.fencing_token - 1)
    with pytest.raises(FailedPreconditionError, match="unknown lease"):
        await core.renew("nope", 1)


async def test_expired_lease_reaped_and_token_grows(core: LeaseCore, clock: FakeClock) -> None:
    first = await core.acquire(req("a", preference=GpuPreference.SPECIFIC, gpu_indices=(0,)))
    clock.advance(61)
    reaped = await core.reap()
    assert [r.lease_id for r in reaped] == [first.lease_id]
    second = await core.acquire(req("b", preference=GpuPreference.SPECIFIC, gpu_indices=(0,)))
    assert second.fencing_token > first.fencing_token
    with pytest.raises(FailedPreconditionError) as info:
        await core.renew(first.lease_id, first.fencing_token)
    assert "no longer live" in str(info.value) and "GPU0 is now held by job b" in str(info.value)
    with pytest.raises(FailedPreconditionError):
        await core.release(second.lease_id, first.fencing_token)


async def test_release_idempotent(core: LeaseCore) -> None:
    lease = await core.acquire(req("a"))
    assert await core.release(lease.lease_id, lease.fencing_token) is True
    assert await core.release(lease.lease_id, lease.fencing_token) is False
    assert await core.release("never-existed", 0) is False
    assert core.accounting().free == 2


async def test_reserved_only_for_operator(core: LeaseCore) -> None:
    specific = {"preference": GpuPreference.SPECIFIC, "gpu_indices": (2,)}
    with pytest.raises(PermissionDeniedError, match="reserved"):
        await core.acquire(req("job", **specific))
    lease = await core.acquire(req("orchestrator", **specific), operator=True)
    assert lease.gpu_indices == (2,)
    assert_accounting(core)
    assert core.accounting().reserved == 0 and core.accounting().leased == 1


async def test_specific_preference_and_busy_message(core: LeaseCore) -> None:
    lease = await core.acquire(req("a", preference=GpuPreference.SPECIFIC, gpu_indices=(1,)))
    assert lease.gpu_indices == (1,)
    with pytest.raises(ResourceExhaustedError, match="GPU1 busy with job a"):
        await core.acquire(req("b", preference=GpuPreference.SPECIFIC, gpu_indices=(1,)))
    # AUTO still finds GPU0.
    assert (await core.acquire(req("b"))).gpu_indices == (0,)


async def test_multi_gpu_lease(core: LeaseCore) -> None:
    lease = await core.acquire(req("big", gpu_count=2))
    assert lease.gpu_indices == (0, 1)
    assert core.last_token(0) == core.last_token(1) == lease.fencing_token


@pytest.mark.parametrize(
    ("request_kw", "field"),
    [
        ({"job_id": ""}, "job_id"),
        ({"gpu_count": 0}, "gpu_count"),
        ({"gpu_count": 3}, "gpu_count"),
        ({"ttl_seconds": -1}, "ttl_seconds"),
        ({"ttl_seconds": 10_000}, "ttl_seconds"),
        ({"min_free_memory_mib": -5}, "min_free_memory_mib"),
        ({"min_free_memory_mib": 2**62}, "min_free_memory_mib"),
        ({"ttl_seconds": 1e12}, "ttl_seconds"),
        ({"ttl_seconds": float("nan")}, "ttl_seconds"),
        ({"job_id": "j" * 257}, "job_id"),
        ({"request_id": "r" * 257}, "request_id"),
        ({"preference": GpuPreference.SPECIFIC, "gpu_indices": (7,)}, "gpu_indices"),
        ({"preference": GpuPreference.SPECIFIC}, "gpu_indices"),
        ({"gpu_indices": (0,)}, "gpu_indices"),
    ],
)
async def test_invalid_requests_name_the_field(
    core: LeaseCore, request_kw: dict[str, object], field: str
) -> None:
    kw = {"job_id": "j", **request_kw}
    with pytest.raises(InvalidArgumentError) as info:
        await core.acquire(AcquireRequest(**kw))  # type: ignore[arg-type]
    assert info.value.field == field


async def test_same_request_id_same_lease(core: LeaseCore) -> None:
    first = await core.acquire(req("a", request_id="r-1"), caller="service")
    again = await core.acquire(req("a", request_id="r-1"), caller="service")
    assert again.lease_id == first.lease_id
    assert core.accounting().leased == 1
    for other in (req("other-job", request_id="r-1"), req("a", request_id="r-1", ttl_seconds=9)):
        with pytest.raises(AlreadyExistsError, match="request_id") as info:
            await core.acquire(other, caller="service")
        assert info.value.field == "request_id"
    assert [r.lease_id for r in core.live_leases()] == [first.lease_id]


async def test_request_id_is_the_callers_own(core: LeaseCore) -> None:
    mine = await core.acquire(req("a", request_id="r-1"), caller="service")
    theirs = await core.acquire(req("a", request_id="r-1"), caller="operator")
    assert theirs.lease_id != mine.lease_id
    assert core.accounting().leased == 2
    with pytest.raises(AlreadyExistsError):  # each caller's id is bound to its own body
        await core.acquire(req("a", request_id="r-1", gpu_count=2), caller="operator")


async def test_replay_of_a_released_lease_is_not_a_new_grant(core: LeaseCore) -> None:
    first = await core.acquire(req("a", request_id="r-1"), caller="service")
    await core.release(first.lease_id, first.fencing_token)
    again = await core.acquire(req("a", request_id="r-1"), caller="service")
    assert again.lease_id == first.lease_id and again.released
    assert core.accounting().leased == 0


async def test_renew_ttl_is_bounded_and_nothing_changes(core: LeaseCore, clock: FakeClock) -> None:
    lease = await core.acquire(req("a", ttl_seconds=30))
    for ttl in (1e12, 601, -1, float("inf")):
        with pytest.raises(InvalidArgumentError) as info:
            await core.renew(lease.lease_id, lease.fencing_token, ttl)
        assert info.value.field == "ttl_seconds"
    [live] = core.live_leases()
    assert live.expire_time == clock.now + 30
    renewed = await core.renew(lease.lease_id, lease.fencing_token, 600)
    assert renewed.expire_time == clock.now + 600


async def test_get_changes_nothing(core: LeaseCore, clock: FakeClock) -> None:
    lease = await core.acquire(req("a", ttl_seconds=30))
    clock.advance(10)
    held = await core.get(lease.lease_id)
    assert held == lease and held.expire_time == lease.expire_time
    with pytest.raises(FailedPreconditionError, match="unknown lease"):
        await core.get("forged")
    clock.advance(21)
    with pytest.raises(FailedPreconditionError, match="no longer live"):
        await core.get(lease.lease_id)
    with pytest.raises(InvalidArgumentError):
        await core.get("x" * 1000)


async def test_concurrent_acquires_never_share_a_gpu(core: LeaseCore) -> None:
    results = await asyncio.gather(
        *(core.acquire(req(f"job-{n}")) for n in range(100)), return_exceptions=True
    )
    granted = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, ResourceExhaustedError)]
    assert len(granted) == 2 and len(refused) == 98
    assert sorted(g.gpu_indices[0] for g in granted) == [0, 1]


async def test_min_free_memory(tmp_path: Path, clock: FakeClock) -> None:
    core, store = await open_core(tmp_path / "m.db", clock, free={0: 1000, 1: 50_000, 2: 80_000})
    try:
        lease = await core.acquire(req("a", min_free_memory_mib=20_000))
        assert lease.gpu_indices == (1,)
        with pytest.raises(ResourceExhaustedError, match="GPU0 has 1000 MiB free"):
            await core.acquire(req("b", min_free_memory_mib=20_000))
    finally:
        await store.close()


async def test_state_survives_reopen_and_tokens_never_reused(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "durable.db"
    core, store = await open_core(path, clock)
    a = await core.acquire(req("a", ttl_seconds=120))
    b = await core.acquire(req("b", ttl_seconds=10))
    await core.release(b.lease_id, b.fencing_token)
    b2 = await core.acquire(req("b2", ttl_seconds=10))
    await store.close()  # as if the process died: nothing else is flushed

    clock.advance(30)  # b2 expired while we were down
    core, store = await open_core(path, clock)
    try:
        live = {r.lease_id: r for r in core.live_leases()}
        assert set(live) == {a.lease_id}
        assert live[a.lease_id].fencing_token == a.fencing_token
        renewed = await core.renew(a.lease_id, a.fencing_token)
        assert renewed.fencing_token == a.fencing_token
        c = await core.acquire(req("c"))
        assert c.gpu_indices == b2.gpu_indices
        assert c.fencing_token > b2.fencing_token
        assert_accounting(core)
    finally:
        await store.close()


async def test_bad_stored_rows_are_quarantined_not_fatal(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "bad.db"
    core, store = await open_core(path, clock)
    good = await core.acquire(req("good", ttl_seconds=60))
    rows = [
        # lease_id, gpu_indices, fencing_token, expire_time
        ("huge-ttl", "[1]", 1, clock.now + 1e12),
        ("not-json", "{[", 1, clock.now + 10),
        ("no-such-gpu", "[7]", 1, clock.now + 10),
        ("same-gpu", json_list(good.gpu_indices), 9, clock.now + 10),
        ("text-time", "[1]", 1, "soon"),
        ("zero-token", "[1]", 0, clock.now + 10),
    ]
    for lease_id, gpus, token, expire in rows:
        await store.db.execute(
            "INSERT INTO leases (lease_id, job_id, request_id, gpu_indices, fencing_token, "
            "create_time, expire_time, ttl_seconds) VALUES (?, 'j', '', ?, ?, ?, ?, 60)",
            (lease_id, gpus, token, clock.now, expire),
        )
    await store.db.commit()
    await store.close()

    core, store = await open_core(path, clock)
    try:
        assert [r.lease_id for r in core.live_leases()] == [good.lease_id]
        assert_accounting(core)
        async with store.db.execute(
            "SELECT lease_id, quarantine_reason FROM leases WHERE quarantine_reason != ''"
        ) as cursor:
            quarantined = {row[0]: row[1] async for row in cursor}
        assert set(quarantined) == {r[0] for r in rows}
        assert "longest TTL" in quarantined["huge-ttl"]
        assert "quarantined" in caplog.text
        lease = await core.acquire(req("next"))  # GPU1, which the bad rows named, is free
        assert lease.gpu_indices == (1,)
    finally:
        await store.close()


def json_list(indices: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(i) for i in indices) + "]"


async def test_old_database_gains_the_new_columns(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE leases (lease_id TEXT PRIMARY KEY, job_id TEXT NOT NULL,
            request_id TEXT NOT NULL, gpu_indices TEXT NOT NULL, fencing_token INTEGER NOT NULL,
            create_time REAL NOT NULL, expire_time REAL NOT NULL, ttl_seconds REAL NOT NULL,
            released INTEGER NOT NULL DEFAULT 0);
        CREATE UNIQUE INDEX leases_request ON leases(request_id) WHERE request_id != '';
        CREATE TABLE gpu_tokens (gpu_index INTEGER PRIMARY KEY, last_token INTEGER NOT NULL);
        """
    )
    db.execute(
        "INSERT INTO leases VALUES ('old', 'j', 'r-1', '[0]', 4, ?, ?, 60, 0)",
        (clock.now, clock.now + 60),
    )
    db.execute("INSERT INTO gpu_tokens VALUES (0, 4)")
    db.commit()
    db.close()
    core, store = await open_core(path, clock)
    try:
        [old] = core.live_leases()
        assert (old.lease_id, old.fencing_token, old.caller) == ("old", 4, "")
        # The old global index is gone: another caller may use the same id.
        new = await core.acquire(req("j2", request_id="r-1"), caller="service")
        assert new.gpu_indices == (1,)
    finally:
        await store.close()
