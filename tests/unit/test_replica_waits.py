"""The fan-out worker's timeline writes wait for a Redis replica before its batch
is committed (common/replica_waits.py): a WAIT after the writes, on their
connection, only where a replica is online; no acknowledgement fails the call.
Standalone Redis here (a fake, and a private redis-server with a replica); the
cluster path runs against the real Redis Cluster in
tests/integration/test_redis_cluster.py."""

from __future__ import annotations

import os
import signal
import time
from typing import Any, cast

import pytest
import redis.asyncio as aioredis
from redis.exceptions import TimeoutError as RedisTimeoutError

from common.cache import TIMEOUT_SECONDS, RedisClient, connect_redis
from common.keys import TWEET_DELETED, tweet_key
from common.replica_waits import (
    REPLICA_LAG_SECONDS,
    REPLICAS_CHECK_SECONDS,
    NotReplicated,
    ReplicaWaits,
    online_replicas,
)
from feed_svc.cache import FeedCache
from tests.unit.test_trending_fold import replica_streaming, start_redis


class Pipeline:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self.commands: list[tuple[Any, ...]] = []

    async def __aenter__(self) -> Pipeline:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        return None

    def zadd(self, key: str, entries: dict[str, float]) -> None:
        self.commands.append(("ZADD", key))

    def zremrangebyrank(self, key: str, start: int, end: int) -> None:
        self.commands.append(("ZREMRANGEBYRANK", key))

    def delete(self, key: str) -> None:
        self.commands.append(("DEL", key))

    def execute_command(self, *args: Any) -> None:
        self.commands.append(args)

    async def execute(self) -> list[Any]:
        self._redis.sent.append(self.commands)
        return [self._redis.acks if c[0] == "WAIT" else 1 for c in self.commands]


class Redis:
    """A standalone Redis: INFO replication and pipelines, nothing else."""

    def __init__(self, replicas: list[str]) -> None:
        self.replicas = replicas  # each replica's state
        self.acks = len(replicas)
        self.infos = 0
        self.sent: list[list[tuple[Any, ...]]] = []

    def pipeline(self, transaction: bool = False) -> Pipeline:
        return Pipeline(self)

    def register_script(self, _script: str) -> None:
        return None

    async def info(self, section: str) -> dict[str, Any]:
        self.infos += 1
        replicas = {f"slave{i}": {"ip": "127.0.0.1", "state": state} for i, state in enumerate(self.replicas)}
        return {"role": "master", "connected_slaves": len(self.replicas), **replicas}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _cache(redis: Redis, clock: Clock) -> FeedCache:
    client = cast(RedisClient, redis)
    return FeedCache(client, 800, 60, 5, ReplicaWaits(client, ack_ms=50, clock=clock))


def test_only_online_replicas_acknowledge() -> None:
    info = {"slave0": {"state": "online"}, "slave1": {"state": "wait_bgsave"}, "slave_read_only": 1}
    assert online_replicas(info) == 1
    silent = {"slave0": {"state": "online", "lag": REPLICA_LAG_SECONDS + 1}}
    assert online_replicas(silent) == 0
    assert online_replicas({"slave0": {"state": "online", "lag": REPLICA_LAG_SECONDS}}) == 1


async def test_a_push_waits_for_a_replica_after_its_writes_on_their_connection() -> None:
    redis, clock = Redis(["online"]), Clock()
    await _cache(redis, clock).push([1, 2], [5])
    (commands,) = redis.sent
    assert commands[-1] == ("WAIT", 1, 50)  # last: after every write of the pipeline
    assert [c[0] for c in commands[:-1]].count("ZADD") == 2


async def test_no_acknowledgement_fails_the_write_so_the_batch_is_applied_again() -> None:
    redis, clock = Redis(["online"]), Clock()
    cache = _cache(redis, clock)
    redis.acks = 0
    with pytest.raises(NotReplicated, match="no replica of Redis acknowledged"):
        await cache.push([1], [5])
    with pytest.raises(NotReplicated):
        await cache.drop_timelines([1])
    assert redis.infos == 2  # a failed WAIT reads the replicas again: one may be gone


async def test_without_an_online_replica_nothing_waits_and_replicas_are_read_every_few_seconds() -> None:
    redis, clock = Redis(["wait_bgsave"]), Clock()
    cache = _cache(redis, clock)
    for _ in range(3):
        await cache.push([1], [5])
    assert all(c[0] != "WAIT" for commands in redis.sent for c in commands)
    assert redis.infos == 1

    redis.replicas = ["online"]  # the replica finished syncing
    clock.now += REPLICAS_CHECK_SECONDS
    await cache.drop_timelines([1, 2])
    assert redis.sent[-1] == [("DEL", "tl:1"), ("DEL", "tl:2"), ("WAIT", 1, 50)]
    assert redis.infos == 2


async def test_reads_and_a_cache_without_waits_never_wait() -> None:
    redis = Redis(["online"])
    await FeedCache(cast(RedisClient, redis), 800, 60, 5).push([1], [5])
    assert ("ZADD", "tl:1") in redis.sent[0] and all(c[0] != "WAIT" for c in redis.sent[0])
    assert redis.infos == 0


# ---- a real redis-server and its replica --------------------------------------------------------


async def test_a_push_is_on_the_replica_when_it_returns_and_fails_when_the_replica_stops() -> None:
    ports: set[int] = set()
    leader = start_redis(ports, "--repl-diskless-sync-delay", "0")
    follower = start_redis(ports, "--replicaof", "127.0.0.1", str(leader.port))
    client = connect_redis(f"redis://127.0.0.1:{leader.port}/0")
    replica = aioredis.Redis(host="127.0.0.1", port=follower.port)
    try:
        await replica_streaming(client)
        cache = FeedCache(client, 800, 60, 5, ReplicaWaits(client))
        await cache.push([1, 2, 3], [5])
        for user in (1, 2, 3):  # on the replica once push returned
            assert await replica.zscore(f"tl:{user}", "5") is not None, user
        await cache.mark_tweet_deleted(5)
        assert await replica.get(tweet_key("body", 5)) == TWEET_DELETED

        os.kill(follower.process.pid, signal.SIGSTOP)  # connected, but acknowledges nothing
        started = time.monotonic()
        with pytest.raises(NotReplicated):
            await cache.push([1], [6])
        assert time.monotonic() - started < TIMEOUT_SECONDS + 0.3  # WAIT gave up before the socket did
        # Its primary calls it online until repl-timeout (60 s); once it has been silent
        # for longer than REPLICA_LAG_SECONDS it counts as away, and pushes go on.
        failed = 1
        while True:
            try:
                await cache.push([1], [6])
                break
            except (NotReplicated, RedisTimeoutError):  # a WAIT answered late: failed as well
                failed += 1
                assert time.monotonic() - started < REPLICA_LAG_SECONDS + 3, f"{failed} pushes failed"
        assert await client.zscore("tl:1", "6") is not None
        os.kill(follower.process.pid, signal.SIGCONT)
    finally:
        await client.aclose()
        await replica.aclose()
        follower.stop()
        leader.stop()
