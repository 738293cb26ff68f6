"""The hidden-author cache's scripts (common/hidden.py) against the stack's
Redis (a Redis Cluster on the cluster topology): a miss takes a token and
fills under it, a fill under a replaced or lost token never lands, a write
deletes the set, and the set lives HIDDEN_SECONDS."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from common.cache import RedisClient
from common.hidden import (
    HIDDEN_SECONDS,
    VERSION_SECONDS,
    HiddenAuthorsCache,
    HiddenInvalidator,
    RedisHiddenStore,
    hidden_key,
    hidden_version_key,
)
from common.ids import IdGenerator

IDS = IdGenerator(905)


@pytest.fixture
async def user(redis: RedisClient) -> AsyncIterator[int]:
    user_id = IDS.next_id()
    yield user_id
    await redis.delete(hidden_key(user_id))
    await redis.delete(hidden_version_key(user_id))


async def test_a_miss_takes_a_token_and_a_fill_under_it_lands_with_a_ttl(redis: RedisClient, user: int) -> None:
    store = RedisHiddenStore(redis)
    first = await store.read(user)
    assert first.hidden is None and first.version
    assert 0 < await redis.pttl(hidden_version_key(user)) <= VERSION_SECONDS * 1000
    assert (await store.read(user)).version == first.version  # the token is shared until a write

    assert await store.fill(user, first.version, frozenset({3, 1}), HIDDEN_SECONDS)
    assert await redis.get(hidden_key(user)) == b"1,3"
    assert 0 < await redis.pttl(hidden_key(user)) <= HIDDEN_SECONDS * 1000
    assert (await store.read(user)).hidden == frozenset({1, 3})


async def test_an_empty_set_is_cached_as_a_hit(redis: RedisClient, user: int) -> None:
    store = RedisHiddenStore(redis)
    read = await store.read(user)
    assert await store.fill(user, read.version, frozenset(), HIDDEN_SECONDS)
    assert (await store.read(user)).hidden == frozenset()


async def test_a_write_deletes_the_set_and_a_fill_from_before_it_never_lands(redis: RedisClient, user: int) -> None:
    store = RedisHiddenStore(redis)
    writer = HiddenInvalidator(store)
    before = await store.read(user)
    assert await store.fill(user, before.version, frozenset(), HIDDEN_SECONDS)

    await writer.invalidate([user])
    assert await redis.exists(hidden_key(user)) == 0
    assert not await store.fill(user, before.version, frozenset(), HIDDEN_SECONDS)  # read before the write
    assert await redis.exists(hidden_key(user)) == 0

    after = await store.read(user)
    assert after.version != before.version
    assert await store.fill(user, after.version, frozenset({7}), HIDDEN_SECONDS)
    assert (await store.read(user)).hidden == frozenset({7})


async def test_a_fill_under_a_lost_token_never_lands(redis: RedisClient, user: int) -> None:
    store = RedisHiddenStore(redis)
    read = await store.read(user)
    await redis.delete(hidden_version_key(user))  # evicted or expired between the read and the fill
    assert not await store.fill(user, read.version, frozenset({2}), HIDDEN_SECONDS)
    assert await redis.exists(hidden_key(user)) == 0


async def test_the_reader_asks_graph_svc_once_then_serves_from_redis_until_a_write(
    redis: RedisClient, user: int
) -> None:
    rows = {user: frozenset({11})}
    asked: list[int] = []

    async def fetch(user_id: int) -> frozenset[int]:
        asked.append(user_id)
        return rows[user_id]

    store = RedisHiddenStore(redis)
    cache = HiddenAuthorsCache(store, fetch, redis=redis)
    assert await cache.hidden(user) == frozenset({11})
    assert await cache.hidden(user) == frozenset({11})
    assert asked == [user]

    rows[user] = frozenset({11, 12})
    await HiddenInvalidator(store).invalidate([user])
    assert await cache.hidden(user) == frozenset({11, 12})
    assert asked == [user, user]
