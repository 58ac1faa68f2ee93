"""The warm worker pool: ``python -m services.executor.trainer.pool --fd N``.

One process that has imported torch, torchvision and the trainer (a few seconds, paid once
per executor, not once per run) and then forks each run's trainer on request. CUDA is
never initialised here (no ``torch.cuda`` call at all: a CUDA context does not survive a
fork); each child sets its own ``CUDA_VISIBLE_DEVICES`` from its lease before torch first
touches the GPU. Each child is a session leader of its own (so a cancel reaches all of its
process group), with the run's stdout/stderr and metrics pipe, and leaves with
``os._exit`` (no interpreter teardown with torch loaded).

The executor talks over an AF_UNIX SOCK_SEQPACKET socket, one JSON message per packet:
  executor -> pool: {"id", "input", "env", "cwd"} with three descriptors attached
                    (metrics pipe, stdout, stderr)
  pool -> executor: {"ready", "pid", "cuda_initialized", "seconds"} once, when warm
                    {"id", "pid"} or {"id", "error"} per request
                    {"exit", "code"} when a child ends (code as Popen.returncode)
One spare child is forked ahead of time and waits for its run, so the next run does not
even wait for the fork. End of the socket (the executor is gone) ends the pool.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import socket
import sys
import time
import traceback
from typing import Any, NoReturn

MAX_MESSAGE = 1 << 20
ANSWERS = 4  # descriptors per request: metrics pipe, stdout, stderr, stdin


def send(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.send(json.dumps(message).encode())


def preload() -> bool:
    """Import what every run needs; True if CUDA got initialised (it must not)."""
    import torch
    import torchvision  # noqa: F401

    import services.executor.trainer.__main__
    import services.executor.trainer.train  # noqa: F401

    return bool(torch.cuda.is_initialized())  # type: ignore[no-untyped-call]


def _become_run(request: dict[str, Any], fds: list[int]) -> NoReturn:
    """In the forked child: take the run's descriptors and environment, train, leave."""
    code = 1
    try:
        metrics_fd, stdout_fd, stderr_fd, stdin_fd = fds
        os.dup2(stdout_fd, 1)
        os.dup2(stderr_fd, 2)
        os.dup2(stdin_fd, 0)  # /dev/null, or where a prepared run's GPUs come from
        for fd in (stdout_fd, stderr_fd, stdin_fd):
            os.close(fd)
        os.environ.clear()
        os.environ.update(request["env"])  # CUDA_VISIBLE_DEVICES before any CUDA call
        os.chdir(request["cwd"])
        from services.executor.trainer.__main__ import run

        code = run(request["input"], metrics_fd)
    except BaseException:
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # leaving anyway
                stream.flush()
    os._exit(code)


def _spare(inbox: socket.socket) -> NoReturn:
    """A forked child waiting for its run (its own session already)."""
    os.setsid()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    try:
        data, fds, _, _ = socket.recv_fds(inbox, MAX_MESSAGE, ANSWERS)
    except OSError:
        os._exit(0)
    inbox.close()
    if not data or len(fds) != ANSWERS:
        os._exit(0)  # the pool ended (or sent nonsense): nothing to run
    _become_run(json.loads(data), list(fds))


class Pool:
    def __init__(self, control: socket.socket, wakeup: tuple[int, int]) -> None:
        self.control = control
        self.wakeup = wakeup  # the signal wakeup pipe: read end, write end
        self.spare: tuple[int, socket.socket] | None = None
        self.children: set[int] = set()

    def fork_spare(self) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            parent.close()
            self.control.close()
            signal.set_wakeup_fd(-1)
            for fd in self.wakeup:
                os.close(fd)
            _spare(child)
        child.close()
        self.spare = (pid, parent)
        self.children.add(pid)

    def start(self, request: dict[str, Any], fds: list[int]) -> None:
        try:
            if len(fds) != ANSWERS:
                raise ValueError(f"expected {ANSWERS} descriptors, got {len(fds)}")
            for attempt in (1, 2):
                if self.spare is None:
                    self.fork_spare()
                assert self.spare is not None
                pid, inbox = self.spare
                self.spare = None
                try:
                    socket.send_fds(inbox, [json.dumps(request).encode()], fds)
                except OSError:
                    if attempt == 2:
                        raise
                    continue  # that spare died meanwhile: the next one takes the run
                finally:
                    inbox.close()
                send(self.control, {"id": request.get("id"), "pid": pid})
                return
        except Exception as exc:
            send(self.control, {"id": request.get("id"), "error": f"{type(exc).__name__}: {exc}"})
        finally:
            for fd in fds:
                os.close(fd)

    def reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.children.discard(pid)
            if self.spare is not None and self.spare[0] == pid:
                self.spare[1].close()
                self.spare = None  # a spare died unused: another one comes below
                continue
            send(self.control, {"exit": pid, "code": os.waitstatus_to_exitcode(status)})

    def serve(self) -> int:
        while True:
            if self.spare is None:
                self.fork_spare()
            readable, _, _ = select.select([self.control.fileno(), self.wakeup[0]], [], [])
            if self.wakeup[0] in readable:
                os.read(self.wakeup[0], 4096)
            self.reap()
            if self.control.fileno() in readable:
                data, fds, _, _ = socket.recv_fds(self.control, MAX_MESSAGE, ANSWERS)
                if not data:
                    return 0  # the executor is gone (its runs see their pipes break and stop)
                try:
                    request = json.loads(data)
                except ValueError:
                    for fd in fds:
                        os.close(fd)
                    continue
                self.start(request, list(fds))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fd", type=int, required=True)
    args = parser.parse_args()
    control = socket.socket(fileno=args.fd)
    began = time.monotonic()
    cuda = preload()
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    os.set_blocking(write_end, False)
    signal.set_wakeup_fd(write_end)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes select through the wakeup fd
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    seconds = round(time.monotonic() - began, 3)
    print(  # logged before it is said: whoever hears "ready" finds the line
        f"warm pool {os.getpid()} ready in {seconds} s: torch imported, "
        f"CUDA {'INITIALISED (refused)' if cuda else 'not initialised'}",
        flush=True,
    )
    send(
        control,
        {"ready": True, "pid": os.getpid(), "cuda_initialized": cuda, "seconds": seconds},
    )
    return Pool(control, (read_end, write_end)).serve()


if __name__ == "__main__":
    sys.exit(main())
