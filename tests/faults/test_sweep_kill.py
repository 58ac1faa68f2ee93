"""SIGKILL the scheduler in the middle of a TPE sweep, two trials training at once: after
each restart the sweep goes on, and in the end it has exactly the trials it promised,
each trained by one job (re-attached or requeued once), none twice, none lost."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from arc.common.v1 import common_pb2
from arc.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc, sweep_pb2, sweep_pb2_grpc
from arc_common.auth import Role, TokenStore
from tests.helpers import one_machine
from tests.integration.scheduler.conftest import spec

LONG = bool(os.environ.get("ARC_TEST_LONG"))
TRIALS = 64 if LONG else 8
# The trial whose creation each SIGKILL follows.
KILL_AT = [10, 20, 30, 40, 50] if LONG else [4]


@pytest.mark.timeout(1800 if LONG else 300)
async def test_a_sweep_killed_mid_way_keeps_exactly_its_trials(
    tmp_path: Path, tiny_data: Path
) -> None:
    home = tmp_path / "ws"
    async with one_machine(home, tiny_data, gpus=2) as suite:
        scheduler = suite.scheduler
        token = TokenStore.load(home).token_for(Role.AGENT)
        channel = scheduler.channel(token)
        sweep = sweep_pb2.Sweep(
            display_name="killed",
            base_spec=spec("killed", epochs=1),
            parameters=[
                sweep_pb2.SearchParameter(
                    path="hyperparameters.optimizer.learning_rate",
                    log_uniform=sweep_pb2.FloatRange(low=1e-5, high=1e-1),
                )
            ],
            max_trials=TRIALS,
            max_parallel=2,
        )
        stub = sweep_pb2_grpc.SweepServiceStub(channel)
        sweep_id = (
            await stub.CreateSweep(sweep_pb2.CreateSweepRequest(request_id="kill", sweep=sweep))
        ).sweep.sweep_id
        for at in KILL_AT:
            request = sweep_pb2.WatchSweepRequest(sweep_id=sweep_id)
            async for response in stub.WatchSweep(request, timeout=60 * TRIALS):
                if len(response.sweep.trials) >= at:
                    break
            await channel.close()
            assert await scheduler.signal_and_wait(signal.SIGKILL) == -signal.SIGKILL
            await scheduler.start()
            channel = scheduler.channel(token)
            stub = sweep_pb2_grpc.SweepServiceStub(channel)
        final = None
        request = sweep_pb2.WatchSweepRequest(sweep_id=sweep_id)
        async for response in stub.WatchSweep(request, timeout=60 * TRIALS):
            final = response.sweep
        assert final is not None and final.state == sweep_pb2.SWEEP_STATE_COMPLETED
        assert sorted(t.number for t in final.trials) == [t.number for t in final.trials]
        assert len(final.trials) == TRIALS
        # A learning rate near 0.1 may diverge: the trainer's own rule prunes that trial.
        ended = {sweep_pb2.TRIAL_STATE_COMPLETE, sweep_pb2.TRIAL_STATE_PRUNED}
        assert {t.state for t in final.trials} <= ended
        points = {json.dumps(dict(t.params), sort_keys=True) for t in final.trials}
        assert len(points) == TRIALS  # none suggested twice
        jobs = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        listed = await jobs.ListJobs(scheduler_pb2.ListJobsRequest(page_size=1000))
        assert sorted(j.job_id for j in listed.jobs) == sorted(t.job_id for t in final.trials)
        for job in listed.jobs:
            if job.state == common_pb2.JOB_STATE_PRUNED:
                assert "divergence" in job.error_message
            else:
                assert job.state == common_pb2.JOB_STATE_COMPLETED, job.error_message
            assert job.attempt <= 2  # re-attached, or requeued once
        await channel.close()
