"""Digests of what a caller asked for, so an id can be bound to its exact body.

A decision, an approval or an idempotent reply is stored under a request id together with
the digest of the parameters it was given for; a later call under the same id with other
parameters is refused instead of inheriting the earlier answer.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from google.protobuf.message import Message


def _plain(value: Any) -> Any:
    """JSON-safe and canonical: floats that are integers compare equal to the integer
    (a Struct carries every number as a double), non-finite floats as strings."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return repr(value)
        return int(value) if value.is_integer() and abs(value) < 2**53 else value
    return str(value)


def canonical_json(value: Any) -> bytes:
    return json.dumps(
        _plain(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode()


def params_digest(value: Any) -> str:
    """SHA-256 of the canonical JSON of ``value`` (hex)."""
    return hashlib.sha256(canonical_json(value)).hexdigest()


def message_digest(message: Message, *, ignore: tuple[str, ...] = ("request_id",)) -> str:
    """SHA-256 of a request's deterministic encoding without the fields in ``ignore``."""
    copy = type(message)()
    copy.CopyFrom(message)
    for name in ignore:
        if name in copy.DESCRIPTOR.fields_by_name:
            copy.ClearField(name)
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()
