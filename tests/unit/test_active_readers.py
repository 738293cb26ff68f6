"""Push only to those who read (feed_svc/activity.py): the fan-out worker skips
followers who have not read for the window, drops their Redis timeline, and
their next read rebuilds it with the same tweets an active follower has; a
missing or lost record means "push". Real Fanout, HomeFeed and FeedCache over
the in-memory fakes of test_feed_rules."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import cast

from common.keys import feed_key
from feed_svc.activity import (
    DAY_SECONDS,
    RECORD_EVERY_SECONDS,
    RECORD_TTL_SECONDS,
    TIMELINE_GRACE_DAYS,
    ActiveReaders,
    ReadMarks,
    read_record_key,
    rebuilt_timeline,
    split_by_activity,
)
from feed_svc.cache import FeedCache
from feed_svc.fanout import Fanout
from feed_svc.store import CelebrityStore
from tests.unit.test_feed_rules import THRESHOLD, World, newest_first
from tests.unit.test_redis_cluster_safety import client

WINDOW_DAYS = 30.0
AUTHOR, ACTIVE, AWAY, NEWCOMER = 101, 201, 202, 203


class WallClock:
    """The worker's clock; it starts at the wall clock feed_svc's reads record with."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def reading_world() -> tuple[World, WallClock]:
    """A World whose fan-out worker pushes only to readers."""
    world = World()
    clock = WallClock()
    world.fanout = Fanout(
        world.cache,
        cast(CelebrityStore, world.store),
        world.graph.follower_count,
        world.graph.follower_page,
        world.tweets.recent_ids,
        THRESHOLD,
        activity=ActiveReaders(world.cache, WINDOW_DAYS, clock),
    )
    return world, clock


def age(world: World, user_id: int, clock: WallClock, days: float) -> None:
    """The reader's last read was `days` ago (what time passing does to the record)."""
    world.redis.data[read_record_key(user_id)] = str(int((clock.now - days * DAY_SECONDS) * 1000)).encode()


def last_read_ms(world: World, user_id: int) -> int | None:
    raw = world.redis.data.get(read_record_key(user_id))
    return None if raw is None else int(raw)


# ---- pure rules --------------------------------------------------------------------------


def test_followers_are_split_by_their_last_read() -> None:
    now, window = 10_000_000, 1_000
    split = split_by_activity([1, 2, 3, 4], [now - 10, None, now - 1_001, now - 1_000], now, window)
    assert split == ([1, 4], [2], [3])


def test_a_reader_is_recorded_at_most_once_per_interval_unless_the_write_failed() -> None:
    clock = WallClock()
    marks = ReadMarks(clock=clock)
    assert marks.due(7) and not marks.due(7)
    clock.now += RECORD_EVERY_SECONDS - 1
    assert not marks.due(7)
    clock.now += 1
    assert marks.due(7)
    marks.forget(7)
    assert marks.due(7)


def test_the_memory_of_recorded_readers_is_bounded() -> None:
    marks = ReadMarks(capacity=2)
    assert marks.due(1) and marks.due(2) and marks.due(3)
    assert marks.due(1)  # forgotten, so written again: never skipped by mistake


def test_a_rebuilt_timeline_merges_every_accounts_newest_tweets_newest_first() -> None:
    assert rebuilt_timeline([(9, 1), (5, 1), (8, 2), (5, 1), (1, 2)], size=3, depth=5) == [9, 8, 5]


def test_a_rebuilt_timeline_stops_where_an_account_may_have_tweets_not_pulled() -> None:
    # Account 1 gave all 3 it was asked for: its 4th newest may lie between 5 and 1,
    # so the timeline ends at 5 instead of showing 2's tweet 1 after a gap.
    pulled = [(9, 1), (7, 1), (5, 1), (8, 2), (1, 2)]
    assert rebuilt_timeline(pulled, size=10, depth=3) == [9, 8, 7, 5]
    assert rebuilt_timeline(pulled, size=10, depth=4) == [9, 8, 7, 5, 1]  # every account gave less: complete


# ---- the worker ----------------------------------------------------------------------------


async def test_a_follower_away_longer_than_the_window_is_not_pushed_to_and_loses_their_cached_timeline() -> None:
    world, clock = reading_world()
    for follower in (ACTIVE, AWAY):
        await world.follow(follower, AUTHOR)
        await world.page(follower)  # both read once: recorded, timelines built
    await world.post(AUTHOR)
    assert feed_key("timeline", AWAY) in world.redis.data
    age(world, ACTIVE, clock, WINDOW_DAYS - 1)
    age(world, AWAY, clock, WINDOW_DAYS + 1)

    tweet = await world.post(AUTHOR)

    assert tweet in world.cached(ACTIVE)
    assert feed_key("timeline", AWAY) not in world.redis.data  # dropped: rebuilt at the next read


async def test_an_account_without_a_record_is_pushed_to_and_its_clock_starts() -> None:
    world, clock = reading_world()
    await world.follow(NEWCOMER, AUTHOR)
    tweet = await world.post(AUTHOR)
    assert tweet in world.cached(NEWCOMER)
    assert last_read_ms(world, NEWCOMER) == int(clock.now * 1000)
    assert world.redis.ttl_ms[read_record_key(NEWCOMER)] == RECORD_TTL_SECONDS * 1000

    clock.now += 1000
    await world.post(AUTHOR)  # the clock is not restarted by later pushes
    assert last_read_ms(world, NEWCOMER) == int((clock.now - 1000) * 1000)

    clock.now += WINDOW_DAYS * DAY_SECONDS  # never read in a whole window: no longer pushed to
    later = await world.post(AUTHOR)
    assert later not in world.cached(NEWCOMER)


async def test_a_lost_record_means_push() -> None:
    world, clock = reading_world()
    await world.follow(AWAY, AUTHOR)
    age(world, AWAY, clock, WINDOW_DAYS + 1)
    del world.redis.data[read_record_key(AWAY)]  # Redis lost it
    tweet = await world.post(AUTHOR)
    assert tweet in world.cached(AWAY)


# ---- the returning reader ------------------------------------------------------------------


async def test_a_returning_reader_sees_what_an_active_follower_sees_and_is_pushed_to_again() -> None:
    world, clock = reading_world()
    for follower in (ACTIVE, AWAY):
        await world.follow(follower, AUTHOR)
        await world.page(follower)
    before_away = [await world.post(AUTHOR) for _ in range(3)]
    age(world, AWAY, clock, WINDOW_DAYS + 5)
    while_away = [await world.post(AUTHOR) for _ in range(4)]
    assert not set(while_away) & world.cached(AWAY)

    returned = await world.read_through(AWAY, 2)

    assert returned == await world.read_through(ACTIVE, 2)
    assert returned == newest_first(before_away + while_away)
    recorded = last_read_ms(world, AWAY)
    assert recorded is not None and recorded >= int(clock.now * 1000)  # recorded again, so pushed to again
    assert set(while_away) <= world.cached(AWAY)  # written back to Redis

    after = await world.post(AUTHOR)
    assert after in world.cached(AWAY)
    assert (await world.page(AWAY))[0][0] == after


async def test_a_timeline_redis_lost_is_rebuilt_with_the_tweets_pushed() -> None:
    world, _ = reading_world()
    await world.follow(ACTIVE, AUTHOR)
    pushed = [await world.post(AUTHOR) for _ in range(5)]
    first = (await world.page(ACTIVE))[0]
    world.redis.data.pop(feed_key("timeline", ACTIVE))  # no other copy: the pull alone rebuilds it
    assert (await world.page(ACTIVE))[0] == first == newest_first(pushed)
    assert world.cached(ACTIVE) == set(pushed)


async def test_a_rebuild_keeps_what_the_worker_pushed_into_the_timeline_meanwhile() -> None:
    world, _ = reading_world()
    await world.follow(ACTIVE, AUTHOR)
    pushed = [await world.post(AUTHOR) for _ in range(3)]
    world.redis.data.pop(feed_key("timeline", ACTIVE))
    late: list[int] = []
    pull = world.tweets.recent_ids

    async def posted_after_the_pull(authors: Sequence[int], before: int, limit: int) -> list[tuple[int, int]]:
        found = await pull(authors, before, limit)
        if AUTHOR in authors and not late:  # pushed before the rebuild writes, too new for its pull
            late.append(await world.post(AUTHOR))
        return found

    world.feed._recent_ids = posted_after_the_pull
    assert (await world.page(ACTIVE))[0] == newest_first([*pushed, *late]) and late


async def test_a_rebuild_writes_nothing_while_redis_does_not_take_the_read_record() -> None:
    world, _ = reading_world()
    await world.follow(ACTIVE, AUTHOR)
    pushed = [await world.post(AUTHOR) for _ in range(3)]
    world.redis.data.pop(feed_key("timeline", ACTIVE))

    async def refused(user_id: int) -> None:  # what `tolerant` answers while Redis does not
        return None

    world.cache.mark_read = refused  # type: ignore[assignment,method-assign]
    # A timeline built now could miss a tweet the worker skips meanwhile (it still sees the
    # old record): the pull is served and nothing is cached.
    assert (await world.page(ACTIVE))[0] == newest_first(pushed)
    assert feed_key("timeline", ACTIVE) not in world.redis.data


# ---- a timeline's lifetime -----------------------------------------------------------------


async def test_a_timeline_lives_a_day_past_the_window_after_its_readers_last_recorded_read() -> None:
    world, _ = reading_world()
    ttl_ms = int((WINDOW_DAYS + TIMELINE_GRACE_DAYS) * DAY_SECONDS * 1000)
    cache = FeedCache(client(world.redis), 800, 60, 5, timeline_ttl=(WINDOW_DAYS + TIMELINE_GRACE_DAYS) * DAY_SECONDS)
    key = feed_key("timeline", ACTIVE)

    await cache.rebuild(ACTIVE, [5, 6])  # a read's rebuild: the lifetime starts
    assert world.redis.ttl_ms[key] == ttl_ms
    world.redis.ttl_ms[key] = 1_000  # nearly gone: the reader reads again
    assert await cache.mark_read(ACTIVE)
    assert world.redis.ttl_ms[key] == ttl_ms

    # A timeline made by pushes alone (a follower who never read) gets one at its trim
    # (a backfill always trims); a push never shortens one a read renewed.
    await cache.push([NEWCOMER], [7, 8])
    assert world.redis.ttl_ms[feed_key("timeline", NEWCOMER)] == ttl_ms
    world.redis.ttl_ms[key] = ttl_ms + 5
    await cache.push([ACTIVE], [9, 10])
    assert world.redis.ttl_ms[key] == ttl_ms + 5


async def test_without_a_lifetime_timelines_have_none() -> None:
    world, _ = reading_world()  # its FeedCache has no timeline lifetime
    await world.cache.rebuild(ACTIVE, [5])
    await world.cache.push([NEWCOMER], [7, 8])
    assert await world.cache.mark_read(ACTIVE)
    assert not set(world.redis.ttl_ms) & {feed_key("timeline", u) for u in (ACTIVE, NEWCOMER)}
