"""One error tree for the whole engine.

Domain code raises these; one table (``arc_common.status``) maps them to gRPC status
codes, and the client maps the codes back. Nothing in here imports grpc.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """A gRPC status code by name, without importing grpc.

    The values are the names of ``grpc.StatusCode`` members, so ``Status(code.name)`` and
    ``grpc.StatusCode[status]`` convert both ways.
    """

    OK = "OK"
    CANCELLED = "CANCELLED"
    UNKNOWN = "UNKNOWN"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    ABORTED = "ABORTED"
    OUT_OF_RANGE = "OUT_OF_RANGE"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    INTERNAL = "INTERNAL"
    UNAVAILABLE = "UNAVAILABLE"
    DATA_LOSS = "DATA_LOSS"
    UNAUTHENTICATED = "UNAUTHENTICATED"


class ArcError(Exception):
    """Root of every error the engine raises on purpose.

    ``field`` names the offending input (a dotted path such as
    ``hyperparameters.optimizer.learning_rate``) when one is to blame; ``status`` is the
    gRPC status code when the error came back from a remote call.
    """

    def __init__(
        self, message: str, *, field: str | None = None, status: Status | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.status = status

    def __str__(self) -> str:
        if self.field and not self.message.startswith(self.field):
            return f"{self.field}: {self.message}"
        return self.message


class NotFoundError(ArcError):
    """The named resource does not exist."""


class AlreadyExistsError(ArcError):
    """A resource with that id exists already."""


class InvalidArgumentError(ArcError):
    """The request is malformed or a value is out of bounds.

    ``violations`` lists every (field path, problem) found, so a caller can fix all at once.
    """

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        status: Status | None = None,
        violations: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(message, field=field, status=status)
        self.violations = violations or ([(field, message)] if field else [])


class FailedPreconditionError(ArcError):
    """The system is not in a state that allows the call (illegal transition, stale token)."""


class ResourceExhaustedError(ArcError):
    """No capacity: no free GPU, over budget, over quota, message too large."""


class PermissionDeniedError(ArcError):
    """The policy or the caller's role forbids the call."""


class UnauthenticatedError(ArcError):
    """Missing, unknown or malformed credentials."""


class UnavailableError(ArcError):
    """A dependency is down; retrying later may succeed."""


class DeadlineExceededError(ArcError):
    """The call did not finish within its deadline."""


class AbortedError(ArcError):
    """A concurrency conflict; retry the whole operation."""
