"""The server interceptor: request id, authentication, authorization, error mapping.

Every RPC of every service passes through here, so servicers stay thin: they raise domain
errors and this maps them with the one table in ``arc_common.status``. Unknown exceptions
are logged with their traceback and answered INTERNAL without leaking details.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from arc_common import auth
from arc_common.errors import ArcError
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


class ArcServerInterceptor(aio.ServerInterceptor):  # type: ignore[misc]
    """Wraps every handler with auth and the error table."""

    def __init__(self, tokens: auth.TokenStore | None) -> None:
        # tokens=None disables authentication (only for in-process unit tests of servicers).
        self._tokens = tokens

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or auth.is_open_method(method):
            return handler
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(method, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(method, handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # client- and bidi-streaming RPCs are not part of our contracts

    def _enter(self, method: str, context: aio.ServicerContext[Any, Any]) -> None:
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
        self, method: str, behavior: Callable[[Any, Any], Awaitable[Any]]
    ) -> Callable[[Any, aio.ServicerContext[Any, Any]], Awaitable[Any]]:
        async def wrapper(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            try:
                self._enter(method, context)
                return await behavior(request, context)
            except aio.AbortError:
                raise
            except Exception as exc:
                await self._fail(method, context, exc)
                raise  # pragma: no cover - abort always raises

        return wrapper

    def _wrap_stream(
        self, method: str, behavior: Callable[[Any, Any], AsyncIterator[Any]]
    ) -> Callable[[Any, aio.ServicerContext[Any, Any]], AsyncIterator[Any]]:
        async def wrapper(
            request: Any, context: aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            try:
                self._enter(method, context)
                async for item in behavior(request, context):
                    yield item
            except aio.AbortError:
                raise
            except Exception as exc:
                await self._fail(method, context, exc)

        return wrapper
