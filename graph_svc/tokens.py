"""Signed, expiring access tokens (EdDSA JWTs) that Envoy verifies at the edge.

Claims: iss, aud, sub (the user id), iat, exp, and sid: the session (refresh
chain, graph_svc/sessions.py) the token was issued in. The edge passes `sub`
and `sid` on as metadata (common/identity.py), so logging out knows which
session to end. Both are strings: ids are 64-bit, beyond what every JSON
reader keeps exact as a number.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common.jwk import key_id

ISSUER = "chirp"
AUDIENCE = "chirp-api"


class TokenSigner:
    def __init__(self, private_key_pem: bytes, ttl: timedelta) -> None:
        key = serialization.load_pem_private_key(private_key_pem, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("the token signing key must be an Ed25519 private key")
        self._key = key
        raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self._kid = key_id(raw)
        self._ttl = ttl

    @classmethod
    def from_file(cls, path: Path, ttl: timedelta) -> TokenSigner:
        return cls(path.read_bytes(), ttl)

    def issue(self, user_id: int, session_id: int, now: datetime) -> tuple[str, datetime]:
        expires = now + self._ttl
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": str(user_id),
            "sid": str(session_id),
            "iat": int(now.timestamp()),
            "exp": int(expires.timestamp()),
        }
        token = jwt.encode(claims, self._key, algorithm="EdDSA", headers={"kid": self._kid})
        return token, expires.replace(microsecond=0)
