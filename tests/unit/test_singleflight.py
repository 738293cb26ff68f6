"""common/singleflight.py: concurrent misses share one load, and rebuilds are bounded;
tweet_svc's body and recent-ids fills and the hidden-authors cache go through it."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from common import deadlines
from common.hidden import HiddenAuthorsCache, Read, new_token
from common.ids import IdGenerator
from common.singleflight import BackgroundRefresh, Rebuilds, SingleFlight
from feed_svc.fanout import _one_at_a_time as fanout_one_at_a_time
from graph_svc.domain import SharedRuns
from tests.faults import wait_for_async
from tweet_svc.cache import TweetCache
from tweet_svc.domain import Tweets
from tweet_svc.store import TweetRecord, TweetStore


class Store:
    """Loads that wait until released, so a test decides when each one ends."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.release = asyncio.Event()
        self.running = 0
        self.most_running = 0
        self.fail: Exception | None = None

    async def load(self, keys: list[int]) -> Mapping[int, str]:
        self.calls.append(keys)
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await self.release.wait()
        finally:
            self.running -= 1
        if self.fail is not None:
            raise self.fail
        return {k: f"v{k}" for k in keys if k % 10 != 0}  # multiples of 10 do not exist


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_concurrent_callers_of_one_key_share_one_load() -> None:
    store = Store()
    flight: SingleFlight[int, str] = SingleFlight("test", Rebuilds(4))
    callers = [asyncio.create_task(flight.load_many([7], store.load)) for _ in range(50)]
    await settle()
    assert store.calls == [[7]]
    store.release.set()
    results = await asyncio.gather(*callers)
    assert [r.values for r in results] == [{7: "v7"}] * 50
    assert results[0].joined == frozenset()
    assert all(r.joined == {7} for r in results[1:])
    assert store.calls == [[7]]
    assert flight.in_flight() == 0


async def test_nothing_is_kept_once_a_load_ends() -> None:
    store = Store()
    store.release.set()
    flight: SingleFlight[int, str] = SingleFlight("test", Rebuilds(4))
    assert (await flight.load_many([1], store.load)).values == {1: "v1"}
    assert (await flight.load_many([1], store.load)).values == {1: "v1"}
    assert store.calls == [[1], [1]]


async def test_overlapping_batches_load_only_the_keys_not_in_flight() -> None:
    store = Store()
    flight: SingleFlight[int, str] = SingleFlight("test", Rebuilds(4))
    first = asyncio.create_task(flight.load_many([1, 2, 3], store.load))
    await settle()
    second = asyncio.create_task(flight.load_many([3, 2, 4, 10], store.load))
    await settle()
    assert store.calls == [[1, 2, 3], [4, 10]]
    store.release.set()
    assert (await first).values == {1: "v1", 2: "v2", 3: "v3"}
    later = await second
    assert later.values == {3: "v3", 2: "v2", 4: "v4"}  # 10 was not found
    assert later.joined == {2, 3}


async def test_an_error_reaches_every_waiter_and_is_not_kept() -> None:
    store = Store()
    store.fail = ConnectionError("store unreachable")
    flight: SingleFlight[int, str] = SingleFlight("test", Rebuilds(4))

    async def five() -> str:
        return (await store.load([5]))[5]

    callers = [asyncio.create_task(flight.load(5, five)) for _ in range(10)]
    await settle()
    store.release.set()
    results = await asyncio.gather(*callers, return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    assert len(store.calls) == 1
    store.fail = None
    assert await flight.load(5, five) == "v5"
    assert len(store.calls) == 2


async def test_distinct_keys_load_independently() -> None:
    slow, fast = Store(), Store()
    flight: SingleFlight[int, str] = SingleFlight("test", Rebuilds(4))
    waiting = asyncio.create_task(flight.load_many([1], slow.load))
    await settle()
    fast.release.set()
    assert (await flight.load_many([2], fast.load)).values == {2: "v2"}  # not behind key 1
    assert not waiting.done()
    slow.release.set()
    assert (await waiting).values == {1: "v1"}
    assert slow.calls == [[1]] and fast.calls == [[2]]


async def test_rebuilds_are_bounded_and_the_excess_waits_its_turn() -> None:
    store = Store()
    rebuilds = Rebuilds(3)
    bodies: SingleFlight[int, str] = SingleFlight("bodies", rebuilds)
    recent: SingleFlight[int, str] = SingleFlight("recent", rebuilds)  # one bound per process
    callers = [asyncio.create_task(bodies.load_many([k], store.load)) for k in range(1, 6)]
    callers += [asyncio.create_task(recent.load_many([k], store.load)) for k in range(11, 15)]
    await settle()
    assert store.running == 3 and rebuilds.running == 3
    store.release.set()
    results = await asyncio.gather(*callers)
    assert store.most_running == 3
    assert len(store.calls) == 9
    assert [r.values for r in results[:5]] == [{k: f"v{k}"} for k in range(1, 6)]


async def test_a_caller_leaving_does_not_cancel_a_load_others_wait_on() -> None:
    store = Store()
    flight: SingleFlight[int, str] = SingleFlight("test", Rebuilds(4))
    leader = asyncio.create_task(flight.load_many([1], store.load))
    follower = asyncio.create_task(flight.load_many([1], store.load))
    await settle()
    leader.cancel()
    await settle()
    store.release.set()
    assert (await follower).values == {1: "v1"}
    with pytest.raises(asyncio.CancelledError):
        await leader
    assert store.calls == [[1]]


async def test_a_load_no_one_waits_for_is_dropped_before_it_starts() -> None:
    store = Store()
    flight: SingleFlight[int, str] = SingleFlight("test", Rebuilds(1))
    busy = asyncio.create_task(flight.load_many([1], store.load))  # holds the only slot
    queued = asyncio.create_task(flight.load_many([2], store.load))
    await settle()
    queued.cancel()
    await settle()
    assert flight.in_flight() == 1  # key 2 is no longer in flight: a new caller loads it anew
    store.release.set()
    await busy
    assert store.calls == [[1]]  # the abandoned load never ran


def test_rebuilds_need_at_least_one_slot() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Rebuilds(0)


# ---- tweet_svc's fills ----------------------------------------------------------------------


class FillStore:
    """The CQL store's reads a fill makes, held until released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.body_reads: list[list[int]] = []
        self.recent_reads: list[int] = []
        self.posts: dict[int, list[int]] = {7: [30, 20, 10]}

    async def bodies(self, tweet_ids: Sequence[int]) -> dict[int, TweetRecord]:
        self.body_reads.append(list(tweet_ids))
        await self.release.wait()
        return {t: record(t) for t in tweet_ids if t != 404}

    async def newest_tweet_ids(self, author_ids: Sequence[int], limit: int) -> dict[int, list[int]]:
        self.recent_reads += author_ids
        ids = {a: list(self.posts.get(a, []))[:limit] for a in author_ids}  # read as the load starts
        await self.release.wait()
        return ids

    async def like_counts(self, tweet_ids: Sequence[int]) -> dict[int, int]:
        return {}


class FillCache:
    """TweetCache's read-path calls over dicts: recent sets answer once filled."""

    def __init__(self) -> None:
        self.bodies: dict[int, TweetRecord] = {}
        self.recent_sets: dict[int, set[int]] = {}
        self.filled: set[int] = set()

    async def get(self, tweet_ids: Sequence[int]) -> tuple[dict[int, TweetRecord], set[int]]:
        return {t: self.bodies[t] for t in tweet_ids if t in self.bodies}, set()

    async def put(self, tweets: Sequence[TweetRecord]) -> None:
        self.bodies.update((t.tweet_id, t) for t in tweets)

    async def like_counts_due(self, tweet_ids: Sequence[int]) -> tuple[dict[int, int], set[int]]:
        return {}, set()

    async def like_counts(self, tweet_ids: Sequence[int]) -> dict[int, int]:
        return {}

    async def fill_like_counts(self, counts: dict[int, int]) -> None:
        return None

    async def recent(self, authors: Sequence[int], limit: int) -> dict[int, list[int]]:
        return {a: sorted(self.recent_sets[a], reverse=True)[:limit] for a in authors if a in self.filled}

    async def fill_recent(self, recent: dict[int, list[int]]) -> None:
        for author, ids in recent.items():
            self.recent_sets.setdefault(author, set()).update(ids)  # merged, as ZADD does
            self.filled.add(author)

    async def add_recent(self, author_id: int, tweet_id: int) -> None:
        self.recent_sets.setdefault(author_id, set()).add(tweet_id)


def record(tweet_id: int) -> TweetRecord:
    return TweetRecord(tweet_id, 7, "seven", f"tweet {tweet_id}", datetime(2026, 11, 30, tzinfo=UTC))


def tweets(store: FillStore, cache: FillCache) -> Tweets:
    unused = cast(Any, None)
    return Tweets(cast(TweetStore, store), cast(TweetCache, cache), unused, unused, unused, IdGenerator(1))


async def test_concurrent_reads_of_missing_bodies_make_one_store_read() -> None:
    store, cache = FillStore(), FillCache()
    domain = tweets(store, cache)
    reads = [asyncio.create_task(domain.hydrate([1, 2, 404])) for _ in range(20)]
    await settle()
    assert store.body_reads == [[1, 2, 404]]
    store.release.set()
    pages = await asyncio.gather(*reads)
    assert all([t.tweet_id for t in page] == [1, 2] for page in pages)
    assert cache.bodies.keys() == {1, 2}  # filled once, by the load
    assert store.body_reads == [[1, 2, 404]]


async def test_concurrent_misses_of_an_author_make_one_store_read_and_see_a_post_made_meanwhile() -> None:
    store, cache = FillStore(), FillCache()
    domain = tweets(store, cache)
    first = asyncio.create_task(domain.recent_ids([7], 0, 10))
    await settle()
    # A post acknowledged while the load runs: in the store and added to the cached set.
    store.posts[7].insert(0, 40)
    await cache.add_recent(7, 40)
    later = [asyncio.create_task(domain.recent_ids([7], 0, 10)) for _ in range(10)]
    await settle()
    store.release.set()
    assert await first == [(30, 7), (20, 7), (10, 7)]  # began before the post
    assert all(r == [(40, 7), (30, 7), (20, 7), (10, 7)] for r in await asyncio.gather(*later))
    assert store.recent_reads == [7]


async def test_a_load_that_loads_through_another_flight_runs_in_its_own_slot() -> None:
    """Every slot held by loads that each wait on an inner load: the inner loads run
    within their outer one's slot rather than wait for a free one forever."""
    store = Store()
    store.release.set()
    rebuilds = Rebuilds(2)
    following: SingleFlight[int, str] = SingleFlight("following", rebuilds)
    timelines: SingleFlight[int, str] = SingleFlight("timeline", rebuilds)

    async def rebuild(users: list[int]) -> dict[int, str]:
        inner = await following.load_many(users, store.load)
        return {u: f"timeline of {inner.values[u]}" for u in users}

    reads = [timelines.load_many([u], rebuild) for u in (1, 2, 3, 4)]
    results = await asyncio.wait_for(asyncio.gather(*reads), 5)
    assert [r.values for r in results] == [{u: f"timeline of v{u}"} for u in (1, 2, 3, 4)]
    assert rebuilds.running == 0


# ---- the hidden-authors cache (common/hidden.py) ------------------------------------------


class TokenStore:
    """HiddenStore in memory: a set or a token per user."""

    def __init__(self) -> None:
        self.sets: dict[int, frozenset[int]] = {}
        self.tokens: dict[int, str] = {}
        self.pttl_ms: dict[int, int] = {}  # a set's time left, as the read script gives it

    async def read(self, user_id: int) -> Read:
        if user_id in self.sets:
            return Read(self.sets[user_id], "", self.pttl_ms.get(user_id))
        return Read(None, self.tokens.setdefault(user_id, new_token()))

    async def fill(self, user_id: int, version: str, hidden: frozenset[int], ttl_seconds: float) -> bool:
        if self.tokens.get(user_id) != version:
            return False
        self.sets[user_id] = hidden
        return True

    async def invalidate(self, user_id: int) -> None:
        self.sets.pop(user_id, None)
        self.tokens[user_id] = new_token()

    async def reload_token(self, user_id: int, claim: str, due_ms: int) -> str | None:
        return self.tokens.get(user_id) if user_id in self.sets else None

    async def end_reload(self, user_id: int, claim: str) -> None:
        pass  # one process: no claims


async def test_readers_holding_one_token_share_a_fetch_and_a_reader_after_a_block_does_not() -> None:
    store = TokenStore()
    graph = {5: frozenset({8})}  # what graph_svc answers now
    fetched: list[frozenset[int]] = []
    release = asyncio.Event()

    async def fetch(user_id: int) -> frozenset[int]:
        answer = graph[user_id]  # the rows as the fetch reads them
        fetched.append(answer)
        await release.wait()
        return answer

    cache = HiddenAuthorsCache(store, fetch, redis=None)
    before = [asyncio.create_task(cache.hidden(5)) for _ in range(10)]
    await settle()
    assert fetched == [frozenset({8})]
    # A block, acknowledged while that fetch runs: rows written, token replaced.
    graph[5] = frozenset({8, 9})
    await store.invalidate(5)
    after = asyncio.create_task(cache.hidden(5))
    await settle()
    release.set()
    assert await after == frozenset({8, 9})  # never the fetch that began before the block
    assert all(h == frozenset({8}) for h in await asyncio.gather(*before))
    assert fetched == [frozenset({8}), frozenset({8, 9})]
    assert store.sets[5] == frozenset({8, 9})  # the stale fetch's fill was dropped


# ---- background refreshes --------------------------------------------------------------------

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="none")


class Refreshes:
    """A refresh that records its batches (and the request id it ran under); fails when told."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.contexts: list[str] = []
        self.fail = False

    async def refresh(self, keys: list[int]) -> None:
        self.batches.append(keys)
        self.contexts.append(REQUEST_ID.get())
        if self.fail:
            raise ConnectionError("tweet_svc unavailable")


async def drained(refresher: BackgroundRefresh[int]) -> None:
    for _ in range(200):
        await asyncio.sleep(0.005)
        if not refresher.draining():
            return
    raise AssertionError("the refresh never drained")


async def test_due_keys_are_refreshed_after_the_read_in_paced_batches_each_once() -> None:
    seen = Refreshes()
    refresher = BackgroundRefresh("test", seen.refresh, batch=3, interval_seconds=0.01)
    REQUEST_ID.set("a read")
    refresher.request([1, 2, 3, 4])
    refresher.request([4, 5, 2])  # asked by the next read too: once each
    assert seen.batches == []  # nothing runs in the read that asked
    await drained(refresher)
    assert seen.batches == [[1, 2, 3], [4, 5]]
    assert seen.contexts == ["none", "none"]  # not the read's context (its deadline, its request id)


async def test_a_key_just_sent_is_not_asked_again_within_the_cooldown() -> None:
    now = [100.0]
    seen = Refreshes()
    refresher = BackgroundRefresh("test", seen.refresh, interval_seconds=0.01, cooldown_seconds=5, clock=lambda: now[0])
    refresher.request([1])
    await drained(refresher)
    now[0] += 4.9
    refresher.request([1, 2])  # 1 declined or still due: every read would ask again
    await drained(refresher)
    now[0] += 0.2
    refresher.request([1])
    await drained(refresher)
    assert seen.batches == [[1], [2], [1]]


async def test_keys_beyond_the_bound_and_failed_batches_are_dropped_not_retried() -> None:
    seen = Refreshes()
    seen.fail = True
    refresher = BackgroundRefresh("test", seen.refresh, batch=10, interval_seconds=0.01, max_pending=2)
    refresher.request([1, 2, 3])
    await drained(refresher)
    assert seen.batches == [[1, 2]]  # 3 was over the bound; the failed batch is not sent again
    seen.fail = False
    refresher.request([3])
    await drained(refresher)
    assert seen.batches == [[1, 2], [3]]  # the drainer outlived the failure


async def test_a_set_the_read_script_finds_near_its_end_is_loaded_again_after_the_read() -> None:
    """rank_svc's way in (no reads of its own): the read script's PTTL makes a set served
    near its end due, as a feed read's pipeline does; one early in its life is left."""
    store = TokenStore()
    store.tokens[5], store.sets[5] = "t", frozenset({8})
    asked: list[int] = []

    async def fetch(user_id: int) -> frozenset[int]:
        asked.append(user_id)
        return frozenset({8, 9})

    cache = HiddenAuthorsCache(store, fetch, redis=None, reload_after_reads=True)
    store.pttl_ms[5] = 50_000  # most of its 60 s left
    assert await cache.hidden(5) == frozenset({8})
    await asyncio.sleep(0.8)  # a reload batch waits 0.5 s
    assert asked == [], "a set early in its life was loaded again"
    store.pttl_ms[5] = 1_000
    assert await cache.hidden(5) == frozenset({8})  # served as it was

    async def reloaded() -> bool:
        return store.sets[5] == frozenset({8, 9})

    await wait_for_async(reloaded, 5.0, "the set to be loaded again")
    assert asked == [5]


async def test_shared_work_runs_without_the_first_callers_deadline() -> None:
    """A load others join, and a run queued behind another, carry no caller's deadline:
    with the first one's spent (it waited for a slot, or the run before it), every
    statement would get a millisecond and fail for all who joined."""
    seen: list[float | None] = []

    async def load(keys: list[int]) -> dict[int, str]:
        seen.append(deadlines.remaining())
        return {k: "v" for k in keys}

    async def run(key: str) -> None:
        seen.append(deadlines.remaining())

    async def caller() -> None:
        deadlines.set_deadline(0.0)  # spent by the time the shared work starts
        await SingleFlight[int, str]("test", Rebuilds(1)).load_many([1], load)
        await SharedRuns[str](run)("k")
        await fanout_one_at_a_time({}, 1, lambda: run("k"))

    await asyncio.create_task(caller())
    assert seen == [None, None, None]
