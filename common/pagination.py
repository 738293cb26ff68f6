"""AIP-158 page sizes and opaque, tamper-proof page tokens.

A page token carries where the next page starts (a few positive int64s, e.g.
the last tweet id shown) and when it expires, sealed with a truncated
HMAC-SHA256 tag under a secret that every instance of every service shares
(CHIRP_PAGE_TOKEN_KEY_FILE), so a token made by one instance is honoured by
any other. The tag also covers the token's scope, the list it continues:
kind and owner ("followers:42", "tweets:7"), and for a private list the
caller ("feed:7" is user 7's own home feed). The scope is not in the token:
the server knows which list it is asked for, so a token of another list, of
another kind or of another user's feed fails the check exactly like an
altered one. Nothing in a token is parsed before its tag checks out, so no
client-made value (Infinity, 2^63, true, a float) ever reaches the code that
reads a page.

Layout, URL-safe base64 without padding (39 characters for one position,
50 for two): version (1 byte) | expiry, Unix seconds (4 bytes) | positions
(8 bytes each, signed big-endian) | tag (16 bytes).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import math
import re
import secrets
import struct
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from common.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100

DEFAULT_TOKEN_KEY_FILE = ".state/keys/page_token.key"
DEFAULT_TOKEN_TTL_SECONDS = 86_400
KEY_BYTES = 32  # the least a key file must hold; HMAC-SHA256 gains nothing from more
INVALID_TOKEN = "page_token is not valid"
EXPIRED_TOKEN = "page_token has expired: list again from the first page"

_VERSION = 1
_HEADER = struct.Struct(">BI")  # version, expiry
_POSITION = struct.Struct(">q")
_TAG_BYTES = 16  # 128 bits: forging one is 2^-128 per try
_MAX_EXPIRY = 2**32 - 1
_INT64_MAX = 2**63 - 1
_MAX_POSITIONS = 4
_MAX_TOKEN_CHARS = math.ceil((_HEADER.size + _POSITION.size * _MAX_POSITIONS + _TAG_BYTES) * 4 / 3)
# Anything longer, or with other characters, is refused before any decoding work.
_TOKEN_SHAPE = re.compile(rf"[A-Za-z0-9_-]{{1,{_MAX_TOKEN_CHARS}}}")


def page_size(
    requested: int, default: int = DEFAULT_PAGE_SIZE, maximum: int = MAX_PAGE_SIZE, field: str = "page_size"
) -> int:
    """`field`: the request field `requested` came from, named in the error."""
    if requested < 0:
        raise InvalidArgument(f"{field} must not be negative", field=field)
    if requested == 0:
        return default
    return min(requested, maximum)


def scope(kind: str, owner: int) -> str:
    """The list a token continues: `kind` of list and whose it is (for a private list, the caller)."""
    return f"{kind}:{owner}"


class PageTokens:
    """Makes and checks the page tokens of every list a service serves."""

    def __init__(
        self, key: bytes, ttl_seconds: int = DEFAULT_TOKEN_TTL_SECONDS, clock: Callable[[], float] = time.time
    ) -> None:
        if len(key) < KEY_BYTES:
            raise ValueError(f"a page token key needs at least {KEY_BYTES} bytes, got {len(key)}")
        if ttl_seconds <= 0:
            raise ValueError(f"page tokens need a positive lifetime, got {ttl_seconds} s")
        self._key = key
        self._ttl = ttl_seconds
        self._clock = clock

    @classmethod
    def from_file(cls, path: Path, ttl_seconds: int = DEFAULT_TOKEN_TTL_SECONDS) -> PageTokens:
        """The file's bytes are the key (infra/keys.py makes 32 random ones); a short file stops the service."""
        try:
            key = path.read_bytes()
        except OSError as exc:
            raise ValueError(f"page token key {path} cannot be read: {exc.strerror}") from None
        return cls(key, ttl_seconds)

    def encode(self, list_scope: str, position: Sequence[int]) -> str:
        if not 0 < len(position) <= _MAX_POSITIONS or not all(_is_position(p) for p in position):
            raise ValueError(f"a page position is 1 to {_MAX_POSITIONS} positive int64s, got {position!r}")
        expiry = min(int(self._clock()) + self._ttl, _MAX_EXPIRY)
        body = _HEADER.pack(_VERSION, expiry) + b"".join(_POSITION.pack(p) for p in position)
        return _b64(body + self._tag(list_scope, body))

    def decode(self, token: str, list_scope: str, size: int) -> tuple[int, ...] | None:
        """The `size` positions in a token this service made for `list_scope`; None for no token.

        Raises InvalidArgument for anything else: altered, of another list or
        caller, expired, or not a token at all."""
        if not token:
            return None
        body = self._verified(token, list_scope, size)
        _, expiry = _HEADER.unpack_from(body)
        if expiry <= self._clock():
            raise InvalidArgument(EXPIRED_TOKEN, field="page_token")
        position = tuple(_POSITION.unpack_from(body, _HEADER.size + _POSITION.size * i)[0] for i in range(size))
        if not all(_is_position(p) for p in position):
            raise _invalid()  # we never sign one: a key shared with something that does
        return position

    def _verified(self, token: str, list_scope: str, size: int) -> bytes:
        if not _TOKEN_SHAPE.fullmatch(token):
            raise _invalid()
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise _invalid() from None
        if _b64(raw) != token:
            raise _invalid()  # unused low bits set: the same bytes spelt another way, so an altered token
        body, tag = raw[:-_TAG_BYTES], raw[-_TAG_BYTES:]
        if len(body) != _HEADER.size + _POSITION.size * size or body[0] != _VERSION:
            raise _invalid()
        if not hmac.compare_digest(tag, self._tag(list_scope, body)):
            raise _invalid()
        return body

    def _tag(self, list_scope: str, body: bytes) -> bytes:
        # The scope is "kind:int" (no NUL), so scope and body cannot run into each other.
        message = list_scope.encode() + b"\0" + body
        return hmac.new(self._key, message, hashlib.sha256).digest()[:_TAG_BYTES]


@functools.cache
def unshared_tokens() -> PageTokens:
    """Tokens under a random key that only this process knows: for tests and tools that
    build a domain object in-process. Services load the shared key file instead, or
    one instance would refuse the tokens another made."""
    return PageTokens(secrets.token_bytes(KEY_BYTES))


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _is_position(value: object) -> bool:
    return type(value) is int and 0 < value <= _INT64_MAX


def _invalid() -> InvalidArgument:
    return InvalidArgument(INVALID_TOKEN, field="page_token")
