"""A full state Redis, against a private redis-server that may not evict (as the state
Redis, infra/topology.py) set a megabyte past its memory limit: it refuses every write
that needs memory and still answers reads. Nothing acknowledged lives there, and no
limit is lost: failed logins count what it holds plus what this process keeps, and a
trending fold fails whole (its batch is applied again). Each refusal is counted for the
alert ChirpRedisFull (chirp_redis_full_total); how full it is, for the alert before it
(ChirpRedisStateAlmostFull)."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY
from redis.exceptions import OutOfMemoryError

from common.cache import RedisClient, connect_redis
from common.errors import ResourceExhausted
from common.limits import Limit, LoginGuard, LoginLimits, RedisCounters, UserLimits
from common.redis_memory import MemoryWatch
from rank_svc.store import Like, PartitionFold, TrendingStore, hour_of
from tests.integration.test_redis_pool import Server

# Tests run one at a time: test_redis_pool's servers (6481, 6484, 6485) and
# test_trending_fold's range (6480-6499) are not up meanwhile.
FULL_PORT = 6482
WINDOW_HOURS = 48


@pytest.fixture
async def private(tmp_path: Path) -> AsyncIterator[tuple[RedisClient, aioredis.Redis]]:
    """(a client as the services build it, a plain connection to watch and fill it)."""
    server = Server(FULL_PORT, tmp_path, settings=("--maxmemory-policy", "noeviction"))
    client = connect_redis(f"redis://127.0.0.1:{FULL_PORT}/0")
    try:
        observer = await server.client()
        try:
            yield client, observer
        finally:
            await observer.aclose()
    finally:
        await client.aclose()
        server.stop()


async def fill(observer: aioredis.Redis) -> None:
    """A megabyte past its limit: a limit just above what it holds would come back in
    reach whenever a client's buffers shrink."""
    await observer.set("fill", b"x" * 1_000_000)
    used = int((await observer.info("memory"))["used_memory"])
    await observer.config_set("maxmemory", used - 1_000_000)
    with pytest.raises(OutOfMemoryError):
        await observer.set("more", b"x")


def refusals() -> float:
    return REGISTRY.get_sample_value("chirp_redis_full_total") or 0.0


def used(node: str) -> float:
    value = REGISTRY.get_sample_value("chirp_redis_state_memory_used_ratio", {"node": node})
    assert value is not None, f"no ratio for {node}"
    return value


async def test_failed_logins_count_on_top_of_what_a_full_redis_holds(
    private: tuple[RedisClient, aioredis.Redis],
) -> None:
    """Two failures counted before it filled and one after reach the limit, and the next
    is refused (counting afresh in memory would have allowed three more); never an error."""
    client, observer = private
    guard = LoginGuard(RedisCounters(client), LoginLimits(60.0, 3, 0, 0))
    for _ in range(2):
        await guard.begin("someone", "198.18.0.1")  # two wrong passwords, counted in Redis
    await fill(observer)
    before = refusals()
    await guard.begin("someone", "198.18.0.1")  # the third: at the limit
    with pytest.raises(ResourceExhausted):
        await guard.begin("someone", "198.18.0.1")
    assert refusals() >= before + 2
    [key] = await observer.keys("lf:*")  # the (account, address) counter
    assert await observer.get(key) == b"2"  # Redis took nothing more


async def test_logins_that_succeed_while_redis_is_full_are_given_back(
    private: tuple[RedisClient, aioredis.Redis],
) -> None:
    """A success is no failure, full or not: six good logins in a row from one address are
    never refused by a limit of five (the give-back of a hit Redis never held would be lost
    on Redis, which has no such key, and the hit kept in memory counted for good)."""
    client, observer = private
    guard = LoginGuard(RedisCounters(client), LoginLimits(60.0, 5, 50, 200))
    await fill(observer)
    for _ in range(6):
        attempt = await guard.begin("owner", "198.18.0.2")
        await guard.give_back(attempt)  # the password was right


async def test_per_user_limits_hold_on_a_full_redis(private: tuple[RedisClient, aioredis.Redis]) -> None:
    """Posting past the limit is refused though Redis counts nothing: the hits are kept here."""
    client, observer = private
    limits = UserLimits(RedisCounters(client), {"post": Limit(3, 60.0)})
    await limits.take("post", 7)  # counted in Redis
    await fill(observer)
    for _ in range(2):
        await limits.take("post", 7)
    with pytest.raises(ResourceExhausted):
        await limits.take("post", 7)
    assert await observer.get("rl:post:7") == b"1"


async def test_a_fold_into_a_full_redis_fails_whole_and_is_counted(
    private: tuple[RedisClient, aioredis.Redis],
) -> None:
    client, observer = private
    store = TrendingStore(client, WINDOW_HOURS, 6.0)
    hour = hour_of(int(time.time() * 1000))
    await fill(observer)
    before = refusals()
    with pytest.raises(OutOfMemoryError):
        await store.fold(
            [PartitionFold("chirp.likes.v1", 0, 0, 1, "start")],
            [Like(0, 10, 20, 1, True, hour)],
            hour - WINDOW_HOURS + 1,
        )
    assert refusals() == before + 1
    assert await observer.keys(store.keys.pattern) == []  # nothing of the batch applied


async def test_the_memory_watch_reads_how_full_each_node_is(private: tuple[RedisClient, aioredis.Redis]) -> None:
    _, observer = private
    node, down = f"127.0.0.1:{FULL_PORT}", "127.0.0.1:1"  # nothing listens on port 1
    watch = MemoryWatch(f"redis://{node},redis://{down}")
    try:
        await observer.config_set("maxmemory", 1_000_000_000)
        await watch.read_once()
        assert 0.0 < used(node) < 0.01
        await fill(observer)
        await watch.read_once()
        assert used(node) > 1.0
        assert math.isnan(used(down))
        assert REGISTRY.get_sample_value("chirp_redis_state_evicts", {"node": node}) == 0.0
        await observer.config_set("maxmemory-policy", "allkeys-lru")  # a state URL naming a cache
        await watch.read_once()
        assert REGISTRY.get_sample_value("chirp_redis_state_evicts", {"node": node}) == 1.0
    finally:
        await watch.close()
