"""Rate-limit counters against the real state Redis, and failed-login limits per client
address against the running graph_svc instances, called on their service ports
with the client-address metadata the edge sets (through the shared edge every
test comes from one address). Addresses are drawn from 198.18.0.0/15
(benchmarking) so no other test's counters are touched."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import AsyncIterator
from typing import cast

import grpc
import pytest
from chirp.graph.v1 import graph_pb2, graph_pb2_grpc

from common.cache import TIMEOUT_SECONDS, cluster_nodes, connect_redis
from common.errors import ResourceExhausted
from common.keys import limit_key
from common.limits import CLIENT_ADDRESS_HEADER, Action, Limit, RedisCounters, UserLimits
from infra import topology
from tests.conftest import STATE_REDIS_URL as REDIS_URL
from tests.conftest import unique_name
from tests.e2e.test_limits import fresh_address
from tests.faults import Proxy

PASSWORD = "correct horse"
LOGIN_FAILURES = int(os.environ.get("CHIRP_LIMIT_LOGIN_FAILURES", "5"))
ADDRESS_FAILURES = int(os.environ.get("CHIRP_LIMIT_LOGIN_ADDRESS_FAILURES", "200"))


# ---- counters in Redis ---------------------------------------------------------------------


async def test_redis_counters_count_per_window_and_heal_a_counter_without_ttl() -> None:
    redis = connect_redis(REDIS_URL)
    counters = RedisCounters(redis)
    key, bare = limit_key("post", secrets.randbits(62)), limit_key("like", secrets.randbits(62))
    try:
        first, second = await counters.hit([(key, 60_000), (key, 60_000)]) or []
        assert (first.count, second.count) == (1, 2)
        assert 59_000 < second.remaining_ms <= 60_000
        await counters.give_back([key])
        assert (await counters.hit([(key, 60_000)]) or [])[0].count == 2
        # A give-back after the window ended does not make the counter anew (at -1, no TTL).
        await redis.delete(key)
        await counters.give_back([key])
        assert await redis.exists(key) == 0
        # A counter whose PEXPIRE never arrived (a cut connection) gets its TTL on the next hit.
        await redis.set(bare, 7)
        (hit,) = await counters.hit([(bare, 5_000)]) or []
        assert hit.count == 8 and 0 < await redis.pttl(bare) <= 5_000
    finally:
        for k in (key, bare):
            await redis.delete(k)
        await redis.aclose()


async def test_a_hit_whose_reply_comes_too_late_is_not_sent_again() -> None:
    """A counter's INCR whose reply misses the socket timeout may have been applied: it is
    not sent again (redis-py's retry counted it twice, and CI once saw a user's 300th post
    refused as the 301st). The hit fails open instead, as any Redis failure does."""
    [(host, port)] = cluster_nodes(REDIS_URL)  # the single-node stack's standalone Redis
    proxy = Proxy(host, port)
    await proxy.start()
    redis, direct = connect_redis(f"redis://127.0.0.1:{proxy.port}"), connect_redis(REDIS_URL)
    counters = RedisCounters(redis)
    key = limit_key("post", secrets.randbits(62))
    try:
        assert [h.count for h in await counters.hit([(key, 60_000)]) or []] == [1]
        proxy.reply_delay = TIMEOUT_SECONDS * 2
        assert await counters.hit([(key, 60_000)]) is None
        assert await direct.get(key) == b"2"  # applied once, and only once
    finally:
        await proxy.cut()
        await direct.delete(key)
        await redis.aclose()
        await direct.aclose()


async def test_user_limits_hold_across_processes_and_fail_open_without_redis() -> None:
    user = secrets.randbits(62)
    one, two = connect_redis(REDIS_URL), connect_redis(REDIS_URL)
    limit: dict[Action, Limit] = {"post": Limit(3, 60)}
    try:
        # Two instances, one shared count.
        await UserLimits(RedisCounters(one), limit).take("post", user)
        await UserLimits(RedisCounters(two), limit).take("post", user)
        await UserLimits(RedisCounters(one), limit).take("post", user)
        with pytest.raises(ResourceExhausted) as error:
            await UserLimits(RedisCounters(two), limit).take("post", user)
        assert 1 <= error.value.retry_after_seconds <= 60
    finally:
        await one.delete(limit_key("post", user))
        await one.aclose()
        await two.aclose()
    down = connect_redis("redis://127.0.0.1:1/0")
    limits = UserLimits(RedisCounters(down), {"post": Limit(1, 60)})
    started = time.monotonic()
    for _ in range(5):
        await limits.take("post", user)  # allowed: availability first
    assert time.monotonic() - started < 5
    await down.aclose()


# ---- failed logins per client address, on the service ports ------------------------------


@pytest.fixture
async def graph() -> AsyncIterator[graph_pb2_grpc.GraphServiceAsyncStub]:
    (first, *_) = topology.instances(next(s for s in topology.SERVICES if s.name == "graph_svc"))
    async with grpc.aio.insecure_channel(f"{topology.HOST}:{first.port}") as channel:
        yield graph_pb2_grpc.GraphServiceStub(channel)


async def login(stub: graph_pb2_grpc.GraphServiceAsyncStub, name: str, password: str, address: str) -> grpc.StatusCode:
    try:
        await stub.CreateSession(
            graph_pb2.CreateSessionRequest(username=name, password=password),
            metadata=((CLIENT_ADDRESS_HEADER, address),),
            timeout=10,
        )
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
            # grpc.aio hands back a Metadata (its stubs say a tuple of pairs).
            seconds = cast(grpc.aio.Metadata, error.trailing_metadata()).get_all("retry-after")
            assert len(seconds) == 1 and int(str(seconds[0])) >= 1
        return error.code()
    return grpc.StatusCode.OK


async def test_guessing_from_one_address_does_not_lock_the_owner_out_elsewhere(
    graph: graph_pb2_grpc.GraphServiceAsyncStub,
) -> None:
    name, attacker, owner = unique_name("own"), fresh_address(), fresh_address()
    await graph.CreateUser(graph_pb2.CreateUserRequest(username=name, password=PASSWORD), timeout=10)
    for _ in range(LOGIN_FAILURES):
        assert await login(graph, name, "wrong horse battery", attacker) == grpc.StatusCode.UNAUTHENTICATED
    # The attacker keeps trying; refused attempts are not counted against the account.
    for _ in range(3 * LOGIN_FAILURES):
        assert await login(graph, name, PASSWORD, attacker) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await login(graph, name, PASSWORD, owner) == grpc.StatusCode.OK


async def test_one_address_spraying_many_accounts_is_stopped_without_stopping_others(
    graph: graph_pb2_grpc.GraphServiceAsyncStub,
) -> None:
    sprayer, bystander = fresh_address(), fresh_address()
    limit = asyncio.Semaphore(16)

    async def spray(_: int) -> grpc.StatusCode:
        async with limit:
            return await login(graph, unique_name("spray"), "password1", sprayer)

    codes = await asyncio.gather(*(spray(i) for i in range(ADDRESS_FAILURES)))
    assert set(codes) == {grpc.StatusCode.UNAUTHENTICATED}
    name = unique_name("by")
    await graph.CreateUser(graph_pb2.CreateUserRequest(username=name, password=PASSWORD), timeout=10)
    assert await login(graph, name, PASSWORD, sprayer) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await login(graph, name, PASSWORD, bystander) == grpc.StatusCode.OK
