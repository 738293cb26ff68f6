"""Serving the trending list: each rank_svc process keeps a copy of the list
the rank worker computed, so no request reads the list from Redis, and filters
and flags it per viewer."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Container, Sequence
from itertools import islice

from chirp.tweet.v1 import tweet_pb2

from common.errors import DEPENDENCY_DOWN_MESSAGE, Unavailable
from common.tweet_cache import CachedTweets

log = logging.getLogger(__name__)

# A rank_svc instance reads the computed list at most this often.
READ_REFRESH_SECONDS = 1.0
# A copy older than this (an instance nobody asked for a while) is not served
# while Redis answers: the request waits for the fresh one (one GET).
MAX_STALE_SECONDS = 3.0

# (viewer id, tweet ids) -> what tweet_svc's cache holds of them, the viewer's like flags included
CachedFlags = Callable[[int, Sequence[int]], Awaitable[CachedTweets]]
# (viewer id, tweet ids) -> the ones the viewer likes (tweet_svc ListLikedTweetIds)
LikedTweetIds = Callable[[int, Sequence[int]], Awaitable[set[int]]]


class TrendingCopy:
    """The computed list as this process last read it.

    Requests are served from the copy, so the list's one Redis key is read once
    per `refresh_seconds` per instance however many requests come, and a copy
    older than that is refreshed in the background, so a busy instance's
    requests never wait on Redis. A copy older than `max_stale_seconds` (the
    instance was idle) is refreshed before answering, so a request never gets a
    list from minutes ago, say one with a tweet deleted since. While Redis is
    down the last copy keeps being served; only an instance that never read the
    list answers UNAVAILABLE (fast: one attempt per `refresh_seconds`).
    """

    def __init__(
        self,
        load: Callable[[], Awaitable[list[tweet_pb2.Tweet]]],
        refresh_seconds: float = READ_REFRESH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        max_stale_seconds: float = MAX_STALE_SECONDS,
    ) -> None:
        self._load = load
        self._refresh_seconds = refresh_seconds
        self._max_stale_seconds = max_stale_seconds
        self._clock = clock
        self._copy: list[tweet_pb2.Tweet] | None = None
        self._tried_at = float("-inf")
        self._loaded_at = float("-inf")
        self._failing = False
        self._first = asyncio.Lock()
        self._refreshing: asyncio.Task[None] | None = None

    def has_copy(self) -> bool:
        return self._copy is not None

    async def tweets(self) -> list[tweet_pb2.Tweet]:
        if self._copy is None:
            return await self._first_read()
        now = self._clock()
        if now - self._tried_at >= self._refresh_seconds and (self._refreshing is None or self._refreshing.done()):
            self._tried_at = now
            self._refreshing = asyncio.create_task(self._refresh())
            if now - self._loaded_at >= self._max_stale_seconds and not self._failing:
                await asyncio.shield(self._refreshing)  # _refresh never raises
        return self._copy

    async def _first_read(self) -> list[tweet_pb2.Tweet]:
        async with self._first:
            if self._copy is not None:
                return self._copy
            if self._failing and self._clock() - self._tried_at < self._refresh_seconds:
                raise Unavailable(DEPENDENCY_DOWN_MESSAGE)
            self._tried_at = self._clock()
            try:
                self._copy = await self._load()
            except Exception:
                self._failing = True
                raise
            self._failing = False
            self._loaded_at = self._clock()
            return self._copy

    async def _refresh(self) -> None:
        try:
            self._copy = await self._load()
            self._loaded_at = self._clock()
        except Exception as exc:  # noqa: BLE001 - keep serving the copy we have
            if not self._failing:
                log.warning("cannot read the trending list; serving the last copy: %r", exc)
            self._failing = True
            return
        if self._failing:
            log.info("trending list readable again")
        self._failing = False


def with_current_state(
    load: Callable[[], Awaitable[list[tweet_pb2.Tweet]]], cached: CachedFlags
) -> Callable[[], Awaitable[list[tweet_pb2.Tweet]]]:
    """`load`, with what tweet_svc's cache says now: tweets deleted since the list was
    computed (up to CHIRP_RANK_INTERVAL_SECONDS ago) left out, and like counts the cache
    holds put in. Once per copy refresh, not per request: one pipeline of two commands
    per tweet. While Redis fails, the list as computed."""

    async def loaded() -> list[tweet_pb2.Tweet]:
        tweets = await load()
        if not tweets:
            return tweets
        now = await cached(0, [t.tweet_id for t in tweets])
        kept = [t for t in tweets if t.tweet_id not in now.deleted]
        for tweet in kept:  # decoded afresh by every load: nobody else holds them yet
            tweet.like_count = now.counts.get(tweet.tweet_id, tweet.like_count)
        return kept

    return loaded


def visible_trending(tweets: Sequence[tweet_pb2.Tweet], hidden: Container[int], limit: int) -> list[tweet_pb2.Tweet]:
    """The first `limit` tweets of the list not by an author the viewer hides. The
    whole copy is searched, so filtering shortens the answer only when fewer than
    `limit` visible tweets are trending at all."""
    return list(islice((t for t in tweets if t.author_id not in hidden), limit))


def with_liked(tweets: Sequence[tweet_pb2.Tweet], liked: Container[int]) -> list[tweet_pb2.Tweet]:
    """The tweets with the viewer's liked_by_me, as copies: the originals are this
    process's shared copy of the list, served to every viewer."""
    flagged = []
    for tweet in tweets:
        copy = tweet_pb2.Tweet()
        copy.CopyFrom(tweet)
        copy.liked_by_me = tweet.tweet_id in liked
        flagged.append(copy)
    return flagged


class ViewerLikes:
    """Which of the tweets a viewer likes, read as feed_svc's home feed reads its flags:
    from tweet_svc's cache (`ul:<viewer>`, common/tweet_cache.py), where a field present
    is exact because a like or unlike writes it before being acknowledged; tweet_svc
    (ListLikedTweetIds, a read of `user_likes` that fills those fields) is asked only
    for the tweets without one. So a viewer reading trending again and again costs
    tweet_svc and Cassandra one read per hash lifetime (at most LIKED_SECONDS), not one per
    request."""

    def __init__(self, cached: CachedFlags, ask: LikedTweetIds) -> None:
        self._cached = cached
        self._ask = ask

    async def liked(self, viewer_id: int, tweet_ids: Sequence[int]) -> set[int]:
        cached = await self._cached(viewer_id, tweet_ids)
        unflagged = [t for t in tweet_ids if t not in cached.liked and t not in cached.not_liked]
        asked = await self._ask(viewer_id, unflagged) if unflagged else set()
        return cached.liked | asked
