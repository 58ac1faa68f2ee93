"""Training runs through real executor and gpu-manager servers, on CPU."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
import torchvision
from grpc import aio
from PIL import Image
from sklearn.metrics import roc_auc_score
from torchvision import transforms as T

from arc.common.v1 import common_pb2
from arc.executor.v1 import executor_pb2
from arc.gpu.v1 import gpu_pb2
from arc_common.auth import Role
from services.executor.procfs import process_group_members
from services.executor.protocol import checkpoint_is_intact
from services.executor.registry import CheckpointRegistry
from tests.integration.executor.conftest import IMAGE_SIZE, Suite, job_config, running_suite


async def wait_done(suite: Suite, run_id: str, timeout: float = 240) -> executor_pb2.Run:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        reply: executor_pb2.GetRunResponse = await suite.executor().GetRun(
            executor_pb2.GetRunRequest(run_id=run_id)
        )
        run = reply.run
        if run.state in (
            common_pb2.JOB_STATE_COMPLETED,
            common_pb2.JOB_STATE_FAILED,
            common_pb2.JOB_STATE_CANCELLED,
            common_pb2.JOB_STATE_TIMED_OUT,
            common_pb2.JOB_STATE_PRUNED,
        ):
            return run
        await asyncio.sleep(0.2)
    raise TimeoutError(run_id)


async def wait_for_event(suite: Suite, run_id: str, kind: str) -> executor_pb2.RunEvent:
    stream = suite.executor(Role.AGENT).StreamRunEvents(
        executor_pb2.StreamRunEventsRequest(run_id=run_id)
    )
    async for reply in stream:
        event: executor_pb2.RunEvent = reply.event
        if event.WhichOneof("payload") == kind:
            stream.cancel()
            return event
    raise AssertionError(f"no {kind} event")


def end_cause(events: list[executor_pb2.RunEvent]) -> int:
    """The cause on the run's terminal StateChange event."""
    changes = [e.state_change for e in events if e.WhichOneof("payload") == "state_change"]
    assert all(not c.cause for c in changes[:-1])  # only the end has a cause
    return changes[-1].cause


def states(events: list[executor_pb2.RunEvent]) -> list[int]:
    return [e.state_change.state for e in events if e.WhichOneof("payload") == "state_change"]


async def test_two_epoch_run_streams_events_and_checkpoint_reproduces_auc(
    suite: Suite, data_root: Path
) -> None:
    run = await suite.start("job-ok")
    assert run.state == common_pb2.JOB_STATE_STARTING and run.pid > 0
    events = await suite.events(run.run_id)  # follows live until the run ends
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert states(events) == [
        common_pb2.JOB_STATE_STARTING,
        common_pb2.JOB_STATE_RUNNING,
        common_pb2.JOB_STATE_COMPLETED,
    ]
    metrics = [m for e in events if e.WhichOneof("payload") == "metrics" for m in e.metrics.metrics]
    epochs = [m.epoch for m in metrics if m.name == "val_auc"]
    assert epochs == [1, 2]
    steps = [m.step for m in metrics if m.name == "train_step_loss"]
    assert steps == sorted(steps) and steps
    kinds = [e.checkpoint.kind for e in events if e.WhichOneof("payload") == "checkpoint"]
    assert kinds.count(common_pb2.CHECKPOINT_KIND_LAST) == 2
    assert common_pb2.CHECKPOINT_KIND_BEST in kinds
    # The GPUs are given back once, after the test split and before the result: what is
    # left then is only writing the last checkpoint.
    payloads = [e.WhichOneof("payload") for e in events]
    assert payloads.count("devices_released") == 1
    released = payloads.index("devices_released")
    test_metrics = [
        i
        for i, e in enumerate(events)
        if payloads[i] == "metrics" and any(m.split == "test" for m in e.metrics.metrics)
    ]
    assert test_metrics and test_metrics[-1] < released < payloads.index("result")
    assert list(events[released].devices_released.gpu_indices) == list(run.lease.gpu_indices)

    final = await wait_done(suite, run.run_id)
    assert final.state == common_pb2.JOB_STATE_COMPLETED, final.error_message
    assert final.end_cause == common_pb2.RUN_END_CAUSE_COMPLETED
    assert end_cause(events) == common_pb2.RUN_END_CAUSE_COMPLETED
    result = final.result
    assert result.state == common_pb2.JOB_STATE_COMPLETED
    reported_auc = result.best_metrics["test_auc"]
    best = next(c for c in result.checkpoints if c.kind == common_pb2.CHECKPOINT_KIND_BEST)
    path = suite.home / best.path
    assert checkpoint_is_intact(path)
    # The executor registered it as its trainer reported it: the tools may load it.
    CheckpointRegistry(suite.home).verify(path, field="checkpoint_path")

    # Reload with torch and torchvision alone (tensors and plain data only) and recompute
    # the test AUC with scikit-learn.
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    model = torchvision.models.get_model(
        checkpoint["architecture"]["variant"], num_classes=len(checkpoint["class_names"])
    )
    model.load_state_dict(checkpoint["model_state_dict"])
    model.eval()
    transform = T.Compose(
        [
            T.Resize((IMAGE_SIZE, IMAGE_SIZE)),
            T.ToTensor(),
            T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    labels, scores = [], []
    positive = checkpoint["class_names"].index("glaucoma")  # the class the task detects
    for index, name in enumerate(checkpoint["class_names"]):
        for image_path in sorted((data_root / "fundus" / "test" / name).glob("*.png")):
            with torch.no_grad():
                logits = model(transform(Image.open(image_path).convert("RGB")).unsqueeze(0))
            scores.append(float(torch.softmax(logits, 1)[0, positive]))
            labels.append(index)
    assert roc_auc_score(np.array(labels) == positive, scores) == pytest.approx(
        reported_auc, abs=1e-6
    )
    assert reported_auc > 0.5


async def test_resume_stream_from_the_middle(suite: Suite) -> None:
    run = await suite.start("job-resume", hyperparameters={"epochs": 1})
    everything = await suite.events(run.run_id)
    middle = everything[len(everything) // 2].sequence
    rest = await suite.events(run.run_id, after=middle)
    assert [e.sequence for e in rest] == list(range(middle + 1, everything[-1].sequence + 1))
    assert rest == everything[middle:]


async def test_cancel_mid_epoch_leaves_no_process(
    suite: Suite, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = await suite.start("job-cancel", hyperparameters={"epochs": 200})
    await wait_for_event(suite, run.run_id, "metrics")
    assert process_group_members(run.pid)
    cancelled = (
        await suite.executor().CancelRun(
            executor_pb2.CancelRunRequest(run_id=run.run_id, reason="agent changed its mind")
        )
    ).run
    assert cancelled.state == common_pb2.JOB_STATE_CANCELLED
    assert cancelled.end_cause == common_pb2.RUN_END_CAUSE_CANCELLED
    assert end_cause(await suite.events(run.run_id)) == common_pb2.RUN_END_CAUSE_CANCELLED
    assert "changed its mind" in cancelled.error_message
    assert process_group_members(run.pid) == []
    with pytest.raises(aio.AioRpcError) as info:
        await suite.executor().CancelRun(executor_pb2.CancelRunRequest(run_id=run.run_id))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_cancel_that_prunes_ends_pruned(suite: Suite) -> None:
    run = await suite.start("job-pruned", hyperparameters={"epochs": 200})
    await wait_for_event(suite, run.run_id, "metrics")
    pruned = (
        await suite.executor().CancelRun(
            executor_pb2.CancelRunRequest(run_id=run.run_id, reason="below median", prune=True)
        )
    ).run
    assert pruned.state == common_pb2.JOB_STATE_PRUNED
    assert pruned.end_cause == common_pb2.RUN_END_CAUSE_PRUNED
    assert end_cause(await suite.events(run.run_id)) == common_pb2.RUN_END_CAUSE_PRUNED
    assert process_group_members(run.pid) == []


async def test_a_trainer_killed_without_a_word_ends_crashed(suite: Suite) -> None:
    run = await suite.start("job-killed", hyperparameters={"epochs": 200})
    await wait_for_event(suite, run.run_id, "metrics")
    os.kill(run.pid, signal.SIGKILL)
    final = await wait_done(suite, run.run_id)
    assert final.state == common_pb2.JOB_STATE_FAILED
    assert final.end_cause == common_pb2.RUN_END_CAUSE_CRASHED
    assert end_cause(await suite.events(run.run_id)) == common_pb2.RUN_END_CAUSE_CRASHED
    # Nothing said why: the engine's to retry, not the spec's fault.
    assert final.failure.failure_class == common_pb2.FAILURE_CLASS_INFRASTRUCTURE
    assert process_group_members(run.pid) == []


async def test_crashing_child_ends_failed_with_its_error(suite: Suite) -> None:
    run = await suite.start("job-crash", architecture={"family": "resnet", "variant": "resnet999"})
    final = await wait_done(suite, run.run_id)
    assert final.state == common_pb2.JOB_STATE_FAILED
    # The trainer caught the error and said so: a failure, not a crash.
    assert final.end_cause == common_pb2.RUN_END_CAUSE_FAILED
    assert "resnet999" in final.error_message
    assert "not a torchvision model" in final.error_message
    assert final.failure.failure_class == common_pb2.FAILURE_CLASS_SPEC_INVALID
    assert final.failure.exception_type == "UnknownVariant"
    assert "Traceback" in final.failure.stderr_tail
    logs = [e for e in await suite.events(run.run_id) if e.WhichOneof("payload") == "log"]
    assert logs and logs[-1].log.stream == "stderr"


async def test_nan_loss_ends_pruned(tmp_path: Path, data_root: Path) -> None:
    # The executor's test-only fault setting: every trainer's loss is NaN at step 2.
    async with running_suite(
        tmp_path / "ws", data_root, trainer_faults="nan_loss_at_step:2", event_flush_ms=10
    ) as suite:
        run = await suite.start("job-nan")
        final = await wait_done(suite, run.run_id)
    assert final.state == common_pb2.JOB_STATE_PRUNED
    assert final.end_cause == common_pb2.RUN_END_CAUSE_PRUNED
    assert "loss is nan at step 2" in final.error_message
    assert final.failure.failure_class == common_pb2.FAILURE_CLASS_DIVERGED


async def test_stale_lease_stops_the_run(suite: Suite) -> None:
    run = await suite.start("job-stale", hyperparameters={"epochs": 200})
    await wait_for_event(suite, run.run_id, "metrics")
    operator = suite.gpus(Role.OPERATOR)
    lease = run.lease
    await operator.ReleaseLease(
        gpu_pb2.ReleaseLeaseRequest(lease_id=lease.lease_id, fencing_token=lease.fencing_token)
    )
    newer = (
        await operator.AcquireLease(
            gpu_pb2.AcquireLeaseRequest(
                job_id="intruder",
                preference=common_pb2.GPU_PREFERENCE_SPECIFIC,
                gpu_indices=list(lease.gpu_indices),
            )
        )
    ).lease
    assert newer.fencing_token > lease.fencing_token
    final = await wait_done(suite, run.run_id, timeout=30)
    assert final.state == common_pb2.JOB_STATE_FAILED
    assert final.end_cause == common_pb2.RUN_END_CAUSE_LOST_LEASE
    assert "lease lost" in final.error_message
    assert final.failure.failure_class == common_pb2.FAILURE_CLASS_LEASE_LOST
    assert process_group_members(run.pid) == []


async def test_stale_token_and_bad_paths_are_refused(suite: Suite, tmp_path: Path) -> None:
    lease = await suite.lease("job-refused")
    stale = gpu_pb2.Lease()
    stale.CopyFrom(lease)
    stale.fencing_token = lease.fencing_token + 7
    executor = suite.executor()
    with pytest.raises(aio.AioRpcError) as info:
        await executor.StartRun(
            executor_pb2.StartRunRequest(config=job_config("job-refused"), lease=stale)
        )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    config = job_config("job-refused")
    config.checkpoint_dir = "../../elsewhere"
    with pytest.raises(aio.AioRpcError) as info:
        await executor.StartRun(executor_pb2.StartRunRequest(config=config, lease=lease))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "config.checkpoint_dir" in (info.value.details() or "")

    outside = tmp_path / "outside"
    outside.mkdir()
    (suite.home / "escape").symlink_to(outside)
    config = job_config("job-refused")
    config.log_dir = "escape/logs"
    with pytest.raises(aio.AioRpcError) as info:
        await executor.StartRun(executor_pb2.StartRunRequest(config=config, lease=lease))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "log_dir" in (info.value.details() or "")
    assert not (outside / "logs").exists()

    config = job_config("job-refused")
    config.experiment_spec.dataset.data_path = "no-such-dataset"
    with pytest.raises(aio.AioRpcError) as info:
        await executor.StartRun(executor_pb2.StartRunRequest(config=config, lease=lease))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "dataset.data_path" in (info.value.details() or "")

    with pytest.raises(aio.AioRpcError) as info:
        await executor.StartRun(executor_pb2.StartRunRequest(config=job_config("job-refused")))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(aio.AioRpcError) as info:
        await suite.executor(Role.AGENT).StartRun(
            executor_pb2.StartRunRequest(config=job_config("job-refused"), lease=lease)
        )
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(aio.AioRpcError) as info:
        await executor.GetRun(executor_pb2.GetRunRequest(run_id="nope"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_timeout_ends_timed_out_with_no_process_left(suite: Suite) -> None:
    lease = await suite.lease("job-timeout")
    config = job_config("job-timeout", hyperparameters={"epochs": 200})
    config.timeout_seconds = 4
    run = (
        await suite.executor().StartRun(executor_pb2.StartRunRequest(config=config, lease=lease))
    ).run
    final = await wait_done(suite, run.run_id, timeout=60)
    assert final.state == common_pb2.JOB_STATE_TIMED_OUT
    assert final.end_cause == common_pb2.RUN_END_CAUSE_TIMED_OUT
    assert "timed out after 4 s" in final.error_message
    assert process_group_members(run.pid) == []
