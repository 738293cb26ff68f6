"""Redis side of feed_svc: pushed timelines, and short-lived caches of follow
lists, celebrities' recent tweet ids and hydrated tweets. Everything here can
be rebuilt from the CQL store or the other services."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
from chirp.tweet.v1 import tweet_pb2

from common.cache import REDIS_UNAVAILABLE_ERRORS
from common.ids import id_time_ms

log = logging.getLogger(__name__)

T = TypeVar("T")
RETRY_AFTER_SECONDS = 1.0


def tolerant(default: Any) -> Callable[[Callable[..., Awaitable[T]]], Callable[..., Awaitable[T]]]:
    """For read-path calls: while Redis is unreachable, act as a cache miss so
    reads are served from the CQL store and the other services instead."""

    def wrap(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        @functools.wraps(method)
        async def guarded(self: FeedCache, *args: Any, **kwargs: Any) -> T:
            if time.monotonic() < self.down_until:
                return default
            try:
                return await method(self, *args, **kwargs)
            except REDIS_UNAVAILABLE_ERRORS as exc:
                if time.monotonic() >= self.down_until + RETRY_AFTER_SECONDS:
                    log.warning("Redis unavailable; serving reads without it: %r", exc)
                self.down_until = time.monotonic() + RETRY_AFTER_SECONDS
                return default

        return guarded

    return wrap


# A member with score +inf marks a timeline as complete (rebuilt from CQL);
# trimming removes the lowest scores, so it always survives. Fan-out may add
# to a timeline that is not built yet; readers rebuild (merge) when it is missing.
BUILT = "built"


def _timeline(user_id: int) -> str:
    return f"tl:{user_id}"


class FeedCache:
    def __init__(
        self,
        redis: aioredis.Redis,
        timeline_size: int,
        following_ttl: float,
        celebrity_ttl: float,
        tweet_ttl: float,
    ) -> None:
        self._redis = redis
        self._size = timeline_size
        self._following_ttl = max(1, int(following_ttl * 1000))
        self._celebrity_ttl = max(1, int(celebrity_ttl * 1000))
        self._tweet_ttl = max(1, int(tweet_ttl * 1000))
        self.down_until = 0.0  # read-path calls skip Redis until then

    # ---- pushed timelines ---------------------------------------------------------

    async def push(self, user_ids: Sequence[int], tweets: Sequence[int]) -> None:
        """Add tweets to many timelines in one pipeline, keeping the newest `size`."""
        if not tweets or not user_ids:
            return
        entries: dict[str, float] = {str(t): id_time_ms(t) for t in tweets}
        async with self._redis.pipeline(transaction=False) as pipe:
            for user_id in user_ids:
                pipe.zadd(_timeline(user_id), entries)
                pipe.zremrangebyrank(_timeline(user_id), 0, -(self._size + 2))
            await pipe.execute()

    async def remove(self, user_ids: Sequence[int], tweets: Sequence[int]) -> None:
        if not tweets:
            return
        members = [str(t) for t in tweets]
        async with self._redis.pipeline(transaction=False) as pipe:
            for user_id in user_ids:
                pipe.zrem(_timeline(user_id), *members)
            await pipe.execute()

    @tolerant(None)
    async def timeline(self, user_id: int, before: int | None, limit: int) -> list[int] | None:
        """Pushed tweet ids below `before`, newest first; None if the timeline is not built."""
        top = "+inf" if before is None else id_time_ms(before)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zscore(_timeline(user_id), BUILT)
            pipe.zrevrangebyscore(_timeline(user_id), top, "-inf", start=0, num=limit + 1)
            built, members = await pipe.execute()
        if built is None:
            return None
        ids = [int(m) for m in members if _text(m) != BUILT]
        return [t for t in ids if before is None or t < before][:limit]

    @tolerant(None)
    async def rebuild(self, user_id: int, tweets: Sequence[int]) -> None:
        entries: dict[str, float] = {str(t): id_time_ms(t) for t in tweets}
        entries[BUILT] = float("inf")
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zadd(_timeline(user_id), entries)
            pipe.zremrangebyrank(_timeline(user_id), 0, -(self._size + 2))
            await pipe.execute()

    # ---- follow lists ----------------------------------------------------------------

    @tolerant(None)
    async def following(self, user_id: int) -> list[tuple[int, int]] | None:
        raw = await self._redis.get(f"fo:{user_id}")
        if raw is None:
            return None
        text = _text(raw)
        return [(int(a), int(c)) for a, c in (p.split(":") for p in text.split(",") if p)]

    @tolerant(None)
    async def set_following(self, user_id: int, accounts: Sequence[tuple[int, int]]) -> None:
        value = ",".join(f"{a}:{c}" for a, c in accounts)
        await self._redis.set(f"fo:{user_id}", value, px=self._following_ttl)

    async def drop_following(self, user_id: int) -> None:
        await self._redis.delete(f"fo:{user_id}")

    # ---- celebrities' recent tweets -------------------------------------------------

    @tolerant({})
    async def recent(self, authors: Sequence[int]) -> dict[int, list[int]]:
        if not authors:
            return {}
        values = await self._redis.mget([f"cel:{a}" for a in authors])
        return {
            a: [int(t) for t in _text(v).split(",") if t] for a, v in zip(authors, values, strict=True) if v is not None
        }

    @tolerant(None)
    async def set_recent(self, recent: dict[int, list[int]]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for author, ids in recent.items():
                pipe.set(f"cel:{author}", ",".join(map(str, ids)), px=self._celebrity_ttl)
            await pipe.execute()

    # ---- hydrated tweets (cache-aside) ------------------------------------------------

    @tolerant({})
    async def tweets(self, tweet_ids: Sequence[int]) -> dict[int, tweet_pb2.Tweet]:
        if not tweet_ids:
            return {}
        values = await self._redis.mget([f"tw:{t}" for t in tweet_ids])
        return {
            t: tweet_pb2.Tweet.FromString(_bytes(v)) for t, v in zip(tweet_ids, values, strict=True) if v is not None
        }

    @tolerant(None)
    async def set_tweets(self, tweets: Sequence[tweet_pb2.Tweet]) -> None:
        if not tweets:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for tweet in tweets:
                pipe.set(f"tw:{tweet.tweet_id}", tweet.SerializeToString(), px=self._tweet_ttl)
            await pipe.execute()

    async def drop_tweet(self, tweet_id: int) -> None:
        await self._redis.delete(f"tw:{tweet_id}")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()
