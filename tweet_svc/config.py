"""tweet_svc settings, from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from common.config import CommonConfig, env_float, env_int, env_str, graph_target, load_common
from common.limits import Limit
from common.pagination import DEFAULT_TOKEN_KEY_FILE, DEFAULT_TOKEN_TTL_SECONDS

DEFAULT_PORT = 50061


@dataclass(frozen=True)
class TweetConfig:
    common: CommonConfig
    # graph_svc, for author usernames (gRPC target; round robin over instances).
    graph_target: str
    # How long a like may wait for Kafka's acknowledgement before failing with 503.
    like_ack_timeout_ms: int
    # How long a tweet body stays cached in Redis (bodies never change).
    tweet_cache_seconds: float
    like_count_cache_seconds: float
    # How long an author's cached recent tweet ids live (counted from creation).
    author_recent_cache_seconds: float
    # Like worker: most events applied per batch, and how long to wait to fill one.
    like_batch_size: int
    like_batch_wait_ms: int
    # Per user per window (one counter each in shared Redis); likes and unlikes count together.
    post_limit: Limit
    like_limit: Limit
    # Secret (its file's bytes, at least 32) that seals page tokens, shared by every
    # instance of every service; and how long a page token is honoured.
    page_token_key_file: Path
    page_token_ttl_seconds: int


def load(env: Mapping[str, str] = os.environ) -> TweetConfig:
    return TweetConfig(
        common=load_common(env, "tweet_svc", DEFAULT_PORT),
        graph_target=graph_target(env),
        # Under the edge's 2.5 s per try of a write (envoy/render.py) with librdkafka's
        # timeout scan (about a second) on top: a like that waits longer is cut off there,
        # sent again, and a second long wait ends in a 504, not this 503.
        like_ack_timeout_ms=env_int(env, "CHIRP_LIKE_ACK_TIMEOUT_MS", 1500, minimum=100),
        tweet_cache_seconds=env_float(env, "CHIRP_TWEET_CACHE_SECONDS", 300.0),
        like_count_cache_seconds=env_float(env, "CHIRP_LIKE_COUNT_CACHE_SECONDS", 30.0),
        author_recent_cache_seconds=env_float(env, "CHIRP_AUTHOR_RECENT_CACHE_SECONDS", 30.0),
        like_batch_size=env_int(env, "CHIRP_LIKE_BATCH_SIZE", 500, minimum=1),
        like_batch_wait_ms=env_int(env, "CHIRP_LIKE_BATCH_WAIT_MS", 200, minimum=1),
        post_limit=Limit(env_int(env, "CHIRP_LIMIT_POSTS", 300), _limit_window(env)),
        like_limit=Limit(env_int(env, "CHIRP_LIMIT_LIKES", 1000), _limit_window(env)),
        page_token_key_file=Path(env_str(env, "CHIRP_PAGE_TOKEN_KEY_FILE", DEFAULT_TOKEN_KEY_FILE)),
        page_token_ttl_seconds=env_int(env, "CHIRP_PAGE_TOKEN_TTL_SECONDS", DEFAULT_TOKEN_TTL_SECONDS, minimum=1),
    )


def _limit_window(env: Mapping[str, str]) -> float:
    return env_float(env, "CHIRP_LIMIT_WINDOW_SECONDS", 300.0, minimum=1.0)
