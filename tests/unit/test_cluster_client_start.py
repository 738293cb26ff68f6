"""The Redis Cluster client of a process started before its cluster was made (a fresh
install: the services start alongside the membership Job). A private redis-server in
cluster mode with no slot assigned stands for that cluster (started here on a free port
in 6480-6499, stopped at the end)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis
from redis.crc import REDIS_CLUSTER_HASH_SLOTS

from common.cache import REDIS_UNAVAILABLE_ERRORS, QueueingRedisCluster, connect_redis
from tests.unit.test_trending_fold import RedisServer, start_redis


@pytest.fixture
def unmade() -> Iterator[RedisServer]:
    """A node of a cluster not made yet: cluster mode on, no slot assigned."""
    server = start_redis(set(), "--cluster-enabled", "yes")
    yield server
    server.stop()


async def test_a_client_started_before_its_cluster_was_made_connects_once_it_is(unmade: RedisServer) -> None:
    """Before: the first command is refused as Redis being down (it was an IndexError,
    taken for a bug), and after the slots are assigned the client serves. redis-py
    replaced its startup nodes with those of the empty map, so it never connected again."""
    client = connect_redis(f"redis://127.0.0.1:{unmade.port},redis://127.0.0.1:1")  # nothing listens on port 1
    assert isinstance(client, QueueingRedisCluster)
    node = aioredis.Redis(host="127.0.0.1", port=unmade.port)
    try:
        with pytest.raises(REDIS_UNAVAILABLE_ERRORS):
            await client.set("k", "v")
        await node.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, REDIS_CLUSTER_HASH_SLOTS - 1)
        for _ in range(100):
            if b"cluster_state:ok" in await node.execute_command("CLUSTER", "INFO"):
                break
            await asyncio.sleep(0.05)
        assert await client.set("k", "v")
        assert await client.get("k") == b"v"
    finally:
        await node.aclose()
        await client.aclose()
