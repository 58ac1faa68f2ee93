"""Transactions around a tool's writes: a snapshot of its paths at begin, restored on
rollback; those whose holder died are rolled back (all open ones at startup)."""

from __future__ import annotations

import asyncio
import logging
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from arc_common.errors import FailedPreconditionError, InvalidArgumentError, PermissionDeniedError
from arc_common.models import Mode, Tool, Transaction, TransactionState
from arc_common.paths import resolve_in_root
from services.governance.audit import AuditLog
from services.governance.mode import Modes
from services.governance.snapshots import has_manifest, restore_snapshot, take_snapshot
from services.governance.store import GovernanceStore

logger = logging.getLogger(__name__)

MAX_TRANSACTION_PATHS = 10_000
QUARANTINE_DIR = "quarantine"


@dataclass(frozen=True)
class TransactionLimits:
    timeout_seconds: float = 3600.0
    max_timeout_seconds: float = 86400.0
    max_snapshot_bytes: int = 2 * 1024**3


class Transactions:
    def __init__(
        self,
        home: Path,
        state_dir: Path,
        store: GovernanceStore,
        log: AuditLog,
        *,
        lock: asyncio.Lock,
        modes: Modes,
        clock: Callable[[], float],
        policy_version: Callable[[], str],
        limits: TransactionLimits,
    ) -> None:
        self._home = home
        self._dir = state_dir  # governance's own: no transaction may cover it
        self._store = store
        self._log = log
        self._lock = lock
        self._modes = modes
        self._clock = clock
        self._policy_version = policy_version
        self._limits = limits

    def _snapshot_dir(self, transaction_id: str) -> Path:
        return self._dir / "snapshots" / transaction_id

    async def get(self, transaction_id: str) -> Transaction:
        return await self._store.transaction(transaction_id)

    def _checked_paths(self, paths: list[str]) -> list[str]:
        if len(paths) > MAX_TRANSACTION_PATHS:
            raise InvalidArgumentError(
                f"paths may name at most {MAX_TRANSACTION_PATHS} paths (got {len(paths)})",
                field="paths",
            )
        home = self._home.resolve()
        checked: list[str] = []
        for index, rel in enumerate(paths):
            resolved = resolve_in_root(self._home, rel, field=f"paths[{index}]")
            if resolved.is_relative_to(self._dir.resolve()) or resolved == home:
                raise InvalidArgumentError(
                    f"paths[{index}] may not cover governance's own state: {rel!r}",
                    field=f"paths[{index}]",
                )
            checked.append(str(resolved.relative_to(home)))
        return checked

    async def begin(
        self,
        *,
        caller: str,
        tool: Tool,
        paths: list[str],
        request_id: str = "",
        timeout_seconds: float = 0.0,
    ) -> Transaction:
        if self._modes.mode is Mode.LOCKED:
            raise PermissionDeniedError("governance is LOCKED: no transaction may begin")
        if not paths:
            raise InvalidArgumentError("paths must name at least one path", field="paths")
        longest = self._limits.max_timeout_seconds
        if not 0 <= timeout_seconds <= longest:
            raise InvalidArgumentError(
                f"timeout_seconds must be between 0 and {longest:g} (got {timeout_seconds:g})",
                field="timeout_seconds",
            )
        checked = self._checked_paths(paths)
        if request_id:
            # A retry whose reply was lost gets the open transaction back; one that
            # finished is never handed out again (a tool would write outside it): the
            # retry gets a new transaction with a new snapshot.
            found = await self._store.open_transaction(request_id=request_id, caller=caller)
            if found is not None:
                return found
        transaction_id = uuid.uuid4().hex
        await asyncio.to_thread(
            take_snapshot,
            self._home.resolve(),
            checked,
            self._snapshot_dir(transaction_id),
            max_bytes=self._limits.max_snapshot_bytes,
        )
        now = self._clock()
        await self._store.add_transaction(
            transaction_id=transaction_id,
            request_id=request_id,
            tool=tool,
            paths=checked,
            caller=caller,
            create_time=now,
            expire_time=now + (timeout_seconds or self._limits.timeout_seconds),
        )
        await self._store.commit()
        await self._log.append(
            caller=caller,
            action="begin_transaction",
            tool=tool,
            parameters={"paths": checked},
            outcome="open",
            policy_version=self._policy_version(),
            detail=f"transaction {transaction_id}",
        )
        return await self.get(transaction_id)

    async def _finish(
        self, transaction_id: str, state: TransactionState, *, caller: str, detail: str
    ) -> tuple[Transaction, int, int]:
        transaction = await self.get(transaction_id)
        if transaction.state is state:
            return transaction, 0, 0  # retried: same answer
        if transaction.state is not TransactionState.OPEN:
            raise FailedPreconditionError(
                f"transaction {transaction_id} is already "
                f"{transaction.state.value if transaction.state else 'closed'}",
                field="transaction_id",
            )
        restored = removed = 0
        snapshot_dir = self._snapshot_dir(transaction_id)
        if state is TransactionState.ROLLED_BACK and has_manifest(snapshot_dir):
            counts = await asyncio.to_thread(restore_snapshot, self._home.resolve(), snapshot_dir)
            restored, removed = counts.restored, counts.removed
        await self._store.set_transaction_state(transaction_id, state)
        await self._store.commit()
        await asyncio.to_thread(shutil.rmtree, snapshot_dir, True)
        committed = state is TransactionState.COMMITTED
        await self._log.append(
            caller=caller,
            action="commit_transaction" if committed else "rollback_transaction",
            tool=transaction.tool,
            parameters={"paths": transaction.paths},
            outcome=state.value,
            policy_version=self._policy_version(),
            detail=f"transaction {transaction_id}; restored {restored}, removed {removed}; "
            f"{detail}",
        )
        return await self.get(transaction_id), restored, removed

    async def commit(self, transaction_id: str, *, caller: str, outcome: str = "") -> Transaction:
        async with self._lock:
            transaction, _, _ = await self._finish(
                transaction_id, TransactionState.COMMITTED, caller=caller, detail=outcome
            )
        return transaction

    async def rollback(
        self, transaction_id: str, *, caller: str, reason: str = ""
    ) -> tuple[Transaction, int, int]:
        async with self._lock:
            return await self._finish(
                transaction_id, TransactionState.ROLLED_BACK, caller=caller, detail=reason
            )

    async def _quarantine(self, transaction_id: str, exc: Exception) -> None:
        """Move a transaction that cannot be rolled back out of the way: its row to the
        quarantine table, its snapshot to governance/quarantine/ for an operator."""
        reason = f"{type(exc).__name__}: {exc}"[:2000]
        await self._store.quarantine_transaction(transaction_id, reason, self._clock())
        await self._store.commit()
        snapshot = self._snapshot_dir(transaction_id)
        kept = self._dir / QUARANTINE_DIR / transaction_id
        if snapshot.exists():
            kept.parent.mkdir(exist_ok=True)
            await asyncio.to_thread(shutil.move, snapshot, kept)
        await self._log.append(
            caller="governance",
            action="quarantine_transaction",
            outcome="quarantined",
            policy_version=self._policy_version(),
            detail=f"transaction {transaction_id}: {reason}; snapshot kept in {kept}",
        )
        logger.error(
            "transaction %s quarantined (%s); snapshot in %s", transaction_id, reason, kept
        )

    async def recover(self, *, startup: bool = False) -> int:
        """Roll back transactions whose holder died: all open ones at startup, else expired."""
        expired_by = None if startup else self._clock()
        ids = await self._store.open_transaction_ids(expired_by=expired_by)
        for transaction_id in ids:
            reason = "governance restarted" if startup else "holder timed out"
            try:
                await self.rollback(transaction_id, caller="governance", reason=reason)
            except Exception as exc:  # a bad row must not stop the service or the others
                await self._quarantine(transaction_id, exc)
                continue
            logger.warning("transaction %s rolled back: %s", transaction_id, reason)
        if startup:
            # Nothing is open now: what is left are snapshots of transactions that never got
            # recorded (crash mid-begin) or were closed just before a crash.
            for path in (self._dir / "snapshots").iterdir():
                shutil.rmtree(path, ignore_errors=True)
        return len(ids)
