"""Scenario (j), cold start: Redis emptied (a restart, or a lost Redis node),
then a minute of mixed reads at a moderate rate; errors and latency per 10 s
window show how the caches refill.

Emptying is FLUSHALL on the bench stack's own Redis: the single node, or
every primary of the cluster topology (their replicas follow)."""

from __future__ import annotations

import asyncio

from redis.asyncio.cluster import RedisCluster

from common.cache import connect_redis
from infra import topology

RATE = 60  # reads per second: well below saturation, so what fails is the cold cache
SECONDS = 60.0
WINDOW_SECONDS = 10.0


async def _flush() -> list[str]:
    client = connect_redis(topology.redis_url())
    try:
        if isinstance(client, RedisCluster):
            await client.initialize()
            await client.flushall(target_nodes=RedisCluster.PRIMARIES)
            return sorted(node.name for node in client.get_primaries())
        await client.flushall()
        return [node.address for node in topology.redis_nodes()]
    finally:
        await client.aclose()


def flush_redis() -> list[str]:
    """Empties the stack's Redis; returns the addresses of the nodes emptied."""
    return asyncio.run(_flush())
