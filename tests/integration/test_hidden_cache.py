"""The hidden-author cache's scripts (common/hidden.py) against the stack's
Redis (a Redis Cluster on the cluster topology): a miss takes a token and
fills under it, a fill under a replaced or lost token never lands, a write
deletes the set, the set lives HIDDEN_SECONDS, and one a read serves near its
end is loaded again after the read, never over a write applied meanwhile."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from prometheus_client import REGISTRY

from common.cache import RELOAD_CLAIM_MS, RedisClient
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
from common.keys import reload_claim_key
from tests.faults import wait_for_async

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


def reloads(result: str) -> float:
    return REGISTRY.get_sample_value("chirp_hidden_authors_reloads_total", {"result": result}) or 0.0


class GatedRows:
    """graph_svc's ListHiddenAuthorIds answering with `rows` as they were when asked
    (or raising `failure`), held until `gate` opens."""

    def __init__(self, rows: frozenset[int], failure: Exception | None = None) -> None:
        self.rows = rows
        self.failure = failure
        self.gate = asyncio.Event()
        self.asked = 0

    async def fetch(self, user_id: int) -> frozenset[int]:
        self.asked += 1
        rows = self.rows  # read before the gate: a write after it is not in this answer
        await self.gate.wait()
        if self.failure is not None:
            raise self.failure
        return rows


async def serve_cached(cache: HiddenAuthorsCache, redis: RedisClient, user: int) -> frozenset[int]:
    """A feed read's way in: the set and its PTTL from the read's own pipeline."""
    return await cache.hidden(user, await redis.get(hidden_key(user)), True, await redis.pttl(hidden_key(user)))


async def test_a_set_served_near_its_end_is_loaded_again_after_the_read(redis: RedisClient, user: int) -> None:
    """Sets filled together (a warm-up, a cold start) would expire together, and their
    readers would each wait on graph_svc in the same second. One a read serves near its
    end is loaded again after the read, for a whole lifetime; one earlier in its life
    is left alone."""
    graph = GatedRows(frozenset({11, 12}))
    graph.gate.set()
    store = RedisHiddenStore(redis)
    cache = HiddenAuthorsCache(store, graph.fetch, redis=redis, reload_after_reads=True)
    token = (await store.read(user)).version
    assert await store.fill(user, token, frozenset({11}), 40.0)  # a third through its life: not due
    assert await serve_cached(cache, redis, user) == frozenset({11})
    await asyncio.sleep(1.0)  # a reload batch waits 0.5 s
    assert graph.asked == 0, "a set early in its life was loaded again"

    await redis.pexpire(hidden_key(user), 2_000)  # in its last thirtieth: due for any reader
    assert await serve_cached(cache, redis, user) == frozenset({11})  # served as it was
    await wait_for_async(lambda: _renewed(redis, user), 5.0, "the set to be loaded again")
    assert graph.asked == 1
    assert await redis.get(hidden_key(user)) == b"11,12"


async def test_a_set_a_read_script_serves_near_its_end_is_loaded_again(redis: RedisClient, user: int) -> None:
    """rank_svc sends no reads of its own: the read script gives the set's PTTL with it,
    and a set served near its end is loaded again after the read there too."""
    graph = GatedRows(frozenset({11, 12}))
    graph.gate.set()
    store = RedisHiddenStore(redis)
    cache = HiddenAuthorsCache(store, graph.fetch, redis=redis, reload_after_reads=True)
    token = (await store.read(user)).version
    assert await store.fill(user, token, frozenset({11}), 40.0)
    read = await store.read(user)
    assert read.hidden == frozenset({11}) and read.pttl_ms is not None and 30_000 < read.pttl_ms <= 40_000
    assert await cache.hidden(user) == frozenset({11})
    await asyncio.sleep(1.0)
    assert graph.asked == 0, "a set early in its life was loaded again"

    await redis.pexpire(hidden_key(user), 2_000)
    assert await cache.hidden(user) == frozenset({11})  # served as it was
    await wait_for_async(lambda: _renewed(redis, user), 5.0, "the set to be loaded again")
    assert graph.asked == 1
    assert await redis.get(hidden_key(user)) == b"11,12"


async def _renewed(redis: RedisClient, user: int) -> bool:
    return int(await redis.pttl(hidden_key(user))) > (HIDDEN_SECONDS - 5) * 1000


async def test_a_reload_across_a_block_never_replaces_the_newer_set(redis: RedisClient, user: int) -> None:
    """A block or mute applied while a reload asks graph_svc replaces the token (and
    deletes the set) before it is acknowledged: the reload's older answer never lands,
    not even over a reader's fill made after the block."""
    graph = GatedRows(frozenset({11}))
    store = RedisHiddenStore(redis)
    cache = HiddenAuthorsCache(store, graph.fetch, redis=redis, reload_after_reads=True)
    token = (await store.read(user)).version
    assert await store.fill(user, token, frozenset({11}), 2.0)
    changed = reloads("changed")
    assert await serve_cached(cache, redis, user) == frozenset({11})
    await wait_for_async(lambda: _asked(graph), 5.0, "a reload to start")
    await HiddenInvalidator(store).invalidate([user])  # the block, before its CQL write...
    fresh = await store.read(user)  # ...a reader's miss after it...
    assert await store.fill(user, fresh.version, frozenset({11, 13}), HIDDEN_SECONDS)  # ...fills the new set
    graph.gate.set()
    await wait_for_async(lambda: _counted("changed", changed), 5.0, "the reload to end as dropped")
    assert await redis.get(hidden_key(user)) == b"11,13", "a reload from before a block was stored after it"


async def test_a_reload_that_fails_leaves_the_read_and_the_set_as_they_were(redis: RedisClient, user: int) -> None:
    """graph_svc failing a reload costs the reader nothing: the read is served from the
    cached set, the reload counts as failed, and the set keeps its value and its time
    left and no claim on it, so a later read, in any process, has it reloaded."""
    graph = GatedRows(frozenset({11, 12}), failure=ConnectionError("graph_svc unavailable"))
    store = RedisHiddenStore(redis)
    cache = HiddenAuthorsCache(store, graph.fetch, redis=redis, reload_after_reads=True)
    token = (await store.read(user)).version
    assert await store.fill(user, token, frozenset({11}), 3.0)
    failed = reloads("failed")
    assert await asyncio.wait_for(serve_cached(cache, redis, user), 2.0) == frozenset({11})  # gate still shut
    await wait_for_async(lambda: _asked(graph), 5.0, "a reload to start")
    graph.gate.set()
    await wait_for_async(lambda: _counted("failed", failed), 5.0, "the reload to end as failed")
    assert await redis.get(hidden_key(user)) == b"11"
    pttl = int(await redis.pttl(hidden_key(user)))
    assert 0 < pttl <= 3_000, "a failed reload changed the set's lifetime"
    assert cache.due(user, pttl)
    # Its claim ended with it: another process's read reloads the set at once.
    graph.failure = None
    other = HiddenAuthorsCache(RedisHiddenStore(redis), graph.fetch, redis=redis, reload_after_reads=True)
    assert await serve_cached(other, redis, user) == frozenset({11})
    await wait_for_async(lambda: _renewed(redis, user), 5.0, "another process to load the set again")
    assert graph.asked == 2


async def _asked(graph: GatedRows) -> bool:
    return graph.asked >= 1


async def _counted(result: str, before: float) -> bool:
    return reloads(result) > before


DUE_MS = 3_000  # the earliest any set falls due: a twentieth of its 60 s


async def test_one_process_reloads_a_set_that_several_found_due(redis: RedisClient, user: int) -> None:
    """Every feed_svc instance serving a reader finds the set due; the first to ask claims
    the reload (in the set's slot), the others skip it, and the claim ends with the
    reload. A claim is only taken on a set with a token, and keeps the token alive."""
    store, other = RedisHiddenStore(redis), RedisHiddenStore(redis)
    token = (await store.read(user)).version
    assert await store.fill(user, token, frozenset({11}), 2.0)
    await redis.pexpire(hidden_version_key(user), 1_000)
    claim = reload_claim_key(hidden_key(user))
    try:
        assert await store.reload_token(user, "mine", DUE_MS) == token
        assert await other.reload_token(user, "theirs", DUE_MS) is None
        assert await store.reload_token(user, "mine", DUE_MS) == token  # sent again: its own claim
        assert 0 < await redis.pttl(claim) <= RELOAD_CLAIM_MS
        assert await redis.pttl(hidden_version_key(user)) > VERSION_SECONDS * 1000 - 5_000
        await other.end_reload(user, "theirs")  # not its claim: left alone
        assert await redis.get(claim) == b"mine"
        await store.end_reload(user, "mine")
        assert await redis.exists(claim) == 0
        assert await other.reload_token(user, "theirs", DUE_MS) == token
        await other.end_reload(user, "theirs")
        assert await store.fill(user, token, frozenset({11}), HIDDEN_SECONDS)  # reloaded
        assert await other.reload_token(user, "theirs", DUE_MS) is None, "a set just reloaded was reloaded again"
        await redis.pexpire(hidden_key(user), 2_000)

        await redis.delete(hidden_version_key(user))  # the token lost: nothing to fill under
        assert await store.reload_token(user, "mine", DUE_MS) is None
        await redis.delete(hidden_key(user))  # no set: nothing to reload
        assert await store.reload_token(user, "mine", DUE_MS) is None
        assert await redis.exists(claim) == 0, "a claim was taken with nothing to reload"
    finally:
        await redis.delete(claim)
