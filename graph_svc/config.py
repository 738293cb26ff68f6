"""graph_svc settings, from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from common.config import CommonConfig, env_float, env_int, env_str, load_common
from common.limits import Limit, LoginLimits
from common.pagination import DEFAULT_TOKEN_KEY_FILE, DEFAULT_TOKEN_TTL_SECONDS

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
    # Access tokens are checked only at the edge, so a revoked session's access token
    # works until it expires: keep this short. Refresh tokens (graph_svc/sessions.py)
    # last longer, and every refresh checks the session is still live.
    token_ttl_seconds: int
    refresh_ttl_seconds: int
    # Accounts one ListFollowingIds call lists before it says "truncated" (the
    # read path then asks about specific accounts).
    following_list_limit: int
    # Follows and unfollows per user per window (one counter in shared Redis).
    follow_limit: Limit
    # Failed logins per window: per account from one address, per account, per address.
    login_limits: LoginLimits
    # Sign-ups per client address per window.
    signup_limit: Limit
    # Secret (its file's bytes, at least 32) that seals page tokens, shared by every
    # instance of every service; and how long a page token is honoured.
    page_token_key_file: Path
    page_token_ttl_seconds: int


def load(env: Mapping[str, str] = os.environ) -> GraphConfig:
    return GraphConfig(
        common=load_common(env, "graph_svc", DEFAULT_PORT),
        argon2_memory_kib=env_int(env, "CHIRP_ARGON2_MEMORY_KIB", 19456, minimum=19456),
        argon2_time_cost=env_int(env, "CHIRP_ARGON2_TIME_COST", 2, minimum=2),
        argon2_parallelism=env_int(env, "CHIRP_ARGON2_PARALLELISM", 1, minimum=1),
        token_key_file=Path(env_str(env, "CHIRP_TOKEN_KEY_FILE", ".state/keys/token_ed25519.pem")),
        token_ttl_seconds=env_int(env, "CHIRP_TOKEN_TTL_SECONDS", 900, minimum=60),
        refresh_ttl_seconds=env_int(env, "CHIRP_REFRESH_TTL_SECONDS", 30 * 24 * 3600, minimum=60),
        following_list_limit=env_int(env, "CHIRP_FOLLOWING_LIST_LIMIT", 10_000, minimum=1),
        follow_limit=Limit(
            env_int(env, "CHIRP_LIMIT_FOLLOWS", 400),
            env_float(env, "CHIRP_LIMIT_WINDOW_SECONDS", 300.0, minimum=1.0),
        ),
        login_limits=LoginLimits(
            window_seconds=env_float(env, "CHIRP_LIMIT_LOGIN_WINDOW_SECONDS", 300.0, minimum=1.0),
            per_account_address=env_int(env, "CHIRP_LIMIT_LOGIN_FAILURES", 5),
            per_account=env_int(env, "CHIRP_LIMIT_LOGIN_ACCOUNT_FAILURES", 50),
            per_address=env_int(env, "CHIRP_LIMIT_LOGIN_ADDRESS_FAILURES", 200),
        ),
        signup_limit=Limit(
            env_int(env, "CHIRP_LIMIT_SIGNUPS", 50),
            env_float(env, "CHIRP_LIMIT_SIGNUP_WINDOW_SECONDS", 3600.0, minimum=1.0),
        ),
        page_token_key_file=Path(env_str(env, "CHIRP_PAGE_TOKEN_KEY_FILE", DEFAULT_TOKEN_KEY_FILE)),
        page_token_ttl_seconds=env_int(env, "CHIRP_PAGE_TOKEN_TTL_SECONDS", DEFAULT_TOKEN_TTL_SECONDS, minimum=1),
    )
