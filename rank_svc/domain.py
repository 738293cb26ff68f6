"""Trending rules: recomputing the list from the hourly tallies (rank worker)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from chirp.graph.v1 import graph_pb2
from chirp.tweet.v1 import tweet_pb2
from prometheus_client import Gauge, Histogram

from rank_svc.score import Candidate, top_k
from rank_svc.store import MAX_TRENDING, TrendingStore

log = logging.getLogger(__name__)

CANDIDATES = 500

RECOMPUTE = Histogram("chirp_rank_recompute_seconds", "Time to recompute the trending list.")
TRENDING_SIZE = Gauge("chirp_rank_trending_tweets", "Tweets in the last trending list.")


class Ranker:
    """Turns the tallies into the trending list: decayed likes, lifted by the author's followers."""

    def __init__(
        self,
        store: TrendingStore,
        batch_tweets: Callable[[Sequence[int]], Awaitable[list[tweet_pb2.Tweet]]],
        users: Callable[[Sequence[int]], Awaitable[list[graph_pb2.User]]],
        follower_weight: float,
    ) -> None:
        self._store = store
        self._batch_tweets = batch_tweets
        self._users = users
        self._follower_weight = follower_weight

    async def recompute(self) -> int:
        started = time.perf_counter()
        epoch = await self._store.begin_recompute()
        decayed = await self._store.decayed_top(CANDIDATES)
        tweets = {t.tweet_id: t for t in await self._batch_tweets([t for t, s in decayed if s > 0])}
        authors = {u.user_id: u.follower_count for u in await self._users(list({t.author_id for t in tweets.values()}))}
        candidates = [
            Candidate(tweet_id, likes, authors.get(tweets[tweet_id].author_id, 0))
            for tweet_id, likes in decayed
            if tweet_id in tweets
        ]
        ranked = top_k(candidates, MAX_TRENDING, self._follower_weight)
        if not await self._store.save([tweets[t] for t in ranked], epoch):
            log.info("a later recompute saved first; this list is dropped", extra={"epoch": epoch})
        # Counted only once finished: ChirpTrendingStale (infra/prometheus/alerts.yml) fires on
        # no count for 15 minutes, and a timer counts a recompute that raised as well.
        RECOMPUTE.observe(time.perf_counter() - started)
        TRENDING_SIZE.set(len(ranked))
        return len(ranked)

    async def recompute_forever(self, holder: str, interval_seconds: int) -> None:
        while True:
            try:
                if await self._store.acquire_turn(holder, interval_seconds * 0.9):
                    await self.recompute()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - try again next interval
                log.warning("trending recompute failed: %r", exc)
            await asyncio.sleep(interval_seconds)
