"""The test helpers' own promise: no service outlives the test run that started it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO_ROOT

SCRIPT = """
import asyncio, sys
from pathlib import Path
from tests.helpers import ServiceProcess

async def main() -> None:
    service = ServiceProcess("services.governance", Path(sys.argv[1]))
    await service.start()
    print(service.process.pid, flush=True)  # and exit without killing it

asyncio.run(main())
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_service_left_running_is_killed_when_the_interpreter_exits(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    pid = int(done.stdout.split()[-1])
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = _alive(pid)
    if alive:
        os.kill(pid, 9)
    assert not alive, "the service outlived the interpreter that started it"
