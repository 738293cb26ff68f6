"""The hidden-author cache (common/hidden.py) with graph_svc's real block and
mute rules over in-memory stores: a miss fills, a change invalidates, and no
interleaving of a reader's read-fetch-fill with a writer's
invalidate-write-invalidate leaves a set older than the acknowledged change."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from typing import Any, cast

import pytest
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError

from common.errors import Unavailable
from common.hidden import (
    HiddenAuthorsCache,
    HiddenInvalidator,
    Read,
    decode,
    encode,
    hidden_key,
    hidden_version_key,
    new_token,
)
from graph_svc.relations import Relations
from tests.unit.test_follow_counts import Clock
from tests.unit.test_relations import World


class Steps:
    """Holds each named step until the test lets it run, so a test picks the interleaving."""

    def __init__(self) -> None:
        self.enabled = False
        self._go: dict[str, asyncio.Event] = {}
        self._done: dict[str, asyncio.Event] = {}

    def _events(self, name: str) -> tuple[asyncio.Event, asyncio.Event]:
        return self._go.setdefault(name, asyncio.Event()), self._done.setdefault(name, asyncio.Event())

    async def step(self, name: str) -> None:
        if not self.enabled:
            return
        go, _ = self._events(name)
        await go.wait()

    def finished(self, name: str) -> None:
        if self.enabled:
            self._events(name)[1].set()

    async def run(self, name: str) -> None:
        go, done = self._events(name)
        go.set()
        await asyncio.wait_for(done.wait(), 1.0)


class FakeHiddenStore:
    """The four scripts of RedisHiddenStore, each atomic, in memory."""

    def __init__(self, steps: Steps) -> None:
        self.sets: dict[int, frozenset[int]] = {}
        self.tokens: dict[int, str] = {}
        self.steps = steps
        self.down = False
        self.fail_invalidation: int | None = None  # the n-th invalidate (1-based) raises
        self.invalidations = 0

    def _check(self) -> None:
        if self.down:
            raise RedisConnectionError("redis is down")

    async def read(self, user_id: int) -> Read:
        await self.steps.step("read")
        self._check()
        try:
            if user_id in self.sets:
                return Read(self.sets[user_id], "")
            return Read(None, self.tokens.setdefault(user_id, new_token()))
        finally:
            self.steps.finished("read")

    async def fill(self, user_id: int, version: str, hidden: frozenset[int], ttl_seconds: float) -> bool:
        await self.steps.step("fill")
        self._check()
        try:
            if self.tokens.get(user_id) != version:
                return False
            self.sets[user_id] = hidden
            return True
        finally:
            self.steps.finished("fill")

    async def reload_token(self, user_id: int, claim: str, due_ms: int) -> str | None:
        self._check()
        return self.tokens.get(user_id) if user_id in self.sets else None

    async def end_reload(self, user_id: int, claim: str) -> None:
        pass  # one process: no claims

    async def invalidate(self, user_id: int) -> None:
        self.invalidations += 1
        name = f"invalidate{self.invalidations}"
        await self.steps.step(name)
        try:
            self._check()
            if self.invalidations == self.fail_invalidation:
                raise RedisConnectionError("redis went away")
            self.sets.pop(user_id, None)
            self.tokens[user_id] = new_token()
        finally:
            self.steps.finished(name)


class Setup:
    """Users 1 and 2; a reader's cache for user 1 and a writer that invalidates the same store."""

    def __init__(self) -> None:
        self.world = World([1, 2])
        self.steps = Steps()
        self.store = FakeHiddenStore(self.steps)
        self.relations = Relations(
            cast(Any, self.world.relation_store),
            self.world.graph,
            clock=Clock(),
            hidden_cache=HiddenInvalidator(self.store),
        )
        self.fetches = 0
        self.cache = HiddenAuthorsCache(self.store, self.fetch, ttl_seconds=600, redis=None)

    async def fetch(self, user_id: int) -> frozenset[int]:
        """graph_svc's ListHiddenAuthorIds, read from the rows."""
        await self.steps.step("fetch")
        self.fetches += 1
        hidden = await self.relations.hidden_authors(user_id)
        self.steps.finished("fetch")
        return frozenset((*hidden.muted, *hidden.blocked, *hidden.blocked_by))

    def db_write(self) -> None:
        """Holds the writer's CQL (claim, list rows) until the test lets it run."""
        store = self.world.relation_store
        claim = store.claim

        async def gated_claim(*args: Any) -> Any:
            await self.steps.step("db")
            try:
                return await claim(*args)
            finally:
                self.steps.finished("db")

        store.claim = gated_claim  # type: ignore[method-assign,assignment]


async def test_a_miss_fills_and_the_next_read_is_a_hit() -> None:
    setup = Setup()
    await setup.relations.mute(1, 2)
    assert await setup.cache.hidden(1) == frozenset({2})
    assert await setup.cache.hidden(1) == frozenset({2})
    assert setup.fetches == 1
    assert setup.store.sets[1] == frozenset({2})


@pytest.mark.parametrize(
    ("change", "undo", "reader", "hidden_after"),
    [
        ("mute", "unmute", 1, {2}),
        ("block", "unblock", 1, {2}),
        ("block", "unblock", 2, {1}),  # the blocked user's set (blocked_by) changes too
    ],
)
async def test_each_change_applies_to_the_next_read(
    change: str, undo: str, reader: int, hidden_after: set[int]
) -> None:
    setup = Setup()
    assert await setup.cache.hidden(reader) == frozenset()  # cached empty
    await getattr(setup.relations, change)(1, 2)
    assert await setup.cache.hidden(reader) == frozenset(hidden_after)
    await getattr(setup.relations, undo)(1, 2)
    assert await setup.cache.hidden(reader) == frozenset()
    assert setup.fetches == 3


def interleavings() -> Iterator[tuple[str, ...]]:
    """Every order of a reader's (read, fetch, fill) among a writer's (invalidate, db write, invalidate)."""
    reader = ("read", "fetch", "fill")
    writer = ("invalidate1", "db", "invalidate2")
    for positions in itertools.combinations(range(6), 3):
        r, w = iter(reader), iter(writer)
        yield tuple(next(r) if i in positions else next(w) for i in range(6))


@pytest.mark.parametrize("order", list(interleavings()), ids="-".join)
async def test_no_fill_from_before_a_change_outlives_its_acknowledgement(order: tuple[str, ...]) -> None:
    setup = Setup()
    setup.db_write()
    setup.steps.enabled = True
    reading = asyncio.create_task(setup.cache.hidden(1))
    muting = asyncio.create_task(setup.relations.mute(1, 2))
    for name in order:
        await setup.steps.run(name)
    await asyncio.wait_for(asyncio.gather(reading, muting), 1.0)
    setup.steps.enabled = False

    # The mute is acknowledged: whatever the reader filled, the next read sees it.
    assert await setup.cache.hidden(1) == frozenset({2})
    assert setup.store.sets[1] == frozenset({2})


def test_the_interleavings_include_the_fill_that_read_the_rows_before_the_write() -> None:
    orders = list(interleavings())
    assert len(orders) == 20
    # Read after the first invalidation, fetch before the write, fill before the second invalidation:
    # the fill lands, so only the second invalidation removes it.
    assert ("invalidate1", "read", "fetch", "db", "fill", "invalidate2") in orders


async def test_a_set_cached_before_a_change_is_gone_even_when_the_second_invalidation_fails() -> None:
    setup = Setup()
    assert await setup.cache.hidden(1) == frozenset()
    setup.store.fail_invalidation = setup.store.invalidations + 2
    with pytest.raises(Unavailable):
        await setup.relations.mute(1, 2)  # 503: the client retries
    assert await setup.cache.hidden(1) == frozenset({2})


async def test_a_block_whose_last_invalidation_fails_has_removed_both_follows() -> None:
    setup = Setup()
    await setup.world.graph.follow(1, 2)
    await setup.world.graph.follow(2, 1)
    setup.store.fail_invalidation = setup.store.invalidations + 3  # the block's second round (users 1, 2)
    with pytest.raises(Unavailable):
        await setup.relations.block(1, 2)
    assert await setup.world.counts(1) == (0, 0)
    assert await setup.world.counts(2) == (0, 0)


async def test_a_change_is_refused_before_any_row_is_written_while_redis_is_down() -> None:
    setup = Setup()
    setup.store.down = True
    with pytest.raises(Unavailable) as refused:
        await setup.relations.block(1, 2)
    assert refused.value.code.name == "UNAVAILABLE"
    assert await setup.world.relation_store.since("block", 1, 2) is None


async def test_a_repeated_unblock_invalidates_so_a_retry_repairs_a_lost_invalidation() -> None:
    setup = Setup()
    await setup.relations.block(1, 2)
    await setup.relations.unblock(1, 2)
    setup.store.sets[1] = frozenset({2})  # as if the unblock's second invalidation was lost
    await setup.relations.unblock(1, 2)  # the client's retry: no row left to remove
    assert await setup.cache.hidden(1) == frozenset()


async def test_reads_while_redis_is_down_come_from_graph_svc_and_fill_nothing() -> None:
    setup = Setup()
    await setup.relations.mute(1, 2)
    setup.store.down = True
    assert await setup.cache.hidden(1) == frozenset({2})
    assert await setup.cache.hidden(1) == frozenset({2})
    assert setup.fetches == 2
    assert setup.store.sets == {}


def test_a_users_two_keys_share_one_cluster_slot_and_users_spread() -> None:
    for user_id in (1, 7, 123456789012345678):
        assert key_slot(hidden_key(user_id).encode()) == key_slot(hidden_version_key(user_id).encode())
    assert len({key_slot(hidden_key(u).encode()) for u in range(1, 200)}) > 100


def test_the_set_encoding_round_trips_including_empty() -> None:
    for hidden in (frozenset(), frozenset({5}), frozenset({3, 1, 2**62})):
        assert decode(encode(hidden).encode()) == hidden
    assert encode(frozenset()) == ""
