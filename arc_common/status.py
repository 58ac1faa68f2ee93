"""The one mapping between the error tree and gRPC status codes (both directions)."""

from __future__ import annotations

import grpc

from arc_common import errors

STATUS_BY_ERROR: dict[type[errors.ArcError], grpc.StatusCode] = {
    errors.NotFoundError: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExistsError: grpc.StatusCode.ALREADY_EXISTS,
    errors.InvalidArgumentError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.FailedPreconditionError: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ResourceExhaustedError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.PermissionDeniedError: grpc.StatusCode.PERMISSION_DENIED,
    errors.UnauthenticatedError: grpc.StatusCode.UNAUTHENTICATED,
    errors.UnavailableError: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceededError: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.AbortedError: grpc.StatusCode.ABORTED,
}

ERROR_BY_STATUS: dict[grpc.StatusCode, type[errors.ArcError]] = {
    code: cls for cls, code in STATUS_BY_ERROR.items()
}


def status_for(error: errors.ArcError) -> grpc.StatusCode:
    """The status code for a domain error (the most specific class wins)."""
    for cls in type(error).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return grpc.StatusCode.INTERNAL


def error_from_status(code: grpc.StatusCode, message: str) -> errors.ArcError:
    """The domain error a client raises for a status code it received."""
    cls = ERROR_BY_STATUS.get(code, errors.ArcError)
    return cls(message, status=errors.Status(code.name))
