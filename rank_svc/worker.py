"""Rank worker: tallies like events per hour, and every
CHIRP_RANK_INTERVAL_SECONDS (one instance at a time) recomputes the trending
list into Redis, where requests read it.

    python -m rank_svc.worker
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Sequence

from confluent_kafka import Message
from prometheus_client import Gauge, Histogram

from common import server
from common.cache import REDIS_UNAVAILABLE_ERRORS, connect_redis, redis_ping
from common.clients import Peers
from common.events import LikeEvent
from common.ids import id_time_ms
from common.kafka import TOPIC_LIKES, BatchConsumer
from common.logs import setup_logging
from common.server import Wiring, serve
from common.worker import ConsumerLoop
from rank_svc import config as rank_config
from rank_svc.score import Candidate, top_k
from rank_svc.trending import MAX_TRENDING, TrendingStore

log = logging.getLogger(__name__)

GROUP = "chirp-rank"
CANDIDATES = 500

RECOMPUTE = Histogram("chirp_rank_recompute_seconds", "Time to recompute the trending list.")
TRENDING_SIZE = Gauge("chirp_rank_trending_tweets", "Tweets in the last trending list.")


class Ranker:
    def __init__(self, trending: TrendingStore, peers: Peers, cfg: rank_config.RankConfig) -> None:
        self._trending = trending
        self._peers = peers
        self._cfg = cfg
        self._holder = f"{socket.gethostname()}-{cfg.common.instance_id}"

    async def tally(self, messages: Sequence[Message]) -> None:
        likes = []
        for msg in messages:
            try:
                event = LikeEvent.decode(msg.value() or b"")
            except (ValueError, KeyError, TypeError):
                continue
            likes.append((event.tweet_id, 1 if event.liked else -1, id_time_ms(event.version)))
        await self._trending.tally(likes)

    async def recompute(self) -> int:
        with RECOMPUTE.time():
            decayed = await self._trending.decayed_top(CANDIDATES)
            tweets = {t.tweet_id: t for t in await self._peers.batch_tweets([t for t, s in decayed if s > 0])}
            authors = {
                u.user_id: u.follower_count
                for u in await self._peers.users(list({t.author_id for t in tweets.values()}))
            }
            candidates = [
                Candidate(tweet_id, likes, authors.get(tweets[tweet_id].author_id, 0))
                for tweet_id, likes in decayed
                if tweet_id in tweets
            ]
            ranked = top_k(candidates, MAX_TRENDING, self._cfg.follower_weight)
            await self._trending.save([tweets[t] for t in ranked])
        TRENDING_SIZE.set(len(ranked))
        return len(ranked)

    async def recompute_forever(self) -> None:
        interval = self._cfg.interval_seconds
        while True:
            try:
                if await self._trending.acquire_turn(self._holder, interval * 0.9):
                    await self.recompute()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - try again next interval
                log.warning("trending recompute failed: %r", exc)
            await asyncio.sleep(interval)


async def run(cfg: rank_config.RankConfig) -> None:
    common = cfg.common
    redis = connect_redis(common.redis_url)
    peers = Peers(cfg.graph_target, cfg.tweet_target)
    ranker = Ranker(TrendingStore(redis, cfg.window_hours, cfg.half_life_hours), peers, cfg)
    loop = ConsumerLoop(
        GROUP,
        lambda: BatchConsumer(common.kafka_bootstrap, GROUP, [TOPIC_LIKES], f"rank-{common.instance_id}"),
        ranker.tally,
        1000,
        0.2,
    )

    async def close() -> None:
        loop.close()
        await peers.close()
        await redis.aclose()

    await serve(
        common,
        Wiring(
            register=lambda server: None,
            service_names=[],
            probes=[lambda: redis_ping(redis)],
            close=close,
            dependency_errors=REDIS_UNAVAILABLE_ERRORS,
            background=[loop.run_forever, ranker.recompute_forever],
        ),
    )


def main() -> None:
    cfg = rank_config.load()
    setup_logging("rank_worker", cfg.common.log_level)
    server.run(run(cfg))


if __name__ == "__main__":
    main()
