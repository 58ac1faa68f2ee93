"""Evaluation as a job kind of the scheduler: queued, placed on a leased GPU, evaluated by
the executor's EvaluateCheckpoint, reported in the job's result."""

from __future__ import annotations

import pytest

from arc.common.v1 import common_pb2
from arc.scheduler.v1 import scheduler_pb2
from tests.integration.scheduler.conftest import Factory, spec


async def test_evaluation_job_reproduces_the_training_test_auc(make_suite: Factory) -> None:
    suite = await make_suite()
    trained = await suite.wait((await suite.submit(spec("to-evaluate", epochs=1))).job_id)
    assert trained.state == common_pb2.JOB_STATE_COMPLETED, trained.error_message
    best = next(c for c in trained.result.checkpoints if c.kind == common_pb2.CHECKPOINT_KIND_BEST)
    reply = await suite.stub().SubmitJob(
        scheduler_pb2.SubmitJobRequest(
            experiment_id="to-evaluate",
            priority=9,
            evaluation=scheduler_pb2.EvaluationJob(
                checkpoint_path=best.path,
                data_path="data/fundus",
                split="test",
                bootstrap_samples=100,
            ),
        )
    )
    evaluated = await suite.wait(reply.job.job_id)
    assert evaluated.state == common_pb2.JOB_STATE_COMPLETED, evaluated.error_message
    metrics = evaluated.result.best_metrics
    assert metrics["test_auc"] == pytest.approx(trained.result.best_metrics["test_auc"], abs=1e-9)
    assert metrics["test_auc_ci_lower"] <= metrics["test_auc"] <= metrics["test_auc_ci_upper"]
    assert evaluated.gpu_indices == [0]
    status = await suite.stub().GetSchedulerStatus(scheduler_pb2.GetSchedulerStatusRequest())
    assert status.status.available_gpus == 1  # the lease went back


async def test_bad_evaluation_job_is_refused_with_the_field(make_suite: Factory) -> None:
    suite = await make_suite()
    with pytest.raises(Exception) as info:
        await suite.stub().SubmitJob(
            scheduler_pb2.SubmitJobRequest(
                spec=spec("eval-bad"),
                evaluation=scheduler_pb2.EvaluationJob(
                    checkpoint_path="../x.pt", data_path="data/fundus"
                ),
            )
        )
    assert "evaluation.checkpoint_path" in str(info.value)
