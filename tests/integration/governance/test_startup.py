"""A governance that cannot start exits non-zero within seconds, port never opened."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT


def start(home: Path) -> tuple[int, float, str]:
    began = time.monotonic()
    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.governance",
            "--port",
            "0",
            "--home",
            str(home),
            "--port-file",
            str(home / "port"),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return process.returncode, time.monotonic() - began, process.stderr + process.stdout


@pytest.mark.parametrize("damage", ["policy", "audit database"])
def test_a_failed_start_exits_non_zero_quickly(tmp_path: Path, damage: str) -> None:
    if damage == "policy":
        (tmp_path / "policy.yaml").write_text("version: broken\ntools:\n  x: [\n")
    else:  # fails after the governance database (and its thread) is open
        (tmp_path / "governance").mkdir()
        (tmp_path / "governance" / "audit.sqlite3").write_bytes(b"not a database" * 400)
    code, seconds, output = start(tmp_path)
    assert code == 1, output
    assert seconds < 20
    assert not (tmp_path / "port").exists()
