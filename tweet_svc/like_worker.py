"""Like worker entry point: consumes like/unlike events in batches and applies
them to the CQL store. Offsets are committed only after the writes succeed; a
crash in between re-delivers the batch, which the versioned fold turns into
no-ops. The rules live in tweet_svc/like_applier.py and tweet_svc/likes.py.

    python -m tweet_svc.like_worker
"""

from __future__ import annotations

from collections.abc import Callable

from common import server
from common.cache import connect_redis
from common.cql import CQL_UNAVAILABLE_ERRORS, CqlSession
from common.kafka import TOPIC_LIKES, BatchConsumer
from common.logs import setup_logging
from common.outbox import Outbox
from common.server import Wiring, serve
from common.worker import ConsumerLoop
from tweet_svc import config as tweet_config
from tweet_svc.cache import TweetCache
from tweet_svc.like_applier import GROUP, LikeApplier
from tweet_svc.store import TweetStore


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
