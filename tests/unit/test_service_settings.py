"""Where a service's workspace comes from."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.governance.settings import GovernanceSettings
from services.scheduler.settings import SchedulerSettings


def test_arc_home_wins_over_the_users_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.setenv("ARC_HOME", str(tmp_path / "workspace"))
    assert GovernanceSettings().home == tmp_path / "workspace"
    assert SchedulerSettings().home == tmp_path / "workspace"
    assert GovernanceSettings(home=tmp_path / "given").home == tmp_path / "given"
    monkeypatch.delenv("ARC_HOME")
    assert GovernanceSettings().home == Path(".arc")  # never $HOME
