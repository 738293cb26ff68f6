"""graph_svc settings, from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from common.config import CommonConfig, env_int, env_str, load_common

DEFAULT_PORT = 50051


@dataclass(frozen=True)
class GraphConfig:
    common: CommonConfig
    # argon2id cost; the defaults are OWASP's minimum (19 MiB, 2 passes, 1 lane).
    argon2_memory_kib: int
    argon2_time_cost: int
    argon2_parallelism: int
    # Ed25519 private key (PEM) that signs access tokens.
    token_key_file: Path
    token_ttl_seconds: int
    # Accounts one ListFollowingIds call lists before it says "truncated" (the
    # read path then asks about specific accounts).
    following_list_limit: int


def load(env: Mapping[str, str] = os.environ) -> GraphConfig:
    return GraphConfig(
        common=load_common(env, "graph_svc", DEFAULT_PORT),
        argon2_memory_kib=env_int(env, "CHIRP_ARGON2_MEMORY_KIB", 19456, minimum=19456),
        argon2_time_cost=env_int(env, "CHIRP_ARGON2_TIME_COST", 2, minimum=2),
        argon2_parallelism=env_int(env, "CHIRP_ARGON2_PARALLELISM", 1, minimum=1),
        token_key_file=Path(env_str(env, "CHIRP_TOKEN_KEY_FILE", ".state/keys/token_ed25519.pem")),
        token_ttl_seconds=env_int(env, "CHIRP_TOKEN_TTL_SECONDS", 3600, minimum=60),
        following_list_limit=env_int(env, "CHIRP_FOLLOWING_LIST_LIMIT", 10_000, minimum=1),
    )
