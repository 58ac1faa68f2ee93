"""Runs: the executor's state machine for training runs. No grpc and no processes here.

A run is QUEUED while prepared ahead of its GPUs, STARTING once it has a lease, RUNNING
when its trainer says so, and ends in one terminal state with a typed cause
(``RunEndCause``): what the scheduler decides retries on. Its trainer runs where the
``launcher.Launcher`` puts it; while it uses its GPUs the lease is renewed, and a stale
token stops it at once. On executor restart, runs that were live are killed and reported
ended by the shutdown (see ``recover``): their GPUs may belong to someone else by now, so
re-adopting them is unsafe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any

from arc_common.errors import ArcError, FailedPreconditionError, NotFoundError
from arc_common.eventlog import EventLog
from arc_common.models import (
    TERMINAL_STATES,
    DevicesReleased,
    Failure,
    JobState,
    Lease,
    LogExcerpt,
    Run,
    RunEndCause,
    RunEvent,
    StateChange,
    TrainingJobConfig,
)
from services.executor import failures, pipe
from services.executor.launcher import Launcher, TrainerLaunch
from services.executor.leases import LeaseChecker, check_for_job, keep_renewed, renew_interval
from services.executor.live import Ending, LiveRun, ending, final_result
from services.executor.procfs import oom_kills
from services.executor.protocol import TrainerMessage
from services.executor.registry import CheckpointRegistry
from services.executor.run_inputs import RunInputs, RunPaths
from services.executor.run_store import RunStore
from services.executor.settings import ExecutorSettings

logger = logging.getLogger(__name__)


class RunManager:
    def __init__(
        self,
        settings: ExecutorSettings,
        store: RunStore,
        events: EventLog[RunEvent],
        leases: LeaseChecker,
        launcher: Launcher,
    ) -> None:
        self.settings = settings
        self.home = settings.home.resolve()
        self.store = store
        self.events = events
        self.launcher = launcher
        self._leases = leases
        self.checkpoints = CheckpointRegistry(self.home)
        self._inputs = RunInputs(settings, self.checkpoints)
        self._live: dict[str, LiveRun] = {}
        self._lock = asyncio.Lock()
        self._launches: set[asyncio.Future[str]] = set()

    async def get(self, run_id: str) -> Run:
        live = self._live.get(run_id)
        run = live.run if live is not None else await self.store.get(run_id)
        if run is None:
            raise NotFoundError(f"no run {run_id!r}", field="run_id")
        return run.model_copy(update={"last_sequence": self.events.last_sequence(run_id)})

    def is_finished(self, run_id: str) -> bool:
        live = self._live.get(run_id)
        return live is None or live.done.is_set()

    # --- start -------------------------------------------------------------------------------

    async def start(self, config: TrainingJobConfig, lease: Lease, *, request_id: str) -> Run:
        if (earlier := await self._requested(request_id)) is not None:
            return earlier
        check_for_job(config.job_id, lease)
        await self._leases.renew(lease)  # a forged or stale lease is refused before any effect
        await self._supersede_prepared(config.job_id)  # its folders are this run's
        checked = await self._inputs.check(config)

        async def launch() -> str:
            async with self._lock:
                self._check_no_live_run(config.job_id)
                renewed = await self._leases.renew(lease)  # refuses a stale fencing token
                paths = await self._inputs.admit(config, checked)
                async with self._inputs.released_on_error(paths):
                    live = await self._create(config, renewed, request_id, "lease checked", paths)
                await self._launch(live, paths)
            return live.run.run_id

        return await self.get(await self._to_the_end(launch()))

    async def prepare(self, config: TrainingJobConfig, *, request_id: str) -> Run:
        """A run started ahead of its GPUs: the trainer opens its data and builds its model
        in host memory, then waits (QUEUED) for ``activate`` to hand it a lease."""
        if (earlier := await self._requested(request_id)) is not None:
            return earlier
        checked = await self._inputs.check(config)

        async def launch() -> str:
            async with self._lock:
                self._check_no_live_run(config.job_id)
                paths = await self._inputs.admit(config, checked)
                async with self._inputs.released_on_error(paths):
                    why = "prepared ahead of its GPUs"
                    live = await self._create(config, None, request_id, why, paths)
                await self._launch(live, paths)
            return live.run.run_id

        return await self.get(await self._to_the_end(launch()))

    async def _to_the_end(self, launch: Coroutine[Any, Any, str]) -> str:
        """A launch runs to its end even when its caller goes away (a scheduler killed
        mid-call cancels its RPC): cut short, it would leave a recorded run with no trainer
        that a retried call finds by its request id and can neither activate nor stop."""
        task = asyncio.ensure_future(launch)
        self._launches.add(task)
        task.add_done_callback(self._launches.discard)
        return await asyncio.shield(task)

    async def activate(self, run_id: str, lease: Lease) -> Run:
        """Give a prepared run its lease: checked with the gpu-manager, then its GPUs go to
        the waiting trainer and the lease is renewed from now on."""
        async with self._lock:
            live = await self._live_run(run_id, "activate")
            if not live.prepared:
                current = live.run.lease
                if current is not None and current.lease_id == lease.lease_id:
                    return await self.get(run_id)  # a retried activation
                raise FailedPreconditionError(
                    f"run {run_id} is not a prepared run waiting for its GPUs", field="run_id"
                )
            if live.stopping is not None:
                raise FailedPreconditionError(f"run {run_id} is being stopped", field="run_id")
            check_for_job(live.run.job_id, lease)
            renewed = await self._leases.renew(lease)  # refuses a stale fencing token
            if live.launched is None or live.run.config is None:
                raise FailedPreconditionError(
                    f"run {run_id} has no trainer waiting for its GPUs", field="run_id"
                )
            config = live.run.config.model_copy(update={"gpu_ids": list(renewed.gpu_indices)})
            live.run = live.run.model_copy(update={"lease": renewed, "config": config})
            await self._transition(live, JobState.STARTING, "lease checked")
            live.prepared = False
            await self.launcher.activate(live.launched, renewed.gpu_indices)
            live.activated.set()
        return await self.get(run_id)

    async def _requested(self, request_id: str) -> Run | None:
        """The run an earlier call with this request_id made (a retried call)."""
        if not request_id:
            return None
        run_id = await self.store.by_request(request_id)
        return await self.get(run_id) if run_id is not None else None

    async def _supersede_prepared(self, job_id: str) -> None:
        """A job started cold while a trainer of it waits prepared ahead: its scheduler
        never heard of that run (the PrepareRun reply was lost) or gave it up, so nothing
        will activate it, and it would refuse the start forever (one live run per job).
        It is cancelled first."""
        for live in list(self._live.values()):
            if live.run.job_id == job_id and live.prepared and not live.done.is_set():
                superseded = "superseded: its job was started cold"
                logger.warning("run %s: prepared ahead; %s", live.run.run_id, superseded)
                await self.stop(live, Ending(JobState.CANCELLED, superseded, RunEndCause.CANCELLED))
                await live.done.wait()

    def _check_no_live_run(self, job_id: str) -> None:
        for live in self._live.values():
            if live.run.job_id == job_id and not live.done.is_set():
                raise FailedPreconditionError(
                    f"job {job_id} already has a live run {live.run.run_id}",
                    field="config.job_id",
                )

    async def _create(
        self, config: TrainingJobConfig, lease: Lease | None, request_id: str, reason: str,
        paths: RunPaths,
    ) -> LiveRun:  # fmt: skip
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
        live = LiveRun(run=run, prepared=lease is None, paths=paths)
        self._live[run_id] = live
        await self.store.save(run, request_id=request_id)
        self.events.append(
            run_id, state_change=StateChange(previous_state=None, state=state, reason=reason)
        )
        return live

    async def _launch(self, live: LiveRun, paths: RunPaths) -> None:
        run = live.run
        inp = self._inputs.trainer_input(run, paths, prepared=live.prepared)
        gpus = run.lease.gpu_indices if run.lease is not None else None
        try:
            launched = await self.launcher.start(TrainerLaunch(inp, paths.log_dir, gpus))
        except Exception as exc:
            failed = f"could not start the trainer: {exc}"
            await self._finish(live, Ending(JobState.FAILED, failed, RunEndCause.FAILED))
            raise
        live.launched = launched
        live.oom_kills_at_start = oom_kills()
        live.run = run.model_copy(update={"pid": launched.pid, "start_time": datetime.now(UTC)})
        await self.store.save(live.run, locator=launched.locator)
        live.tasks.append(asyncio.create_task(self._read(live)))
        live.tasks.append(asyncio.create_task(self._supervise(live), name=run.run_id))
        where = gpus if gpus is not None else "to come (prepared ahead of them)"
        logger.info("run %s started: pid %d, GPUs %s", run.run_id, launched.pid, where)

    # --- supervision -----------------------------------------------------------------------

    async def _read(self, live: LiveRun) -> None:
        assert live.launched is not None
        async for message in pipe.messages(live.launched.messages(), live.run.run_id):
            await self._on_message(live, message)

    async def _on_message(self, live: LiveRun, message: TrainerMessage) -> None:
        run_id = live.run.run_id
        if message.kind == "metrics" and message.metrics is not None:
            checked = pipe.check_metrics(message.metrics, run_id)
            if checked is not None:
                self.events.append(run_id, metrics=checked.data)
                # The result keeps the per-epoch metrics; per-step losses stay in the events.
                live.epoch_metrics.extend(checked.epoch_metrics)
        elif message.kind == "checkpoint" and message.checkpoint is not None:
            # Registered before anyone hears of it, so a tool can load it at once.
            if await self._register(live, message.checkpoint.path, message.checkpoint.sha256):
                self.events.append(run_id, checkpoint=message.checkpoint)
        elif message.kind == "state":
            reason = message.reason[:2000]
            if message.state == JobState.RUNNING.value and live.run.state is JobState.STARTING:
                await self._transition(live, JobState.RUNNING, message.reason)
            elif message.state == JobState.PRUNED.value:
                said = failures.from_trainer(message.failure)
                live.trainer_end = Ending(JobState.PRUNED, reason, RunEndCause.PRUNED, said)
            elif message.state == JobState.FAILED.value:
                # The trainer caught its error: a failure (or OOM), not a crash.
                cause = pipe.failure_cause(message)
                said = failures.from_trainer(message.failure)
                live.trainer_end = Ending(JobState.FAILED, reason, cause, said)
            elif message.reason:
                self.events.append(run_id, log=LogExcerpt(stream="trainer", lines=[message.reason]))
        elif message.kind == "result" and message.result is not None:
            live.result = message.result
        elif message.kind == "released" and not live.sandboxed:
            # Repository code could say so and train on: it keeps its lease to the end.
            await self._release_devices(live)

    async def _register(self, live: LiveRun, relative: str, sha256: str) -> bool:
        """Register a checkpoint the trainer reports, if it lies in the run's own folder;
        one that is not is not reported on either."""
        assert live.run.config is not None
        folder = live.run.config.checkpoint_dir
        registered = await asyncio.to_thread(
            self.checkpoints.register_reported, folder, relative, sha256
        )
        if not registered:
            logger.warning("%s: %r not in %s/: not registered", live.run.run_id, relative, folder)
        return registered

    async def _release_devices(self, live: LiveRun) -> None:
        """The trainer is done with its GPUs: stop renewing the lease and say so, so that
        the scheduler can hand them to the next job while this one writes its last
        checkpoint. Not for a run being stopped: it holds its GPUs until it is gone."""
        if live.heartbeat is None or live.stopping is not None:
            return
        heartbeat, live.heartbeat = live.heartbeat, None
        await _cancelled(heartbeat)
        assert live.run.lease is not None
        gpus = list(live.run.lease.gpu_indices)
        self.events.append(live.run.run_id, devices_released=DevicesReleased(gpu_indices=gpus))
        logger.info("run %s released GPUs %s", live.run.run_id, gpus)

    async def _transition(
        self,
        live: LiveRun,
        state: JobState,
        reason: str,
        cause: RunEndCause | None = None,
        failure: Failure | None = None,
    ) -> None:
        previous = live.run.state
        updates: dict[str, object] = {"state": state}
        if state in TERMINAL_STATES:
            updates["end_time"] = datetime.now(UTC)
            updates["end_cause"] = cause
        live.run = live.run.model_copy(update=updates)
        change = StateChange(
            previous_state=previous, state=state, reason=reason, cause=cause, failure=failure
        )
        self.events.append(live.run.run_id, state_change=change)
        await self.store.save(live.run)

    async def _heartbeat(self, live: LiveRun) -> None:
        lease = live.run.lease
        assert lease is not None
        interval = renew_interval(lease, self.settings.heartbeat_seconds)
        refused = await keep_renewed(self._leases, lease, interval=interval, run_id=live.run.run_id)
        logger.error("run %s: lease lost, stopping: %s", live.run.run_id, refused)
        lost = f"lease lost: {refused}"
        await self.stop(live, Ending(JobState.FAILED, lost, RunEndCause.LOST_LEASE))

    async def _supervise(self, live: LiveRun) -> None:
        launched = live.launched
        assert launched is not None and live.run.config is not None
        exited = asyncio.ensure_future(self.launcher.wait(launched))
        if live.prepared:  # the lease and the clock start at activation
            activated = asyncio.ensure_future(live.activated.wait())
            await asyncio.wait({exited, activated}, return_when=asyncio.FIRST_COMPLETED)
            activated.cancel()
        if not exited.done():
            live.heartbeat = asyncio.create_task(self._heartbeat(live))
        timeout = live.run.config.timeout_seconds
        try:
            await asyncio.wait_for(asyncio.shield(exited), timeout=timeout)
        except TimeoutError:
            timed_out = f"timed out after {timeout} s"
            await self.stop(live, Ending(JobState.TIMED_OUT, timed_out, RunEndCause.TIMED_OUT))
        finally:
            heartbeat, live.heartbeat = live.heartbeat, None
            if heartbeat is not None:
                await _cancelled(heartbeat)
        returncode = await exited
        # The pipe drains after the exit; wait for its reader so no message is lost.
        for task in live.tasks:
            if task is not asyncio.current_task():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(task), timeout=10)
        end = ending(live, returncode, [])
        tail: list[str] = []
        if end.state is not JobState.COMPLETED:  # its stderr says why
            tail = await self.launcher.error_tail(launched, self.settings.stderr_tail_lines)
        if end.state is JobState.FAILED and live.stopping is None:
            if tail:
                self.events.append(live.run.run_id, log=LogExcerpt(stream="stderr", lines=tail))
            end = ending(live, returncode, tail)
        await self._finish(live, end, tail)

    async def _finish(self, live: LiveRun, end: Ending, tail: list[str] | None = None) -> None:
        if live.paths is not None:  # nothing of its sandbox outlives the run
            with contextlib.suppress(Exception):  # logged there; the run ends regardless
                await self._inputs.release(live.paths)
        result = final_result(live, end)
        failure = failures.failure_of(end, tail or [])
        live.run = live.run.model_copy(
            update={"result": result, "error_message": result.error_message, "failure": failure}
        )
        self.events.append(live.run.run_id, result=result)
        first_line = end.reason.splitlines()[0] if end.reason else ""
        await self._transition(live, end.state, first_line, end.cause, failure)
        if end.state is JobState.COMPLETED and live.run.config is not None:
            with contextlib.suppress(ArcError, OSError):  # retention fails no run
                await self._inputs.completed(live.run.config)
        await self.events.mark_closed(live.run.run_id)
        live.done.set()
        self._live.pop(live.run.run_id, None)
        logger.info("run %s ended %s: %s", live.run.run_id, end.state.value, first_line)

    # --- stop ----------------------------------------------------------------------------------

    async def stop(self, live: LiveRun, end: Ending) -> None:
        """Stop a live run; it ends as ``end`` says once its trainer is gone."""
        if live.stopping is not None or live.done.is_set():
            return
        live.stopping = end
        if live.launched is not None:
            await self.launcher.signal(live.launched, grace=self.settings.cancel_grace_seconds)

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
            await self.stop(live, Ending(JobState.PRUNED, reason or "pruned", RunEndCause.PRUNED))
        else:
            end = Ending(JobState.CANCELLED, reason or "cancelled", RunEndCause.CANCELLED)
            await self.stop(live, end)
        await live.done.wait()
        return await self.get(run_id)

    async def wait(self, run_id: str) -> Run:
        if (live := self._live.get(run_id)) is not None:
            await live.done.wait()
        return await self.get(run_id)

    async def close(self) -> None:
        """Executor shutdown: stop every live run (they are reported lost on restart anyway)."""
        shutdown = Ending(JobState.FAILED, "executor shut down", RunEndCause.EXECUTOR_SHUTDOWN)
        for live in list(self._live.values()):
            await self.stop(live, shutdown)
        for live in list(self._live.values()):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(live.done.wait(), timeout=30)
        await self.launcher.close()

    # --- restart -------------------------------------------------------------------------------

    async def recover(self) -> int:
        """Runs that were live when the executor died: kill what is left, report them lost."""
        rows = await self.store.live()
        grace = self.settings.cancel_grace_seconds
        await self._inputs.sweep([run.config for run, _ in rows if run.config is not None])
        for run, locator in rows:
            killed = await self.launcher.recover(run.run_id, locator, grace=grace)
            reason = "lost: the executor restarted while the run was live" + (
                f"; its process group {locator.pgid} was killed" if killed else ""
            )
            await self._finish(
                LiveRun(run=run), Ending(JobState.FAILED, reason, RunEndCause.EXECUTOR_SHUTDOWN)
            )
            logger.warning("run %s %s", run.run_id, reason)
        return len(rows)


async def _cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
