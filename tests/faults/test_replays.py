"""Every mutating RPC replayed with the same request_id while half the replies are dropped:
no duplicate job, lease, run, transaction or tool execution."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from google.protobuf.struct_pb2 import Struct
from grpc import aio

from arc.common.v1 import common_pb2
from arc.executor.v1 import executor_pb2, executor_pb2_grpc
from arc.governance.v1 import governance_pb2, governance_pb2_grpc
from arc.gpu.v1 import gpu_pb2, gpu_pb2_grpc
from arc.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from arc_common.auth import Role, TokenStore
from arc_common.synth import generate_dataset
from tests.faults.proxy import DroppingProxy
from tests.integration.executor.conftest import job_config
from tests.integration.scheduler.conftest import spec
from tests.integration.tools.conftest import git
from tests.security.suite import ProcessSuite

REPLAYS = 3


async def until_ok(call: Callable[[], Awaitable[Any]]) -> Any:
    """What a careful client does: retry UNAVAILABLE with the same request."""
    for _ in range(40):
        try:
            return await call()
        except aio.AioRpcError as exc:
            if exc.code().name != "UNAVAILABLE":
                raise
    raise AssertionError("never got a reply through")


async def test_replays_through_a_lossy_proxy(tmp_path: Path, data_root: Path) -> None:
    home = tmp_path / "ws"
    repo = home / "code" / "models"
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    (repo / "net.py").write_text("WIDTH = 64\n")
    git(repo, "add", ".")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "initial")
    # The scheduler's spec trains on data/fundus (checked at submit), the direct StartRun
    # on the data root's fundus.
    generate_dataset(home / "data" / "fundus", count=8, size=32, seed=2, splits=(0.5, 0.25, 0.25))
    suite = ProcessSuite(home, data_root=data_root)
    await suite.start()
    proxies = {
        name: DroppingProxy(f"127.0.0.1:{port}", drop=0.5, seed=len(name))
        for name, port in suite.ports().items()
    }
    try:
        ports = {name: await proxy.start() for name, proxy in proxies.items()}
        tokens = TokenStore.load(home)
        channels = [
            aio.insecure_channel(f"127.0.0.1:{ports[name]}")
            for name in ("scheduler", "gpu_manager", "governance", "executor")
        ]
        scheduler = scheduler_pb2_grpc.SchedulerServiceStub(channels[0])
        gpus = gpu_pb2_grpc.GpuManagerServiceStub(channels[1])
        governance = governance_pb2_grpc.GovernanceServiceStub(channels[2])
        executor = executor_pb2_grpc.ExecutorServiceStub(channels[3])
        auth = [("authorization", f"Bearer {tokens.token_for(Role.OPERATOR)}")]

        submit = scheduler_pb2.SubmitJobRequest(request_id="s-1", spec=spec("replayed", epochs=300))
        lease_req = gpu_pb2.AcquireLeaseRequest(
            request_id="l-1",
            job_id="manual",
            preference=common_pb2.GPU_PREFERENCE_SPECIFIC,
            gpu_indices=[1],
            ttl_seconds=120,
        )
        params = Struct()
        params.update({"max_training_time_seconds": 3600, "gpu_allocation": {"gpu_count": 1}})
        validate = governance_pb2.ValidateToolRequestRequest(
            request_id="v-1",
            tool=governance_pb2.TOOL_RUN_TRAINING_JOB,
            parameters=params,
            cycle_id=9,
        )
        begin = governance_pb2.BeginTransactionRequest(
            request_id="t-1", tool=governance_pb2.TOOL_MANAGE_CHECKPOINTS, paths=["scratch"]
        )
        patch = executor_pb2.ApplyCodePatchRequest(
            request_id="p-1",
            repository="models",
            patch="--- a/net.py\n+++ b/net.py\n@@ -1 +1 @@\n-WIDTH = 64\n+WIDTH = 96\n",
        )

        jobs, leases, decisions, transactions, patches = set(), set(), set(), set(), set()
        for _ in range(REPLAYS):
            jobs.add(
                (await until_ok(lambda: scheduler.SubmitJob(submit, metadata=auth))).job.job_id
            )
            leases.add(
                (await until_ok(lambda: gpus.AcquireLease(lease_req, metadata=auth))).lease.lease_id
            )
            decisions.add(
                (
                    await until_ok(lambda: governance.ValidateToolRequest(validate, metadata=auth))
                ).decision.audit_sequence
            )
            transactions.add(
                (
                    await until_ok(lambda: governance.BeginTransaction(begin, metadata=auth))
                ).transaction.transaction_id
            )
            patches.add(
                (await until_ok(lambda: executor.ApplyCodePatch(patch, metadata=auth))).commit_sha
            )
        assert len(jobs) == len(leases) == len(decisions) == len(transactions) == 1
        assert len(patches) == 1
        assert git(repo, "rev-list", "--count", "HEAD").strip() == "2"  # one commit, not three

        lease = (await until_ok(lambda: gpus.AcquireLease(lease_req, metadata=auth))).lease
        config = job_config("manual")
        config.experiment_spec.hyperparameters.epochs = 300
        start = executor_pb2.StartRunRequest(request_id="r-1", config=config, lease=lease)
        runs = {
            (await until_ok(lambda: executor.StartRun(start, metadata=auth))).run.run_id
            for _ in range(REPLAYS)
        }
        assert len(runs) == 1

        job_list = await until_ok(
            lambda: scheduler.ListJobs(scheduler_pb2.ListJobsRequest(), metadata=auth)
        )
        assert [j.experiment_id for j in job_list.jobs] == ["replayed"]
        listing = await until_ok(lambda: gpus.ListGpus(gpu_pb2.ListGpusRequest(), metadata=auth))
        holders = [g.lease_holder for g in listing.gpus if g.lease_holder]
        assert holders.count("manual") == 1
        assert sum(p.dropped for p in proxies.values()) > 0  # the proxy really lost replies
        run_id = runs.pop()
        cancel = executor_pb2.CancelRunRequest(request_id="c-1", run_id=run_id)
        for _ in range(REPLAYS):
            cancelled = await until_ok(lambda: executor.CancelRun(cancel, metadata=auth))
            assert cancelled.run.state == common_pb2.JOB_STATE_CANCELLED
        for channel in channels:
            await channel.close()
    finally:
        for proxy in proxies.values():
            await proxy.stop()
        suite.stop()
