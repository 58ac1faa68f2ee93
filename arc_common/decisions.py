"""Turning a governance Decision that refuses a call into the error the caller gets."""

from __future__ import annotations

from arc_common.errors import ArcError, PermissionDeniedError, ResourceExhaustedError
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


def denial_error(tool: Tool, decision: Decision) -> ArcError:
    """RESOURCE_EXHAUSTED when only quotas refuse; PERMISSION_DENIED otherwise."""
    message = f"{tool.value} denied by policy {decision.policy_version}: {describe(decision)}"
    if decision.violations and all(is_quota(v) for v in decision.violations):
        return ResourceExhaustedError(message, field=decision.violations[0].field)
    field = decision.violations[0].field if decision.violations else None
    return PermissionDeniedError(message, field=field)
