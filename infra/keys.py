"""The access-token key pair: made once into .state/keys/, never committed.

graph_svc signs with the Ed25519 private key (EdDSA JWTs); Envoy verifies with
the public key set (JWKS) rendered into its config.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common.jwk import key_id

PRIVATE_KEY = "token_ed25519.pem"
JWKS = "jwks.json"


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
