"""Offset pagination with opaque page tokens (AIP-158)."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import TypeVar

from arc_common.errors import InvalidArgumentError

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


def encode_token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o:{offset}".encode()).decode()


def decode_token(token: str) -> int:
    if not token:
        return 0
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
        kind, _, value = text.partition(":")
        offset = int(value)
        if kind != "o" or offset < 0:
            raise ValueError(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgumentError(
            "page_token is not a token this server issued", field="page_token"
        ) from exc
    return offset


def page_bounds(page_size: int, page_token: str) -> tuple[int, int]:
    """(offset, limit) from a request's page_size and page_token."""
    if page_size < 0:
        raise InvalidArgumentError(f"page_size must be >= 0 (got {page_size})", field="page_size")
    limit = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    return decode_token(page_token), limit


def paginate(items: Sequence[T], page_size: int, page_token: str) -> tuple[list[T], str]:
    offset, limit = page_bounds(page_size, page_token)
    page = list(items[offset : offset + limit])
    more = offset + limit < len(items)
    return page, encode_token(offset + limit) if more else ""
