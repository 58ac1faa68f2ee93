"""Client channels: the workspace token, a default deadline, keepalive, UNAVAILABLE retries."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

from arc_common.interceptors import REQUEST_ID_KEY
from arc_common.logs import request_id_var
from arc_common.server import KEEPALIVE_OPTIONS

DEFAULT_TIMEOUT_SECONDS = 30.0

# gRPC's own retry machinery: transparent, with backoff, only for UNAVAILABLE.
_RETRY_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{}],
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


def _with_metadata(
    details: aio.ClientCallDetails, token: str | None, timeout: float | None
) -> aio.ClientCallDetails:
    metadata = list(details.metadata or [])
    keys = {key for key, _ in metadata}
    if token and "authorization" not in keys:
        metadata.append(("authorization", f"Bearer {token}"))
    request_id = request_id_var.get()
    if REQUEST_ID_KEY not in keys and request_id != "-":
        metadata.append((REQUEST_ID_KEY, request_id))
    return aio.ClientCallDetails(
        method=details.method,
        timeout=details.timeout if details.timeout is not None else timeout,
        metadata=aio.Metadata(*metadata),
        credentials=details.credentials,
        wait_for_ready=details.wait_for_ready,
    )


class _UnaryUnary(aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, token: str | None, timeout: float | None) -> None:
        self._token = token
        self._timeout = timeout

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(_with_metadata(details, self._token, self._timeout), request)


class _UnaryStream(aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """Streams get the token but no default deadline: a watch may last for hours."""

    def __init__(self, token: str | None) -> None:
        self._token = token

    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], details: aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(_with_metadata(details, self._token, None), request)


def create_channel(
    target: str,
    *,
    token: str | None = None,
    default_timeout: float | None = DEFAULT_TIMEOUT_SECONDS,
    root_certificates: bytes | None = None,
    client_cert_chain: bytes | None = None,
    client_private_key: bytes | None = None,
    max_message_bytes: int = 4 * 1024 * 1024,
) -> aio.Channel:
    """An aio channel to ``target``; TLS when ``root_certificates`` is given (mTLS with a key)."""
    options = [
        ("grpc.service_config", _RETRY_SERVICE_CONFIG),
        ("grpc.enable_retries", 1),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        *KEEPALIVE_OPTIONS,
    ]
    interceptors = [_UnaryUnary(token, default_timeout), _UnaryStream(token)]
    if root_certificates is None:
        return aio.insecure_channel(target, options=options, interceptors=interceptors)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=root_certificates,
        private_key=client_private_key,
        certificate_chain=client_cert_chain,
    )
    return aio.secure_channel(target, credentials, options=options, interceptors=interceptors)


def read_operator_token(home: Path) -> str:
    """The operator token a person's tools use by default."""
    return (home / "auth_token").read_text().strip()
