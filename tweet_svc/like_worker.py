"""Like worker: consumes like/unlike events in batches and applies them to the
CQL store. Offsets are committed only after the writes succeed; a crash in
between re-delivers the batch, which the versioned fold turns into no-ops.

    python -m tweet_svc.like_worker
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence

from confluent_kafka import Message
from prometheus_client import Counter

from common import server
from common.cache import connect_redis
from common.cql import CQL_UNAVAILABLE_ERRORS, CqlSession
from common.events import LikeEvent
from common.kafka import TOPIC_LIKES, BatchConsumer
from common.logs import setup_logging
from common.outbox import Outbox
from common.server import Wiring, serve
from common.worker import ConsumerLoop
from tweet_svc import config as tweet_config
from tweet_svc.cache import TweetCache
from tweet_svc.likes import fold
from tweet_svc.store import TweetStore

log = logging.getLogger(__name__)

GROUP = "chirp-like-worker"
MAX_CONFLICT_RETRIES = 20

APPLIED = Counter("chirp_likes_applied_total", "Like/unlike events that changed a stored like.")


class LikeApplier:
    """Applies one batch of like events: per tweet, fold by version, write
    conditionally, then write the new count through to the cache readers use."""

    def __init__(self, store: TweetStore, cache: TweetCache | None) -> None:
        self._store = store
        self._cache = cache

    async def __call__(self, messages: Sequence[Message]) -> None:
        by_tweet: dict[int, list[LikeEvent]] = defaultdict(list)
        for msg in messages:
            try:
                event = LikeEvent.decode(msg.value() or b"")
            except (ValueError, KeyError, TypeError):
                log.error("skipping malformed like event", extra={"offset": msg.offset()})
                continue
            by_tweet[event.tweet_id].append(event)
        await asyncio.gather(*(self.apply(tweet_id, events) for tweet_id, events in by_tweet.items()))

    async def apply(self, tweet_id: int, events: list[LikeEvent]) -> None:
        users = sorted({e.user_id for e in events})
        for _ in range(MAX_CONFLICT_RETRIES):
            stored_count, stored = await self._store.like_states(tweet_id, users)
            count, changed = fold(stored_count or 0, stored, events)
            if not changed:
                return
            if await self._store.write_likes(tweet_id, stored_count, max(0, count), changed):
                APPLIED.inc(len(changed))
                if self._cache is not None:
                    await self._cache.set_like_counts({tweet_id: max(0, count)})
                return
        raise RuntimeError(f"could not apply likes of tweet {tweet_id}: too much contention")


def like_loop(
    store: TweetStore,
    consumer_factory: Callable[[], BatchConsumer],
    batch_size: int,
    wait_seconds: float,
    cache: TweetCache | None = None,
) -> ConsumerLoop:
    return ConsumerLoop(GROUP, consumer_factory, LikeApplier(store, cache), batch_size, wait_seconds)


async def run(cfg: tweet_config.TweetConfig) -> None:
    common = cfg.common
    cql = await CqlSession.from_config(common)
    store = TweetStore(cql, Outbox(cql, None))  # the worker writes no events
    await store.prepare()
    redis = connect_redis(common.redis_url)
    loop = like_loop(
        store,
        lambda: BatchConsumer(
            common.kafka_bootstrap, GROUP, [TOPIC_LIKES], f"like-worker-{common.instance_id}", common.kafka_client_rack
        ),
        cfg.like_batch_size,
        cfg.like_batch_wait_ms / 1000,
        TweetCache(redis, cfg.tweet_cache_seconds, cfg.like_count_cache_seconds),
    )

    async def close() -> None:
        loop.close()
        cql.close()
        await redis.aclose()

    await serve(
        common,
        Wiring(
            register=lambda server: None,
            service_names=[],
            probes=[cql.ping],
            close=close,
            dependency_errors=CQL_UNAVAILABLE_ERRORS,
            background=[loop.run_forever],
        ),
    )


def main() -> None:
    cfg = tweet_config.load()
    setup_logging("like_worker", cfg.common.log_level)
    server.run(run(cfg))


if __name__ == "__main__":
    main()
