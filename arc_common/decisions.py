"""Turning a governance Decision that refuses a call into the error the caller gets."""

from __future__ import annotations

from arc_common.errors import (
    ArcError,
    FailedPreconditionError,
    InvalidArgumentError,
    PermissionDeniedError,
    ResourceExhaustedError,
)
from arc_common.models import Decision, DecisionOutcome, Tool, Violation, ViolationKind

# Budget, concurrency and rate limits: wait or shrink, rather than fix the request.
_EXHAUSTED = frozenset({ViolationKind.QUOTA, ViolationKind.BUDGET})


def kind_of(violation: Violation) -> ViolationKind:
    """The violation's kind; a governance older than the field sends none: POLICY."""
    return violation.kind or ViolationKind.POLICY


def is_quota(violation: Violation) -> bool:
    return kind_of(violation) in _EXHAUSTED


def describe(decision: Decision) -> str:
    """Every violation, with the value that would pass, in one line an agent can act on."""
    parts = [
        f"{v.field} must be {v.constraint} (got {v.actual}"
        + (f"; try {v.suggested})" if v.suggested else ")")
        for v in decision.violations
    ]
    return "; ".join(parts) if parts else decision.reason


def denial_error(tool: Tool, decision: Decision) -> ArcError:
    """INVALID_ARGUMENT when a value is malformed (NaN, infinities, text for numbers),
    RESOURCE_EXHAUSTED when only quotas and budgets refuse, PERMISSION_DENIED otherwise.
    The decision is in the audit log either way."""
    message = f"{tool.value} denied by policy {decision.policy_version}: {describe(decision)}"
    violations = decision.violations
    malformed = [v for v in violations if kind_of(v) is ViolationKind.MALFORMED]
    if malformed:
        return InvalidArgumentError(message, field=malformed[0].field)
    if violations and all(is_quota(v) for v in violations):
        return ResourceExhaustedError(message, field=violations[0].field)
    field = violations[0].field if violations else None
    return PermissionDeniedError(message, field=field)


def tool_request_id(tool: Tool, request_id: str) -> str:
    """A tool call's request id at governance: namespaced by the tool."""
    return f"{tool.value}:{request_id}" if request_id else ""


def allowed(tool: Tool, decision: Decision) -> Decision:
    """The decision when it allows the call; otherwise the error to answer with: denied
    (``denial_error``), or still waiting for an operator."""
    if decision.outcome is DecisionOutcome.DENIED:
        raise denial_error(tool, decision)
    if decision.outcome is DecisionOutcome.PENDING_APPROVAL:
        raise FailedPreconditionError(
            f"{tool.value} waits for an operator's approval (governance pending request "
            f"{decision.pending_request_id}); retry with the same request_id once approved"
        )
    return decision
