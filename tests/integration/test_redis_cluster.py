"""The caches against a real Redis Cluster (3 primaries, 3 replicas): work on
keys spread over every primary succeeds with the cluster client connect_redis
builds (where MGET over those keys fails), and a node that stops answering
makes the read path act as cache misses, promptly, while the fan-out worker's
writes fail (so its batch is re-applied) and the health probe says so.

The cluster is the one the stack starts with CHIRP_TOPOLOGY=cluster, or the
nodes listed in CHIRP_TEST_REDIS_CLUSTER (`redis://host:port,...`). A failing
node is simulated by a proxy in front of one primary that the test cuts or
stalls, so the shared cluster itself is never disturbed."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import RedisClusterException
from redis.exceptions import TimeoutError as RedisTimeoutError

from common.cache import (
    REDIS_UNAVAILABLE_ERRORS,
    RETRY_AFTER_SECONDS,
    NodeUnreachable,
    connect_redis,
    redis_ping,
    run_reads,
    unanswered,
)
from common.ids import IdGenerator
from common.keys import TWEET_DELETED, feed_key, tweet_key
from common.replica_waits import ReplicaWaits
from feed_svc.cache import FeedCache
from infra import topology
from tests.faults import Proxy, wait_for_async
from tweet_svc.cache import TweetCache
from tweet_svc.store import TweetRecord

pytestmark = pytest.mark.cluster

KEYS_PER_TEST = 300  # spread over all 16384 slots, so over every primary


def cluster_url() -> str:
    url = os.environ.get("CHIRP_TEST_REDIS_CLUSTER", "").strip()
    if url:
        return url
    if topology.is_cluster():
        return topology.redis_url()
    pytest.fail("no Redis Cluster: bring the stack up with CHIRP_TOPOLOGY=cluster or set CHIRP_TEST_REDIS_CLUSTER")


@pytest.fixture
async def rc() -> AsyncIterator[RedisCluster]:
    client = connect_redis(cluster_url())
    assert isinstance(client, RedisCluster), "a list of nodes must give the cluster client"
    await client.initialize()
    yield client
    await client.aclose()


def ids(instance: int, count: int) -> list[int]:
    generator = IdGenerator(instance)
    return [generator.next_id() for _ in range(count)]


def record(tweet_id: int) -> TweetRecord:
    return TweetRecord(tweet_id, 7, "ada", f"tweet {tweet_id}", datetime(2026, 1, 2, 3, 4, 5, 6000, tzinfo=UTC))


def primaries_of(client: RedisCluster, keys: Sequence[str]) -> set[str]:
    return {client.nodes_manager.get_node_from_slot(key_slot(k.encode())).name for k in keys}


async def delete(client: RedisCluster, keys: Sequence[str]) -> None:
    await client.delete(*keys)  # the cluster client splits DEL by slot


async def test_the_probe_sees_every_primary(rc: RedisCluster) -> None:
    assert len(rc.get_primaries()) >= 3
    assert await redis_ping(rc)


async def test_tweet_cache_works_on_keys_spread_over_every_primary(rc: RedisCluster) -> None:
    cache = TweetCache(rc, ttl_seconds=60, count_ttl_seconds=60, recent_ttl_seconds=60)
    tweet_ids = ids(911, KEYS_PER_TEST)
    authors = ids(912, 50)
    bodies = [tweet_key("body", t) for t in tweet_ids]
    counts = [tweet_key("like_count", t) for t in tweet_ids]
    recents = [tweet_key("author_recent", a) for a in authors]
    assert primaries_of(rc, bodies) == {n.name for n in rc.get_primaries()}
    with pytest.raises(RedisClusterException):
        await rc.mget(bodies)  # what the caches used to send
    try:
        await cache.put([record(t) for t in tweet_ids])
        await cache.mark_deleted(tweet_ids[0])
        found, deleted = await cache.get(tweet_ids)
        assert deleted == {tweet_ids[0]}
        assert found == {t: record(t) for t in tweet_ids[1:]}

        await cache.set_like_counts({t: 4 for t in tweet_ids[:100]})
        await cache.fill_like_counts({t: 1 for t in tweet_ids})
        assert await cache.like_counts(tweet_ids) == {t: 4 if i < 100 else 1 for i, t in enumerate(tweet_ids)}

        await cache.fill_recent({a: [tweet_ids[i]] for i, a in enumerate(authors)})
        await cache.add_recent(authors[0], tweet_ids[-1])
        await cache.remove_recent(authors[1], tweet_ids[1])
        recent = await cache.recent(authors, 10)
        assert recent[authors[0]] == [tweet_ids[-1], tweet_ids[0]]
        assert recent[authors[1]] == []
        assert all(recent[a] == [tweet_ids[i]] for i, a in enumerate(authors) if i > 1)
    finally:
        await delete(rc, bodies + counts + recents)


async def test_feed_cache_works_on_keys_spread_over_every_primary(rc: RedisCluster) -> None:
    cache = FeedCache(rc, timeline_size=20, following_ttl=60, celebrity_ttl=60)
    users = ids(913, KEYS_PER_TEST)
    tweets = ids(914, 3)
    timelines = [feed_key("timeline", u) for u in users]
    follows = [feed_key("following", u) for u in users[:50]]
    assert primaries_of(rc, timelines) == {n.name for n in rc.get_primaries()}
    try:
        for user in users[:100]:
            await cache.rebuild(user, tweets[:1])
        await cache.push(users, tweets[1:])
        await cache.remove(users, tweets[2:])
        for user in users[:100]:
            assert await cache.timeline(user, None, 10) == [tweets[1], tweets[0]]
        assert await cache.timeline(users[-1], None, 10) is None  # pushed to, never built

        for user in users[:50]:
            token = await cache.claim_following(user)  # a miss: its marker, then the fill
            assert isinstance(token, str)
            await cache.set_following(user, [(user + 1, 3)], True, token)
        assert [await cache.claim_following(u) for u in users[:50]] == [([(u + 1, 3)], True) for u in users[:50]]

        await cache.mark_tweet_deleted(tweets[2])
        assert await rc.get(tweet_key("body", tweets[2])) == TWEET_DELETED
    finally:
        await delete(rc, [*timelines, *follows, tweet_key("body", tweets[2])])


async def test_fanout_writes_wait_for_a_replica_of_every_primary_they_write_to(rc: RedisCluster) -> None:
    """The fan-out worker's pushes and drops (common/replica_waits.py): one WAIT per primary,
    sent on the connection its writes went on, and each primary's replica acknowledges."""
    waits = ReplicaWaits(rc, ack_ms=2000)
    cache = FeedCache(rc, timeline_size=20, following_ttl=60, celebrity_ttl=60, replica_waits=waits)
    users, tweets = ids(916, KEYS_PER_TEST), ids(917, 2)
    timelines = [feed_key("timeline", u) for u in users]
    every_primary = {n.name for n in rc.get_primaries()}
    assert primaries_of(rc, timelines) == every_primary
    try:
        await cache.push(users, tweets)
        # Every timeline is on its primary's replica by the time push returned.
        assert await on_replicas(rc, timelines, str(tweets[1])) == set(timelines)

        async with rc.pipeline() as pipe:
            for key in timelines:
                pipe.zadd(key, {"1": 1.0})
            queued = await waits.queue(pipe, timelines)
            replies = await pipe.execute()
        assert {n.name for n in queued.nodes if n is not None} == every_primary  # each has an online replica
        acks = replies[len(timelines) :]
        assert len(acks) == len(every_primary) and all(int(a) >= 1 for a in acks)
        waits.confirm(queued, acks)

        await cache.drop_timelines(users)
        assert await rc.exists(timelines[0]) == 0
    finally:
        await delete(rc, timelines)


async def on_replicas(client: RedisCluster, keys: Sequence[str], member: str) -> set[str]:
    """The keys whose sorted set holds `member` on a replica of their primary."""
    found: set[str] = set()
    for key in keys:
        _, *replicas = client.nodes_manager.slots_cache[key_slot(key.encode())]
        for node in replicas:
            replica = aioredis.Redis(host=node.host, port=int(node.port), single_connection_client=True)
            try:
                await replica.execute_command("READONLY")
                if await replica.zscore(key, member) is not None:
                    found.add(key)
            finally:
                await replica.aclose()
    return found


# ---- a failing node --------------------------------------------------------------------


@dataclass
class Proxied:
    """A client built by connect_redis whose way to one primary (`victim`) goes through a Proxy."""

    client: RedisCluster
    primary: Proxy
    victim: ClusterNode


@pytest.fixture
async def proxied() -> AsyncIterator[Proxied]:
    client = connect_redis(cluster_url())
    assert isinstance(client, RedisCluster)
    await client.initialize()
    victim = client.get_primaries()[0]
    proxy = Proxy(victim.host, int(victim.port))
    await proxy.start()

    def remap(address: tuple[str, int]) -> tuple[str, int]:
        return ("127.0.0.1", proxy.port) if address == (victim.host, int(victim.port)) else address

    client.nodes_manager.address_remap = remap
    await client.aclose()  # rediscovered through the remap on first use
    yield Proxied(client, proxy, victim)
    await client.aclose()
    await proxy.cut()


async def fill(tweets: TweetCache, tweet_ids: list[int]) -> None:
    await tweets.put([record(t) for t in tweet_ids])
    await tweets.set_like_counts({t: 2 for t in tweet_ids})
    assert (await tweets.get(tweet_ids))[0].keys() == set(tweet_ids)  # through the proxy too


@pytest.mark.parametrize("failure", ["cut", "stall"])
async def test_a_failing_node_makes_only_its_keys_miss(rc: RedisCluster, proxied: Proxied, failure: str) -> None:
    """The keys of a node that fails are misses, promptly, and the other nodes' are still
    served; once connecting to it failed it is skipped for a while (its commands fail at
    once, without connecting again); its writes fail (the fan-out worker re-applies its
    batch); and its keys are served again once it is back."""
    client, proxy, victim = proxied.client, proxied.primary, proxied.victim
    tweet_ids = ids(915, KEYS_PER_TEST)
    bodies = [tweet_key("body", t) for t in tweet_ids]
    on_victim = [t for t, k in zip(tweet_ids, bodies, strict=True) if primaries_of(rc, [k]) == {victim.name}]
    assert on_victim, "some keys must live on the node that fails"
    tweets = TweetCache(client, ttl_seconds=60, count_ttl_seconds=60)
    feed = FeedCache(client, timeline_size=20, following_ttl=60, celebrity_ttl=60)
    try:
        await fill(tweets, tweet_ids)
        assert await redis_ping(client)

        if failure == "cut":
            await proxy.cut()
        else:
            proxy.stall()
        started = time.monotonic()
        served_elsewhere = set(tweet_ids) - set(on_victim)
        assert (await tweets.get(tweet_ids))[0].keys() == served_elsewhere
        assert time.monotonic() - started < 3.0, "a read waited too long on the failing node"
        counted_elsewhere = {t for t in tweet_ids if primaries_of(rc, [tweet_key("like_count", t)]) != {victim.name}}
        assert await tweets.like_counts(tweet_ids) == {t: 2 for t in counted_elsewhere}
        assert (await feed.tweets(tweet_ids)).bodies.keys() == served_elsewhere  # the feed's read path
        assert await feed.timeline(on_victim[0], None, 10) is None
        with pytest.raises(REDIS_UNAVAILABLE_ERRORS):
            await feed.mark_tweet_deleted(on_victim[0])  # the fan-out worker's batch fails and is re-applied
        assert not await redis_ping(client)

        def queue(pipe: Any) -> None:
            for key in bodies:
                pipe.get(key)

        replies = await run_reads(client, queue)
        skipped = {t for t, r in zip(tweet_ids, replies, strict=True) if isinstance(r, NodeUnreachable)}
        assert skipped == set(on_victim)

        if failure == "cut":
            await proxy.start()
        else:
            proxy.stalled = False
        await asyncio.sleep(RETRY_AFTER_SECONDS)

        async def served() -> bool:
            return (await tweets.get(tweet_ids))[0].keys() == set(tweet_ids)

        await wait_for_async(served, 10.0, "the caches to use Redis again after the node came back")
        assert await tweets.like_counts(on_victim) == {t: 2 for t in on_victim}
        assert await redis_ping(client)
    finally:
        counts = [tweet_key("like_count", t) for t in tweet_ids]
        await delete(rc, bodies + counts)


async def blocking_pop(
    rc: RedisCluster, client: RedisCluster, key: str
) -> tuple[asyncio.Task[Any], Callable[[], Awaitable[set[int]]]]:
    """A BLPOP of `key` through `client`, returned once its node shows it waiting, and
    how to read the ids of the clients in BLPOP on that node (the same id: the same
    connection, not a command sent again)."""
    node = rc.nodes_manager.get_node_from_slot(key_slot(key.encode()))

    async def waiting_clients() -> set[int]:
        clients = await rc.client_list(target_nodes=node)
        return {int(c["id"]) for c in clients if c.get("cmd") == "blpop"}

    async def blpop() -> Any:
        return await client.blpop([key], timeout=10)

    waiting = asyncio.create_task(blpop())
    deadline = time.monotonic() + 5
    while not await waiting_clients():
        if time.monotonic() >= deadline:
            waiting.cancel()
            raise AssertionError("the BLPOP never reached its node")
        await asyncio.sleep(0.05)
    return waiting, waiting_clients


async def test_a_failing_node_leaves_the_commands_in_flight_on_the_others_alone(
    rc: RedisCluster, proxied: Proxied
) -> None:
    """A pipeline that meets a dead node fails (the fan-out worker re-applies its batch)
    without touching the commands other requests have in flight on the nodes that
    answer: redis-py's own pipeline retry closes every connection of the client, those
    in use too, so such a command failed and was sent again on a new connection. The
    topology read again afterwards only has redis-py reconnect a connection when it is
    next taken."""
    client, victim = proxied.client, proxied.victim
    keys = [feed_key("timeline", u) for u in ids(916, KEYS_PER_TEST)]
    elsewhere = [k for k in keys if primaries_of(rc, [k]) != {victim.name}]
    on_victim = [k for k in keys if primaries_of(rc, [k]) == {victim.name}]
    assert len(elsewhere) > 1 and on_victim
    blocked = elsewhere[1]
    waiting, waiting_clients = await blocking_pop(rc, client, blocked)
    try:
        before = await waiting_clients()
        await proxied.primary.cut()
        async with client.pipeline(transaction=False) as pipe:
            pipe.set(elsewhere[0], "1", px=60_000)
            pipe.set(on_victim[0], "1", px=60_000)
            with pytest.raises(REDIS_UNAVAILABLE_ERRORS):
                await pipe.execute()
        assert await waiting_clients() == before, "the command in flight was cut and sent again"
        await rc.rpush(blocked, "x")
        assert tuple(await waiting) == (blocked.encode(), b"x")  # answered on its first connection
        # The node that answers still gets its share: redis-py sends each node's commands in
        # a task of its own and raises the first node error at once, so that write may land
        # a little after the pipeline failed (CI once read the key before it had).
        deadline = time.monotonic() + 5
        while (written := await client.get(elsewhere[0])) is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert written == b"1"
    finally:
        waiting.cancel()
        await delete(rc, elsewhere[:2])


async def test_replica_waits_read_the_slot_map_again_when_it_has_no_owner_for_a_key(rc: RedisCluster) -> None:
    """A client whose slot map lost a slot (as after a failover) reads the map again
    before it waits on that slot's primary, rather than failing every batch."""
    waits = ReplicaWaits(rc, ack_ms=2000)
    key = "{rk}"
    slot = rc.keyslot(key)
    rc.nodes_manager.slots_cache.pop(slot)
    assert await waits.replicas(key) == 1  # its primary, found again, and that primary's replica
    assert rc.get_node_from_key(key) is not None


async def test_redirections_leave_the_commands_in_flight_alone(rc: RedisCluster) -> None:
    """A MOVED updates the slot's owner and nothing else: redis-py's default closed every
    connection of the client at every fifth one (each failover, each rolling restart's
    hand-over), and a command in flight on any node was cut and sent again."""
    client = connect_redis(cluster_url(), timeout_seconds=15)  # a BLPOP reads within the socket timeout
    assert isinstance(client, RedisCluster)
    await client.initialize()
    keys = [feed_key("timeline", u) for u in ids(918, KEYS_PER_TEST)]
    blocked = keys[0]
    home = primaries_of(rc, [blocked])
    moved = next(k for k in keys if primaries_of(rc, [k]).isdisjoint(home))
    owner = client.nodes_manager.get_node_from_slot(key_slot(moved.encode()))
    wrong = next(n for n in client.get_primaries() if n.name != owner.name)
    waiting, waiting_clients = await blocking_pop(rc, client, blocked)
    try:
        before = await waiting_clients()
        for _ in range(6):
            client.nodes_manager.slots_cache[key_slot(moved.encode())] = [wrong]  # as before a failover
            assert await client.get(moved) is None  # MOVED by `wrong`, then answered by its owner
            assert client.nodes_manager.get_node_from_slot(key_slot(moved.encode())).name == owner.name
        assert await waiting_clients() == before, "the command in flight was cut and sent again"
        await rc.rpush(blocked, "x")
        assert tuple(await waiting) == (blocked.encode(), b"x")
    finally:
        waiting.cancel()
        await delete(rc, [blocked])
        await client.aclose()


# INCRs its key, then keeps the node busy past the client's 0.5 s timeout.
SLOW_INCR = """
redis.call('INCR', KEYS[1])
local t0 = redis.call('TIME')
repeat
  local t = redis.call('TIME')
until (t[1] - t0[1]) * 1000000 + (t[2] - t0[2]) > 800000
return 1
"""


async def test_a_command_whose_reply_timed_out_is_not_sent_again(rc: RedisCluster) -> None:
    """It may have been applied: sent again, the rank worker's lease (SET NX) was refused
    to the instance that took it, and its epoch INCR counted twice."""
    client = connect_redis(cluster_url())
    key = feed_key("timeline", ids(919, 1)[0])
    try:
        with pytest.raises(RedisTimeoutError):
            await client.eval(SLOW_INCR, 1, key)
        await asyncio.sleep(2.0)  # a copy sent again would have run by now
        assert await rc.get(key) == b"1"
    finally:
        await delete(rc, [key])
        await client.aclose()


async def test_reads_alone_skip_a_node_that_accepts_connections_and_never_answers(
    rc: RedisCluster, proxied: Proxied
) -> None:
    """A read that times out costs that read alone (a slow reply is not a dead node), and
    its connection is closed; the next read's connect then times out in its handshake,
    which skips the node, so later reads of its keys fail at once rather than each
    waiting out the timeout (as a node that refuses connections is skipped)."""
    client, proxy, victim = proxied.client, proxied.primary, proxied.victim
    keys = [tweet_key("body", t) for t in ids(920, KEYS_PER_TEST)]
    on_victim = {k for k in keys if primaries_of(rc, [k]) == {victim.name}}
    assert on_victim

    def queue(pipe: Any) -> None:
        for key in keys:
            pipe.get(key)

    assert not any(unanswered(r) for r in await run_reads(client, queue))  # connected through the proxy
    proxy.stall()
    for _ in range(2):
        await run_reads(client, queue)
    started = time.monotonic()
    replies = await run_reads(client, queue)
    elapsed = time.monotonic() - started
    assert {k for k, r in zip(keys, replies, strict=True) if isinstance(r, NodeUnreachable)} == on_victim
    assert elapsed < 0.25, f"a read of a skipped node's keys took {elapsed:.2f} s"
