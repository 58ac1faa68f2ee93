"""Turning a governance Decision that refuses a call into the error the caller gets."""

from __future__ import annotations

from arc_common.errors import (
    ArcError,
    InvalidArgumentError,
    PermissionDeniedError,
    ResourceExhaustedError,
)
from arc_common.models import Decision, Tool, Violation, ViolationKind

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
