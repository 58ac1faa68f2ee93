"""The trainer child: ``python -m services.executor.trainer --input RUN.json --metrics-fd N``.

Logs go to stderr (the executor keeps them in the run's log_dir); metrics and events go
as batched JSON lines to the metrics pipe, so the two never mix. Exit 0 when the run
completed or was pruned (the last message says which), 1 on a crash.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import resource
import select
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import IO

from arc_common.models import CheckpointInfo, Failure, FailureClass, JobState
from arc_common.packed import Packer
from services.executor.protocol import TrainerInput, TrainerMessage, dump
from services.executor.trainer import faults, sandbox

logger = logging.getLogger("arc.trainer")

# Step metrics go out at most once a second: each batch wakes the executor, the scheduler
# and every watcher, and on a busy CPU those wake-ups slow the steps (docs/decisions).
# States, checkpoints and the GPUs' release go at once, with the metrics before them (an
# epoch's summary leaves with the next of these or the next batch, within a second).
FLUSH_SECONDS = 1.0
FLUSH_ITEMS = 256


class Channel:
    """Batched JSON lines to the executor: metrics wait up to FLUSH_SECONDS or FLUSH_ITEMS
    and leave packed (one serialized MetricBatch a line); anything else goes at once, after
    the metrics before it."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._pending = Packer()
        self._last_flush = time.monotonic()
        self._lock = threading.Lock()

    def _write(self, message: TrainerMessage) -> None:
        self._stream.write(dump(message) + "\n")

    def flush(self) -> None:
        with self._lock:
            packed = self._pending.take()
            if packed is not None:
                self._write(TrainerMessage(kind="metrics", metrics=packed))
            self._stream.flush()
            self._last_flush = time.monotonic()

    def metric(
        self,
        name: str,
        value: float,
        *,
        step: int,
        epoch: int,
        split: str = "",
        time_ns: int | None = None,
    ) -> None:
        with self._lock:
            self._pending.add(
                name,
                float(value),
                step=step,
                epoch=epoch,
                split=split,
                time_ns=time.time_ns() if time_ns is None else time_ns,
            )
            due = (
                len(self._pending) >= FLUSH_ITEMS
                or time.monotonic() - self._last_flush >= FLUSH_SECONDS
            )
        if due:
            self.flush()

    def send(self, message: TrainerMessage) -> None:
        self.flush()
        with self._lock:
            self._write(message)
            self._stream.flush()

    def checkpoint(self, info: CheckpointInfo) -> None:
        self.send(TrainerMessage(kind="checkpoint", checkpoint=info))

    def state(self, state: str, reason: str) -> None:
        self.send(TrainerMessage(kind="state", state=state, reason=reason))

    def release(self) -> None:
        self.send(TrainerMessage(kind="released"))


def _die_with_executor(metrics_fd: int) -> None:
    """Stop at once when the executor is gone. It holds the only read end of the metrics
    pipe, so its death (a kill, a crash) makes the write end report POLLERR: this thread
    waits for that in poll(), costing nothing meanwhile. A run nobody hears from must not
    train on, nor write checkpoints that the retry of a restarted executor may be reading;
    the whole process group goes (DataLoader workers too), as a cancel would take it."""

    def watch() -> None:
        poller = select.poll()
        poller.register(metrics_fd, 0)  # POLLERR and POLLHUP are reported unasked
        while True:
            events = poller.poll()
            if any(mask & (select.POLLERR | select.POLLHUP) for _, mask in events):
                break
            if any(mask & select.POLLNVAL for _, mask in events):
                return  # the pipe was closed here: the run is ending anyway
        if os.getpgid(0) == os.getpid():  # our own group (the executor starts us so)
            os.killpg(0, signal.SIGKILL)
        os._exit(1)

    threading.Thread(target=watch, name="executor-watch", daemon=True).start()


class NoDevices(Exception):
    """A prepared run's stdin ended before its GPUs came: it was cancelled."""


def await_devices() -> list[int]:
    """A prepared run waits here, on stdin, for ``{"gpu_indices": [...]}`` (one line)."""
    line = sys.stdin.buffer.readline()
    if not line.strip():
        raise NoDevices("stdin ended before the GPUs came")
    indices = json.loads(line)["gpu_indices"]
    if not isinstance(indices, list) or not all(isinstance(i, int) for i in indices):
        raise ValueError(f"gpu_indices must be a list of integers, got {indices!r}")
    return indices


def _limit_resources() -> None:
    # No core dumps of multi-GB processes into the workspace.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _out_of_memory(exc: BaseException) -> bool:
    """Host memory (MemoryError) or a device's (torch's OutOfMemoryError) ran out."""
    torch = sys.modules.get("torch")
    cuda_oom = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    return isinstance(exc, MemoryError) or (
        isinstance(cuda_oom, type) and isinstance(exc, cuda_oom)
    )


def run(input_path: str, metrics_fd: int) -> int:
    """One run, start to end: the cold ``python -m`` entry and the warm pool's forked child
    (services.executor.warm) both come here."""
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    _limit_resources()
    _die_with_executor(metrics_fd)
    inp = TrainerInput.model_validate_json(Path(input_path).read_text())
    stream = os.fdopen(metrics_fd, "w", buffering=1 << 16)
    channel = Channel(stream)
    if (flood := faults.flood_count(inp.inject)) is not None:
        return faults.metrics_flood(inp, channel, flood)
    # Imported here so that a bad input fails fast, before torch loads (a warm child has
    # it loaded already).
    from torch import nn

    from services.executor.trainer.code import classify
    from services.executor.trainer.train import Pruned, Reporter, train

    if inp.sandbox is not None:  # the engine's imports done; no repository code yet
        sandbox.enter(inp.sandbox)

    reporter = Reporter(
        metric=channel.metric,
        checkpoint=channel.checkpoint,
        state=channel.state,
        release=channel.release,
        await_devices=await_devices,
    )
    reporter, criterion = faults.apply(inp.inject, reporter, nn.CrossEntropyLoss())
    try:
        result = train(inp, reporter, criterion=criterion)
    except NoDevices as exc:
        logger.info("prepared run leaves without training: %s", exc)
        return 0
    except Pruned as exc:
        logger.warning("run pruned: %s", exc)
        diverged = Failure(failure_class=FailureClass.DIVERGED, message=str(exc)[:2000])
        channel.send(
            TrainerMessage(
                kind="state", state=JobState.PRUNED.value, reason=str(exc), failure=diverged
            )
        )
        channel.flush()
        return 0
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        sys.stderr.flush()
        cause = "oom" if _out_of_memory(exc) else "failed"
        failure = classify(exc, inp.source_dir)
        with contextlib.suppress(OSError, ValueError):  # the executor may be gone
            channel.send(
                TrainerMessage(
                    kind="state",
                    state=JobState.FAILED.value,
                    reason=repr(exc)[:500],
                    cause=cause,
                    failure=failure,
                )
            )
            channel.flush()
        return 1
    channel.send(TrainerMessage(kind="result", result=result))
    channel.flush()
    logger.info("run completed: %s", {k: round(v, 4) for k, v in result.best_metrics.items()})
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--input", required=True)
    parser.add_argument("--metrics-fd", type=int, required=True)
    args = parser.parse_args()
    return run(args.input, args.metrics_fd)


if __name__ == "__main__":
    sys.exit(main())
