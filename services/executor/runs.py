"""Runs: one trainer child process per run, supervised until it ends. No grpc here.

A run's child gets its own process group (so a cancel reaches every DataLoader worker),
``CUDA_VISIBLE_DEVICES`` from its lease, no shell, stdout/stderr in the run's log_dir and
a separate pipe for metrics. While it lives the lease is renewed; a stale token stops it at
once. On executor restart, runs that were live are killed and reported lost (see
``recover``): their GPU may already belong to someone else, so re-adopting them is unsafe.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import aiosqlite
from google.protobuf.message import DecodeError

from arc_common import packed
from arc_common.errors import (
    ArcError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)
from arc_common.eventlog import EventLog
from arc_common.models import (
    TERMINAL_STATES,
    DevicesReleased,
    ExperimentResult,
    JobState,
    Lease,
    LogExcerpt,
    MetricResult,
    Run,
    RunEndCause,
    RunEvent,
    StateChange,
    TrainingJobConfig,
)
from arc_common.paths import resolve_data, resolve_in_root
from services.executor.protocol import (
    CHECKSUM_SUFFIX,
    META_SUFFIX,
    TrainerInput,
    TrainerMessage,
    file_sha256,
    load_message,
)
from services.executor.registry import CheckpointRegistry
from services.executor.settings import ExecutorSettings
from services.executor.warm import PoolUnavailable, WarmPool

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    request_id TEXT NOT NULL,
    state TEXT NOT NULL,
    run TEXT NOT NULL,
    pgid INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS runs_state ON runs(state);
CREATE INDEX IF NOT EXISTS runs_request ON runs(request_id);
"""

TRAINER_MODULE = "services.executor.trainer"
STEP_LOSS = "train_step_loss"


class TrainerProcess(Protocol):
    """A cold ``asyncio.subprocess.Process`` or a ``WarmProcess`` forked by the pool."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...


class LeaseChecker(Protocol):
    async def renew(self, lease: Lease) -> Lease:
        """Renew the lease; FailedPreconditionError when its token is stale."""
        ...


def process_group_members(pgid: int) -> list[int]:
    """PIDs (not zombies) whose process group is ``pgid``, from /proc."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def process_start_time(pid: int) -> int:
    """When ``pid`` started (clock ticks since boot; 0 if it is gone): with the pid, it
    tells a process from a later one that reuses the number."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return int(handle.read().rsplit(")", 1)[-1].split()[19])
    except (OSError, IndexError, ValueError):
        return 0


def _is_that_run(pgid: int, started: int, run_id: str) -> bool:
    """The process group of a run from before a restart is still that run's: its leader
    started when recorded (a forked warm trainer), or a member's command line names the
    run (a cold one, or a workspace from before start times were recorded)."""
    if started and process_start_time(pgid) == started:
        return True
    return any(run_id in _cmdline(pid) for pid in process_group_members(pgid))


REPO_ROOT = Path(__file__).resolve().parents[2]


def _write_input(inp: TrainerInput, checkpoint_dir: Path, log_dir: Path) -> Path:
    log_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / f"{inp.run_id}.input.json"
    path.write_text(inp.model_dump_json())
    return path


@dataclass(frozen=True)
class _Paths:
    checkpoint_dir: Path
    log_dir: Path
    data_path: Path
    resume: str  # "" when starting afresh
    resume_sha256: str = ""  # its registered digest ("" when unregistered: not loaded)


def _check_lease(job_id: str, lease: Lease) -> None:
    if lease.job_id and lease.job_id != job_id:
        raise FailedPreconditionError(
            f"lease {lease.lease_id} belongs to job {lease.job_id}, not {job_id}", field="lease"
        )
    if not lease.gpu_indices:
        raise InvalidArgumentError("lease.gpu_indices is empty", field="lease")


@dataclass
class LiveRun:
    run: Run
    process: TrainerProcess | None = None
    stop_reason: str = ""
    stop_state: JobState | None = None
    stop_cause: RunEndCause | None = None
    trainer_state: JobState | None = None
    trainer_reason: str = ""
    trainer_cause: RunEndCause | None = None  # FAILED or OOM, as the trainer reported it
    result: ExperimentResult | None = None
    epoch_metrics: list[MetricResult] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    heartbeat: asyncio.Task[None] | None = None  # renews the lease while the GPUs are used
    standby: int | None = None  # a prepared run's stdin (write end) until it gets its GPUs
    activated: asyncio.Event = field(default_factory=asyncio.Event)


class RunManager:
    def __init__(
        self,
        settings: ExecutorSettings,
        db: aiosqlite.Connection,
        events: EventLog[RunEvent],
        leases: LeaseChecker,
        pool: WarmPool | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.home = settings.home.resolve()
        self._db = db
        self.events = events
        self._leases = leases
        self.checkpoints = CheckpointRegistry(self.home)
        self._live: dict[str, LiveRun] = {}
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        await self._db.executescript(SCHEMA)
        async with self._db.execute("PRAGMA table_info(runs)") as cursor:
            columns = {row[1] async for row in cursor}
        if "pgid_start" not in columns:  # a workspace from before the warm pool
            await self._db.execute(
                "ALTER TABLE runs ADD COLUMN pgid_start INTEGER NOT NULL DEFAULT 0"
            )
        await self._db.commit()

    # --- storage ---------------------------------------------------------------------------

    async def _save(
        self, run: Run, *, request_id: str = "", pgid: int | None = None, pgid_start: int = 0
    ) -> None:
        state = run.state.value if run.state else ""
        await self._db.execute(
            "INSERT INTO runs (run_id, job_id, request_id, state, run, pgid, pgid_start) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(run_id) DO UPDATE SET "
            "state = excluded.state, run = excluded.run, "
            "pgid = CASE WHEN excluded.pgid > 0 THEN excluded.pgid ELSE runs.pgid END, "
            "pgid_start = CASE WHEN excluded.pgid > 0 THEN excluded.pgid_start "
            "ELSE runs.pgid_start END",
            (
                run.run_id,
                run.job_id,
                request_id,
                state,
                run.model_dump_json(),
                pgid or 0,
                pgid_start,
            ),
        )
        await self._db.commit()

    async def get(self, run_id: str) -> Run:
        live = self._live.get(run_id)
        if live is not None:
            return live.run.model_copy(update={"last_sequence": self.events.last_sequence(run_id)})
        async with self._db.execute("SELECT run FROM runs WHERE run_id = ?", (run_id,)) as cur:
            row = await cur.fetchone()
        if row is None:
            raise NotFoundError(f"no run {run_id!r}", field="run_id")
        run = Run.model_validate_json(row[0])
        return run.model_copy(update={"last_sequence": self.events.last_sequence(run_id)})

    def is_finished(self, run_id: str) -> bool:
        live = self._live.get(run_id)
        return live is None or live.done.is_set()

    # --- start -------------------------------------------------------------------------------

    def _resolve_data(self, data_path: str) -> Path:
        return resolve_data(
            self.home, self.settings.data_root, data_path, field="dataset.data_path"
        )

    async def _checkout_revision(self, data_path: str, revision: str) -> None:
        """Bring ``datasets/<id>`` to the DVC revision the spec names, before training."""
        from services.executor.tools import dvcsync

        parts = data_path.strip("/").split("/")
        if len(parts) != 2 or parts[0] != "datasets":
            raise InvalidArgumentError(
                "dataset.dvc_revision needs dataset.data_path of the form datasets/<id>",
                field="dataset.dvc_revision",
            )
        remote = self.settings.dvc_remote or str(self.home / "dvc-remote")
        await asyncio.to_thread(dvcsync.ensure_repo, self.home, remote)
        await asyncio.to_thread(dvcsync.pull, self.home, parts[1], revision)

    async def start(self, config: TrainingJobConfig, lease: Lease, *, request_id: str) -> Run:
        if (earlier := await self._requested(request_id)) is not None:
            return earlier
        _check_lease(config.job_id, lease)
        await self._leases.renew(lease)  # a forged or stale lease is refused before any effect
        paths = await self._checked_paths(config)
        await self._supersede_prepared(config.job_id)
        async with self._lock:
            self._check_no_live_run(config.job_id)
            renewed = await self._leases.renew(lease)  # refuses a stale fencing token
            live = await self._create(config, renewed, request_id, "lease checked")
            await self._launch(live, paths)
        return await self.get(live.run.run_id)

    async def prepare(self, config: TrainingJobConfig, *, request_id: str) -> Run:
        """A run started ahead of its GPUs: the trainer opens its data and builds its model
        in host memory, then waits (QUEUED) for ``activate`` to hand it a lease."""
        if (earlier := await self._requested(request_id)) is not None:
            return earlier
        paths = await self._checked_paths(config)
        async with self._lock:
            self._check_no_live_run(config.job_id)
            live = await self._create(config, None, request_id, "prepared ahead of its GPUs")
            await self._launch(live, paths)
        return await self.get(live.run.run_id)

    async def activate(self, run_id: str, lease: Lease) -> Run:
        """Give a prepared run its lease: checked with the gpu-manager, then its GPUs go to
        the waiting trainer (one line on its stdin) and the lease is renewed from now on."""
        async with self._lock:
            live = await self._live_run(run_id, "activate")
            if live.standby is None:
                current = live.run.lease
                if current is not None and current.lease_id == lease.lease_id:
                    return await self.get(run_id)  # a retried activation
                raise FailedPreconditionError(
                    f"run {run_id} is not a prepared run waiting for its GPUs", field="run_id"
                )
            if live.stop_state is not None:
                raise FailedPreconditionError(f"run {run_id} is being stopped", field="run_id")
            _check_lease(live.run.job_id, lease)
            renewed = await self._leases.renew(lease)  # refuses a stale fencing token
            assert live.run.config is not None
            config = live.run.config.model_copy(update={"gpu_ids": list(renewed.gpu_indices)})
            live.run = live.run.model_copy(update={"lease": renewed, "config": config})
            await self._transition(live, JobState.STARTING, "lease checked")
            standby, live.standby = live.standby, None
            try:
                os.write(standby, json.dumps({"gpu_indices": renewed.gpu_indices}).encode() + b"\n")
            except OSError:
                pass  # the trainer is gone already; its supervisor records how it ended
            finally:
                os.close(standby)
            live.activated.set()
        return await self.get(run_id)

    async def _requested(self, request_id: str) -> Run | None:
        """The run an earlier call with this request_id made (a retried call)."""
        if not request_id:
            return None
        async with self._db.execute(
            "SELECT run_id FROM runs WHERE request_id = ?", (request_id,)
        ) as cursor:
            row = await cursor.fetchone()
        return await self.get(row[0]) if row is not None else None

    async def _checked_paths(self, config: TrainingJobConfig) -> _Paths:
        spec = config.experiment_spec
        checkpoint_dir = resolve_in_root(self.home, config.checkpoint_dir, field="checkpoint_dir")
        log_dir = resolve_in_root(self.home, config.log_dir, field="log_dir")
        await asyncio.to_thread(self.checkpoints.claim, checkpoint_dir, config.submitted_by)
        if spec.dataset.dvc_revision:
            await self._checkout_revision(spec.dataset.data_path, spec.dataset.dvc_revision)
        data_path = self._resolve_data(spec.dataset.data_path)
        resume, resume_sha256 = "", ""
        if config.resume_from:
            candidate = resolve_in_root(self.home, config.resume_from, field="config.resume_from")
            resume = str(candidate) if candidate.is_file() else ""
        if not data_path.is_dir():
            raise InvalidArgumentError(
                f"dataset.data_path {spec.dataset.data_path!r} is not a directory "
                f"(looked at {data_path})",
                field="dataset.data_path",
            )
        if resume:
            resume_sha256 = await asyncio.to_thread(self._carry_over, Path(resume), checkpoint_dir)
        return _Paths(checkpoint_dir, log_dir, data_path, resume, resume_sha256)

    def _carry_over(self, resume: Path, checkpoint_dir: Path) -> str:
        """The registered digest of the checkpoint a retry resumes from ("" when it is
        torn or was never registered: the trainer then starts afresh). The best checkpoint
        so far travels with the run: copied into the new folder and registered there."""
        try:
            digest = self.checkpoints.verify(resume, field="config.resume_from")
        except ArcError as exc:
            logger.warning("not resuming from %s: %s", resume, exc)
            return ""
        best = resume.with_name("best.pt")
        try:
            best_digest = self.checkpoints.verify(best, field="config.resume_from")
        except ArcError:
            return digest
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        for suffix in ("", CHECKSUM_SUFFIX, META_SUFFIX):
            source = best.with_name(best.name + suffix)
            if source.exists():
                tmp = checkpoint_dir / f".{source.name}.tmp"
                shutil.copyfile(source, tmp)
                tmp.replace(checkpoint_dir / source.name)
        copied = checkpoint_dir / best.name
        if file_sha256(copied) == best_digest:
            self.checkpoints.register(copied, best_digest)
        return digest

    async def _supersede_prepared(self, job_id: str) -> None:
        """A job started cold while a trainer of it waits prepared ahead: its scheduler
        never heard of that run (the PrepareRun reply was lost) or gave it up, so nothing
        will activate it, and it would refuse the start forever (one live run per job).
        It is cancelled first."""
        for live in list(self._live.values()):
            if live.run.job_id == job_id and live.standby is not None and not live.done.is_set():
                logger.warning(
                    "run %s: prepared ahead but its job %s is started cold; cancelled",
                    live.run.run_id,
                    job_id,
                )
                await self.stop(
                    live,
                    JobState.CANCELLED,
                    "superseded: its job was started cold",
                    RunEndCause.CANCELLED,
                )
                await live.done.wait()

    def _check_no_live_run(self, job_id: str) -> None:
        for live in self._live.values():
            if live.run.job_id == job_id and not live.done.is_set():
                raise FailedPreconditionError(
                    f"job {job_id} already has a live run {live.run.run_id}",
                    field="config.job_id",
                )

    async def _create(
        self, config: TrainingJobConfig, lease: Lease | None, request_id: str, reason: str
    ) -> LiveRun:
        """A new run: STARTING with its lease, or QUEUED (prepared) without one."""
        state = JobState.STARTING if lease is not None else JobState.QUEUED
        run_id = f"{config.job_id}-{uuid.uuid4().hex[:8]}"
        run = Run(
            run_id=run_id,
            job_id=config.job_id,
            state=state,
            config=config,
            lease=lease,
            create_time=datetime.now(UTC),
        )
        live = LiveRun(run=run)
        self._live[run_id] = live
        await self._save(run, request_id=request_id)
        self.events.append(
            run_id, state_change=StateChange(previous_state=None, state=state, reason=reason)
        )
        return live

    async def _launch(self, live: LiveRun, paths: _Paths) -> None:
        try:
            await self._spawn(live, paths)
        except Exception as exc:
            await self._finish(
                live, JobState.FAILED, f"could not start the trainer: {exc}", RunEndCause.FAILED
            )
            raise
        live.tasks.append(
            asyncio.create_task(self._supervise(live, paths.log_dir), name=live.run.run_id)
        )

    async def _spawn(self, live: LiveRun, paths: _Paths) -> None:
        run = live.run
        assert run.config is not None
        standby = run.lease is None  # prepared: its GPUs come later, on its stdin
        checkpoint_dir, log_dir = paths.checkpoint_dir, paths.log_dir
        workers = self.settings.dataloader_workers
        inp = TrainerInput(
            run_id=run.run_id,
            config=run.config,
            workspace=str(self.home),
            data_path=str(paths.data_path),
            checkpoint_dir=str(checkpoint_dir),
            log_dir=str(log_dir),
            workers=workers if workers >= 0 else 0,
            log_every_steps=self.settings.log_every_steps,
            resume_from=paths.resume,
            resume_sha256=paths.resume_sha256,
            inject=os.environ.get("ARC_TRAINER_INJECT", ""),
            standby=standby,
        )
        input_path = await asyncio.to_thread(_write_input, inp, checkpoint_dir, log_dir)
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("ARC_") or key == "ARC_TRAINER_INJECT"
        }
        gpus = run.lease.gpu_indices if run.lease is not None else []
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in gpus)  # none while prepared
        env["PYTHONUNBUFFERED"] = "1"
        read_fd, write_fd = os.pipe()
        if standby:
            stdin_fd, live.standby = os.pipe()
        else:
            stdin_fd = os.open(os.devnull, os.O_RDONLY)
        try:
            with (
                open(log_dir / "stdout.log", "ab") as stdout,  # noqa: ASYNC230 - instant
                open(log_dir / "stderr.log", "ab") as stderr,  # noqa: ASYNC230
            ):
                process: TrainerProcess | None = None
                if self.pool is not None:
                    try:
                        process = await self.pool.spawn(
                            input_path=str(input_path),
                            fds=(write_fd, stdout.fileno(), stderr.fileno(), stdin_fd),
                            env=env,
                            cwd=str(REPO_ROOT),
                        )
                    except PoolUnavailable as exc:
                        logger.warning("run %s starts cold: %s", run.run_id, exc)
                if process is None:
                    process = await asyncio.create_subprocess_exec(
                        sys.executable,
                        "-m",
                        TRAINER_MODULE,
                        "--input",
                        str(input_path),
                        "--metrics-fd",
                        str(write_fd),
                        stdin=stdin_fd,
                        stdout=stdout,
                        stderr=stderr,
                        pass_fds=(write_fd,),
                        env=env,
                        cwd=str(REPO_ROOT),
                        start_new_session=True,  # its own process group: cancel reaches all
                    )
        except BaseException:
            os.close(read_fd)
            if live.standby is not None:
                os.close(live.standby)
                live.standby = None
            raise
        finally:
            os.close(write_fd)
            os.close(stdin_fd)
        live.process = process
        live.run = run.model_copy(update={"pid": process.pid, "start_time": datetime.now(UTC)})
        await self._save(live.run, pgid=process.pid, pgid_start=process_start_time(process.pid))
        live.tasks.append(asyncio.create_task(self._read_pipe(live, read_fd)))
        logger.info(
            "run %s started: pid %d, GPUs %s",
            run.run_id,
            process.pid,
            gpus if not standby else "to come (prepared ahead of them)",
        )

    # --- supervision -----------------------------------------------------------------------

    async def _read_pipe(self, live: LiveRun, read_fd: int) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=16 * 1024 * 1024)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb")
        )
        try:
            while line := await reader.readline():
                try:
                    message = load_message(line)
                except ValueError:
                    logger.warning("run %s: ignoring a malformed trainer message", live.run.run_id)
                    continue
                await self._on_message(live, message)
        finally:
            transport.close()

    async def _on_message(self, live: LiveRun, message: TrainerMessage) -> None:
        run_id = live.run.run_id
        if message.kind == "metrics" and message.metrics is not None:
            try:  # checked once here; the bytes then go on as they are
                batch = packed.open_batch(message.metrics)
            except DecodeError:
                batch = None
            if batch is None or len(batch.metrics) != message.metrics.count:
                logger.warning("run %s: ignoring a malformed metric batch", run_id)
                return
            if batch.metrics:
                self.events.append(run_id, metrics=message.metrics)
                # The result keeps the per-epoch metrics; per-step losses stay in the events.
                live.epoch_metrics.extend(packed.models(batch, skip=STEP_LOSS))
        elif message.kind == "checkpoint" and message.checkpoint is not None:
            # Registered before anyone hears of it, so a tool can load it at once.
            await self._register(live, message.checkpoint.path, message.checkpoint.sha256)
            self.events.append(run_id, checkpoint=message.checkpoint)
        elif message.kind == "state":
            if message.state == JobState.RUNNING.value and live.run.state is JobState.STARTING:
                await self._transition(live, JobState.RUNNING, message.reason)
            elif message.state == JobState.PRUNED.value:
                live.trainer_state = JobState.PRUNED
                live.trainer_reason = message.reason[:2000]
            elif message.state == JobState.FAILED.value:
                # The trainer caught its error: a failure (or OOM), not a crash.
                live.trainer_cause = RunEndCause(message.cause or RunEndCause.FAILED.value)
            elif message.reason:
                self.events.append(run_id, log=LogExcerpt(stream="trainer", lines=[message.reason]))
        elif message.kind == "result" and message.result is not None:
            live.result = message.result
            live.trainer_state = JobState.COMPLETED
        elif message.kind == "released":
            await self._release_devices(live)

    async def _register(self, live: LiveRun, relative: str, sha256: str) -> None:
        """Register a checkpoint the trainer reports, if it lies in the run's own folder."""
        assert live.run.config is not None
        try:
            folder = resolve_in_root(self.home, live.run.config.checkpoint_dir, field="path")
            path = resolve_in_root(self.home, relative, field="path")
            registered = path.parent == folder and await asyncio.to_thread(
                self.checkpoints.register, path, sha256
            )
        except (ArcError, OSError):
            registered = False
        if not registered:
            logger.warning(
                "run %s: not registering checkpoint %r (outside %s/ under runs/)",
                live.run.run_id,
                relative,
                live.run.config.checkpoint_dir,
            )

    async def _release_devices(self, live: LiveRun) -> None:
        """The trainer is done with its GPUs: stop renewing the lease and say so, so that
        the scheduler can hand them to the next job while this one writes its last
        checkpoint. Not for a run being stopped: it holds its GPUs until it is gone."""
        if live.heartbeat is None or live.stop_state is not None:
            return
        heartbeat, live.heartbeat = live.heartbeat, None
        heartbeat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await heartbeat
        assert live.run.lease is not None
        self.events.append(
            live.run.run_id,
            devices_released=DevicesReleased(gpu_indices=list(live.run.lease.gpu_indices)),
        )
        logger.info("run %s released GPUs %s", live.run.run_id, live.run.lease.gpu_indices)

    async def _transition(
        self, live: LiveRun, state: JobState, reason: str, cause: RunEndCause | None = None
    ) -> None:
        previous = live.run.state
        updates: dict[str, object] = {"state": state}
        if state in TERMINAL_STATES:
            updates["end_time"] = datetime.now(UTC)
            updates["end_cause"] = cause
        live.run = live.run.model_copy(update=updates)
        self.events.append(
            live.run.run_id,
            state_change=StateChange(
                previous_state=previous, state=state, reason=reason, cause=cause
            ),
        )
        await self._save(live.run)

    async def _heartbeat(self, live: LiveRun) -> None:
        lease = live.run.lease
        assert lease is not None
        ttl = 30.0
        if lease.expire_time is not None:
            ttl = max(1.0, (lease.expire_time - datetime.now(UTC)).total_seconds())
        interval = self.settings.heartbeat_seconds or max(0.2, ttl / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                await self._leases.renew(lease)
            except FailedPreconditionError as exc:
                logger.error("run %s: lease lost, stopping: %s", live.run.run_id, exc)
                await self.stop(live, JobState.FAILED, f"lease lost: {exc}", RunEndCause.LOST_LEASE)
                return
            except (UnavailableError, ArcError) as exc:
                logger.warning("run %s: lease renewal failed (%s); retrying", live.run.run_id, exc)

    async def _supervise(self, live: LiveRun, log_dir: Path) -> None:
        process = live.process
        assert process is not None and live.run.config is not None
        exited = asyncio.ensure_future(process.wait())
        if live.standby is not None:  # prepared: the lease and the clock start at activation
            activated = asyncio.ensure_future(live.activated.wait())
            await asyncio.wait({exited, activated}, return_when=asyncio.FIRST_COMPLETED)
            activated.cancel()
        if not exited.done():
            live.heartbeat = asyncio.create_task(self._heartbeat(live))
        timeout = live.run.config.timeout_seconds
        try:
            await asyncio.wait_for(exited, timeout=timeout)
        except TimeoutError:
            await self.stop(
                live, JobState.TIMED_OUT, f"timed out after {timeout} s", RunEndCause.TIMED_OUT
            )
            await process.wait()
        finally:
            heartbeat, live.heartbeat = live.heartbeat, None
            if heartbeat is not None:
                heartbeat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await heartbeat
        # The pipe drains after the exit; wait for its reader so no message is lost.
        for task in live.tasks:
            if task is not asyncio.current_task():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(task), timeout=10)
        await self._kill_group(process.pid, grace=0)  # leftovers of a normal exit
        cause: RunEndCause
        if live.stop_state is not None:
            state, reason = live.stop_state, live.stop_reason
            cause = live.stop_cause or RunEndCause.CANCELLED
        elif live.trainer_state is JobState.PRUNED:
            state, reason, cause = JobState.PRUNED, live.trainer_reason, RunEndCause.PRUNED
        elif process.returncode == 0 and live.result is not None:
            state, reason, cause = JobState.COMPLETED, "training finished", RunEndCause.COMPLETED
        else:
            tail = self._stderr_tail(log_dir)
            state = JobState.FAILED
            # Without the trainer's word on its error, it died: killed, or crashed hard.
            cause = live.trainer_cause or RunEndCause.CRASHED
            if tail:
                self.events.append(live.run.run_id, log=LogExcerpt(stream="stderr", lines=tail))
            reason = "\n".join([f"trainer exited with {process.returncode}", *tail])
        await self._finish(live, state, reason, cause)

    def _stderr_tail(self, log_dir: Path) -> list[str]:
        path = log_dir / "stderr.log"
        if not path.exists():
            return []
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 64 * 1024))
            lines = handle.read().decode(errors="replace").splitlines()
        return list(
            deque((line for line in lines if line.strip()), maxlen=self.settings.stderr_tail_lines)
        )

    async def _finish(
        self, live: LiveRun, state: JobState, reason: str, cause: RunEndCause
    ) -> None:
        result = (live.result or ExperimentResult()).model_copy(
            update={
                "experiment_id": live.run.config.experiment_spec.experiment_id
                if live.run.config
                else "",
                "job_id": live.run.job_id,
                "state": state,
                "metrics": list(live.epoch_metrics),
                "error_message": "" if state is JobState.COMPLETED else reason,
            }
        )
        live.run = live.run.model_copy(
            update={
                "result": result,
                "error_message": "" if state is JobState.COMPLETED else reason,
            }
        )
        if live.standby is not None:  # ended while prepared: nothing will activate it
            os.close(live.standby)
            live.standby = None
        self.events.append(live.run.run_id, result=result)
        await self._transition(live, state, reason.splitlines()[0] if reason else "", cause)
        await self.events.mark_closed(live.run.run_id)
        live.done.set()
        self._live.pop(live.run.run_id, None)
        logger.info("run %s ended %s: %s", live.run.run_id, state.value, reason.splitlines()[:1])

    # --- stop ----------------------------------------------------------------------------------

    async def _kill_group(self, pgid: int, *, grace: float) -> None:
        """SIGTERM to the group, up to ``grace`` seconds, then SIGKILL; until none is left."""
        if not process_group_members(pgid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        # Nothing to await on for processes we did not spawn (grandchildren): poll /proc.
        while time.monotonic() < deadline and process_group_members(pgid):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        for _ in range(100):
            if not process_group_members(pgid):
                return
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            await asyncio.sleep(0.05)
        logger.error("process group %d survived SIGKILL", pgid)

    async def stop(self, live: LiveRun, state: JobState, reason: str, cause: RunEndCause) -> None:
        if live.stop_state is not None or live.done.is_set():
            return
        live.stop_state, live.stop_reason, live.stop_cause = state, reason, cause
        if live.process is not None:
            await self._kill_group(live.process.pid, grace=self.settings.cancel_grace_seconds)

    async def _live_run(self, run_id: str, verb: str) -> LiveRun:
        """The live run, NotFound when unknown, FailedPrecondition when it ended."""
        live = self._live.get(run_id)
        if live is None:
            run = await self.get(run_id)
            raise FailedPreconditionError(
                f"run {run_id} already ended {run.state.value if run.state else ''}; "
                f"nothing to {verb}",
                field="run_id",
            )
        return live

    async def cancel(self, run_id: str, reason: str, *, prune: bool = False) -> Run:
        """Stop a live run: CANCELLED, or PRUNED when its metrics were why."""
        live = await self._live_run(run_id, "cancel")
        if prune:
            await self.stop(live, JobState.PRUNED, reason or "pruned", RunEndCause.PRUNED)
        else:
            await self.stop(live, JobState.CANCELLED, reason or "cancelled", RunEndCause.CANCELLED)
        await live.done.wait()
        return await self.get(run_id)

    async def wait(self, run_id: str) -> Run:
        live = self._live.get(run_id)
        if live is not None:
            await live.done.wait()
        return await self.get(run_id)

    async def close(self) -> None:
        """Executor shutdown: stop every live run (they are reported lost on restart anyway)."""
        for live in list(self._live.values()):
            await self.stop(
                live, JobState.FAILED, "executor shut down", RunEndCause.EXECUTOR_SHUTDOWN
            )
        for live in list(self._live.values()):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(live.done.wait(), timeout=30)
        if self.pool is not None:
            await self.pool.close()

    # --- restart -------------------------------------------------------------------------------

    async def recover(self) -> int:
        """Runs that were live when the executor died: kill what is left, report them lost."""
        async with self._db.execute(
            "SELECT run, pgid, pgid_start FROM runs WHERE state IN (?, ?, ?)",
            (JobState.QUEUED.value, JobState.STARTING.value, JobState.RUNNING.value),
        ) as cursor:
            rows = [(Run.model_validate_json(r[0]), int(r[1]), int(r[2])) async for r in cursor]
        for run, pgid, started in rows:
            killed = ""
            # Its trainer normally stopped as the executor died (its pipe broke); a group
            # still there (frozen, or a zombie leader's live children) is killed now.
            if pgid and process_group_members(pgid) and _is_that_run(pgid, started, run.run_id):
                await self._kill_group(pgid, grace=self.settings.cancel_grace_seconds)
                killed = f"; its process group {pgid} was killed"
            reason = f"lost: the executor restarted while the run was live{killed}"
            live = LiveRun(run=run)
            await self._finish(live, JobState.FAILED, reason, RunEndCause.EXECUTOR_SHUTDOWN)
            logger.warning("run %s %s", run.run_id, reason)
        return len(rows)
