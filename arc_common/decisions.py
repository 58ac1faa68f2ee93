"""Turning a governance Decision that refuses a call into the error the caller gets."""

from __future__ import annotations

from arc_common.errors import (
    ArcError,
    InvalidArgumentError,
    PermissionDeniedError,
    ResourceExhaustedError,
)
from arc_common.models import Decision, Tool, Violation


def is_quota(violation: Violation) -> bool:
    """Budget, concurrency and rate limits: wait or shrink, rather than fix the request."""
    return violation.field in {"rate", "concurrent_jobs"} or violation.constraint.startswith(
        "GPU-hour budget"
    )


def describe(decision: Decision) -> str:
    """Every violation, with the value that would pass, in one line an agent can act on."""
    parts = [
        f"{v.field} must be {v.constraint} (got {v.actual}"
        + (f"; try {v.suggested})" if v.suggested else ")")
        for v in decision.violations
    ]
    return "; ".join(parts) if parts else decision.reason


MALFORMED = (
    "must be finite",
    "must be a number",
    "must be within bounds",
    "must be an object",
    "must be a list",
)


def denial_error(tool: Tool, decision: Decision) -> ArcError:
    """INVALID_ARGUMENT for malformed values (NaN, infinities, text for numbers),
    RESOURCE_EXHAUSTED when only quotas refuse, PERMISSION_DENIED otherwise. The decision
    is in the audit log either way."""
    message = f"{tool.value} denied by policy {decision.policy_version}: {describe(decision)}"
    malformed = [v for v in decision.violations if v.constraint in MALFORMED]
    if malformed:
        return InvalidArgumentError(message, field=malformed[0].field)
    if decision.violations and all(is_quota(v) for v in decision.violations):
        return ResourceExhaustedError(message, field=decision.violations[0].field)
    field = decision.violations[0].field if decision.violations else None
    return PermissionDeniedError(message, field=field)
