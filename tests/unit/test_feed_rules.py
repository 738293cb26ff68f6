"""The home feed's rules, with feed_svc's real HomeFeed, Fanout, CelebrityRegistry
and FeedCache over in-memory fakes of everything they talk to: Redis (the strict
fake of test_redis_cluster_safety), the CQL timeline store, graph_svc and tweet_svc.

Events are applied by calling the Fanout as the worker would, so each test reads
as a story: who follows whom, who posts, what a reader's pages then hold."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Sequence
from typing import Any, cast

import grpc
import pytest
from chirp.tweet.v1 import tweet_pb2
from confluent_kafka import Message
from prometheus_client import REGISTRY

from common.config import ConfigError
from common.ids import IdGenerator, id_time_ms
from common.kafka import TOPIC_FOLLOWS, TOPIC_TWEETS
from common.keys import CELEBRITIES_KEY, TWEET_DELETED, TWEET_DELETED_SECONDS, feed_key, tweet_key
from common.replica_waits import NotReplicated
from feed_svc import config as feed_config
from feed_svc.cache import FeedCache
from feed_svc.fanout import CROSSING_BACKFILL, FOLLOW_BACKFILL, UNFOLLOW_SWEEP, Fanout
from feed_svc.home_feed import CELEBRITY_CACHE_DEPTH, MAX_CELEBRITIES_PER_READ, CelebrityRegistry, HomeFeed
from feed_svc.store import CelebrityStore
from tests.unit.test_redis_cluster_safety import FakeRedis, client

THRESHOLD = 4  # followers that make an author a celebrity
REFRESH_SECONDS = 5.0  # CHIRP_CELEBRITY_CACHE_SECONDS
TIMELINE_SIZE = 800
MOST_AUTHORS_PER_CALL = 500  # tweet_svc's ListRecentTweetIds (BATCH_MAX)
FOLLOWING_TTL_SECONDS = 30.0

# ---- in-memory stand-ins for the CQL store, graph_svc and tweet_svc ------------------------


class MemoryCelebrityStore:
    """The celebrity registry."""

    def __init__(self) -> None:
        self.registry: set[int] = set()
        self.backfills: set[int] = set()  # begun and not finished
        self.before_set_celebrity: list[Any] = []  # hooks run as a mark or unmark starts
        # Marks that undo an unmark which may have failed: transactions whatever a read says
        # (feed_svc/store.py `set_celebrity`).
        self.unread_marks: list[int] = []

    async def is_celebrity(self, author_id: int) -> bool:
        return author_id in self.registry

    async def backfill_begun(self, author_id: int) -> bool:
        return author_id in self.backfills

    async def begin_backfill(self, author_id: int) -> None:
        self.backfills.add(author_id)

    async def end_backfill(self, author_id: int) -> None:
        self.backfills.discard(author_id)

    async def celebrities(self) -> set[int]:
        return set(self.registry)

    async def set_celebrity(self, author_id: int, celebrity: bool, read_first: bool = True) -> None:
        for hook in list(self.before_set_celebrity):
            await hook(author_id, celebrity)
        if celebrity and not read_first:
            self.unread_marks.append(author_id)
        if celebrity:
            self.registry.add(author_id)
        else:
            self.registry.discard(author_id)


class Graph:
    """graph_svc as the feed sees it: follow lists (cut at `list_limit`), counts, follower pages."""

    PAGE = 2  # followers per page, so fan-out walks several pages

    def __init__(self, list_limit: int = 10_000) -> None:
        self.follows: dict[int, set[int]] = {}
        self.list_limit = list_limit

    def followers(self, user_id: int) -> list[int]:
        return sorted(f for f, followees in self.follows.items() if user_id in followees)

    async def follower_count(self, user_id: int) -> int:
        return len(self.followers(user_id))

    async def follower_page(self, user_id: int, token: str) -> tuple[list[int], str, int | None]:
        start = int(token or 0)
        everyone = self.followers(user_id)
        end = start + self.PAGE
        return everyone[start:end], str(end) if end < len(everyone) else "", None if token else len(everyone)

    async def has_edge(self, follower_id: int, followee_id: int) -> bool:
        return followee_id in self.follows.get(follower_id, set())

    async def following_ids(self, user_id: int, among: Sequence[int]) -> tuple[list[tuple[int, int]], bool]:
        followed = sorted(self.follows.get(user_id, set()))
        if among:
            return [(a, len(self.followers(a))) for a in followed if a in set(among)], False
        listed = followed[: self.list_limit]
        return [(a, len(self.followers(a))) for a in listed], len(followed) > self.list_limit


class Tweets:
    """tweet_svc: Snowflake ids one millisecond apart, recent ids per author, batch reads."""

    def __init__(self) -> None:
        clock = iter(range(1_750_000_000_000, 1_760_000_000_000))
        self._ids = IdGenerator(77, lambda: next(clock))
        self.author_of: dict[int, int] = {}
        self.deleted: set[int] = set()

    def burst(self, per_millisecond: int) -> None:
        """From now on `per_millisecond` ids share each millisecond, as under a burst of posts."""
        clock = iter(range(1_770_000_000_000 * per_millisecond, 1_780_000_000_000 * per_millisecond))
        self._ids = IdGenerator(77, lambda: next(clock) // per_millisecond)

    def create(self, author_id: int) -> int:
        tweet_id = self._ids.next_id()
        self.author_of[tweet_id] = author_id
        return tweet_id

    def by(self, author_id: int) -> list[int]:
        """An author's live tweets, newest first."""
        return sorted((t for t, a in self.author_of.items() if a == author_id and t not in self.deleted), reverse=True)

    async def recent_ids(self, authors: Sequence[int], before: int, limit: int) -> list[tuple[int, int]]:
        if len(authors) > MOST_AUTHORS_PER_CALL:
            raise ValueError(f"at most {MOST_AUTHORS_PER_CALL} author ids per call")  # INVALID_ARGUMENT
        return [(t, a) for a in authors for t in [t for t in self.by(a) if not before or t < before][:limit]]

    async def batch_tweets(self, tweet_ids: Sequence[int], viewer_id: int = 0) -> list[tweet_pb2.Tweet]:
        return [
            tweet_pb2.Tweet(tweet_id=t, author_id=self.author_of[t])
            for t in tweet_ids
            if t in self.author_of and t not in self.deleted
        ]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Event:
    """A Kafka message as the fan-out worker receives it."""

    def __init__(self, topic: str, key: int, event: dict[str, Any]) -> None:
        self._topic, self._key, self._value = topic, str(key).encode(), json.dumps(event).encode()

    def topic(self) -> str:
        return self._topic

    def key(self) -> bytes:
        return self._key

    def value(self) -> bytes:
        return self._value

    def offset(self) -> int:
        return 0


class World:
    """One feed_svc process and one fan-out worker over shared in-memory stores."""

    def __init__(self, list_limit: int = 10_000, demote_below: int | None = None) -> None:
        self.demote_below = demote_below
        self.redis = FakeRedis()
        self.cache = FeedCache(client(self.redis), TIMELINE_SIZE, FOLLOWING_TTL_SECONDS, REFRESH_SECONDS)
        self.store = MemoryCelebrityStore()
        self.graph = Graph(list_limit)
        self.tweets = Tweets()
        self.clock = Clock()
        store = cast(CelebrityStore, self.store)
        self.fanout = self.worker(self.graph.follower_count)
        self.registry = CelebrityRegistry(self.cache, store, REFRESH_SECONDS, self.clock)
        self.feed = HomeFeed(
            self.cache,
            store,
            self.graph.following_ids,
            self.tweets.recent_ids,
            self.tweets.batch_tweets,
            THRESHOLD,
            TIMELINE_SIZE,
            self.registry,
        )

    def worker(self, follower_count: Any) -> Fanout:
        store = cast(CelebrityStore, self.store)
        return Fanout(
            self.cache,
            store,
            follower_count,
            self.graph.follower_page,
            self.tweets.recent_ids,
            THRESHOLD,
            demote_below=self.demote_below,
            follows=self.graph.has_edge,
        )

    # events: written where their service writes them, then applied as the worker would

    async def post(self, author_id: int) -> int:
        tweet_id = self.tweets.create(author_id)
        await self.fanout.handle("tweet_created", created_event(tweet_id, author_id))
        return tweet_id

    async def delete(self, tweet_id: int) -> None:
        self.tweets.deleted.add(tweet_id)
        await self.fanout.handle("tweet_deleted", {"tweet_id": tweet_id, "author_id": self.tweets.author_of[tweet_id]})

    async def follow(self, follower_id: int, followee_id: int) -> None:
        self.graph.follows.setdefault(follower_id, set()).add(followee_id)
        await self.fanout.handle("follow", {"follower_id": follower_id, "followee_id": followee_id})

    async def unfollow(self, follower_id: int, followee_id: int) -> None:
        self.graph.follows[follower_id].discard(followee_id)
        await self.fanout.handle("unfollow", {"follower_id": follower_id, "followee_id": followee_id})

    # time and reads

    def pass_time(self, seconds: float) -> None:
        """Advance the registry's clock and expire what Redis would have expired by then."""
        self.clock.now += seconds
        for key, ttl in list(self.redis.ttl_ms.items()):
            if ttl <= seconds * 1000:
                self.redis.data.pop(key, None)
                del self.redis.ttl_ms[key]

    async def page(self, user_id: int, size: int = 100, token: str = "") -> tuple[list[int], str]:
        tweets, next_token = await self.feed.page(user_id, size, token)
        return [t.tweet_id for t in tweets], next_token

    async def every_page(self, user_id: int, size: int) -> list[list[int]]:
        pages, token = [], ""
        while True:
            ids, token = await self.page(user_id, size, token)
            pages.append(ids)
            if not token:
                return pages

    async def read_through(self, user_id: int, size: int) -> list[int]:
        return [t for ids in await self.every_page(user_id, size) for t in ids]

    def state(self) -> Any:
        """What the worker writes, but the follow lists it drops so readers list them afresh."""
        redis = {k: v for k, v in self.redis.data.items() if not k.startswith(feed_key("following", 0)[:-1])}
        return copy.deepcopy((self.store.registry, redis))

    def cached(self, user_id: int) -> set[int]:
        """The pushed timeline in Redis, built or not."""
        members = cast(dict[bytes, float], self.redis.data.get(feed_key("timeline", user_id), {}))
        return {int(m) for m in members if m != b"built"}


def created_event(tweet_id: int, author_id: int) -> dict[str, Any]:
    return {"tweet_id": tweet_id, "author_id": author_id, "created_at_ms": id_time_ms(tweet_id)}


def newest_first(ids: set[int] | list[int]) -> list[int]:
    return sorted(ids, reverse=True)


async def with_followers(world: World, author_id: int, count: int, first: int = 900) -> list[int]:
    followers = list(range(first, first + count))
    for follower in followers:
        await world.follow(follower, author_id)
    return followers


READER, OTHER, NORMAL, STAR, GONE = 1, 2, 10, 20, 30

# ---- reading: what one page holds -------------------------------------------------------------


async def test_a_page_merges_pushed_pulled_and_own_tweets_newest_first() -> None:
    world = World()
    await world.follow(READER, NORMAL)
    await world.follow(READER, STAR)
    await with_followers(world, STAR, THRESHOLD - 1)
    assert STAR in world.store.registry
    posted = []
    for author in [NORMAL, STAR, READER, STAR, NORMAL, READER, OTHER]:
        posted.append(await world.post(author))
    not_followed = posted.pop()

    ids, token = await world.page(READER)

    assert ids == newest_first(posted)
    assert token == ""
    assert await world.page(READER, size=len(posted)) == (ids, "")  # nothing more: no token
    pushed = set(world.tweets.by(NORMAL))
    assert world.cached(READER) == pushed  # the star's and the reader's own came from the pull
    assert not_followed not in ids


async def test_deleted_tweets_are_left_out_and_the_page_is_still_full() -> None:
    world = World()
    await world.follow(READER, NORMAL)
    await world.follow(READER, STAR)
    await with_followers(world, STAR, THRESHOLD)
    posted = [await world.post(a) for a in [NORMAL, STAR] * 20]
    # Deleted in tweet_svc; the tweet_deleted event is not applied yet, so the pushed
    # ones are still in the timeline. More are dropped than one round fetches.
    gone = posted[-30:]
    world.tweets.deleted.update(gone)

    ids, token = await world.page(READER, size=5)

    assert ids == newest_first(posted[:-30])[:5]
    assert token != ""
    assert set(gone) & world.cached(READER)  # only the read filtered them


async def test_authors_no_longer_followed_are_dropped_before_the_unfollow_is_applied() -> None:
    world = World()
    for author in (NORMAL, GONE):
        await world.follow(READER, author)
    kept = [await world.post(a) for a in [GONE, NORMAL] * 10][1::2]
    for _ in range(30):  # the newest entries, more than one round fetches, all dropped
        await world.post(GONE)
    world.graph.follows[READER].discard(GONE)  # graph_svc has it; the fan-out worker not yet

    assert await world.every_page(READER, size=4) == [kept[::-1][i : i + 4] for i in range(0, 10, 4)]
    assert world.cached(READER) > set(kept)  # the gone author's tweets are still pushed


async def test_authors_no_longer_followed_are_dropped_when_the_follow_list_is_cut() -> None:
    """Past graph_svc's listing limit the feed asks which authors on the page the reader follows."""
    world = World(list_limit=1)
    for author in (NORMAL, OTHER, GONE, STAR):
        await world.follow(READER, author)
    await with_followers(world, STAR, THRESHOLD)
    posted = [await world.post(a) for a in [GONE, NORMAL, OTHER, STAR] * 6]
    world.graph.follows[READER].discard(GONE)

    ids, _ = await world.page(READER)

    assert ids == newest_first([t for t in posted if world.tweets.author_of[t] != GONE])


# ---- reading: one page after another ----------------------------------------------------------


async def test_pages_continue_without_repeats_or_gaps_while_new_tweets_arrive() -> None:
    world = World()
    for author in (NORMAL, OTHER, STAR, GONE):
        await world.follow(READER, author)
    await with_followers(world, STAR, THRESHOLD)
    pattern = [GONE, NORMAL, GONE, STAR, GONE, READER, GONE, OTHER, GONE, STAR, GONE]
    for _ in range(CELEBRITY_CACHE_DEPTH // 2 + 3):  # the star beyond what its first page caches
        for author in pattern:
            await world.post(author)
    # Unfollowed but not yet swept: a third of the pushed entries are dropped at read time,
    # so a page takes several rounds and must not pass the star's older, unfetched tweets.
    world.graph.follows[READER].discard(GONE)
    expected = newest_first([t for t, a in world.tweets.author_of.items() if a != GONE])

    seen: list[int] = []
    token, sizes = "", []
    while True:
        ids, token = await world.page(READER, 7, token)
        seen += ids
        sizes.append(len(ids))
        for author in (NORMAL, STAR, READER):  # newer than the cursor: not on later pages
            await world.post(author)
        if not token:
            break

    assert seen == expected
    assert sizes[:-1] == [7] * (len(sizes) - 1)


async def test_pages_continue_when_many_tweets_share_a_millisecond() -> None:
    world = World()
    for author in (NORMAL, OTHER):
        await world.follow(READER, author)
    world.tweets.burst(per_millisecond=40)
    posted = [await world.post(a) for a in [NORMAL, OTHER, NORMAL] * 10]

    assert await world.read_through(READER, 4) == newest_first(posted)


async def test_a_page_token_resumes_below_its_last_tweet_even_after_a_cache_loss() -> None:
    world = World()
    await world.follow(READER, NORMAL)
    posted = [await world.post(NORMAL) for _ in range(9)]
    first, token = await world.page(READER, 4)
    world.redis.data.pop(feed_key("timeline", READER))  # Redis lost it: rebuilt from CQL
    second, token = await world.page(READER, 4, token)
    third, token = await world.page(READER, 4, token)

    assert [first, second, third] == [posted[:4:-1], posted[4:0:-1], posted[:1]]
    assert token == ""
    # Each layer keeps to "strictly below the cursor" on its own (merge's is tested with merge).
    assert await world.cache.timeline(READER, posted[4], 10) == posted[3::-1]


async def test_pages_do_not_pass_a_celebritys_tweets_not_fetched_yet() -> None:
    """A celebrity deletes its newest tweets while the feed's short-lived copy of its
    recent ids still lists them: the page must go on below them, not past the rest."""
    world = World()
    for author in (NORMAL, STAR):
        await world.follow(READER, author)
    await with_followers(world, STAR, THRESHOLD)
    old = await world.post(NORMAL)
    stars = [await world.post(STAR) for _ in range(10)]
    await world.page(READER)  # the star's recent ids are cached for a few seconds
    for tweet_id in stars[-4:]:
        await world.delete(tweet_id)

    assert await world.read_through(READER, 3) == [*stars[5::-1], old]


async def test_a_reader_pulling_more_authors_than_one_call_takes_reads_every_page() -> None:
    """The reader and MAX_CELEBRITIES_PER_READ celebrities are more authors than tweet_svc
    takes in one ListRecentTweetIds: with none of their recent ids cached, each page asks
    in several calls, where one call was refused and the read failed."""
    world = World()
    stars = list(range(5000, 5000 + MAX_CELEBRITIES_PER_READ))
    assert len(stars) + 1 > MOST_AUTHORS_PER_CALL
    world.store.registry.update(stars)  # marked celebrities: pulled, never pushed
    world.graph.follows[READER] = set(stars)
    posted = [world.tweets.create(star) for star in stars[::25]]
    posted.append(await world.post(READER))

    assert await world.read_through(READER, 7) == newest_first(posted)


# ---- fan-out: follow, unfollow, delete -------------------------------------------------------


async def test_following_backfills_the_followees_recent_tweets_into_the_timeline() -> None:
    world = World()
    posted = [await world.post(NORMAL) for _ in range(FOLLOW_BACKFILL + 5)]
    await world.page(READER)  # the reader's cached timeline is built, and its follow list cached

    await world.follow(READER, NORMAL)

    recent = set(posted[-FOLLOW_BACKFILL:])
    assert world.cached(READER) == recent
    assert world.cached(READER) == recent
    ids, _ = await world.page(READER)
    assert ids == newest_first(recent)


async def test_following_a_celebrity_pushes_nothing_and_it_is_pulled() -> None:
    world = World()
    await with_followers(world, STAR, THRESHOLD)
    posted = [await world.post(STAR) for _ in range(5)]

    await world.follow(READER, STAR)

    assert world.cached(READER) == set()
    assert (await world.page(READER))[0] == newest_first(posted)


async def test_unfollowing_sweeps_the_followees_tweets_out_of_the_timeline() -> None:
    world = World()
    for author in (NORMAL, OTHER):
        await world.follow(READER, author)
    posted = [await world.post(a) for a in [NORMAL, OTHER] * (UNFOLLOW_SWEEP // 2)]
    await world.page(READER)

    await world.unfollow(READER, NORMAL)

    others = set(world.tweets.by(OTHER))
    assert world.cached(READER) == others
    assert world.cached(READER) == others
    assert (await world.page(READER, size=500))[0] == newest_first(others)
    assert set(posted) - others == set(world.tweets.by(NORMAL))  # still tweets, no longer in this timeline


async def test_an_unfollow_applied_after_the_follow_that_undid_it_sweeps_nothing() -> None:
    # Unfollowed and followed again, the unfollow's event coming last (its first send
    # failed and went again, or the outbox relay sent it after a crash).
    world = World()
    await world.follow(READER, NORMAL)
    posted = [await world.post(NORMAL) for _ in range(5)]
    await world.page(READER)
    world.graph.follows[READER].discard(NORMAL)  # the unfollow; its event is late
    await world.follow(READER, NORMAL)

    await world.fanout.handle("unfollow", {"follower_id": READER, "followee_id": NORMAL})

    assert world.cached(READER) == set(posted)
    assert (await world.page(READER))[0] == newest_first(posted)


async def test_a_follow_applied_after_its_unfollow_pushes_nothing() -> None:
    world = World()
    for _ in range(5):
        await world.post(NORMAL)
    await world.page(READER)
    world.graph.follows.setdefault(READER, set()).add(NORMAL)  # the follow; its event is late
    await world.unfollow(READER, NORMAL)

    await world.fanout.handle("follow", {"follower_id": READER, "followee_id": NORMAL})

    assert world.cached(READER) == set()
    assert (await world.page(READER))[0] == []


async def test_unfollowing_a_celebrity_stops_pulling_it_at_once() -> None:
    world = World()
    for author in (NORMAL, STAR):
        await world.follow(READER, author)
    await with_followers(world, STAR, THRESHOLD)
    kept, pulled = await world.post(NORMAL), await world.post(STAR)
    assert (await world.page(READER))[0] == [pulled, kept]  # the follow list is cached now

    await world.unfollow(READER, STAR)

    assert (await world.page(READER))[0] == [kept]


async def test_a_deleted_tweet_leaves_every_followers_timeline_and_is_marked_deleted() -> None:
    world = World()
    followers = await with_followers(world, NORMAL, THRESHOLD - 2)
    assert len(followers) + 1 > Graph.PAGE  # the worker walks more than one page of followers
    await world.follow(READER, NORMAL)
    kept, doomed = await world.post(NORMAL), await world.post(NORMAL)
    await world.page(READER)

    await world.delete(doomed)

    for user in [*followers, READER]:
        assert world.cached(user) == {kept}
        assert world.cached(user) == {kept}
    body = tweet_key("body", doomed)
    assert world.redis.data[body] == TWEET_DELETED
    assert world.redis.ttl_ms[body] == TWEET_DELETED_SECONDS * 1000
    assert tweet_key("body", kept) not in world.redis.data


async def test_a_deleted_celebrity_tweet_is_marked_deleted_and_not_pulled() -> None:
    world = World()
    await world.follow(READER, STAR)
    await with_followers(world, STAR, THRESHOLD)
    kept, doomed = await world.post(STAR), await world.post(STAR)

    await world.delete(doomed)

    assert world.redis.data[tweet_key("body", doomed)] == TWEET_DELETED
    assert (await world.page(READER))[0] == [kept]


async def test_a_celebrity_tweets_delete_walks_none_of_its_followers() -> None:
    """Never pushed, so nothing to take out; a walk of millions of followers would outlast
    the consumer group's poll interval and be applied again for ever."""
    world = World()
    await world.follow(READER, NORMAL)
    await with_followers(world, NORMAL, THRESHOLD - 2)
    before = await world.post(NORMAL)  # pushed, then the author becomes a celebrity
    assert world.cached(READER) == {before}
    await with_followers(world, NORMAL, 2, first=2_000)
    assert len(world.graph.followers(NORMAL)) == THRESHOLD + 1 > 2 * Graph.PAGE
    pages: list[str] = []
    real_page = world.graph.follower_page

    async def counted(user_id: int, token: str) -> tuple[list[int], str, int | None]:
        pages.append(token)
        return await real_page(user_id, token)

    world.fanout._follower_page = counted
    await world.delete(before)
    assert pages == [""]  # the first page, for the count
    assert world.redis.data[tweet_key("body", before)] == TWEET_DELETED
    assert before not in (await world.page(READER))[0]  # pushed before: left out when read


# ---- crossing the celebrity threshold ------------------------------------------------------------


async def test_an_author_reaching_the_threshold_is_marked_and_no_longer_pushed() -> None:
    world = World()
    await world.follow(READER, NORMAL)
    pushed = await world.post(NORMAL)
    await world.page(READER)  # the follow list is cached with NORMAL's old count
    await with_followers(world, NORMAL, THRESHOLD - 1)  # the last follow crosses the threshold

    assert NORMAL in world.store.registry
    assert str(NORMAL).encode() in world.redis.data[CELEBRITIES_KEY]
    pulled = await world.post(NORMAL)
    assert world.cached(READER) == {pushed}
    assert world.cached(READER) == {pushed}

    world.pass_time(REFRESH_SECONDS)  # readers learn of the crossing from the registry
    assert (await world.page(READER))[0] == [pulled, pushed]


async def test_an_author_dropping_below_the_threshold_is_unmarked_and_backfilled() -> None:
    world = World()
    await world.follow(READER, STAR)
    fans = await with_followers(world, STAR, THRESHOLD - 1)
    posted = [await world.post(STAR) for _ in range(CROSSING_BACKFILL + 5)]
    assert world.cached(READER) == set()
    await world.page(READER)

    await world.unfollow(fans[0], STAR)

    assert STAR not in world.store.registry
    assert str(STAR).encode() not in world.redis.data[CELEBRITIES_KEY]
    recent = set(posted[-CROSSING_BACKFILL:])
    for user in (READER, fans[1]):
        assert world.cached(user) == recent
        assert world.cached(user) == recent
    assert world.cached(fans[0]) == set()
    world.pass_time(REFRESH_SECONDS)  # the registry no longer lists it: readers get it pushed
    ids, _ = await world.page(READER, size=CROSSING_BACKFILL)
    assert ids == newest_first(recent)
    newer = await world.post(STAR)
    assert newer in world.cached(READER)


async def test_a_celebrity_in_the_band_stays_pulled_and_drops_out_only_below_it() -> None:
    """Hysteresis: marked at THRESHOLD followers, unmarked only below DEMOTE_BELOW. In
    between, a celebrity's tweets and new followers push nothing, and readers pull them."""
    world = World(demote_below=THRESHOLD - 2)
    await world.follow(READER, STAR)
    fans = await with_followers(world, STAR, THRESHOLD - 1)
    assert STAR in world.store.registry
    await world.unfollow(fans[0], STAR)  # THRESHOLD - 1: in the band
    await world.unfollow(fans[1], STAR)  # THRESHOLD - 2: still in it

    assert STAR in world.store.registry
    in_band = await world.post(STAR)
    await world.follow(fans[0], STAR)  # back to THRESHOLD - 1: a follow in the band
    assert world.cached(READER) == set()
    assert world.cached(fans[0]) == set()
    world.pass_time(REFRESH_SECONDS)
    for reader in (READER, fans[0], fans[2]):
        assert (await world.page(reader))[0] == [in_band]

    await world.unfollow(fans[0], STAR)
    await world.unfollow(fans[2], STAR)  # THRESHOLD - 3: below the band
    assert STAR not in world.store.registry
    assert world.cached(READER) == {in_band}
    pushed = await world.post(STAR)
    assert world.cached(READER) == {in_band, pushed}


async def test_an_author_in_the_band_never_marked_is_still_pushed() -> None:
    world = World(demote_below=THRESHOLD - 2)
    await world.follow(READER, NORMAL)
    await with_followers(world, NORMAL, THRESHOLD - 2)  # THRESHOLD - 1 followers, never marked

    posted = await world.post(NORMAL)
    await world.follow(OTHER, NORMAL)  # THRESHOLD: marked from here on
    assert world.cached(READER) == {posted}
    assert world.cached(OTHER) == set()
    assert NORMAL in world.store.registry


@pytest.mark.parametrize(
    ("env", "bounds"),
    [
        ({}, (10_000, 9_000)),
        ({"CHIRP_CELEBRITY_THRESHOLD": "3"}, (3, 3)),
        ({"CHIRP_CELEBRITY_THRESHOLD": "100", "CHIRP_CELEBRITY_DEMOTE_BELOW": "50"}, (100, 50)),
        ({"CHIRP_FANOUT_STRATEGY": "push", "CHIRP_CELEBRITY_DEMOTE_BELOW": "5"}, (feed_config.NEVER,) * 2),
        ({"CHIRP_FANOUT_STRATEGY": "pull"}, (0, 0)),
    ],
)
def test_the_demotion_bound_defaults_to_a_tenth_under_the_threshold(
    env: dict[str, str], bounds: tuple[int, int]
) -> None:
    cfg = feed_config.load(env)
    assert (cfg.celebrity_threshold, cfg.celebrity_demote_below) == bounds


def test_a_demotion_bound_above_the_threshold_is_refused() -> None:
    with pytest.raises(ConfigError, match="CHIRP_CELEBRITY_DEMOTE_BELOW"):
        feed_config.load({"CHIRP_CELEBRITY_THRESHOLD": "100", "CHIRP_CELEBRITY_DEMOTE_BELOW": "101"})


async def backfill_failed(failure: BaseException | None = None) -> tuple[World, list[int], int]:
    """A reader of STAR, STAR just under the threshold with a post, and a fan's unfollow
    whose backfill failed (so its event is applied again from the last commit)."""
    world = World()
    await world.follow(READER, STAR)
    fans = await with_followers(world, STAR, THRESHOLD - 1)
    posted = await world.post(STAR)
    real_push = world.cache.push
    failures = [failure or NotReplicated("no replica acknowledged")]

    async def push_failing_once(user_ids: Sequence[int], tweets: Sequence[int]) -> None:
        if failures:
            raise failures.pop()
        await real_push(user_ids, tweets)

    world.cache.push = push_failing_once  # type: ignore[method-assign]
    with pytest.raises(type(failures[0])):
        await world.unfollow(fans[0], STAR)
    return world, fans, posted


async def test_a_backfill_that_fails_leaves_the_author_marked_so_the_retry_backfills() -> None:
    """The unfollow is applied again from the last commit (its batch failed); had the author
    stayed unmarked, the retry would find no celebrity and skip the backfill for good."""
    world, fans, posted = await backfill_failed()
    assert STAR in world.store.registry  # still pulled meanwhile
    assert world.store.unread_marks == [STAR]
    await world.fanout.handle("unfollow", {"follower_id": fans[0], "followee_id": STAR})  # applied again
    assert STAR not in world.store.registry
    assert world.cached(READER) == {posted}


async def test_a_backfill_cut_short_by_a_cancel_is_done_again_when_the_unfollow_is_applied_again() -> None:
    """A cancel (another key of the batch failed, or a graceful stop) is no Exception: the
    author stays unmarked, and only the backfill's record of having begun makes the retry
    backfill. A kill, or a re-mark that fails with the store, leaves the same state."""
    world, fans, posted = await backfill_failed(asyncio.CancelledError())
    assert STAR not in world.store.registry and STAR in world.store.backfills
    await world.fanout.handle("unfollow", {"follower_id": fans[0], "followee_id": STAR})  # applied again
    assert world.cached(READER) == {posted}
    assert not world.store.backfills  # done: a later unfollow does not backfill again


async def test_a_backfill_cut_short_is_done_again_though_the_count_came_back_up_meanwhile() -> None:
    """Followed back into the band between the bounds before the retry: the author is
    unmarked (pushed from now on), and only the backfill gives followers its recent tweets."""
    world = World(demote_below=THRESHOLD - 2)
    await world.follow(READER, STAR)
    fans = await with_followers(world, STAR, THRESHOLD - 1)
    posted = await world.post(STAR)
    real_push = world.cache.push
    failures = [asyncio.CancelledError()]

    async def push_failing_once(user_ids: Sequence[int], tweets: Sequence[int]) -> None:
        if failures:
            raise failures.pop()
        await real_push(user_ids, tweets)

    world.cache.push = push_failing_once  # type: ignore[method-assign]
    for fan in fans[:3]:  # below the demotion bound: the third unfollow's backfill is cut short
        world.graph.follows[fan].discard(STAR)
    with pytest.raises(asyncio.CancelledError):
        await world.fanout.handle("unfollow", {"follower_id": fans[2], "followee_id": STAR})
    assert STAR not in world.store.registry
    world.graph.follows[fans[0]].add(STAR)  # back in the band, not over the threshold
    assert THRESHOLD - 2 <= len(world.graph.followers(STAR)) < THRESHOLD
    await world.fanout.handle("unfollow", {"follower_id": fans[2], "followee_id": STAR})  # applied again
    assert world.cached(READER) == {posted}
    assert not world.store.backfills


async def test_a_backfill_cut_short_and_followed_back_over_the_threshold_is_pulled_again() -> None:
    """Marked again, and the record kept: only a finished backfill ends it (another
    worker's, under way, may yet be killed)."""
    world, fans, posted = await backfill_failed(asyncio.CancelledError())
    assert STAR not in world.store.registry
    for fan in range(3_000, 3_003):
        world.graph.follows.setdefault(fan, set()).add(STAR)
    assert len(world.graph.followers(STAR)) >= THRESHOLD
    await world.fanout.handle("unfollow", {"follower_id": fans[0], "followee_id": STAR})  # applied again
    assert STAR in world.store.registry and STAR in world.store.backfills
    assert world.store.unread_marks == [STAR]
    assert (await world.page(READER))[0] == [posted]  # pulled


async def test_unfollows_that_demote_an_author_side_by_side_run_one_backfill() -> None:
    world = World()
    await world.follow(READER, STAR)
    fans = await with_followers(world, STAR, THRESHOLD)
    posted = await world.post(STAR)
    begun: list[int] = []
    real_begin, real_push = world.store.begin_backfill, world.cache.push

    async def counted_begin(author_id: int) -> None:
        begun.append(author_id)
        await real_begin(author_id)

    async def slow_push(user_ids: Sequence[int], tweets: Sequence[int]) -> None:
        await asyncio.sleep(0.01)  # the backfill is still walking when the other unfollows come
        await real_push(user_ids, tweets)

    world.store.begin_backfill = counted_begin  # type: ignore[method-assign]
    world.cache.push = slow_push  # type: ignore[method-assign]
    for fan in fans[:3]:
        world.graph.follows[fan].discard(STAR)
    await asyncio.gather(
        *(world.fanout.handle("unfollow", {"follower_id": fan, "followee_id": STAR}) for fan in fans[:3])
    )
    assert begun == [STAR]
    assert world.cached(READER) == {posted}


async def test_follows_that_make_an_author_a_celebrity_side_by_side_run_one_mark() -> None:
    """Each finds the author unmarked; one transaction on its registry partition, not one each."""
    world = World()
    await with_followers(world, STAR, THRESHOLD - 1)
    marks: list[int] = []

    async def slow_mark(author_id: int, celebrity: bool) -> None:
        marks.append(author_id)
        await asyncio.sleep(0.01)  # the mark is still under way when the other follows come

    world.store.before_set_celebrity.append(slow_mark)
    new_fans = range(5_000, 5_003)
    for fan in new_fans:
        world.graph.follows.setdefault(fan, set()).add(STAR)
    await asyncio.gather(
        *(world.fanout.handle("follow", {"follower_id": fan, "followee_id": STAR}) for fan in new_fans)
    )
    assert marks == [STAR]
    assert STAR in world.store.registry


async def test_an_unfollow_applied_again_after_a_refollow_still_demotes_the_author() -> None:
    """The retry of a failed backfill rides on the unfollow's event; an edge made again since
    skips the sweep, not the demotion check."""
    world, fans, posted = await backfill_failed()
    world.graph.follows[fans[0]].add(STAR)  # followed again, and another fan left: still below
    world.graph.follows[fans[1]].discard(STAR)
    await world.fanout.handle("unfollow", {"follower_id": fans[0], "followee_id": STAR})  # applied again
    assert STAR not in world.store.registry
    assert world.cached(READER) == {posted}


async def test_an_unmark_comes_before_the_backfill_reads_recent_tweets() -> None:
    """A tweet handled by a worker that read the old follower count re-marks the author
    and is not pushed. If that happens after the backfill read the author's recent tweets
    and before the unmark, the tweet is neither pushed nor pulled; unmarking first means
    such a tweet either keeps the author marked (pulled) or is in the backfill."""
    world = World()
    await world.follow(READER, STAR)
    fans = await with_followers(world, STAR, THRESHOLD - 1)
    early = await world.post(STAR)
    stale = world.worker(lambda _author: _count(THRESHOLD))  # read the count before the unfollow
    racing: list[int] = []

    async def tweet_races_the_unmark(author_id: int, celebrity: bool) -> None:
        if author_id == STAR and not celebrity and not racing:
            racing.append(world.tweets.create(STAR))
            await stale.handle("tweet_created", created_event(racing[0], STAR))

    world.store.before_set_celebrity.append(tweet_races_the_unmark)
    await world.unfollow(fans[0], STAR)
    world.pass_time(REFRESH_SECONDS)

    assert (await world.page(READER))[0] == [racing[0], early]


async def _count(value: int) -> int:
    return value


# ---- re-delivery and the registry ---------------------------------------------------------------


async def test_redelivered_events_change_nothing_and_duplicate_no_tweet() -> None:
    world = World()
    await world.follow(READER, STAR)
    await with_followers(world, STAR, THRESHOLD - 1)
    old = await world.post(STAR)
    world.graph.follows[READER] |= {NORMAL, OTHER}
    tweets = [world.tweets.create(a) for a in (NORMAL, STAR, OTHER, NORMAL)]
    world.tweets.deleted.add(tweets[3])
    world.graph.follows[READER].discard(OTHER)
    batch = [
        Event(TOPIC_TWEETS, NORMAL, {"type": "tweet_created", **created_event(tweets[0], NORMAL)}),
        Event(TOPIC_TWEETS, STAR, {"type": "tweet_created", **created_event(tweets[1], STAR)}),
        Event(TOPIC_TWEETS, OTHER, {"type": "tweet_created", **created_event(tweets[2], OTHER)}),
        Event(TOPIC_TWEETS, NORMAL, {"type": "tweet_created", **created_event(tweets[3], NORMAL)}),
        Event(TOPIC_TWEETS, NORMAL, {"type": "tweet_deleted", "tweet_id": tweets[3], "author_id": NORMAL}),
        Event(TOPIC_FOLLOWS, READER, {"type": "follow", "follower_id": READER, "followee_id": NORMAL}),
        Event(TOPIC_FOLLOWS, READER, {"type": "follow", "follower_id": READER, "followee_id": OTHER}),
        Event(TOPIC_FOLLOWS, READER, {"type": "unfollow", "follower_id": READER, "followee_id": OTHER}),
    ]
    messages = cast(list[Message], batch)

    await world.fanout(messages)
    once = await world.page(READER)
    state = world.state()
    await world.fanout(messages)  # the worker failed before committing: Kafka hands the batch over again
    await world.fanout(messages[4:])

    assert world.state() == state
    assert once == ([tweets[1], tweets[0], old], "")
    assert await world.page(READER) == once


async def test_an_event_missing_a_field_is_skipped_and_the_rest_of_its_batch_applied() -> None:
    """Failing on it would fail the batch, and every batch after it, for good."""
    world = World()
    world.graph.follows[READER] = {NORMAL}
    tweet = world.tweets.create(NORMAL)
    batch = [
        Event(TOPIC_TWEETS, NORMAL, {"type": "tweet_created", "tweet_id": tweet}),  # no author
        Event(TOPIC_TWEETS, NORMAL, {"type": "tweet_deleted", "tweet_id": "x", "author_id": NORMAL}),
        Event(TOPIC_FOLLOWS, READER, {"type": "follow", "follower_id": READER}),
        Event(TOPIC_TWEETS, NORMAL, {"type": "tweet_created", **created_event(tweet, NORMAL)}),
        Event(TOPIC_TWEETS, NORMAL, {"type": "something_new", "tweet_id": tweet}),  # not acted on
    ]
    await world.fanout(cast(list[Message], batch))
    assert world.cached(READER) == {tweet}


def skipped(reason: str) -> float:
    return REGISTRY.get_sample_value("chirp_consumer_skipped_total", {"group": "chirp-fanout", "reason": reason}) or 0.0


async def test_events_no_peer_or_store_would_take_are_skipped_counted_and_the_rest_applied() -> None:
    """An id out of range failed later, in a protobuf field or a peer's check (INVALID_ARGUMENT),
    and an infinite number (OverflowError) escaped the check: the batch failed for good."""
    world = World()
    world.graph.follows[READER] = {NORMAL}
    tweet = world.tweets.create(NORMAL)
    before = {reason: skipped(reason) for reason in ("malformed", "unknown_type")}
    batch = [
        Event(TOPIC_TWEETS, NORMAL, {"type": "tweet_created", **created_event(tweet, NORMAL), "author_id": 1e999}),
        Event(TOPIC_TWEETS, NORMAL, {"type": "tweet_deleted", "tweet_id": 0, "author_id": NORMAL}),
        Event(TOPIC_FOLLOWS, READER, {"type": "follow", "follower_id": READER, "followee_id": 1 << 64}),
        Event(TOPIC_FOLLOWS, READER, {"type": "unfollow", "follower_id": True, "followee_id": NORMAL}),
        Event(TOPIC_TWEETS, NORMAL, {"type": "tweet_created", **created_event(tweet, NORMAL)}),
        Event(TOPIC_TWEETS, NORMAL, {"type": "tweet_edited", "tweet_id": tweet}),
    ]
    await world.fanout(cast(list[Message], batch))
    assert world.cached(READER) == {tweet}
    assert skipped("malformed") == before["malformed"] + 4
    assert skipped("unknown_type") == before["unknown_type"] + 1


async def test_a_tweet_both_pushed_and_pulled_shows_once() -> None:
    """Right after an author drops below the threshold, a reader's registry still pulls
    it while its backfill is already pushed."""
    world = World()
    await world.follow(READER, STAR)
    fans = await with_followers(world, STAR, THRESHOLD - 1)
    posted = [await world.post(STAR) for _ in range(3)]
    await world.page(READER)  # registry loaded with STAR in it
    await world.unfollow(fans[0], STAR)
    world.pass_time(REFRESH_SECONDS - 1)

    assert world.cached(READER) == set(posted)
    assert STAR in await world.registry.members()
    assert await world.page(READER) == (newest_first(posted), "")


async def test_the_registry_is_held_in_memory_and_refreshed_every_interval() -> None:
    world = World()
    await world.follow(READER, NORMAL)
    await world.page(READER)  # the registry is loaded; NORMAL is not in it
    loads = [c for c in world.redis.calls if c == ("smembers", (CELEBRITIES_KEY,))]
    await with_followers(world, NORMAL, THRESHOLD - 1)
    assert await world.cache.celebrities() == {NORMAL}
    assert await world.registry.members() == frozenset()

    world.pass_time(REFRESH_SECONDS - 0.5)
    for _ in range(5):
        await world.page(READER)
    assert await world.registry.members() == frozenset()  # not reloaded before the interval
    world.pass_time(0.5)
    assert await world.registry.members() == {NORMAL}
    reads = [c for c in world.redis.calls if c == ("smembers", (CELEBRITIES_KEY,))]
    assert len(reads) - len(loads) == 2  # the check above, then one reload: not one per feed read

    await world.unfollow(900, NORMAL)  # below the threshold again
    assert await world.registry.members() == {NORMAL}
    world.pass_time(REFRESH_SECONDS)
    assert await world.registry.members() == frozenset()


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details, None)


async def test_an_event_naming_a_user_who_does_not_exist_is_skipped_and_an_outage_is_not() -> None:
    world = World()

    async def no_such_user(user_id: int) -> int:
        raise rpc_error(grpc.StatusCode.NOT_FOUND, f"user {user_id} does not exist")

    world.fanout = world.worker(no_such_user)
    await world.follow(1, 2)  # the edge is there, the followee is not: nothing to push
    await world.unfollow(1, 2)  # the demotion check asks for the count: nothing to demote
    assert world.cached(1) == set()

    async def graph_down(user_id: int) -> int:
        raise rpc_error(grpc.StatusCode.UNAVAILABLE, "graph_svc is down")

    world.fanout = world.worker(graph_down)
    with pytest.raises(grpc.aio.AioRpcError):  # applied again from Kafka once graph_svc answers
        await world.unfollow(1, 2)
