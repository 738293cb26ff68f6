"""tweet_svc entry point: config, logging, wiring, run."""

from __future__ import annotations

import grpc
from chirp.tweet.v1 import tweet_internal_pb2, tweet_internal_pb2_grpc, tweet_pb2, tweet_pb2_grpc

from common import server
from common.cache import connect_redis, connect_state_redis
from common.clients import Peers
from common.cql import CQL_UNAVAILABLE_ERRORS, CqlSession
from common.id_reservations import IdReservations
from common.ids import IdGenerator
from common.kafka import KAFKA_UNAVAILABLE_ERRORS, AsyncProducer
from common.limits import RedisCounters, UserLimits
from common.logs import setup_logging
from common.outbox import Outbox
from common.pagination import PageTokens
from common.server import Wiring, serve
from tweet_svc import config as tweet_config
from tweet_svc.cache import TweetCache
from tweet_svc.domain import Tweets, Usernames
from tweet_svc.service import TweetInternalService, TweetService
from tweet_svc.store import TweetStore


async def run(cfg: tweet_config.TweetConfig) -> None:
    common = cfg.common
    page_tokens = PageTokens.from_file(cfg.page_token_key_file, cfg.page_token_ttl_seconds)
    cql = await CqlSession.from_config(common)
    producer = AsyncProducer(
        common.kafka_bootstrap,
        f"tweet_svc-{common.instance_id}",
        delivery_timeout_ms=cfg.like_ack_timeout_ms,
        on_fatal=server.stop_with_failure,
    )
    outbox = Outbox(cql, producer)
    await outbox.prepare()
    store = TweetStore(cql, outbox)
    await store.prepare()
    ids = IdGenerator(common.instance_id)
    id_reservations = IdReservations(cql, common.instance_id, ids)
    await id_reservations.start()
    peers = Peers(graph_target=cfg.graph_target)
    redis = connect_redis(common.redis_url)
    state_redis = connect_state_redis(common.redis_state_url, common.redis_url)  # counters: never evicted
    cache = TweetCache(
        redis,
        cfg.tweet_cache_seconds,
        cfg.like_count_cache_seconds,
        cfg.author_recent_cache_seconds,
        # A refresh drops ids its store read did not find only if that read sees every
        # acknowledged post (a quorum).
        prune_recent=cfg.common.cql_consistency not in ("ONE", "LOCAL_ONE"),
    )
    tweets = Tweets(
        store,
        cache,
        outbox,
        producer,
        Usernames(peers.username),
        ids,
        page_tokens=page_tokens,
        limits=UserLimits(RedisCounters(state_redis), {"post": cfg.post_limit, "like": cfg.like_limit}),
        relations=peers.relations,
    )

    def register(server: grpc.aio.Server) -> None:
        tweet_pb2_grpc.add_TweetServiceServicer_to_server(TweetService(tweets), server)
        tweet_internal_pb2_grpc.add_TweetInternalServiceServicer_to_server(TweetInternalService(tweets), server)

    async def close() -> None:
        # No call runs any more: record the last id, so the successor need not wait.
        await id_reservations.stop()
        await peers.close()
        await redis.aclose()
        await state_redis.aclose()
        producer.close()
        # Mark what the fast path delivered while closing, and hand the relay's
        # shards over now rather than when their leases expire.
        await outbox.wait_marked()
        await outbox.release_shards()
        cql.close()

    await serve(
        common,
        Wiring(
            register=register,
            service_names=[
                tweet_pb2.DESCRIPTOR.services_by_name["TweetService"].full_name,
                tweet_internal_pb2.DESCRIPTOR.services_by_name["TweetInternalService"].full_name,
            ],
            # Kafka is not a probe: posts stay durable in the outbox while it is
            # down; only likes (acknowledged on Kafka) fail fast with 503.
            probes=[cql.ping],
            close=close,
            dependency_errors=CQL_UNAVAILABLE_ERRORS + KAFKA_UNAVAILABLE_ERRORS,
            background=[outbox.relay_forever, id_reservations.renew_forever],
        ),
    )


def main() -> None:
    cfg = tweet_config.load()
    setup_logging(cfg.common.service, cfg.common.log_level)
    server.run(run(cfg))


if __name__ == "__main__":
    main()
