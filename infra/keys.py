"""The stack's keys: made once into .state/keys/, never committed.

The access-token key pair: graph_svc signs with the Ed25519 private key (EdDSA
JWTs); Envoy verifies with the public key set (JWKS) rendered into its config.

The page-token key: a random secret every service instance shares, so a page
token one instance made (common/pagination.py) is honoured by all of them.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common.jwk import key_id
from common.pagination import KEY_BYTES

PRIVATE_KEY = "token_ed25519.pem"
JWKS = "jwks.json"
PAGE_TOKEN_KEY = "page_token.key"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def ensure_keys(directory: Path) -> tuple[Path, Path]:
    """Create the key pair if missing; returns (private key PEM, JWKS) paths."""
    directory.mkdir(parents=True, exist_ok=True)
    private_path, jwks_path = directory / PRIVATE_KEY, directory / JWKS
    if not private_path.exists():
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
    private = serialization.load_pem_private_key(private_path.read_bytes(), password=None)
    assert isinstance(private, Ed25519PrivateKey)
    public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": _b64(public), "alg": "EdDSA", "use": "sig", "kid": key_id(public)}
    jwks_path.write_text(json.dumps({"keys": [jwk]}))
    return private_path, jwks_path


def ensure_page_token_key(directory: Path) -> Path:
    """Create the page-token secret if missing (random bytes, readable by the owner only); returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / PAGE_TOKEN_KEY
    if path.exists():
        return path
    # Written aside and linked into place: a service starting meanwhile sees no key or
    # the whole key, never a part, and of two racing callers the first one's key stays.
    partial = directory / f".{PAGE_TOKEN_KEY}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(secrets.token_bytes(KEY_BYTES))
        with contextlib.suppress(FileExistsError):
            os.link(partial, path)
    finally:
        partial.unlink()
    return path
