"""Governance's check of a job, the same for every kind: the kind names the tool and its
parameters."""

from __future__ import annotations

import logging
from typing import Any

from arc_common.decisions import allowed, denial_error, tool_request_id
from arc_common.errors import ArcError
from arc_common.models import Decision, DecisionOutcome, ExperimentSpec, Tool
from services.scheduler.kinds import JobKind
from services.scheduler.ports import GovernanceClient

logger = logging.getLogger(__name__)


class GovernanceGate:
    def __init__(self, governance: GovernanceClient | None) -> None:
        self._governance = governance
        self.enabled = governance is not None
        # The policy's sealed datasets as of the last decision (every decision carries them).
        self.sealed: list[str] = []

    async def check(
        self,
        kind: JobKind,
        spec: ExperimentSpec,
        payload: dict[str, Any],
        *,
        caller: str,
        dry_run: bool,
        request_id: str = "",
    ) -> Decision:
        """The decision (ALLOWED without governance); a denial is raised as its error."""
        if self._governance is None:
            return Decision(outcome=DecisionOutcome.ALLOWED, allowed=True)
        parameters, cycle_id = kind.governance_request(spec, payload)
        decision = await self._governance.validate(
            kind.tool,
            parameters,
            dry_run=dry_run,
            request_id=request_id,
            on_behalf_of=caller,
            cycle_id=cycle_id,
        )
        self.sealed = list(decision.sealed_test_datasets)
        if decision.outcome is DecisionOutcome.DENIED:
            raise denial_error(kind.tool, decision)
        if decision.outcome is None:
            decision = decision.model_copy(update={"outcome": DecisionOutcome.ALLOWED})
        return decision

    async def call(
        self, tool: Tool, parameters: dict[str, Any], *, caller: str, request_id: str
    ) -> Decision:
        """A governed call that is not a job (creating a sweep): allowed, or the error to
        answer with (denied, or waiting for an operator's approval)."""
        if self._governance is None:
            return Decision(outcome=DecisionOutcome.ALLOWED, allowed=True)
        decision = await self._governance.validate(
            tool,
            parameters,
            dry_run=False,
            request_id=tool_request_id(tool, request_id),
            on_behalf_of=caller,
        )
        return allowed(tool, decision)

    async def audit_invalid(
        self, tool: Tool, parameters: dict[str, Any], reason: str, *, caller: str
    ) -> None:
        """Record a refused malformed request in governance's audit log (best effort)."""
        if self._governance is None:
            return
        try:
            await self._governance.validate(
                tool, parameters, dry_run=True, on_behalf_of=caller, invalid_reason=reason
            )
        except ArcError as exc:
            logger.warning("could not audit an invalid request: %s", exc)
