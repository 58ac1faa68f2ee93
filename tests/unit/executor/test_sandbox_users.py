"""A uid per sandboxed run: allocation, and nothing of the run outliving it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from arc_common.errors import ResourceExhaustedError
from services.executor.procfs import alive
from services.executor.sandbox_users import SandboxUsers, parse_range, process_uids


@pytest.mark.parametrize("text", ["5-9", "2000-1000", "1000", "a-b", "1000-99999999999"])
def test_a_range_that_is_no_range_of_unprivileged_uids_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="must"):
        parse_range(text)


def test_each_run_gets_a_uid_no_other_run_holds() -> None:
    users = SandboxUsers(parse_range("60600-60602"))
    held = {users.allocate() for _ in range(3)}
    assert held == {60600, 60601, 60602}
    with pytest.raises(ResourceExhaustedError) as full:
        users.allocate()
    assert full.value.field == "sandbox_uids"


@pytest.mark.skipif(os.geteuid() != 0, reason="becoming another uid needs root")
def test_release_kills_what_left_the_process_group_and_hands_folders_back(
    tmp_path: Path,
) -> None:
    users = SandboxUsers(parse_range("60600-61183"))
    uid = users.allocate()
    folder = tmp_path / "work"
    folder.mkdir()
    os.chown(folder, uid, uid)
    # A daemon as a hostile trainer makes it: its own session, so no killpg reaches it.
    escaped = subprocess.Popen(
        ["sleep", "600"], user=uid, group=uid, extra_groups=[], start_new_session=True
    )
    assert uid in process_uids()[escaped.pid]  # Popen returns once it has exec'd
    users.release(uid, [folder])
    assert escaped.wait(timeout=10) == -9
    assert not alive(escaped.pid)
    assert folder.stat().st_uid == os.geteuid()
    assert users.allocate() in users.uids  # it serves again
