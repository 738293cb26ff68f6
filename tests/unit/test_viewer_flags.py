"""Viewer flags (liked_by_me, followed_by_me): how a like's state settles in
user_likes whatever order its writes arrive in, and that each response fills
its flags with one batched read."""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import cast

from chirp.rank.v1 import rank_pb2
from chirp.tweet.v1 import tweet_internal_pb2, tweet_pb2

from common.ids import CHIRP_EPOCH_MS, INSTANCE_BITS, SEQUENCE_BITS, IdGenerator, id_time_ms
from feed_svc.home_feed import HomeFeed
from feed_svc.store import CelebrityStore
from graph_svc.domain import Graph
from graph_svc.store import GraphStore
from rank_svc.reads import TrendingCopy
from rank_svc.service import RankService
from tests.unit.test_feed_rules import THRESHOLD, TIMELINE_SIZE, World
from tweet_svc.domain import Tweets
from tweet_svc.service import TweetInternalService
from tweet_svc.store import TweetRecord
from tweet_svc.viewer import decode_liked, encode_state, write_time_us


def version(ms: int, instance: int, sequence: int) -> int:
    return ((ms - CHIRP_EPOCH_MS) << (INSTANCE_BITS + SEQUENCE_BITS)) | (instance << SEQUENCE_BITS) | sequence


# ---- user_likes write times and values --------------------------------------------------------


def test_write_time_is_within_the_versions_millisecond() -> None:
    ms = 1_767_000_000_123
    assert write_time_us(version(ms, 0, 0)) == ms * 1000
    assert write_time_us(version(ms, 1023, 4095)) == ms * 1000 + 999
    assert write_time_us(version(ms + 1, 0, 0)) == (ms + 1) * 1000


def test_write_time_never_decreases_as_versions_grow() -> None:
    rng = random.Random(7)
    ms = 1_767_000_000_000
    edges = [version(ms + d, i, s) for d in (0, 1) for i in (0, 1, 32, 33, 1023) for s in (0, 1, 4094, 4095)]
    samples = sorted(
        edges + [version(ms + rng.randrange(3), rng.randrange(1024), rng.randrange(4096)) for _ in range(5000)]
    )
    times = [write_time_us(v) for v in samples]
    assert times == sorted(times)


def test_state_bytes_sort_as_versions_and_carry_the_like() -> None:
    a, b = version(1_767_000_000_000, 3, 4095), version(1_767_000_000_000, 4, 0)
    assert encode_state(True, a) < encode_state(False, b)
    assert decode_liked(encode_state(True, a)) and not decode_liked(encode_state(False, a))
    assert not decode_liked(None) and not decode_liked(b"")


def settle(writes: Sequence[tuple[bool, int]]) -> bool:
    """What the store keeps of several writes of one cell: the highest write time, and on
    equal write times the larger value (Cassandra's and ScyllaDB's reconciliation)."""
    kept = max((write_time_us(v), encode_state(liked, v)) for liked, v in writes)
    return decode_liked(kept[1])


def test_any_order_and_repeats_settle_on_the_newest_version_even_within_one_millisecond() -> None:
    rng = random.Random(11)
    ms = 1_767_000_000_000
    for _ in range(500):
        # Versions from two instances within two milliseconds: many share a write time.
        versions = {version(ms + rng.randrange(2), rng.choice((32, 33)), rng.randrange(4096)) for _ in range(5)}
        events = [(rng.random() < 0.5, v) for v in versions]
        newest = max(events, key=lambda e: e[1])
        # Each event is written at its acknowledgement and again by the worker, in any order.
        writes = events * 2
        rng.shuffle(writes)
        assert settle(writes) == newest[0]
    # A like then an unlike in the same millisecond on the same instance share a write time:
    # the value decides, and it is the unlike (the newer version).
    like, unlike = version(1_767_000_000_000, 33, 5), version(1_767_000_000_000, 33, 6)
    assert write_time_us(like) == write_time_us(unlike)
    assert settle([(False, unlike), (True, like)]) is False
    assert id_time_ms(unlike) == 1_767_000_000_000


# ---- followed_by_me: one read, never yourself ---------------------------------------------------


class FollowsStore:
    def __init__(self, follows: dict[int, set[int]]) -> None:
        self.follows = follows
        self.reads: list[tuple[int, list[int]]] = []

    async def follows_among(self, user_id: int, candidates: Sequence[int]) -> list[int]:
        self.reads.append((user_id, list(candidates)))
        return [c for c in candidates if c in self.follows.get(user_id, set())]


def graph_over(store: FollowsStore) -> Graph:
    return Graph(cast(GraphStore, store), None, None, None, IdGenerator(1))  # type: ignore[arg-type]


async def test_followed_by_reads_the_viewers_follows_once_and_never_flags_the_viewer() -> None:
    store = FollowsStore({1: {2, 3}})
    graph = graph_over(store)
    assert await graph.followed_by(1, [2, 3, 4, 1, 2]) == {2, 3}
    assert store.reads == [(1, [2, 3, 4])]


async def test_followed_by_without_a_viewer_reads_nothing() -> None:
    store = FollowsStore({1: {2}})
    graph = graph_over(store)
    assert await graph.followed_by(None, [2]) == set()
    assert await graph.followed_by(1, [1]) == set()
    assert store.reads == []


# ---- liked_by_me on the home feed and trending: one call per response --------------------------


class Likes:
    """tweet_svc's ListLikedTweetIds (asked only for flags the `ul:` cache misses)."""

    def __init__(self, liked: dict[int, set[int]]) -> None:
        self.liked = liked
        self.calls: list[tuple[int, list[int]]] = []

    async def __call__(self, user_id: int, tweet_ids: Sequence[int]) -> set[int]:
        self.calls.append((user_id, list(tweet_ids)))
        return self.liked.get(user_id, set()) & set(tweet_ids)


class ReaderBatch:
    """tweet_svc's BatchGetTweets with viewer_id: bodies and the viewer's flags in one call."""

    def __init__(self, world: World, likes: Likes) -> None:
        self._world = world
        self._likes = likes
        self.calls: list[tuple[list[int], int]] = []

    async def __call__(self, tweet_ids: Sequence[int], viewer_id: int) -> list[tweet_pb2.Tweet]:
        self.calls.append((list(tweet_ids), viewer_id))
        liked = self._likes.liked.get(viewer_id, set())
        tweets = await self._world.tweets.batch_tweets(tweet_ids)
        for tweet in tweets:
            tweet.liked_by_me = tweet.tweet_id in liked
        return tweets


async def test_a_feed_page_gets_its_flags_with_its_bodies_and_asks_for_them_nowhere_else() -> None:
    world = World()
    await world.follow(1, 2)
    posted = [await world.post(2) for _ in range(5)]
    likes = Likes({1: {posted[1], posted[3]}})
    batch = ReaderBatch(world, likes)
    feed = HomeFeed(
        world.cache,
        cast(CelebrityStore, world.store),
        world.graph.following_ids,
        world.tweets.recent_ids,
        batch,
        THRESHOLD,
        TIMELINE_SIZE,
        world.registry,
    )
    tweets, token = await feed.page(1, 3, "")
    assert [t.tweet_id for t in tweets] == posted[::-1][:3]
    assert {t.tweet_id for t in tweets if t.liked_by_me} == {posted[3]}
    # One hydrating call for the page, made as the reader; no separate likes call.
    assert len(batch.calls) == 1 and batch.calls[0][1] == 1
    assert {t.tweet_id for t in tweets} <= set(batch.calls[0][0])
    assert likes.calls == []
    rest, _ = await feed.page(1, 3, token)
    assert {t.tweet_id for t in rest if t.liked_by_me} == {posted[1]}
    assert [viewer for _, viewer in batch.calls] == [1, 1]


class Metadata:
    def __init__(self, user_id: int | None) -> None:
        self._user_id = user_id

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return () if self._user_id is None else (("x-chirp-user-id", str(self._user_id)),)


async def test_trending_flags_are_per_viewer_and_leave_the_shared_copy_alone() -> None:
    shared = [tweet_pb2.Tweet(tweet_id=t, author_id=9) for t in (30, 20, 10)]

    async def load() -> list[tweet_pb2.Tweet]:
        return shared

    async def nobody(viewer: int) -> frozenset[int]:
        return frozenset()

    likes = Likes({5: {20}})
    service = RankService(TrendingCopy(load), nobody, likes)
    request = rank_pb2.ListTrendingRequest(limit=2)
    mine = await service.ListTrending(request, Metadata(5))  # type: ignore[arg-type]
    assert [(t.tweet_id, t.liked_by_me) for t in mine.tweets] == [(30, False), (20, True)]
    assert likes.calls == [(5, [30, 20])]
    anonymous = await service.ListTrending(request, Metadata(None))  # type: ignore[arg-type]
    assert [t.liked_by_me for t in anonymous.tweets] == [False, False]
    assert len(likes.calls) == 1
    assert not any(t.liked_by_me for t in shared)


class TweetsDomain:
    """tweet_svc's Tweets: cached bodies shared by every reader, and user_likes reads."""

    def __init__(self, liked: dict[int, set[int]]) -> None:
        at = datetime(2026, 1, 1, tzinfo=UTC)
        self.bodies = {t: TweetRecord(t, 9, "nine", "hi", at, like_count=t) for t in (10, 20, 30)}
        self.liked = liked
        self.liked_reads: list[tuple[int, list[int]]] = []

    async def get_many(self, tweet_ids: list[int]) -> list[TweetRecord]:
        return [self.bodies[t] for t in tweet_ids if t in self.bodies]

    async def liked_by(self, user_id: int | None, tweet_ids: Sequence[int]) -> set[int]:
        if user_id is None:
            return set()
        self.liked_reads.append((user_id, list(tweet_ids)))
        return self.liked.get(user_id, set()) & set(tweet_ids)


async def test_batch_get_tweets_fills_the_viewers_flags_in_one_read_and_none_without_a_viewer() -> None:
    domain = TweetsDomain({5: {20, 99}, 6: {10}})
    service = TweetInternalService(cast(Tweets, domain))

    async def flags(viewer_id: int) -> list[tuple[int, bool]]:
        request = tweet_internal_pb2.BatchGetTweetsRequest(tweet_ids=[30, 20, 99, 10], viewer_id=viewer_id)
        reply = await service.BatchGetTweets(request, None)  # type: ignore[arg-type]
        return [(t.tweet_id, t.liked_by_me) for t in reply.tweets]

    assert await flags(5) == [(30, False), (20, True), (10, False)]
    assert domain.liked_reads == [(5, [30, 20, 99, 10])]
    # Another reader of the same cached bodies sees their own flags, not the first one's.
    assert await flags(6) == [(30, False), (20, False), (10, True)]
    assert await flags(0) == [(30, False), (20, False), (10, False)]
    assert len(domain.liked_reads) == 2
