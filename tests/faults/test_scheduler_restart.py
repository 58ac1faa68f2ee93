"""SIGKILL the scheduler with 500 queued jobs of mixed priorities and 2 running."""

from __future__ import annotations

import os
from pathlib import Path

from tests.integration.scheduler.test_restart import sigkill_and_restart

QUEUED = 2000 if os.environ.get("ARC_TEST_LONG") else 500


async def test_sigkill_with_500_queued_and_2_running(tmp_path: Path, tiny_data: Path) -> None:
    await sigkill_and_restart(tmp_path, tiny_data, queued=QUEUED, running=2)
