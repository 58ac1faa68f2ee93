"""A machine that stops answering, and the median stopping rule across jobs of a cycle."""

from __future__ import annotations

from arc.common.v1 import common_pb2
from arc.scheduler.v1 import scheduler_pb2
from tests.integration.scheduler.conftest import Factory, spec

RUNNING = common_pb2.JOB_STATE_RUNNING


async def test_jobs_of_a_machine_that_stops_answering_move_to_another(
    make_suite: Factory,
) -> None:
    suite = await make_suite(machines=2, node_down_seconds=2.0)
    job = await suite.submit(spec("wanderer", epochs=300))
    first = await suite.wait(job.job_id, lambda j: j.state == RUNNING)
    # servers: governance, then (gpu-manager, executor) per machine, then the scheduler
    index = 1 + 2 * int(first.node.removeprefix("m"))
    for server in suite.servers[index : index + 2]:
        await server.stop(0)
    moved = await suite.wait(
        job.job_id, lambda j: j.state == RUNNING and j.node != first.node, seconds=120
    )
    assert moved.attempt == 2
    status = await suite.stub().GetSchedulerStatus(scheduler_pb2.GetSchedulerStatusRequest())
    assert status.status.down_nodes == [first.node]
    await suite.stub().CancelJob(scheduler_pb2.CancelJobRequest(job_id=job.job_id))


async def test_median_rule_prunes_a_job_behind_its_cycle(make_suite: Factory) -> None:
    suite = await make_suite()
    pruning = {"median_pruning": True, "warmup_epochs": 1, "monitor": "train_loss", "mode": "min"}
    leader = await suite.submit(
        spec(
            "leader",
            epochs=3,
            early_stopping=pruning,
            hyperparameters={"optimizer": {"learning_rate": 0.001}},
        )
    )
    done = await suite.wait(leader.job_id)
    assert done.state == common_pb2.JOB_STATE_COMPLETED, done.error_message
    laggard = await suite.submit(
        spec(
            "laggard",
            epochs=3,
            early_stopping=pruning,
            hyperparameters={"optimizer": {"learning_rate": 1e-6}},
        )
    )
    final = await suite.wait(laggard.job_id)
    assert final.state == common_pb2.JOB_STATE_PRUNED
    assert "median" in final.error_message and "train_loss" in final.error_message
    other_cycle = await suite.submit(
        spec(
            "elsewhere",
            epochs=2,
            cycle_id=2,
            early_stopping=pruning,
            hyperparameters={"optimizer": {"learning_rate": 1e-6}},
        )
    )
    assert (await suite.wait(other_cycle.job_id)).state == common_pb2.JOB_STATE_COMPLETED
