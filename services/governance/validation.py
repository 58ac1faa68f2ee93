"""Deciding a tool call: policy, budgets and mode; each decision audited, and bound to its
request id and its parameters' digest so that a retry replays it.

Decisions on mutating calls are idempotent per (caller, via, request_id) and bound to the
digest of the parameters they were made for: a retry with the same parameters returns the
first decision (not counted twice against budgets), a retry with others is refused. ``via``
is the authenticated identity that asked, so a decision an agent asked for itself is never
the one the executor (asking on the agent's behalf) reuses.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from arc_common.batch import GroupCommit
from arc_common.digest import params_digest
from arc_common.errors import FailedPreconditionError
from arc_common.models import Decision, DecisionOutcome, Mode, Tool, Violation
from services.governance.approvals import Approvals
from services.governance.audit import AuditLog
from services.governance.budgets import Budgets, MalformedParameterError, estimated_gpu_hours
from services.governance.mode import Modes
from services.governance.policy import Policy
from services.governance.store import GovernanceStore


@dataclass(frozen=True)
class ToolCall:
    caller: str
    tool: Tool
    parameters: dict[str, Any]
    request_id: str = ""
    dry_run: bool = False
    cycle_id: int = 0
    invalid_reason: str = ""
    # The authenticated identity that asked (a service acting for ``caller``); empty: caller.
    via: str = ""

    @property
    def asked_by(self) -> str:
        return self.via or self.caller


def read_only(call: ToolCall) -> bool:
    """A call that changes nothing (listing checkpoints): never held for an operator's
    approval (LOCKED still refuses it: a lock stops everything)."""
    return call.tool is Tool.MANAGE_CHECKPOINTS and call.parameters.get("action") == "list"


def _verdict(
    policy: Policy, violations: list[Violation], mode: Mode, *, reads_only: bool = False
) -> Decision:
    if reads_only and mode is Mode.SUPERVISED:
        mode = Mode.AUTONOMOUS
    if violations or mode is Mode.LOCKED:
        reason = (
            "governance is LOCKED: every mutating call is denied"
            if mode is Mode.LOCKED
            else f"{len(violations)} policy violation(s)"
        )
        return Decision(
            outcome=DecisionOutcome.DENIED,
            allowed=False,
            violations=violations,
            policy_version=policy.version,
            reason=reason,
        )
    if mode is Mode.SUPERVISED:
        return Decision(
            outcome=DecisionOutcome.PENDING_APPROVAL,
            allowed=False,
            requires_approval=True,
            policy_version=policy.version,
            reason="SUPERVISED mode: waiting for an operator to approve",
        )
    return Decision(
        outcome=DecisionOutcome.ALLOWED,
        allowed=True,
        policy_version=policy.version,
        reason="allowed by policy",
    )


class Validator:
    def __init__(
        self,
        store: GovernanceStore,
        log: AuditLog,
        lock: asyncio.Lock,
        *,
        budgets: Budgets,
        approvals: Approvals,
        modes: Modes,
        policy: Callable[[], Policy],
    ) -> None:
        self._store = store
        self._log = log
        self._lock = lock
        self._budgets = budgets
        self._approvals = approvals
        self._modes = modes
        self._policy = policy
        self._committed = GroupCommit(store.commit)  # after the audit (the store waits)

    async def validate(self, call: ToolCall, *, wait_seconds: float = 0.0) -> Decision:
        if call.invalid_reason:
            return await self._record_invalid(call)
        digest = params_digest(call.parameters)
        # LOCKED refuses even a replay of an earlier ALLOWED decision.
        if not call.dry_run and call.request_id and self._modes.mode is not Mode.LOCKED:
            earlier = await self._earlier_decision(call, digest)
            if earlier is not None:
                return await self._approvals.wait(earlier, digest, wait_seconds)
        if call.dry_run:  # counts nothing: no lock, and its audit shares group commits
            with self._log.expecting():
                decision = await self._decide(call, digest)
            await self._log.durable()
            return decision
        with self._log.expecting():
            async with self._lock:
                if call.request_id and self._modes.mode is not Mode.LOCKED:
                    earlier = await self._earlier_decision(call, digest)
                    if earlier is not None:
                        return earlier
                decision = await self._decide(call, digest)
        # Outside the lock: the next decision may go ahead (it sees this one's uncommitted
        # rows on the same connection) while this one waits for its group's commit.
        await self._committed.wait()
        return await self._approvals.wait(decision, digest, wait_seconds)

    async def _record_invalid(self, call: ToolCall) -> Decision:
        """A call another service refused as malformed: audited as a denial."""
        reason = call.invalid_reason[:2000]
        version = self._policy().version
        record = await self._log.append(
            caller=call.caller,
            action="invalid_request",
            tool=call.tool,
            parameters=call.parameters,
            decision=DecisionOutcome.DENIED,
            outcome=f"invalid: {reason}",
            policy_version=version,
            detail=f"request_id={call.request_id}",
        )
        return Decision(
            outcome=DecisionOutcome.DENIED,
            allowed=False,
            policy_version=version,
            reason=f"invalid request: {reason}",
            audit_sequence=record.sequence,
        )

    async def _earlier_decision(self, call: ToolCall, digest: str) -> Decision | None:
        """The decision taken earlier under this id for these very parameters (a replay,
        audited with their digest), None if there is none; refused (audited) if it was
        taken for other parameters or another tool."""
        bound = await self._store.bound_decision(call.caller, call.asked_by, call.request_id)
        if bound is None:
            return None
        decision = bound.decision
        if bound.tool != call.tool.value or not hmac.compare_digest(bound.params_digest, digest):
            await self._log.append(
                caller=call.caller,
                action="validate_refused",
                tool=call.tool,
                parameters=call.parameters,
                decision=DecisionOutcome.DENIED,
                outcome="request_id reused with other parameters",
                policy_version=self._policy().version,
                detail=f"request_id={call.request_id}; via={call.asked_by}; decided for "
                f"{bound.tool} {bound.params_digest} at audit record {decision.audit_sequence}",
            )
            raise FailedPreconditionError(
                f"request_id {call.request_id!r} was already decided for other parameters "
                f"(audit record {decision.audit_sequence}); a new call needs a new request_id",
                field="request_id",
            )
        if decision.pending_request_id:
            decision = await self._approvals.current(decision, digest)
        # The replay is on record; the answer stays the first one (same audit_sequence).
        await self._log.append(
            caller=call.caller,
            action="validate_replay",
            tool=call.tool,
            parameters=call.parameters,
            decision=decision.outcome,
            outcome=decision.reason[:2000],
            policy_version=self._policy().version,
            detail=f"request_id={call.request_id}; via={call.asked_by}; first decided at "
            f"audit record {decision.audit_sequence}",
        )
        return decision

    async def _violations(self, call: ToolCall, policy: Policy) -> tuple[list[Violation], float]:
        """Every rule the call breaks, and the GPU-hours it would cost."""
        violations = [
            Violation(
                field=v.field,
                constraint=v.constraint,
                actual=v.actual,
                suggested=v.suggested,
                kind=v.kind,
            )
            for v in policy.evaluate(call.tool, call.parameters)
        ]
        try:
            hours = estimated_gpu_hours(call.tool, call.parameters)
        except MalformedParameterError as exc:
            hours = 0.0
            if all(v.field != exc.violation.field for v in violations):
                violations.append(exc.violation)
        violations += await self._budgets.violations(
            caller=call.caller,
            cycle_id=call.cycle_id,
            parameters=call.parameters,
            hours=hours,
            limits=policy.limits(call.caller),
            count=not call.dry_run,
        )
        return violations, hours

    async def _decide(self, call: ToolCall, digest: str) -> Decision:
        policy = self._policy()
        violations, hours = await self._violations(call, policy)
        locked = self._modes.mode is Mode.LOCKED
        decision = _verdict(policy, violations, self._modes.mode, reads_only=read_only(call))
        if call.dry_run:  # the caller waits for its record to be durable
            record = self._log.append_nowait(
                caller=call.caller,
                action="validate_dry_run",
                tool=call.tool,
                parameters=call.parameters,
                decision=decision.outcome,
                outcome="checked",
                policy_version=policy.version,
                detail=decision.reason,
            )
            return decision.model_copy(update={"audit_sequence": record.sequence})
        if decision.outcome is DecisionOutcome.PENDING_APPROVAL:
            pending_id = await self._approvals.add(
                caller=call.caller,
                request_id=call.request_id,
                tool=call.tool,
                parameters=call.parameters,
                cycle_id=call.cycle_id,
                gpu_hours=hours,
                digest=digest,
            )
            decision = decision.model_copy(update={"pending_request_id": pending_id})
        elif decision.allowed and hours:
            await self._budgets.charge(call.caller, call.cycle_id, hours)
        record = self._log.append_nowait(  # committed with the decision, out of the lock
            caller=call.caller,
            action="validate",
            tool=call.tool,
            parameters=call.parameters,
            decision=decision.outcome,
            outcome="; ".join(f"{v.field}: {v.constraint}" for v in violations)[:2000]
            or decision.reason,
            policy_version=policy.version,
            detail=f"request_id={call.request_id}; via={call.asked_by}",
        )
        decision = decision.model_copy(update={"audit_sequence": record.sequence})
        # A LOCKED denial is not bound to the id: once unlocked, the call is decided afresh.
        if call.request_id and not locked:
            await self._store.bind_decision(
                call.caller,
                call.asked_by,
                call.request_id,
                tool=call.tool,
                digest=digest,
                decision=decision,
            )
        return decision
