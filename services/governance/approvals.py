"""Requests waiting for an operator (SUPERVISED mode): approve, reject, expire, and the
decision a caller waiting on one gets."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import uuid
from collections.abc import Callable
from typing import Any

from arc_common.errors import FailedPreconditionError
from arc_common.models import Decision, DecisionOutcome, PendingRequest, PendingRequestState, Tool
from services.governance.audit import AuditLog
from services.governance.budgets import Budgets
from services.governance.store import GovernanceStore

# How long a waiting caller sleeps at most between two looks at its request.
RECHECK_SECONDS = 1.0


class Approvals:
    def __init__(
        self,
        store: GovernanceStore,
        log: AuditLog,
        lock: asyncio.Lock,
        budgets: Budgets,
        *,
        clock: Callable[[], float],
        policy_version: Callable[[], str],
        ttl_seconds: float,
    ) -> None:
        self._store = store
        self._log = log
        self._lock = lock
        self._budgets = budgets
        self._clock = clock
        self._policy_version = policy_version
        self._ttl = ttl_seconds
        self._decided = asyncio.Condition()

    async def add(
        self,
        *,
        caller: str,
        request_id: str,
        tool: Tool,
        parameters: dict[str, Any],
        cycle_id: int,
        gpu_hours: float,
        digest: str,
    ) -> str:
        """A new pending request (committed with the decision that made it)."""
        pending_id = uuid.uuid4().hex
        now = self._clock()
        await self._store.add_pending(
            pending_request_id=pending_id,
            caller=caller,
            request_id=request_id,
            tool=tool,
            parameters=parameters,
            create_time=now,
            expire_time=now + self._ttl,
            cycle_id=cycle_id,
            gpu_hours=gpu_hours,
            params_digest=digest,
        )
        return pending_id

    async def get(self, pending_request_id: str) -> PendingRequest:
        return (await self._store.pending(pending_request_id)).request

    async def list(self, *, offset: int, limit: int) -> tuple[list[PendingRequest], bool]:
        await self.expire()
        rows = await self._store.list_pending(offset=offset, limit=limit + 1)
        return rows[:limit], len(rows) > limit

    async def decide(
        self, pending_request_id: str, *, approve: bool, caller: str, reason: str
    ) -> PendingRequest:
        await self.expire()
        async with self._lock:
            row = await self._store.pending(pending_request_id)
            pending = row.request
            state = PendingRequestState.APPROVED if approve else PendingRequestState.REJECTED
            if pending.state is state:
                return pending  # a retried approval is not an error
            if pending.state is not PendingRequestState.PENDING:
                raise FailedPreconditionError(
                    f"pending request {pending_request_id} is already "
                    f"{pending.state.value if pending.state else 'decided'}",
                    field="pending_request_id",
                )
            if approve and row.gpu_hours:
                await self._budgets.charge(pending.caller, row.cycle_id, row.gpu_hours)
            await self._store.decide_pending(
                pending_request_id, state, reason=reason, decided_by=caller
            )
            await self._store.commit()
            await self._log.append(
                caller=caller,
                action="approve" if approve else "reject",
                tool=pending.tool,
                parameters=pending.parameters,
                decision=DecisionOutcome.ALLOWED if approve else DecisionOutcome.DENIED,
                outcome=state.value,
                policy_version=self._policy_version(),
                detail=f"pending {pending_request_id} of {pending.caller}: {reason}",
            )
        async with self._decided:
            self._decided.notify_all()
        return await self.get(pending_request_id)

    async def expire(self) -> int:
        now = self._clock()
        async with self._lock:
            rows = await self._store.expired_pending(now)
            for pending in rows:
                await self._store.decide_pending(
                    pending.pending_request_id,
                    PendingRequestState.EXPIRED,
                    reason="no operator decision in time",
                )
                await self._log.append(
                    caller="governance",
                    action="expire_pending",
                    tool=pending.tool,
                    parameters=pending.parameters,
                    decision=DecisionOutcome.DENIED,
                    outcome="expired",
                    policy_version=self._policy_version(),
                    detail=f"pending {pending.pending_request_id} of {pending.caller}",
                )
            await self._store.commit()
        if rows:
            async with self._decided:
                self._decided.notify_all()
        return len(rows)

    async def current(self, decision: Decision, digest: str) -> Decision:
        """A decision that waits for an operator, as its request stands now."""
        row = await self._store.pending(decision.pending_request_id)
        pending = row.request
        if not hmac.compare_digest(row.params_digest, digest):
            # Defence in depth: an approval covers only the parameters it was shown.
            return decision.model_copy(
                update={
                    "outcome": DecisionOutcome.DENIED,
                    "allowed": False,
                    "reason": "the approval was given for other parameters",
                }
            )
        if pending.state is PendingRequestState.PENDING:
            return decision
        allowed = pending.state is PendingRequestState.APPROVED
        return decision.model_copy(
            update={
                "outcome": DecisionOutcome.ALLOWED if allowed else DecisionOutcome.DENIED,
                "allowed": allowed,
                "reason": f"{pending.state.value if pending.state else ''} by "
                f"{pending.decided_by or 'expiry'}: {pending.reason}".strip(),
            }
        )

    async def wait(self, decision: Decision, digest: str, wait_seconds: float) -> Decision:
        """The decision once an operator took it, or as it stands after ``wait_seconds``."""
        if decision.outcome is not DecisionOutcome.PENDING_APPROVAL or wait_seconds <= 0:
            return decision
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        while True:
            current = await self.current(decision, digest)
            if current.outcome is not DecisionOutcome.PENDING_APPROVAL:
                return current
            remaining = deadline - loop.time()
            if remaining <= 0:
                return current
            async with self._decided:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._decided.wait(), timeout=min(remaining, RECHECK_SECONDS)
                    )
