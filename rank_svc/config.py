"""rank_svc settings, from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from common.config import CommonConfig, ConfigError, env_float, env_int, graph_target, load_common, tweet_target
from rank_svc.store import DEFAULT_TALLY_SHARDS, MAX_TALLY_SHARDS

DEFAULT_PORT = 50081


@dataclass(frozen=True)
class RankConfig:
    common: CommonConfig
    # How often the trending list is recomputed.
    interval_seconds: int
    # Score: half-life of a like, hours of likes considered, weight of followers.
    half_life_hours: float
    window_hours: int
    follower_weight: float
    # The tallies' shards of tweets, each one Redis Cluster slot (rank_svc/store.py).
    tally_shards: int
    graph_target: str
    tweet_target: str


def load(env: Mapping[str, str] = os.environ) -> RankConfig:
    return RankConfig(
        common=load_common(env, "rank_svc", DEFAULT_PORT),
        interval_seconds=env_int(env, "CHIRP_RANK_INTERVAL_SECONDS", 60, minimum=1),
        half_life_hours=env_float(env, "CHIRP_RANK_HALF_LIFE_HOURS", 6.0, minimum=0.1),
        window_hours=env_int(env, "CHIRP_RANK_WINDOW_HOURS", 48, minimum=1),
        follower_weight=env_float(env, "CHIRP_RANK_FOLLOWER_WEIGHT", 0.25),
        tally_shards=_tally_shards(env),
        graph_target=graph_target(env),
        tweet_target=tweet_target(env),
    )


def _tally_shards(env: Mapping[str, str]) -> int:
    shards = env_int(env, "CHIRP_RANK_TALLY_SHARDS", DEFAULT_TALLY_SHARDS, minimum=1)
    if shards > MAX_TALLY_SHARDS:
        raise ConfigError(f"CHIRP_RANK_TALLY_SHARDS must be at most {MAX_TALLY_SHARDS}, got {shards}")
    return shards
