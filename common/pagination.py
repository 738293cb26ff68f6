"""AIP-158 page sizes and opaque page tokens."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from common.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100


def page_size(requested: int, default: int = DEFAULT_PAGE_SIZE, maximum: int = MAX_PAGE_SIZE) -> int:
    if requested < 0:
        raise InvalidArgument("page_size must not be negative", field="page_size")
    if requested == 0:
        return default
    return min(requested, maximum)


def encode_token(cursor: dict[str, Any]) -> str:
    raw = json.dumps(cursor, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_token(token: str, kind: str) -> dict[str, Any] | None:
    """The cursor inside a token made by encode_token for this `kind` of list."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        cursor = json.loads(raw)
    except (binascii.Error, ValueError):
        raise InvalidArgument("page_token is not valid", field="page_token") from None
    if not isinstance(cursor, dict) or cursor.get("k") != kind:
        raise InvalidArgument("page_token is not valid", field="page_token")
    return cursor
