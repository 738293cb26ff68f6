"""Key ids shared by the token signer (graph_svc) and the key-set writer (infra)."""

from __future__ import annotations

import hashlib


def key_id(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()[:16]
