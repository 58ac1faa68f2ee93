"""The attack suite of issue 19: an agent with a valid token against the real services.

The twelve findings are reproduced in three files, one per service attacked, each with its
own workspace: ``test_attacks_executor.py`` (checkpoints that execute code, the workspace's
keys, patch shapes, unbounded tool inputs, the executor's ledger, a blocked event loop),
``test_attacks_governance.py`` (decisions reused by request id, writes outside a
transaction, hostile transactions, the audit chain) and ``test_attacks_scheduler.py``
(forged leases, unbounded TTLs, request ids, cancelling others' jobs).

This file holds the attacks that need a job to have really trained: ownership of what a
job wrote. The agent's token deletes and overwrites nothing in a folder of a job it did not
submit; what it submitted itself it may manage.
"""

from __future__ import annotations

import grpc
import pytest

from arc.common.v1 import common_pb2
from arc.executor.v1 import executor_pb2, executor_pb2_grpc
from arc.scheduler.v1 import scheduler_pb2
from arc_common.auth import Role
from arc_common.channel import create_channel
from tests.integration.scheduler.conftest import Factory, Suite, make_suite, spec, tiny_data

__all__ = ["make_suite", "tiny_data"]  # the fixtures, shared with the scheduler suite


def executor(suite: Suite, role: Role) -> executor_pb2_grpc.ExecutorServiceStub:
    port = suite.servers[2].port  # governance, gpu-manager, executor, scheduler
    channel = create_channel(
        f"127.0.0.1:{port}", token=suite.tokens.token_for(role), default_timeout=120
    )
    suite.channels.append(channel)
    return executor_pb2_grpc.ExecutorServiceStub(channel)


async def trained_best(suite: Suite, role: Role, name: str) -> str:
    reply = await suite.stub(role).SubmitJob(
        scheduler_pb2.SubmitJobRequest(spec=spec(name, epochs=1))
    )
    job = await suite.wait(reply.job.job_id)
    assert job.state == common_pb2.JOB_STATE_COMPLETED, job.error_message
    assert job.submitted_by == role.value
    return next(c.path for c in job.result.checkpoints if c.kind == common_pb2.CHECKPOINT_KIND_BEST)


async def test_an_agent_cannot_delete_or_overwrite_another_callers_run(
    make_suite: Factory,
) -> None:
    suite = await make_suite()
    workspace = suite.home / "machines" / "m0"  # the executor's workspace
    theirs = await trained_best(suite, Role.OPERATOR, "owned-by-operator")
    agent = executor(suite, Role.AGENT)

    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await agent.DeleteCheckpoint(
            executor_pb2.DeleteCheckpointRequest(path=theirs, request_id="steal-1")
        )
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "path" in (denied.value.details() or "")
    assert (workspace / theirs).is_file() and (workspace / f"{theirs}.mac").is_file()

    run_folder = theirs.rsplit("/checkpoints/", 1)[0]
    for output_dir in ("", f"{run_folder}/gradcam", f"{run_folder}/checkpoints"):
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await agent.GenerateVisualizations(
                executor_pb2.GenerateVisualizationsRequest(
                    checkpoint_path=theirs,
                    data_path="data/fundus",
                    num_images=1,
                    output_dir=output_dir,
                )
            )
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED, output_dir
        assert "output_dir" in (denied.value.details() or "")
    assert not (workspace / run_folder / "gradcam").exists()

    # A folder no job of the engine wrote is the operator's too.
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await agent.GenerateVisualizations(
            executor_pb2.GenerateVisualizationsRequest(
                checkpoint_path=theirs, data_path="data/fundus", output_dir="runs/mine"
            )
        )
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert not (workspace / "runs" / "mine").exists()

    # The agent manages what its own job wrote; the operator anything.
    ours = await trained_best(suite, Role.AGENT, "owned-by-agent")
    shown = await agent.GenerateVisualizations(
        executor_pb2.GenerateVisualizationsRequest(
            checkpoint_path=theirs,
            data_path="data/fundus",
            num_images=1,
            output_dir=f"{ours.rsplit('/checkpoints/', 1)[0]}/gradcam-of-theirs",
        )
    )
    assert shown.images and (workspace / shown.index_path).is_file()
    deleted = await agent.DeleteCheckpoint(executor_pb2.DeleteCheckpointRequest(path=ours))
    assert list(deleted.deleted_paths) == [ours] and not (workspace / ours).exists()
    deleted = await executor(suite, Role.OPERATOR).DeleteCheckpoint(
        executor_pb2.DeleteCheckpointRequest(path=theirs)
    )
    assert list(deleted.deleted_paths) == [theirs] and not (workspace / theirs).exists()
