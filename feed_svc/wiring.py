"""What the feed service and the fan-out worker both build from their config."""

from __future__ import annotations

from dataclasses import dataclass

from common.cache import RedisClient, connect_redis
from common.clients import Peers
from common.cql import CqlSession
from common.hidden import HiddenAuthorsCache, RedisHiddenStore
from common.replica_waits import ReplicaWaits
from common.singleflight import Rebuilds
from feed_svc.activity import DAY_SECONDS, TIMELINE_GRACE_DAYS
from feed_svc.cache import FeedCache
from feed_svc.config import FeedConfig
from feed_svc.store import CelebrityStore


@dataclass
class FeedParts:
    cql: CqlSession
    redis: RedisClient
    cache: FeedCache
    store: CelebrityStore
    peers: Peers
    hidden: HiddenAuthorsCache
    rebuilds: Rebuilds  # the process's one bound on cache rebuilds, shared by every fill

    async def close(self) -> None:
        await self.peers.close()
        await self.redis.aclose()
        self.cql.close()


async def build(cfg: FeedConfig, replicated_writes: bool = False) -> FeedParts:
    """`replicated_writes`: timeline pushes and drops wait for a Redis replica (the
    fan-out worker's, which commits its Kafka offsets after them)."""
    common = cfg.common
    cql = await CqlSession.from_config(common)
    redis = connect_redis(common.redis_url)
    store = CelebrityStore(cql)
    await store.prepare()
    waits = ReplicaWaits(redis) if replicated_writes else None
    cache = FeedCache(
        redis,
        cfg.timeline_size,
        cfg.following_cache_seconds,
        cfg.celebrity_cache_seconds,
        waits,
        timeline_ttl=(cfg.active_days + TIMELINE_GRACE_DAYS) * DAY_SECONDS,
    )
    peers = Peers(graph_target=cfg.graph_target, tweet_target=cfg.tweet_target)
    rebuilds = Rebuilds()
    hidden = HiddenAuthorsCache(
        RedisHiddenStore(redis), peers.hidden_author_ids, rebuilds=rebuilds, redis=redis, reload_after_reads=True
    )
    return FeedParts(cql, redis, cache, store, peers, hidden, rebuilds)
