"""tweet_svc settings, from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from common.config import CommonConfig, env_float, env_int, graph_target, load_common

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


def load(env: Mapping[str, str] = os.environ) -> TweetConfig:
    return TweetConfig(
        common=load_common(env, "tweet_svc", DEFAULT_PORT),
        graph_target=graph_target(env),
        like_ack_timeout_ms=env_int(env, "CHIRP_LIKE_ACK_TIMEOUT_MS", 3000, minimum=100),
        tweet_cache_seconds=env_float(env, "CHIRP_TWEET_CACHE_SECONDS", 300.0),
        like_count_cache_seconds=env_float(env, "CHIRP_LIKE_COUNT_CACHE_SECONDS", 30.0),
        author_recent_cache_seconds=env_float(env, "CHIRP_AUTHOR_RECENT_CACHE_SECONDS", 30.0),
        like_batch_size=env_int(env, "CHIRP_LIKE_BATCH_SIZE", 500, minimum=1),
        like_batch_wait_ms=env_int(env, "CHIRP_LIKE_BATCH_WAIT_MS", 200, minimum=1),
    )
