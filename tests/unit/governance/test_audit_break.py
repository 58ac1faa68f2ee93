"""A keyed audit chain with three anchors; a break locks governance until an operator acts."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest

from arc_common.errors import PermissionDeniedError
from arc_common.models import DecisionOutcome, Mode, Tool
from services.governance.audit import AuditFilter, AuditRow, canonical_json
from services.governance.audit_records import FIELDS as _FIELDS
from services.governance.core import Governance, ToolCall
from tests.unit.governance.test_governance_core import FakeClock, open_gov

CALL = ToolCall(caller="agent", tool=Tool.MANAGE_CHECKPOINTS, parameters={}, request_id="x")


async def filled(home: Path, clock: FakeClock, count: int = 6) -> None:
    gov = await open_gov(home, clock)
    for n in range(count):
        await gov.log.append(caller="c", action="test", detail=f"record {n}")
    assert (await gov.log.verify()).ok
    await gov.close()


def rechain_with_sha256(db_path: Path) -> None:
    """What an attacker without the key can do: rewrite a record, recompute every link."""
    with sqlite3.connect(db_path) as db:
        rows = [AuditRow(*raw) for raw in db.execute(f"SELECT {', '.join(_FIELDS)} FROM audit")]
        previous = "0" * 64
        for row in rows:
            if row.detail == "record 2":
                row.detail = "nothing happened"
            row.previous_hash = previous
            body = {name: getattr(row, name) for name in _FIELDS[:-1]}
            row.hash = hashlib.sha256((previous + canonical_json(body)).encode()).hexdigest()
            previous = row.hash
            db.execute(
                "UPDATE audit SET detail = ?, previous_hash = ?, hash = ? WHERE sequence = ?",
                (row.detail, row.previous_hash, row.hash, row.sequence),
            )
        count, head = rows[-1].sequence, rows[-1].hash
        anchor = json.dumps({"count": count, "head_hash": head, "keyed_from": 1})
        db.execute("UPDATE meta SET value = ? WHERE key = 'anchor'", (anchor,))
    for path in (
        db_path.parent / "audit_anchor.json",
        db_path.parents[1] / ".secrets" / "audit_anchor.json",
    ):
        path.write_text(anchor)


async def assert_locked_by_break(gov: Governance, words: str) -> None:
    assert words in gov.audit_break, gov.audit_break
    assert gov.mode is Mode.LOCKED
    decision = await gov.validate(CALL)
    assert decision.outcome is DecisionOutcome.DENIED
    with pytest.raises(PermissionDeniedError):
        await gov.begin(caller="svc", tool=Tool.MANAGE_CHECKPOINTS, paths=["work"])
    records, _ = await gov.log.list(AuditFilter(), offset=0, limit=1000)
    assert any(r.action == "audit_break" and words in r.detail for r in records)


async def test_a_chain_recomputed_without_the_key_is_a_break(tmp_path: Path) -> None:
    clock, home = FakeClock(), tmp_path / "ws"
    await filled(home, clock)
    rechain_with_sha256(home / "governance" / "audit.sqlite3")
    gov = await open_gov(home, clock)
    try:
        await assert_locked_by_break(gov, "altered")
    finally:
        await gov.close()


async def test_truncated_tail_and_deleted_anchor_file_is_a_break(tmp_path: Path) -> None:
    clock, home = FakeClock(), tmp_path / "ws"
    await filled(home, clock)
    with sqlite3.connect(home / "governance" / "audit.sqlite3") as db:
        last = db.execute("SELECT MAX(sequence) FROM audit").fetchone()[0]
        db.execute("DELETE FROM audit WHERE sequence > ?", (last - 2,))
        db.execute("DELETE FROM meta WHERE key = 'anchor'")
    (home / "governance" / "audit_anchor.json").unlink()
    gov = await open_gov(home, clock)
    try:
        await assert_locked_by_break(gov, "truncated")
    finally:
        await gov.close()


async def test_a_deleted_secrets_anchor_is_a_break(tmp_path: Path) -> None:
    clock, home = FakeClock(), tmp_path / "ws"
    await filled(home, clock)
    (home / ".secrets" / "audit_anchor.json").unlink()
    gov = await open_gov(home, clock)
    try:
        await assert_locked_by_break(gov, "missing")
    finally:
        await gov.close()


async def test_a_break_while_running_locks_and_an_operator_clears_it(tmp_path: Path) -> None:
    clock, home = FakeClock(), tmp_path / "ws"
    gov = await open_gov(home, clock)
    heard: list[str] = []

    async def hook(reason: str) -> None:
        heard.append(reason)

    gov.on_audit_break.append(hook)
    try:
        for n in range(4):
            await gov.log.append(caller="c", action="test", detail=f"record {n}")
        await gov.check_audit()
        assert not gov.audit_break
        await gov.log.append(caller="c", action="test", detail="since the last check")
        with sqlite3.connect(home / "governance" / "audit.sqlite3") as db:
            db.execute("UPDATE audit SET detail = 'edited' WHERE detail = 'since the last check'")
        await gov.check_audit()
        await assert_locked_by_break(gov, "altered")
        assert heard and heard[-1] == gov.audit_break

        await gov.set_mode(Mode.AUTONOMOUS, caller="operator", reason="looked at it")
        assert (gov.audit_break, gov.mode, heard[-1]) == ("", Mode.AUTONOMOUS, "")
        assert (await gov.validate(CALL)).allowed
        await gov.check_audit()  # goes on from the acknowledged head
        assert not gov.audit_break
        assert not (await gov.log.verify()).ok  # the history itself stays broken
        cleared = [r for r in (await gov.log.list(AuditFilter(), offset=0, limit=100))[0]]
        assert any(r.action == "audit_break_cleared" and r.caller == "operator" for r in cleared)
    finally:
        await gov.close()


async def test_the_break_survives_a_restart_until_an_operator_acts(tmp_path: Path) -> None:
    clock, home = FakeClock(), tmp_path / "ws"
    await filled(home, clock)
    (home / ".secrets" / "audit_anchor.json").unlink()
    gov = await open_gov(home, clock)
    reason = gov.audit_break
    await gov.close()
    gov = await open_gov(home, clock)  # the anchors were rewritten, the break was not lost
    try:
        assert gov.audit_break == reason and gov.mode is Mode.LOCKED
        await gov.set_mode(Mode.AUTONOMOUS, caller="operator")
    finally:
        await gov.close()
    gov = await open_gov(home, clock)
    try:
        assert not gov.audit_break and gov.mode is Mode.AUTONOMOUS
    finally:
        await gov.close()
