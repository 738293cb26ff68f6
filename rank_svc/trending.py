"""Trending state in Redis: hourly like tallies (written by the rank worker
from the like events) and the computed list (read by every request)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import redis.asyncio as aioredis
from chirp.rank.v1 import rank_pb2
from chirp.tweet.v1 import tweet_pb2

from rank_svc.score import hour_weight

TRENDING_KEY = "rk:trending"
LOCK_KEY = "rk:lock"
DECAYED_KEY = "rk:decayed"
MAX_TRENDING = 100


def hour_of(unix_ms: int) -> int:
    return unix_ms // 3_600_000


def _likes_key(hour: int) -> str:
    return f"rk:likes:{hour}"


class TrendingStore:
    def __init__(self, redis: aioredis.Redis, window_hours: int, half_life_hours: float) -> None:
        self._redis = redis
        self._window = window_hours
        self._half_life = half_life_hours

    async def tally(self, likes: Sequence[tuple[int, int, int]]) -> None:
        """(tweet id, +1 or -1, event time ms) into hourly tallies that expire after the window."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for tweet_id, delta, at_ms in likes:
                key = _likes_key(hour_of(at_ms))
                pipe.zincrby(key, delta, str(tweet_id))
                pipe.expire(key, (self._window + 1) * 3600)
            await pipe.execute()

    async def decayed_top(self, limit: int, now_ms: int | None = None) -> list[tuple[int, float]]:
        """Top tweets by time-decayed likes, summed by Redis over the window's hours."""
        now_hour = hour_of(now_ms if now_ms is not None else int(time.time() * 1000))
        weights = {_likes_key(now_hour - age): hour_weight(age, self._half_life) for age in range(self._window)}
        await self._redis.zunionstore(DECAYED_KEY, weights)
        rows = await self._redis.zrevrange(DECAYED_KEY, 0, limit - 1, withscores=True)
        return [(int(row[0]), float(row[1])) for row in rows]

    async def acquire_turn(self, holder: str, seconds: float) -> bool:
        """One recompute per interval across all instances."""
        return bool(await self._redis.set(LOCK_KEY, holder, nx=True, px=max(1, int(seconds * 1000))))

    async def save(self, tweets: Sequence[tweet_pb2.Tweet]) -> None:
        reply = rank_pb2.ListTrendingResponse(tweets=list(tweets)[:MAX_TRENDING])
        await self._redis.set(TRENDING_KEY, reply.SerializeToString())

    async def load(self) -> list[tweet_pb2.Tweet]:
        raw = await self._redis.get(TRENDING_KEY)
        if raw is None:
            return []
        return list(rank_pb2.ListTrendingResponse.FromString(raw if isinstance(raw, bytes) else raw.encode()).tweets)
