"""Running out of Redis connections is queueing, not an outage (common/cache.py).

Against private redis-server processes this test starts on 127.0.0.1 (a
standalone one, and a two-node cluster) and stops by pid, so it can hold every
connection or stop a server without touching the shared stack's Redis:
- a client with 2 connections runs 50 concurrent commands, all answered, and
  never opens more than its 2;
- a wait for a connection that ends without one is a miss for that call alone:
  neither the `tolerant` wrapper nor the health probe takes Redis for down;
- cancelled commands give their connections back, and a connection with a
  reply left unread is not lent as it is;
- a server that stops still makes the wrapper skip Redis and the probe fail;
- a cluster pipeline's re-sent (redirected) command does not wait for a second
  in-flight slot.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError

from common.cache import (
    CLUSTER_SPARE_CONNECTIONS,
    PoolExhausted,
    QueueingRedisCluster,
    RedisClient,
    Tolerant,
    connect_redis,
    redis_ping,
    tolerant,
)

HOST = "127.0.0.1"
STANDALONE_PORT = 6481
CLUSTER_PORTS = (6484, 6485)
CONCURRENT = 50
POOL = 2
START_SECONDS = 10.0


class Probe(Tolerant):
    """A read-path cache call as the services' caches make them."""

    def __init__(self, redis: RedisClient) -> None:
        super().__init__()
        self.redis = redis

    @tolerant(lambda: "miss")
    async def get(self, key: str) -> Any:
        value = await self.redis.get(key)
        return value.decode() if isinstance(value, bytes) else value


class Server:
    def __init__(self, port: int, directory: Path, cluster: bool = False, settings: Sequence[str] = ()) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: this test starts its own")
        args = [
            binary,
            "--port",
            str(port),
            "--bind",
            HOST,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
        ]
        if cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf"]
        args += settings
        self.port = port
        self.log = (directory / f"redis-{port}.log").open("wb")
        self.process = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)

    async def client(self) -> aioredis.Redis:
        """A plain connection of the test's own, to watch the server from outside the pool."""
        observer = aioredis.Redis(host=HOST, port=self.port, socket_timeout=2)
        deadline = time.monotonic() + START_SECONDS
        while True:
            try:
                await observer.ping()
                return observer
            except RedisConnectionError:
                assert self.process.poll() is None, f"redis-server on {self.port} exited: see {self.log.name}"
                assert time.monotonic() < deadline, f"redis-server on {self.port} did not start"
                await asyncio.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


@pytest.fixture
def standalone(tmp_path: Path) -> Iterator[Server]:
    server = Server(STANDALONE_PORT, tmp_path)
    yield server
    server.stop()


@pytest.fixture(scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[list[Server]]:
    """Two primaries, half the slots each."""
    directory = tmp_path_factory.mktemp("cluster")
    servers = [Server(port, directory, cluster=True) for port in CLUSTER_PORTS]
    try:
        first, second = [await s.client() for s in servers]
        await first.execute_command("CLUSTER ADDSLOTSRANGE", 0, 8191)
        await second.execute_command("CLUSTER ADDSLOTSRANGE", 8192, 16383)
        await first.execute_command("CLUSTER MEET", HOST, CLUSTER_PORTS[1])
        deadline = time.monotonic() + START_SECONDS
        while not all([(await c.execute_command("CLUSTER INFO"))["cluster_state"] == "ok" for c in (first, second)]):
            assert time.monotonic() < deadline, "the private cluster did not form"
            await asyncio.sleep(0.1)
        await first.aclose()
        await second.aclose()
        yield servers
    finally:
        for server in servers:
            server.stop()


def cluster_url() -> str:
    return ",".join(f"redis://{HOST}:{port}" for port in CLUSTER_PORTS)


async def clients_of(observer: aioredis.Redis) -> int:
    """Connections the observer's server has open, the observer's own left out."""
    return int((await observer.info("clients"))["connected_clients"]) - 1


def exhausted_count() -> float:
    return REGISTRY.get_sample_value("chirp_redis_pool_exhausted_total") or 0.0


def port_of(client: RedisCluster, key: str) -> int:
    node = client.get_node_from_key(key)
    assert node is not None, "the client knows every slot's node"
    return int(node.port)


async def hold_connections(
    client: RedisClient, server_clients: list[aioredis.Redis], key: str
) -> list[asyncio.Task[Any]]:
    """POOL commands that each keep a connection (BLPOP on an empty list) until `key` gets items."""

    async def blpop() -> Any:
        return await client.blpop([key], timeout=30)

    held = [asyncio.create_task(blpop()) for _ in range(POOL)]
    deadline = time.monotonic() + START_SECONDS
    while sum([int((await c.info("clients"))["blocked_clients"]) for c in server_clients]) < POOL:
        assert time.monotonic() < deadline, "the blocking commands did not reach the server"
        await asyncio.sleep(0.02)
    return held


# ---- a standalone Redis ----------------------------------------------------------------


async def test_fifty_commands_on_two_connections_all_queue_and_succeed(standalone: Server) -> None:
    observer = await standalone.client()
    client = connect_redis(f"redis://{HOST}:{STANDALONE_PORT}/0", max_connections=POOL, pool_wait_seconds=30)
    probe = Probe(client)
    try:
        await observer.set("k", "v")
        # Pipelines too (the services' caches use them): each takes one connection.
        async with client.pipeline(transaction=False) as pipe:
            pipe.get("k")
            assert await pipe.execute() == [b"v"]
        values = await asyncio.gather(*(probe.get("k") for _ in range(CONCURRENT)))
        assert values == ["v"] * CONCURRENT  # a pool that refused the excess would give misses
        assert probe.down_until == 0.0
        assert await clients_of(observer) == POOL
    finally:
        await client.aclose()
        await observer.aclose()


async def test_a_wait_that_ends_without_a_connection_is_one_miss_not_redis_down(standalone: Server) -> None:
    observer = await standalone.client()
    # The held BLPOPs outlast the default socket timeout, and one that timed out is not
    # sent again (a command whose reply is late may have been applied).
    client = connect_redis(
        f"redis://{HOST}:{STANDALONE_PORT}/0",
        max_connections=POOL,
        pool_wait_seconds=0.2,
        timeout_seconds=START_SECONDS,
    )
    probe = Probe(client)
    try:
        await observer.set("k", "v")
        held = await hold_connections(client, [observer], "held")
        exhausted = exhausted_count()
        with pytest.raises(PoolExhausted):
            await client.get("k")
        assert await probe.get("k") == "miss"
        assert probe.down_until == 0.0, "an exhausted pool must not make the caches skip Redis"
        assert exhausted_count() == exhausted + 2  # each one counted: what an operator sees
        assert await redis_ping(client), "a busy instance is not one whose Redis is down"

        await observer.rpush("held", "a", "b")
        assert sorted(await asyncio.gather(*held)) == [(b"held", b"a"), (b"held", b"b")]
        assert await probe.get("k") == "v"  # at once: nothing marked Redis down
    finally:
        await client.aclose()
        await observer.aclose()


async def test_cancelled_commands_give_their_connections_back_and_none_is_lent_dirty(standalone: Server) -> None:
    """The pool lends and takes back connections itself (not through redis-py's
    BlockingConnectionPool): commands cancelled while they wait for a connection,
    or while they wait for Redis, must each give their slot back, and a connection
    returned with a reply left unread must not be lent as it is."""
    observer = await standalone.client()
    client = connect_redis(f"redis://{HOST}:{STANDALONE_PORT}/0", max_connections=POOL, pool_wait_seconds=30)
    assert isinstance(client, aioredis.Redis)
    pool = client.connection_pool
    try:
        await observer.set("k", "v")
        held = await hold_connections(client, [observer], "held")
        waiting = [asyncio.ensure_future(client.get("k")) for _ in range(CONCURRENT)]
        await asyncio.sleep(0.05)
        for task in [*held, *waiting]:
            task.cancel()
        await asyncio.gather(*held, *waiting, return_exceptions=True)
        assert not pool._in_use_connections
        values = await asyncio.gather(*(client.get("k") for _ in range(CONCURRENT)))
        assert values == [b"v"] * CONCURRENT  # every slot free again: nothing waits out its 30 s

        dirty = await pool.get_connection()
        await dirty.send_command("GET", "k")  # its reply never read
        await asyncio.sleep(0.1)  # and already in the connection's buffer
        await pool.release(dirty)
        lent = [await pool.get_connection() for _ in range(POOL)]
        for connection in lent:
            assert not await connection.can_read(), "a connection with a reply left unread was lent"
            await pool.release(connection)
        assert await client.get("k") == b"v"
        assert len(pool._available_connections) <= POOL and not pool._in_use_connections
    finally:
        await client.aclose()
        await observer.aclose()


async def test_a_server_that_stops_still_makes_the_caches_skip_redis(standalone: Server) -> None:
    observer = await standalone.client()
    client = connect_redis(f"redis://{HOST}:{STANDALONE_PORT}/0", max_connections=POOL)
    probe = Probe(client)
    try:
        await observer.set("k", "v")
        assert await probe.get("k") == "v"
        await observer.aclose()
        standalone.stop()

        with pytest.raises(RedisConnectionError) as raised:
            await client.get("k")
        assert not isinstance(raised.value, PoolExhausted)
        assert await probe.get("k") == "miss"
        assert probe.down_until > time.monotonic(), "a server that stopped must make the caches skip Redis"
        assert not await redis_ping(client)
    finally:
        await client.aclose()


# ---- a Redis Cluster ---------------------------------------------------------------------


async def test_a_cluster_client_queues_fifty_commands_on_two_slots(cluster: list[Server]) -> None:
    observers = [await s.client() for s in cluster]
    client = connect_redis(cluster_url(), max_connections=POOL, pool_wait_seconds=30)
    assert isinstance(client, QueueingRedisCluster)
    probe = Probe(client)
    keys = [f"pool:{i}" for i in range(CONCURRENT)]
    try:
        await client.initialize()
        assert {port_of(client, k) for k in keys} == set(CLUSTER_PORTS), "keys on both nodes"
        async with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.set(key, key)
            await pipe.execute()
        values = await asyncio.gather(*(probe.get(k) for k in keys))
        assert values == keys
        assert probe.down_until == 0.0
        for observer in observers:
            assert await clients_of(observer) <= POOL + CLUSTER_SPARE_CONNECTIONS
    finally:
        await client.aclose()
        for observer in observers:
            await observer.aclose()


async def test_a_cluster_wait_that_ends_without_a_slot_is_one_miss_not_redis_down(cluster: list[Server]) -> None:
    observers = [await s.client() for s in cluster]
    # As on a standalone Redis: the held BLPOPs outlast the default socket timeout, and
    # one that timed out is not sent again (the cluster client sent it again until stop 52).
    client = connect_redis(cluster_url(), max_connections=POOL, pool_wait_seconds=0.2, timeout_seconds=START_SECONDS)
    assert isinstance(client, QueueingRedisCluster)
    probe = Probe(client)
    try:
        await client.set("k", "v")
        held = await hold_connections(client, observers, "held")
        with pytest.raises(PoolExhausted):
            await client.get("k")
        assert await probe.get("k") == "miss"
        assert probe.down_until == 0.0
        assert await redis_ping(client)

        # From outside the client: its slots are all held.
        await observers[CLUSTER_PORTS.index(port_of(client, "held"))].rpush("held", "a", "b")
        assert len(await asyncio.gather(*held)) == POOL
        assert await probe.get("k") == "v"
    finally:
        await client.aclose()
        for observer in observers:
            await observer.aclose()


async def test_a_redirected_pipeline_command_does_not_wait_for_a_second_slot(cluster: list[Server]) -> None:
    """The cluster pipeline re-sends a command a node redirected (MOVED) through the
    client while the pipeline still holds its slot; with one slot, waiting for
    another would end in PoolExhausted."""
    client = connect_redis(cluster_url(), max_connections=1, pool_wait_seconds=0.2)
    assert isinstance(client, QueueingRedisCluster)
    observers = {s.port: await s.client() for s in cluster}
    key = "pool:moved"
    try:
        await client.initialize()
        await client.delete(key)
        owner = port_of(client, key)
        (other,) = set(CLUSTER_PORTS) - {owner}
        other_id = (await observers[other].execute_command("CLUSTER MYID")).decode()
        for port in (other, owner):  # the slot is empty: moving it needs no migration
            await observers[port].execute_command("CLUSTER SETSLOT", key_slot(key.encode()), "NODE", other_id)

        async with client.pipeline(transaction=False) as pipe:
            pipe.set(key, "moved")
            pipe.get(key)
            # Errors as results: a failed re-send would show here rather than be retried.
            assert await pipe.execute(raise_on_error=False) == [True, b"moved"]
        assert port_of(client, key) == other  # it was redirected
    finally:
        await client.aclose()
        for observer in observers.values():
            await observer.aclose()
