"""A sealed test split against an agent that tries every channel its token reaches
(issue 21; docs/decisions/0006). Four services as processes; the policy seals
``datasets/fundus``; an agent trains on it, and on ``datasets/open`` with the experiment's
own ``seal_test`` flag. Every read of the test figures with the agent's token leaves them
out, every read of the test images is refused (under any name, through symlinks), and
after the operator's release the agent reads what the operator read all along."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from grpc import aio

from arc.common.v1 import common_pb2
from arc.executor.v1 import executor_pb2, executor_pb2_grpc
from arc.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from arc_common.auth import Role, TokenStore
from arc_common.channel import create_channel
from arc_common.synth import generate_dataset
from services.governance.policy import DEFAULT_POLICY_PATH
from tests.integration.scheduler.conftest import spec
from tests.security.suite import ProcessSuite

pytestmark = pytest.mark.asyncio(loop_scope="module")

SEALED = "datasets/fundus"
OPEN = "datasets/open"
DENIED = grpc.StatusCode.PERMISSION_DENIED
TERMINAL = {
    common_pb2.JOB_STATE_COMPLETED,
    common_pb2.JOB_STATE_FAILED,
    common_pb2.JOB_STATE_CANCELLED,
    common_pb2.JOB_STATE_TIMED_OUT,
}


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessSuite]:
    home = tmp_path_factory.mktemp("attacks-sealed")
    for folder, seed in ((SEALED, 5), (OPEN, 6)):
        generate_dataset(home / folder, count=16, size=32, seed=seed, splits=(0.5, 0.25, 0.25))
    # What an operator's workspace may hold: links made for convenience, which an agent
    # may name where it may not name the folder they lead to.
    datasets = home / "datasets"
    (datasets / "held-out").symlink_to(home / SEALED / "test", target_is_directory=True)
    (datasets / "fundus-link").symlink_to(home / SEALED, target_is_directory=True)
    (datasets / "open-link").symlink_to(home / OPEN, target_is_directory=True)
    (datasets / "tree").symlink_to(datasets, target_is_directory=True)
    mix = datasets / "mix"
    for label in ("glaucoma", "normal"):
        (mix / label).mkdir(parents=True)
        first = sorted((home / SEALED / "test" / label).iterdir())[0]
        (mix / label / first.name).symlink_to(first)
    # A variant sharing the sealed test folder by a link, and one whose own test/ holds
    # links to sealed images.
    for variant in ("v2", "v3"):
        for split in ("train", "val"):
            (datasets / variant / split).mkdir(parents=True)
    (datasets / "v2" / "test").symlink_to(home / SEALED / "test", target_is_directory=True)
    (datasets / "v3" / "test").mkdir()
    (datasets / "v3" / "test" / "glaucoma").symlink_to(
        home / SEALED / "test" / "glaucoma", target_is_directory=True
    )
    policy = DEFAULT_POLICY_PATH.read_text().replace("sealed_test: []", f"sealed_test: [{SEALED}]")
    assert f"sealed_test: [{SEALED}]" in policy
    (home / "policy.yaml").write_text(policy)
    processes = ProcessSuite(home)
    asyncio.run(processes.start())
    yield processes
    processes.stop()


class Clients:
    def __init__(self, suite: ProcessSuite) -> None:
        self.suite = suite
        self.tokens = TokenStore.load(suite.home)
        self.channels: list[aio.Channel] = []

    def _channel(self, service: str, role: Role) -> aio.Channel:
        port = self.suite.ports()[service]
        token = self.tokens.token_for(role)
        channel = create_channel(f"127.0.0.1:{port}", token=token, default_timeout=120)
        self.channels.append(channel)
        return channel

    def scheduler(self, role: Role = Role.AGENT) -> scheduler_pb2_grpc.SchedulerServiceStub:
        return scheduler_pb2_grpc.SchedulerServiceStub(self._channel("scheduler", role))

    def executor(self, role: Role = Role.AGENT) -> executor_pb2_grpc.ExecutorServiceStub:
        return executor_pb2_grpc.ExecutorServiceStub(self._channel("executor", role))

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def clients(suite: ProcessSuite) -> AsyncIterator[Clients]:
    out = Clients(suite)
    yield out
    await out.close()


async def finished(clients: Clients, job_id: str) -> scheduler_pb2.Job:
    """The job once it ended, as the operator reads it (WatchJob to its end)."""
    stub = clients.scheduler(Role.OPERATOR)
    async for _ in stub.WatchJob(scheduler_pb2.WatchJobRequest(job_id=job_id)):
        pass
    job: scheduler_pb2.Job = (await stub.GetJob(scheduler_pb2.GetJobRequest(job_id=job_id))).job
    assert job.state in TERMINAL, job
    return job


async def train(clients: Clients, experiment_id: str, data_path: str, **more: Any) -> str:
    request = scheduler_pb2.SubmitJobRequest(
        spec=spec(experiment_id, dataset={"data_path": data_path}, **more)
    )
    job: scheduler_pb2.Job = (await clients.scheduler().SubmitJob(request)).job
    done = await finished(clients, job.job_id)
    assert done.state == common_pb2.JOB_STATE_COMPLETED, done.result.error_message
    return str(job.job_id)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sealed_job(clients: Clients) -> str:
    return await train(clients, "sealed-by-policy", SEALED)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def flagged_job(clients: Clients) -> str:
    return await train(clients, "sealed-by-flag", OPEN, seal_test=True)


async def refused(call: Any, *words: str, code: grpc.StatusCode = DENIED) -> str:
    with pytest.raises(aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    details = info.value.details() or ""
    for word in words:
        assert word in details, details
    return details


def figures_of(result: common_pb2.ExperimentResult) -> list[str]:
    """Everything in a result that tells how the model did on the test split."""
    found = [k for k in result.best_metrics if k.startswith("test_")]
    found += [f"metric {m.name}" for m in result.metrics if m.split == "test"]
    found += [f"evaluation {e.split}" for e in result.evaluations if e.split == "test"]
    found += [f"checkpoint {k}" for c in result.checkpoints for k in c.metrics if "test" in k]
    return found


def checkpoint_of(job: scheduler_pb2.Job) -> str:
    return next(c.path for c in job.result.checkpoints if c.path.endswith("best.pt"))


# --- the figures: every read of an agent leaves them out ----------------------------------


async def test_the_operator_reads_the_test_figures_of_a_sealed_job(
    clients: Clients, sealed_job: str
) -> None:
    job = await finished(clients, sealed_job)
    assert job.result.best_metrics["test_auc"] >= 0.0
    assert "evaluation test" in figures_of(job.result)
    assert not job.result.test_sealed


async def test_scheduler_reads_leave_the_test_figures_out(
    clients: Clients, sealed_job: str
) -> None:
    stub = clients.scheduler()
    job = (await stub.GetJob(scheduler_pb2.GetJobRequest(job_id=sealed_job))).job
    assert job.result.test_sealed and figures_of(job.result) == []
    assert job.result.best_metrics["val_auc"] >= 0.0  # validation stays readable
    listed = await stub.ListJobs(scheduler_pb2.ListJobsRequest(experiment_id="sealed-by-policy"))
    assert [figures_of(j.result) for j in listed.jobs] == [[]]
    experiment = (
        await stub.GetExperiment(
            scheduler_pb2.GetExperimentRequest(experiment_id="sealed-by-policy")
        )
    ).experiment
    assert experiment.spec.seal_test  # the policy sealed it though the agent did not ask
    assert [r.test_sealed for r in experiment.results] == [True]
    assert [figures_of(r) for r in experiment.results] == [[]]
    experiments = await stub.ListExperiments(scheduler_pb2.ListExperimentsRequest())
    for listed_experiment in experiments.experiments:
        if listed_experiment.spec.seal_test:
            assert all(figures_of(r) == [] for r in listed_experiment.results)


@pytest.mark.parametrize("batch", [False, True])
async def test_watch_job_leaves_the_test_metrics_out(
    clients: Clients, sealed_job: str, batch: bool
) -> None:
    def seen(events: list[scheduler_pb2.JobEvent]) -> list[str]:
        out = []
        for event in events:
            metrics = list(event.metrics.metrics) if event.HasField("metrics") else []
            if event.HasField("metric"):
                metrics.append(event.metric)
            out += [m.name for m in metrics if m.split == "test" or m.name.startswith("test_")]
            if event.HasField("result"):
                out += figures_of(event.result)
        return out

    request = scheduler_pb2.WatchJobRequest(
        job_id=sealed_job, batch_metrics=batch, max_events_per_response=50 if batch else 0
    )
    agent: list[scheduler_pb2.JobEvent] = []
    async for reply in clients.scheduler().WatchJob(request):
        agent += list(reply.events) or [reply.event]
    operator: list[scheduler_pb2.JobEvent] = []
    async for reply in clients.scheduler(Role.OPERATOR).WatchJob(request):
        operator += list(reply.events) or [reply.event]
    assert seen(agent) == []
    assert "test_auc" in seen(operator)
    assert any(e.HasField("result") and e.result.test_sealed for e in agent)


async def test_executor_reads_leave_the_test_figures_out(clients: Clients, sealed_job: str) -> None:
    run_id = (await finished(clients, sealed_job)).run_id
    stub = clients.executor()
    run = (await stub.GetRun(executor_pb2.GetRunRequest(run_id=run_id))).run
    assert run.result.test_sealed and figures_of(run.result) == []
    names = []
    async for reply in stub.StreamRunEvents(executor_pb2.StreamRunEventsRequest(run_id=run_id)):
        event = reply.event
        if event.HasField("metrics"):
            names += [m.name for m in event.metrics.metrics if m.split == "test"]
        if event.HasField("result"):
            names += figures_of(event.result)
    assert names == []


async def test_a_duplicate_experiment_does_not_return_the_sealed_results(
    clients: Clients, sealed_job: str
) -> None:
    copy = spec("copy-of-sealed", dataset={"data_path": SEALED})
    reply = await clients.scheduler().CreateExperiment(
        scheduler_pb2.CreateExperimentRequest(spec=copy)
    )
    assert reply.duplicate_of == "sealed-by-policy"
    assert [figures_of(r) for r in reply.duplicate_results] == [[]]


# --- the images: every read of the sealed test folder is refused ---------------------------


def evaluation(checkpoint: str, data_path: str, split: str = "test") -> Any:
    return executor_pb2.EvaluateCheckpointRequest(
        checkpoint_path=checkpoint, data_path=data_path, split=split, bootstrap_samples=100
    )


@pytest.mark.parametrize(
    ("data_path", "split"),
    [
        (SEALED, "test"),  # by name
        (f"{SEALED}/test", "train"),  # the test folder as an unsplit dataset
        ("datasets/tree", "val"),  # a folder that holds it (a link to datasets/)
        ("datasets/held-out", "train"),  # a symlink to it
        ("datasets/fundus-link", "test"),  # a symlink to the dataset
        ("datasets/mix", "train"),  # a folder of symlinks to its images
        ("datasets/v2", "test"),  # a dataset whose test folder is a link to it
    ],
)
async def test_evaluating_on_the_sealed_test_images_is_refused(
    clients: Clients, sealed_job: str, data_path: str, split: str
) -> None:
    checkpoint = checkpoint_of(await finished(clients, sealed_job))
    stub = clients.executor()
    await refused(stub.EvaluateCheckpoint(evaluation(checkpoint, data_path, split)), "sealed")
    await refused(
        stub.CompareCheckpoints(
            executor_pb2.CompareCheckpointsRequest(
                checkpoint_path_a=checkpoint,
                checkpoint_path_b=checkpoint,
                data_path=data_path,
                split=split,
            )
        ),
        "sealed",
    )
    await refused(
        stub.GenerateVisualizations(
            executor_pb2.GenerateVisualizationsRequest(
                checkpoint_path=checkpoint, data_path=data_path, split=split, num_images=1
            )
        ),
        "sealed",
    )


async def test_the_validation_split_stays_open_and_the_operator_reads_test(
    clients: Clients, sealed_job: str
) -> None:
    checkpoint = checkpoint_of(await finished(clients, sealed_job))
    reply = await clients.executor().EvaluateCheckpoint(evaluation(checkpoint, SEALED, "val"))
    assert reply.report.evaluation.split == "val"
    reply = await clients.executor(Role.OPERATOR).EvaluateCheckpoint(evaluation(checkpoint, SEALED))
    assert reply.report.evaluation.num_samples > 0


@pytest.mark.parametrize(
    ("input_path", "output_path"),
    [
        (SEALED, "datasets/copy"),
        (f"{SEALED}/test", "datasets/copy"),
        ("datasets/held-out", "datasets/copy"),
        (f"{SEALED}/train", f"{SEALED}/test/more"),  # writing into it
    ],
)
async def test_copying_the_sealed_test_images_is_refused(
    clients: Clients, input_path: str, output_path: str
) -> None:
    request = executor_pb2.PreprocessDatasetRequest(
        dataset_id="copy", input_path=input_path, output_path=output_path
    )
    await refused(clients.executor().PreprocessDataset(request), "sealed")
    assert not (clients.suite.home / "datasets" / "copy").exists()
    assert not (clients.suite.home / SEALED / "test" / "more").exists()


async def test_jobs_that_would_read_the_sealed_test_images_are_refused(
    clients: Clients, sealed_job: str
) -> None:
    stub = clients.scheduler()
    checkpoint = checkpoint_of(await finished(clients, sealed_job))
    for data_path in (f"{SEALED}/test", f"{SEALED}/test/glaucoma"):  # refused at submit
        submit = stub.SubmitJob(
            scheduler_pb2.SubmitJobRequest(
                spec=spec(f"train-{len(data_path)}", dataset={"data_path": data_path})
            )
        )
        await refused(submit, "spec.dataset.data_path", "sealed")
    submit = stub.SubmitJob(
        scheduler_pb2.SubmitJobRequest(
            experiment_id="sealed-by-policy",
            evaluation=scheduler_pb2.EvaluationJob(checkpoint_path=checkpoint, data_path=SEALED),
        )
    )
    await refused(submit, "evaluation.data_path", "sealed")
    # Through a symlink the scheduler cannot see: the executor refuses the run, the job fails.
    for experiment_id, data_path in (
        ("via-link", "datasets/held-out"),
        ("alias", "datasets/fundus-link"),
        ("v3", "datasets/v3"),
    ):
        job = (
            await stub.SubmitJob(
                scheduler_pb2.SubmitJobRequest(
                    spec=spec(experiment_id, dataset={"data_path": data_path})
                )
            )
        ).job
        done = await finished(clients, job.job_id)
        assert done.state == common_pb2.JOB_STATE_FAILED
        assert "sealed" in done.error_message, done.error_message
    job = (
        await stub.SubmitJob(
            scheduler_pb2.SubmitJobRequest(
                experiment_id="sealed-by-policy",
                evaluation=scheduler_pb2.EvaluationJob(
                    checkpoint_path=checkpoint, data_path="datasets/held-out", split="train"
                ),
            )
        )
    ).job
    done = await finished(clients, job.job_id)
    assert done.state == common_pb2.JOB_STATE_FAILED
    assert "sealed" in done.error_message, done.error_message


# --- an experiment sealed by its own flag ----------------------------------------------------


async def test_a_flagged_experiment_is_sealed_and_its_checkpoint_too(
    clients: Clients, flagged_job: str
) -> None:
    job = (await clients.scheduler().GetJob(scheduler_pb2.GetJobRequest(job_id=flagged_job))).job
    assert job.result.test_sealed and figures_of(job.result) == []
    checkpoint = checkpoint_of(await finished(clients, flagged_job))
    stub = clients.executor()
    for data_path in (OPEN, "datasets/open-link"):
        await refused(stub.EvaluateCheckpoint(evaluation(checkpoint, data_path)), "sealed")
    submit = clients.scheduler().SubmitJob(
        scheduler_pb2.SubmitJobRequest(
            experiment_id="sealed-by-flag",
            evaluation=scheduler_pb2.EvaluationJob(checkpoint_path=checkpoint, data_path=OPEN),
        )
    )
    await refused(submit, "evaluation.data_path", "seals its test split")
    reply = await stub.EvaluateCheckpoint(evaluation(checkpoint, OPEN, "val"))
    assert reply.report.evaluation.split == "val"


# --- the release ---------------------------------------------------------------------------


async def test_only_an_operator_releases_and_then_the_agent_reads_them(
    clients: Clients, sealed_job: str
) -> None:
    request = scheduler_pb2.RevealTestMetricsRequest(
        experiment_id="sealed-by-policy", reason="paper draft"
    )
    await refused(clients.scheduler().RevealTestMetrics(request), "operator")
    job = (await clients.scheduler().GetJob(scheduler_pb2.GetJobRequest(job_id=sealed_job))).job
    assert job.result.test_sealed  # the refused release released nothing
    await refused(
        clients.scheduler(Role.OPERATOR).RevealTestMetrics(
            scheduler_pb2.RevealTestMetricsRequest(experiment_id="no-such")
        ),
        code=grpc.StatusCode.NOT_FOUND,
    )
    reply = await clients.scheduler(Role.OPERATOR).RevealTestMetrics(request)
    assert reply.experiment.test_revealed_by == "operator"
    assert reply.experiment.test_reveal_reason == "paper draft"
    operator = await finished(clients, sealed_job)
    job = (await clients.scheduler().GetJob(scheduler_pb2.GetJobRequest(job_id=sealed_job))).job
    assert not job.result.test_sealed
    assert job.result.best_metrics["test_auc"] == operator.result.best_metrics["test_auc"]
    # The release is of the figures, not of the images: the test folder stays closed.
    checkpoint = checkpoint_of(operator)
    await refused(clients.executor().EvaluateCheckpoint(evaluation(checkpoint, SEALED)), "sealed")


async def test_symlinks_in_the_fixture_are_what_they_claim(suite: ProcessSuite) -> None:
    """The attacks above lean on these links; a broken fixture would make them vacuous."""
    home = suite.home
    assert os.path.realpath(home / "datasets/held-out") == str((home / SEALED / "test").resolve())
    linked = next((home / "datasets/mix/glaucoma").iterdir())
    assert Path(os.path.realpath(linked)).is_relative_to((home / SEALED / "test").resolve())
