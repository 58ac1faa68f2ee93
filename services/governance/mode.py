"""Governance's mode (AUTONOMOUS, SUPERVISED, LOCKED) and the lock an audit break imposes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from arc_common.models import Mode
from services.governance.audit import AuditLog
from services.governance.store import GovernanceStore

logger = logging.getLogger(__name__)

AuditBreakHook = Callable[[str], Awaitable[None]]


class Modes:
    def __init__(
        self,
        store: GovernanceStore,
        log: AuditLog,
        lock: asyncio.Lock,
        policy_version: Callable[[], str],
    ) -> None:
        self._store = store
        self._log = log
        self._lock = lock
        self._policy_version = policy_version
        self.mode = Mode.AUTONOMOUS
        # Why governance locked itself (the audit chain broke); empty when it did not.
        self.audit_break = ""
        # Called with the break's reason when it begins, with "" when an operator clears it.
        self.on_audit_break: list[AuditBreakHook] = []

    async def load(self) -> None:
        """The stored mode and break; an unreadable mode is the safest one, LOCKED."""
        stored = await self._store.get_state("mode")
        if stored is None:
            stored = Mode.AUTONOMOUS.value
        try:
            self.mode = Mode(stored)
        except ValueError:
            logger.error("stored mode %r is not a mode: governance starts LOCKED", stored)
            await self._put(Mode.LOCKED, caller="governance", reason=f"bad mode {stored!r}")
        self.audit_break = await self._store.get_state("audit_break") or ""
        if self._log.break_reason:
            await self._enter_audit_break(self._log.break_reason)
        await self.check_audit()

    async def _put(self, mode: Mode, *, caller: str, reason: str) -> Mode:
        previous = self.mode
        await self._store.put_state("mode", mode.value)
        await self._store.commit()
        self.mode = mode
        await self._log.append(
            caller=caller,
            action="set_mode",
            outcome=f"{previous.value} -> {mode.value}",
            policy_version=self._policy_version(),
            detail=reason,
        )
        logger.warning("governance mode %s -> %s by %s", previous.value, mode.value, caller)
        return previous

    async def set(self, mode: Mode, *, caller: str, reason: str = "") -> Mode:
        """An operator's choice; it also acknowledges an audit break (recorded), after
        which verification goes on from the current head."""
        async with self._lock:
            previous = await self._put(mode, caller=caller, reason=reason)
            cleared = self.audit_break
            if cleared:
                await self._store.delete_state("audit_break")
                await self._store.commit()
                self.audit_break = ""
                await self._log.append(
                    caller=caller,
                    action="audit_break_cleared",
                    outcome=f"acknowledged; mode {mode.value}",
                    policy_version=self._policy_version(),
                    detail=f"{cleared}; {reason}",
                )
                await self._log.accept_head()
        if cleared:
            for hook in self.on_audit_break:
                await hook("")
        return previous

    async def check_audit(self) -> None:
        """Verify the records added since the last check (at start and on a timer); a
        break locks governance until an operator acts."""
        result = await self._log.verify_new()
        if not result.ok:
            await self._enter_audit_break(f"record {result.first_bad_sequence}: {result.reason}")

    async def _enter_audit_break(self, reason: str) -> None:
        if self.audit_break:
            return  # already locked for a break nobody acknowledged yet
        logger.error("audit chain broken, governance LOCKED: %s", reason)
        async with self._lock:
            self.audit_break = reason[:2000]
            await self._store.put_state("audit_break", self.audit_break)
            await self._put(Mode.LOCKED, caller="governance", reason=f"audit: {reason}")
            await self._log.append(
                caller="governance",
                action="audit_break",
                outcome="locked",
                policy_version=self._policy_version(),
                detail=self.audit_break,
            )
        for hook in self.on_audit_break:
            await hook(self.audit_break)
