"""The server guard: request id, authentication, authorization, error mapping.

Every RPC of every service passes through here, so servicers stay thin: they raise domain
errors and this maps them with the one table in ``arc_common.status``. Unknown exceptions
are logged with their traceback and answered INTERNAL without leaking details.

The guard wraps each method's handler once, when the service is registered
(``GuardedRegistrar``), instead of being a ``grpc.aio`` server interceptor: an interceptor
runs a chain of coroutines and builds a new handler on every call, which costs event-loop
CPU on every RPC for the same checks (docs/decisions/0001-guard-not-interceptor.md).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
from grpc import aio

from arc_common import auth
from arc_common.errors import ArcError, InvalidArgumentError
from arc_common.logs import request_id_var
from arc_common.status import status_for

logger = logging.getLogger(__name__)

REQUEST_ID_KEY = "x-request-id"


def _metadata(context: aio.ServicerContext[Any, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if isinstance(value, str):
            out[key.lower()] = value
    return out


class Guard:
    """Auth and the error table around a method's handler."""

    def __init__(self, tokens: auth.TokenStore | None) -> None:
        # tokens=None disables authentication (only for in-process unit tests of servicers).
        self._tokens = tokens

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """``handler`` of ``method`` (``/package.Service/Method``) behind the checks;
        health and reflection stay open."""
        if auth.is_open_method(method):
            return handler
        # The body reaches the wrapper as bytes and is parsed after authentication: a caller
        # without a token learns nothing about what the service parses, and an undecodable
        # body is INVALID_ARGUMENT rather than grpc's UNKNOWN.
        decode = handler.request_deserializer
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(method, handler.unary_unary, decode),
                request_deserializer=None,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(method, handler.unary_stream, decode),
                request_deserializer=None,
                response_serializer=handler.response_serializer,
            )
        # Client- and bidi-streaming RPCs are not part of our contracts: refused, not let
        # through unchecked.
        raise ValueError(f"{method}: only unary and server-streaming methods can be guarded")

    def _enter(
        self,
        method: str,
        context: aio.ServicerContext[Any, Any],
        raw: Any,
        decode: Callable[[bytes], Any] | None,
    ) -> Any:
        """Authenticate and authorize, then parse the request body."""
        self._authenticate(method, context)
        if decode is None or not isinstance(raw, bytes):
            return raw
        try:
            return decode(raw)
        except Exception as exc:  # DecodeError, or RecursionError on absurd nesting
            raise InvalidArgumentError(
                f"the request body is not a valid {method.rsplit('/', 1)[-1]} request "
                f"({type(exc).__name__})",
                field="request",
            ) from None

    def _authenticate(self, method: str, context: aio.ServicerContext[Any, Any]) -> None:
        metadata = _metadata(context)
        request_id_var.set(metadata.get(REQUEST_ID_KEY) or uuid.uuid4().hex[:16])
        if self._tokens is None:
            auth.current_identity.set(auth.Identity(name="test", role=auth.Role.OPERATOR))
            return
        token = auth.parse_bearer(metadata.get("authorization"))
        identity = self._tokens.authenticate(token)
        auth.authorize(method, identity)
        auth.current_identity.set(identity)

    async def _fail(
        self, method: str, context: aio.ServicerContext[Any, Any], exc: BaseException
    ) -> None:
        if isinstance(exc, ArcError):
            code = status_for(exc)
            logger.info("%s -> %s: %s", method, code.name, exc)
            await context.abort(code, str(exc))
        if isinstance(exc, NotImplementedError):  # the generated base servicer's default
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented")
        logger.exception("%s failed unexpectedly", method, exc_info=exc)
        await context.abort(
            grpc.StatusCode.INTERNAL, f"internal error (request id {request_id_var.get()})"
        )

    def _wrap_unary(
        self,
        method: str,
        behavior: Callable[[Any, Any], Awaitable[Any]],
        decode: Callable[[bytes], Any] | None,
    ) -> Callable[[Any, aio.ServicerContext[Any, Any]], Awaitable[Any]]:
        async def wrapper(raw: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            try:
                request = self._enter(method, context, raw, decode)
                return await behavior(request, context)
            except aio.AbortError:
                raise
            except Exception as exc:
                await self._fail(method, context, exc)
                raise  # pragma: no cover - abort always raises

        return wrapper

    def _wrap_stream(
        self,
        method: str,
        behavior: Callable[[Any, Any], AsyncIterator[Any]],
        decode: Callable[[bytes], Any] | None,
    ) -> Callable[[Any, aio.ServicerContext[Any, Any]], AsyncIterator[Any]]:
        async def wrapper(raw: Any, context: aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            try:
                request = self._enter(method, context, raw, decode)
                async for item in behavior(request, context):
                    yield item
            except aio.AbortError:
                raise
            except Exception as exc:
                await self._fail(method, context, exc)

        return wrapper


class _GuardedGenericHandler(grpc.GenericRpcHandler):  # type: ignore[misc]
    """A generic handler whose methods answer behind the guard (each wrapped once)."""

    def __init__(self, inner: grpc.GenericRpcHandler, guard: Guard) -> None:
        self._inner = inner
        self._guard = guard
        self._wrapped: dict[str, grpc.RpcMethodHandler | None] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        method: str = handler_call_details.method
        if method not in self._wrapped:
            handler = self._inner.service(handler_call_details)
            self._wrapped[method] = None if handler is None else self._guard.wrap(method, handler)
        return self._wrapped[method]


class GuardedRegistrar:
    """Stands in for the server when a generated ``add_*Servicer_to_server`` (or health,
    or reflection) registers its methods: each handler reaches the server behind the guard.
    Every service is added through here, so no method is served unchecked."""

    def __init__(self, server: aio.Server, guard: Guard) -> None:
        self._server = server
        self._guard = guard

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(
            [_GuardedGenericHandler(handler, self._guard) for handler in handlers]
        )

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self._server.add_registered_method_handlers(
            service_name,
            {
                name: self._guard.wrap(f"/{service_name}/{name}", handler)
                for name, handler in method_handlers.items()
            },
        )
