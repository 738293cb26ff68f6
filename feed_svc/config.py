"""feed_svc settings, from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from common.config import (
    CommonConfig,
    ConfigError,
    env_float,
    env_int,
    env_str,
    graph_target,
    load_common,
    tweet_target,
)
from common.pagination import DEFAULT_TOKEN_KEY_FILE, DEFAULT_TOKEN_TTL_SECONDS

DEFAULT_PORT = 50071


@dataclass(frozen=True)
class FeedConfig:
    common: CommonConfig
    # Authors with at least this many followers are pulled at read time, not
    # pushed. CHIRP_FANOUT_STRATEGY=push|pull turns this into push-to-everyone
    # or pull-everything (for comparing strategies); hybrid is the default.
    celebrity_threshold: int
    # A marked celebrity stops being one only below this many followers (at most the
    # threshold): the band between them is hysteresis, so an account hovering at the
    # threshold does not cross (and backfill its followers) at every follow and unfollow.
    celebrity_demote_below: int
    # Newest entries kept per pushed timeline in Redis.
    timeline_size: int
    # How long a celebrity's recent tweet ids and a user's follow list are cached in Redis.
    celebrity_cache_seconds: float
    following_cache_seconds: float
    graph_target: str
    tweet_target: str
    # Fan-out worker: events per batch, CQL writes in flight at once, and
    # authors (or followers) whose events are applied at the same time.
    fanout_batch_size: int
    fanout_keys_at_once: int
    # A follower who has not read their home feed for this long (days; a fraction is
    # allowed, for tests and benchmarks) is not pushed to; their timeline is rebuilt
    # on their next read (feed_svc/activity.py).
    active_days: float
    # Secret (its file's bytes, at least 32) that seals page tokens, shared by every
    # instance of every service; and how long a page token is honoured.
    page_token_key_file: Path
    page_token_ttl_seconds: int


STRATEGIES = {"hybrid", "push", "pull"}
NEVER = 2**31 - 1


def _threshold(env: Mapping[str, str]) -> int:
    strategy = env_str(env, "CHIRP_FANOUT_STRATEGY", "hybrid").lower()
    if strategy not in STRATEGIES:
        raise ConfigError(f"CHIRP_FANOUT_STRATEGY must be one of {sorted(STRATEGIES)}, got {strategy!r}")
    threshold = env_int(env, "CHIRP_CELEBRITY_THRESHOLD", 10000, minimum=1)
    return {"hybrid": threshold, "push": NEVER, "pull": 0}[strategy]


def _demote_below(env: Mapping[str, str], threshold: int) -> int:
    """CHIRP_CELEBRITY_DEMOTE_BELOW, by default a tenth under the threshold."""
    if threshold in (0, NEVER):  # pull or push: nobody crosses
        return threshold
    demote = env_int(env, "CHIRP_CELEBRITY_DEMOTE_BELOW", threshold - threshold // 10, minimum=1)
    if demote > threshold:
        raise ConfigError(f"CHIRP_CELEBRITY_DEMOTE_BELOW must be at most the threshold ({threshold}), got {demote}")
    return demote


def _active_days(env: Mapping[str, str]) -> float:
    days = env_float(env, "CHIRP_ACTIVE_DAYS", 30.0)
    if days <= 0:
        raise ConfigError(f"CHIRP_ACTIVE_DAYS must be above 0, got {days}")
    return days


def load(env: Mapping[str, str] = os.environ) -> FeedConfig:
    threshold = _threshold(env)
    return FeedConfig(
        common=load_common(env, "feed_svc", DEFAULT_PORT),
        celebrity_threshold=threshold,
        celebrity_demote_below=_demote_below(env, threshold),
        timeline_size=env_int(env, "CHIRP_TIMELINE_SIZE", 800, minimum=20),
        celebrity_cache_seconds=env_float(env, "CHIRP_CELEBRITY_CACHE_SECONDS", 5.0),
        following_cache_seconds=env_float(env, "CHIRP_FOLLOWING_CACHE_SECONDS", 300.0),
        graph_target=graph_target(env),
        tweet_target=tweet_target(env),
        fanout_batch_size=env_int(env, "CHIRP_FANOUT_BATCH_SIZE", 200, minimum=1),
        fanout_keys_at_once=env_int(env, "CHIRP_FANOUT_KEYS_AT_ONCE", 4, minimum=1),
        active_days=_active_days(env),
        page_token_key_file=Path(env_str(env, "CHIRP_PAGE_TOKEN_KEY_FILE", DEFAULT_TOKEN_KEY_FILE)),
        page_token_ttl_seconds=env_int(env, "CHIRP_PAGE_TOKEN_TTL_SECONDS", DEFAULT_TOKEN_TTL_SECONDS, minimum=1),
    )
