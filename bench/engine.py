"""Measures through the whole suite (the four services as real processes on a workspace):
3 a training run's wall time, 4 StartRun to the first step, 5 the gap between two jobs on
one GPU, 6 the metrics path, 7 step time while metrics stream, 9 cancel, and the dispatch
part of 10. Each against its baseline, measured in the same run."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grpc import aio

from arc.common.v1 import common_pb2
from arc.executor.v1 import executor_pb2, executor_pb2_grpc
from arc.gpu.v1 import gpu_pb2, gpu_pb2_grpc
from arc.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from arc_common import packed
from arc_common.auth import Role, TokenStore
from arc_common.channel import create_channel
from arc_common.convert import dict_to_proto
from arc_common.models import TrainingJobConfig
from arc_common.synth import generate_dataset
from bench.common import REPO, drive, p50, rss_mib
from services.executor.procfs import process_group_members
from services.executor.protocol import TrainerInput, load_message
from tests.helpers import ServiceProcess
from tests.integration.scheduler.conftest import TERMINAL
from tests.security.suite import ProcessSuite, free_port

IMAGE_SIZE = 64


def make_dataset(home: Path, count: int) -> None:
    generate_dataset(
        home / "datasets" / "bench", count=count, size=IMAGE_SIZE, seed=11, splits=(0.5, 0.25, 0.25)
    )


def spec_dict(
    experiment_id: str, *, epochs: int, gpu: int | None = 0, batch_size: int = 16
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "experiment_id": experiment_id,
        "architecture": {"family": "resnet", "variant": "resnet18"},
        "hyperparameters": {
            "batch_size": batch_size,
            "epochs": epochs,
            "optimizer": {"learning_rate": 0.001},
            "seed": 1,
        },
        "dataset": {
            "dataset_id": "bench",
            "dataset_type": "split_folders",
            "data_path": "datasets/bench",
            "image_size": IMAGE_SIZE,
        },
        "cycle_id": 1,
        "max_training_time_seconds": 3600,
    }
    if gpu is not None:
        data["gpu_allocation"] = {"preference": "specific", "gpu_indices": [gpu]}
    return data


def config_dict(job_id: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "experiment_spec": spec,
        "checkpoint_dir": f"runs/{job_id}/checkpoints",
        "log_dir": f"runs/{job_id}/logs",
        "timeout_seconds": 3600,
    }


def seconds_of(stamp: Any) -> float:
    return float(stamp.seconds) + float(stamp.nanos) / 1e9


@dataclass
class Bench:
    """A running suite and stubs into it."""

    suite: ProcessSuite
    home: Path
    channels: list[aio.Channel] = field(default_factory=list)

    def _channel(self, port: int) -> aio.Channel:
        token = TokenStore.load(self.home).token_for(Role.SERVICE)
        channel = create_channel(f"127.0.0.1:{port}", token=token, default_timeout=600)
        self.channels.append(channel)
        return channel

    def scheduler(self, port: int | None = None) -> scheduler_pb2_grpc.SchedulerServiceStub:
        return scheduler_pb2_grpc.SchedulerServiceStub(
            self._channel(port or self.suite.ports()["scheduler"])
        )

    def executor(self) -> executor_pb2_grpc.ExecutorServiceStub:
        return executor_pb2_grpc.ExecutorServiceStub(self._channel(self.suite.ports()["executor"]))

    def gpus(self) -> gpu_pb2_grpc.GpuManagerServiceStub:
        return gpu_pb2_grpc.GpuManagerServiceStub(self._channel(self.suite.ports()["gpu_manager"]))

    async def warm(self, seconds: float = 120) -> None:
        """Until the executor's warm pool has torch imported."""
        log = self.home / "logs" / "warm-pool.log"
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if log.exists() and "ready" in log.read_text():
                return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"the warm pool did not get ready ({log})")


@asynccontextmanager
async def running_suite(home: Path, *, env: dict[str, str] | None = None) -> AsyncIterator[Bench]:
    suite = ProcessSuite(
        home,
        env={
            "ARC_EXECUTOR_LOG_EVERY_STEPS": "1",  # every step streams (measure 7)
            "ARC_SCHEDULER_DISPATCH_INTERVAL_SECONDS": "0.5",
            **(env or {}),
        },
    )
    await suite.start()
    bench = Bench(suite, home)
    try:
        await bench.warm()
        yield bench
    finally:
        for channel in bench.channels:
            await channel.close()
        suite.stop()


@dataclass
class Watched:
    metrics: list[common_pb2.MetricResult]
    state: int
    seen_end: float  # when this client saw the end
    running_time: float  # the RUNNING state change: the trainer's loop begins
    last_metric: float  # when this client received the last metric


async def watch(stub: scheduler_pb2_grpc.SchedulerServiceStub, job_id: str) -> Watched:
    """A job's events until it ends."""
    metrics: list[common_pb2.MetricResult] = []
    running = last_metric = 0.0
    request = scheduler_pb2.WatchJobRequest(
        job_id=job_id, max_events_per_response=256, batch_metrics=True
    )
    async for reply in stub.WatchJob(request):
        for event in reply.events:
            kind = event.WhichOneof("payload")
            if kind == "metrics":
                metrics.extend(event.metrics.metrics)
                last_metric = time.time()
            elif kind != "state_change":
                continue
            elif event.state_change.state == common_pb2.JOB_STATE_RUNNING:
                running = seconds_of(event.time)
            elif event.state_change.state in TERMINAL:
                return Watched(metrics, event.state_change.state, time.time(), running, last_metric)
    raise RuntimeError(f"the watch of {job_id} ended before the job")


# --- 3 and 7: a training run through the suite against the same run as a bare script -------


def start_bare_trainer(
    home: Path,
    job_id: str,
    spec: dict[str, Any],
    *,
    session: bool = False,
    step_metrics: bool = True,
) -> tuple[subprocess.Popen[bytes], int, Path]:
    """The trainer as a plain ``python -m services.executor.trainer`` (cold, no services):
    the process, the read end of its metrics pipe, its folder. Without ``step_metrics``
    it reports per epoch only (streaming off)."""
    config = TrainingJobConfig.model_validate(config_dict(job_id, spec))
    folder = home / "bare" / job_id
    folder.mkdir(parents=True, exist_ok=True)
    inp = TrainerInput(
        run_id=job_id,
        config=config,
        workspace=str(home),
        data_path=str(home / "datasets" / "bench"),
        checkpoint_dir=str(folder / "checkpoints"),
        log_dir=str(folder),
        log_every_steps=1 if step_metrics else 1 << 40,
    )
    (folder / "input.json").write_text(inp.model_dump_json())
    read_fd, write_fd = os.pipe()
    with (folder / "stderr.log").open("wb") as stderr:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "services.executor.trainer",
                "--input",
                str(folder / "input.json"),
                "--metrics-fd",
                str(write_fd),
            ],
            pass_fds=(write_fd,),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            cwd=REPO,
            start_new_session=session,
        )
    os.close(write_fd)
    return process, read_fd, folder


def bare_training(home: Path, job_id: str, spec: dict[str, Any]) -> dict[str, Any]:
    """The same training as a bare script, start to exit, streaming off: no step metrics,
    only the epoch summaries, read by this process."""
    began = time.perf_counter()
    process, read_fd, folder = start_bare_trainer(home, job_id, spec, step_metrics=False)
    with os.fdopen(read_fd, "rb") as pipe:
        lines = pipe.read().splitlines()
    code = process.wait()
    wall = time.perf_counter() - began
    if code != 0:
        raise RuntimeError(f"bare training failed: {(folder / 'stderr.log').read_text()[-2000:]}")
    metrics = [
        m
        for line in lines
        if (message := load_message(line)).metrics is not None
        for m in packed.unpack(message.metrics)
    ]
    return {
        "wall_s": wall,
        "epoch_images_per_second": [m.value for m in metrics if m.name == "images_per_second"],
        "steps": max(m.step for m in metrics),
    }


async def suite_training(bench: Bench, job_id: str, spec: dict[str, Any]) -> dict[str, Any]:
    stub = bench.scheduler()
    began = time.perf_counter()
    reply = await stub.SubmitJob(
        scheduler_pb2.SubmitJobRequest(spec=dict_to_proto(spec, common_pb2.ExperimentSpec))
    )
    watched = await watch(stub, reply.job.job_id)
    wall = time.perf_counter() - began
    metrics, state = watched.metrics, watched.state
    if state != common_pb2.JOB_STATE_COMPLETED:
        job = await stub.GetJob(scheduler_pb2.GetJobRequest(job_id=reply.job.job_id))
        raise RuntimeError(f"the benchmark job ended {state}: {job.job.error_message}")
    return {
        "wall_s": wall,
        "epoch_images_per_second": [m.value for m in metrics if m.name == "images_per_second"],
        "step_metrics_streamed": sum(1 for m in metrics if m.name == "train_step_loss"),
        "metrics": metrics,
    }


async def training_overhead(bench: Bench, *, epochs: int, rounds: int) -> dict[str, Any]:
    """``rounds`` pairs of the same training, bare and through the suite, in alternating
    order (this machine's speed drifts). 3: the median walls; 7: the median epoch
    throughputs, every step's loss streamed to a watcher against the bare trainer's pipe."""
    await suite_training(bench, "m3-warmup", spec_dict("m3-warmup", epochs=1))
    bare: list[dict[str, Any]] = []
    suite: list[dict[str, Any]] = []
    for n in range(rounds):
        spec = spec_dict(f"m3-{n}", epochs=epochs)
        for side in ("bare", "suite") if n % 2 == 0 else ("suite", "bare"):
            if side == "bare":
                bare.append(await asyncio.to_thread(bare_training, bench.home, f"m3-{n}", spec))
            else:
                run = await suite_training(bench, f"m3-{n}", spec)
                run.pop("metrics")
                suite.append(run)

    def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "wall_s": statistics.median(r["wall_s"] for r in runs),
            "walls_s": [r["wall_s"] for r in runs],
            "images_per_second": statistics.median(
                v for r in runs for v in r["epoch_images_per_second"]
            ),
        }

    b, s = summary(bare), summary(suite)
    return {
        "epochs": epochs,
        "rounds": rounds,
        "bare": b,
        "suite": {**s, "step_metrics_streamed": suite[-1]["step_metrics_streamed"]},
        "wall_ratio": s["wall_s"] / b["wall_s"],
        # step time = 1 / throughput
        "step_time_ratio": b["images_per_second"] / s["images_per_second"],
    }


async def streaming_cost(
    home: Path, *, epochs: int, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """7, paired: one training through the suite whose trainer streams every step's loss in
    odd epochs and none in even ones (the executor's test-only trainer_faults setting,
    stream_alternate), so streaming on and off are timed by the same process on the same
    data, a minute apart at most. The first two epochs (warm-up) are left out; each later
    even epoch is paired with the odd one before it, and the ratio is the median of the
    pairs' step times."""
    make_dataset(home, count=320)
    probe = {**(env or {}), "ARC_EXECUTOR_TRAINER_FAULTS": "stream_alternate"}
    async with running_suite(home, env=probe) as bench:
        run = await suite_training(bench, "m7", spec_dict("m7", epochs=epochs))
    per_epoch = {m.epoch: m.value for m in run["metrics"] if m.name == "images_per_second"}
    streamed = {m.epoch for m in run["metrics"] if m.name == "train_step_loss"}
    pairs = [
        (per_epoch[odd], per_epoch[odd + 1])  # (streaming on, off)
        for odd in range(3, epochs, 2)
        if odd in per_epoch and odd + 1 in per_epoch
    ]
    if not pairs or any(epoch % 2 == 0 for epoch in streamed):
        raise RuntimeError(f"no usable epoch pairs: {per_epoch}, streamed in {sorted(streamed)}")
    return {
        "epochs": epochs,
        "pairs": len(pairs),
        "images_per_second_on": [on for on, _ in pairs],
        "images_per_second_off": [off for _, off in pairs],
        "step_metrics_streamed": run["step_metrics_streamed"],
        # step time = 1 / throughput: on / off = off_ips / on_ips
        "ratio": statistics.median(off / on for on, off in pairs),
    }


# --- 4: StartRun to the first training step, against a cold import of torch ----------------


def cold_import_seconds() -> float:
    began = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", "import torch, torchvision"], check=True, cwd=REPO, env=os.environ
    )
    return time.perf_counter() - began


async def first_step(bench: Bench, job_id: str) -> tuple[float, float]:
    """Seconds from StartRun to the first training step: to its start (the trainer says
    RUNNING as its loop begins: model built, data opened) and to its end (its loss)."""
    gpus, executor = bench.gpus(), bench.executor()
    lease = (
        await gpus.AcquireLease(gpu_pb2.AcquireLeaseRequest(job_id=job_id, ttl_seconds=60))
    ).lease
    config = dict_to_proto(
        config_dict(job_id, spec_dict(job_id, epochs=50, gpu=None)), common_pb2.TrainingJobConfig
    )
    began = time.time()
    run = (await executor.StartRun(executor_pb2.StartRunRequest(config=config, lease=lease))).run
    begins = ends = 0.0
    async for reply in executor.StreamRunEvents(
        executor_pb2.StreamRunEventsRequest(run_id=run.run_id)
    ):
        event = reply.event
        kind = event.WhichOneof("payload")
        if kind == "state_change" and event.state_change.state == common_pb2.JOB_STATE_RUNNING:
            begins = seconds_of(event.time)
        if kind == "metrics":
            ends = seconds_of(event.metrics.metrics[0].time)
            break
    await executor.CancelRun(executor_pb2.CancelRunRequest(run_id=run.run_id, reason="measured"))
    await gpus.ReleaseLease(
        gpu_pb2.ReleaseLeaseRequest(lease_id=lease.lease_id, fencing_token=lease.fencing_token)
    )
    return begins - began, ends - began


async def start_latency(bench: Bench, *, tries: int) -> dict[str, Any]:
    cold = [await asyncio.to_thread(cold_import_seconds) for _ in range(tries)]
    begins, ends = [], []
    for n in range(tries):
        start, end = await first_step(bench, f"m4-{n}")
        begins.append(start)
        ends.append(end)
        await asyncio.sleep(1.0)  # the pool forks its next spare
    return {
        "cold_import_s": statistics.median(cold),
        "start_to_first_step_s": statistics.median(begins),
        "start_to_first_step_done_s": statistics.median(ends),
        "ratio": statistics.median(begins) / statistics.median(cold),
    }


# --- 5: two jobs back to back on one GPU ---------------------------------------------------


async def inter_job_gap(bench: Bench, *, epochs: int) -> dict[str, Any]:
    stub = bench.scheduler()
    jobs = []
    for name in ("m5-a", "m5-b"):
        spec = dict_to_proto(spec_dict(name, epochs=epochs, gpu=0), common_pb2.ExperimentSpec)
        reply = await stub.SubmitJob(scheduler_pb2.SubmitJobRequest(spec=spec, priority=9))
        jobs.append(reply.job.job_id)
    a_watch, b_watch = await asyncio.gather(*(watch(stub, job) for job in jobs))
    if {a_watch.state, b_watch.state} != {common_pb2.JOB_STATE_COMPLETED}:
        raise RuntimeError(f"gap jobs ended {a_watch.state}, {b_watch.state}")
    a_steps = [seconds_of(m.time) for m in a_watch.metrics if m.name == "train_step_loss"]
    b_steps = [seconds_of(m.time) for m in b_watch.metrics if m.name == "train_step_loss"]
    a = (await stub.GetJob(scheduler_pb2.GetJobRequest(job_id=jobs[0]))).job
    b = (await stub.GetJob(scheduler_pb2.GetJobRequest(job_id=jobs[1]))).job
    if a.gpu_indices != b.gpu_indices:
        raise RuntimeError("the two jobs did not share a GPU")
    duration = seconds_of(a.end_time) - seconds_of(a.start_time)
    # When A gave its GPU back (after its last validation and its test split, before
    # writing its last checkpoint): from A's run events on the executor.
    released = [
        seconds_of(reply.event.time)
        async for reply in bench.executor().StreamRunEvents(
            executor_pb2.StreamRunEventsRequest(run_id=a.run_id)
        )
        if reply.event.WhichOneof("payload") == "devices_released"
    ]
    if not released:
        raise RuntimeError("job A never gave its GPU back before its end")
    # To B's first step as in measure 4: its start (B's loop begins); to its end reported.
    gap = b_watch.running_time - max(a_steps)
    return {
        "epochs": epochs,
        "job_seconds": duration,
        "gap_s": gap,
        "gap_to_first_step_done_s": min(b_steps) - max(a_steps),
        # of which A's own work on the GPU after its last step (last validation, test split)
        "a_gpu_epilogue_s": released[0] - max(a_steps),
        # and the engine's: from A's GPU released to B's loop begun (B was prepared ahead)
        "engine_gap_s": b_watch.running_time - released[0],
        # A's last checkpoint written meanwhile, B already training
        "a_end_after_b_s": seconds_of(a.end_time) - b_watch.running_time,
        "ratio": gap / duration,
    }


# --- 9: CancelRun until every process is gone, against a raw kill + wait --------------------


async def cancel_latency(bench: Bench, *, tries: int) -> dict[str, Any]:
    gpus, executor = bench.gpus(), bench.executor()
    engine, raw = [], []
    for n in range(tries):
        job_id = f"m9-{n}"
        lease = (
            await gpus.AcquireLease(gpu_pb2.AcquireLeaseRequest(job_id=job_id, ttl_seconds=60))
        ).lease
        config = dict_to_proto(
            config_dict(job_id, spec_dict(job_id, epochs=50, gpu=None)),
            common_pb2.TrainingJobConfig,
        )
        run = (
            await executor.StartRun(executor_pb2.StartRunRequest(config=config, lease=lease))
        ).run
        async for reply in executor.StreamRunEvents(
            executor_pb2.StreamRunEventsRequest(run_id=run.run_id)
        ):
            if reply.event.WhichOneof("payload") == "metrics":
                break
        began = time.perf_counter()
        await executor.CancelRun(executor_pb2.CancelRunRequest(run_id=run.run_id, reason="bench"))
        while process_group_members(run.pid):  # noqa: ASYNC110 - what the user would check
            await asyncio.sleep(0.001)
        engine.append(time.perf_counter() - began)
        await gpus.ReleaseLease(
            gpu_pb2.ReleaseLeaseRequest(lease_id=lease.lease_id, fencing_token=lease.fencing_token)
        )
        raw.append(await asyncio.to_thread(raw_kill, bench.home, f"m9-raw-{n}"))
    return {
        "cancel_s": statistics.median(engine),
        "raw_kill_s": statistics.median(raw),
        "ratio": statistics.median(engine) / statistics.median(raw),
    }


def raw_kill(home: Path, job_id: str) -> float:
    """The same trainer started by hand in its own process group, killed and waited for."""
    spec = spec_dict(job_id, epochs=50, gpu=None)
    process, read_fd, _ = start_bare_trainer(home, job_id, spec, session=True)
    with os.fdopen(read_fd, "rb") as pipe:
        for line in pipe:
            if load_message(line).metrics:
                break
        began = time.perf_counter()
        os.killpg(process.pid, signal.SIGTERM)
        process.wait()
        while process_group_members(process.pid):
            time.sleep(0.001)
        return time.perf_counter() - began


# --- 6: the metrics path, against a bare batched server stream ------------------------------


async def metrics_path(home: Path, *, count: int) -> dict[str, Any]:
    make_dataset(home, count=16)  # the executor checks it is there; the probe reads none
    async with running_suite(
        home, env={"ARC_EXECUTOR_TRAINER_FAULTS": f"metrics_flood:{count}"}
    ) as bench:
        stub = bench.scheduler()
        spec = dict_to_proto(spec_dict("m6", epochs=1), common_pb2.ExperimentSpec)
        reply = await stub.SubmitJob(scheduler_pb2.SubmitJobRequest(spec=spec))
        watched = await watch(stub, reply.job.job_id)
        metrics, state, seen_end = watched.metrics, watched.state, watched.seen_end
        if state != common_pb2.JOB_STATE_COMPLETED or len(metrics) != count:
            job = (await stub.GetJob(scheduler_pb2.GetJobRequest(job_id=reply.job.job_id))).job
            raise RuntimeError(
                f"metrics flood ended {common_pb2.JobState.Name(state)} with "  # type: ignore[arg-type]
                f"{len(metrics)} of {count} metrics: {job.error_message}"
            )
        # From the trainer stamping the first metric to this client holding the last: the
        # path's throughput. The job's own ending (exit, release, final state) comes after
        # and is reported on its own.
        first_emitted = min(seconds_of(m.time) for m in metrics)
        engine_rate = count / (watched.last_metric - first_emitted)
    bare_rate = await bare_stream_rate(count)
    return {
        "metrics": count,
        "end_seen_after_last_metric_s": seen_end - watched.last_metric,
        "engine_per_s": engine_rate,
        "bare_stream_per_s": bare_rate,
        "ratio": engine_rate / bare_rate,
    }


async def bare_stream_rate(count: int) -> float:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.echo_server", "--port", str(port)], cwd=REPO
    )
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), 30)
            stream = channel.unary_stream("/bench.Echo/Metrics")
            began = time.perf_counter()
            received = 0
            async for raw in stream(str(count).encode()):
                batch = common_pb2.MetricBatch.FromString(raw)
                received += len(batch.metrics)
            elapsed = time.perf_counter() - began
    finally:
        server.kill()
        server.wait()
    if received != count:
        raise RuntimeError(f"bare stream: {received} of {count}")
    return count / elapsed


# --- 10: the dispatch decision with a long queue --------------------------------------------


async def long_queue(bench: Bench, *, small: int, large: int) -> dict[str, Any]:
    """A second scheduler (no governance: 10,000 submissions would be 20,000 policy checks)
    on the suite's machine. GPU 1 is held, so the queue (all pinned to GPU 1) cannot move;
    a probe pinned to GPU 0 with the top priority measures the dispatch decision."""
    home = bench.home / "queue-scheduler"
    home.mkdir(parents=True, exist_ok=True)
    (home / "tokens.json").write_text((bench.home / "tokens.json").read_text())
    ports = bench.suite.ports()
    node = {
        "name": "local",
        "gpu_manager": f"127.0.0.1:{ports['gpu_manager']}",
        "executor": f"127.0.0.1:{ports['executor']}",
    }
    nodes = json.dumps([node])
    scheduler = ServiceProcess(
        "services.scheduler",
        home,
        port=free_port(),
        env={
            "ARC_SCHEDULER_NODES": nodes,
            "ARC_SCHEDULER_GOVERNANCE_ADDRESS": "",
        },
    )
    await scheduler.start()
    gpus = bench.gpus()
    holder = (
        await gpus.AcquireLease(
            gpu_pb2.AcquireLeaseRequest(
                job_id="bench-holder",
                preference=common_pb2.GPU_PREFERENCE_SPECIFIC,
                gpu_indices=[1],
                ttl_seconds=3600,
            )
        )
    ).lease
    stub = bench.scheduler(scheduler.port)
    queued = 0
    last = ""
    out: dict[str, Any] = {"queued_small": small, "queued_large": large}
    try:
        for size, label in ((small, "small"), (large, "large")):
            while queued < size:
                n = min(1000, size - queued)
                submitted = await stub.SubmitJobs(
                    scheduler_pb2.SubmitJobsRequest(
                        jobs=[
                            scheduler_pb2.SubmitJobRequest(
                                spec=dict_to_proto(
                                    spec_dict(f"q{queued + i}", epochs=1, gpu=1),
                                    common_pb2.ExperimentSpec,
                                ),
                                priority=(queued + i) % 10,
                            )
                            for i in range(n)
                        ]
                    )
                )
                queued += n
                last = submitted.results[-1].job.job_id
            await settled(home, queued)
            out[label] = await queue_costs(stub, label, last)
            assert scheduler.process is not None
            out[label]["rss_mib"] = rss_mib(scheduler.process.pid)
    finally:
        await gpus.ReleaseLease(
            gpu_pb2.ReleaseLeaseRequest(
                lease_id=holder.lease_id, fencing_token=holder.fencing_token
            )
        )
        scheduler.kill()
    for name in ("status_ms", "getjob_ms", "dispatch_ms"):
        out[f"{name.removesuffix('_ms')}_growth"] = out["large"][name] / out["small"][name]
    return out


async def settled(home: Path, experiments: int, seconds: float = 120) -> None:
    """Until the work a big submission leaves behind (spec files, event flushes) is done,
    so that it is not measured as the cost of a long queue."""
    deadline = time.monotonic() + seconds
    folder = home / "experiments"
    while time.monotonic() < deadline:
        if folder.exists() and sum(1 for _ in folder.iterdir()) >= experiments:
            break
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)


async def queue_costs(
    stub: scheduler_pb2_grpc.SchedulerServiceStub, label: str, job_id: str
) -> dict[str, Any]:
    """GetSchedulerStatus and GetJob p50 under load, and submit-to-placement of a probe."""

    async def status(_: int) -> Any:
        return await stub.GetSchedulerStatus(scheduler_pb2.GetSchedulerStatusRequest())

    async def get(_: int) -> Any:
        return await stub.GetJob(scheduler_pb2.GetJobRequest(job_id=job_id))

    status_lat = await drive(status, clients=2, seconds=1.5)
    get_lat = await drive(get, clients=4, seconds=1.5)
    dispatch = []
    for n in range(3):
        spec = dict_to_proto(
            spec_dict(f"probe-{label}-{n}", epochs=50, gpu=0), common_pb2.ExperimentSpec
        )
        began = time.perf_counter()
        reply = await stub.SubmitJob(scheduler_pb2.SubmitJobRequest(spec=spec, priority=10))
        job_id_probe = reply.job.job_id
        while True:
            job = (await stub.GetJob(scheduler_pb2.GetJobRequest(job_id=job_id_probe))).job
            if job.state != common_pb2.JOB_STATE_QUEUED:
                break
            await asyncio.sleep(0.002)
        dispatch.append(time.perf_counter() - began)
        await stub.CancelJob(scheduler_pb2.CancelJobRequest(job_id=job_id_probe))
    return {
        "status_ms": p50(status_lat) * 1000,
        "getjob_ms": p50(get_lat) * 1000,
        "dispatch_ms": statistics.median(dispatch) * 1000,
    }
