"""feed_svc's home-feed read against the stack's Redis, with tweet_svc's cache filled
by tweet_svc's own TweetCache (the contract of common/tweet_cache.py) and fakes for
the peers: a cached read asks no peer for anything but the reader's like flags and
takes three Redis round trips; a tweet deleted while its body is cached is gone from
the very next read."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from chirp.tweet.v1 import tweet_pb2
from prometheus_client import REGISTRY
from redis.commands.core import AsyncScript

from common.cache import RELOAD_CLAIM_MS, RedisClient, mark_tweet_deleted
from common.hidden import HiddenAuthorsCache, RedisHiddenStore, hidden_key, hidden_version_key
from common.ids import IdGenerator
from common.keys import feed_key, legacy_following_key, reload_claim_key, tweet_key
from common.tweet_cache import RECENT_GRACE_SECONDS
from feed_svc.activity import read_record_key
from feed_svc.cache import FeedCache
from feed_svc.home_feed import CelebrityRegistry, HomeFeed
from feed_svc.store import CelebrityStore
from tests.faults import wait_for_async
from tests.unit.test_redis_cluster_safety import FakeRedis, client
from tweet_svc.cache import TweetCache
from tweet_svc.store import TweetRecord

IDS = IdGenerator(907)
THRESHOLD = 10


class CountingPipeline:
    def __init__(self, inner: Any, counter: Counting) -> None:
        self._inner = inner
        self._counter = counter

    async def __aenter__(self) -> CountingPipeline:
        await self._inner.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._inner.__aexit__(*exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def execute(self, **kwargs: Any) -> Any:
        return await self._counter.timed(self._inner.execute(**kwargs))


class Counting:
    """A Redis client that records each round trip (one command, or one pipeline's
    execute) with when it started and ended."""

    def __init__(self, inner: RedisClient) -> None:
        self._inner = inner
        self.trips: list[tuple[float, float]] = []

    async def timed(self, call: Any) -> Any:
        started = time.perf_counter()
        try:
            return await call
        finally:
            self.trips.append((started, time.perf_counter()))

    def pipeline(self, transaction: bool = True) -> CountingPipeline:
        return CountingPipeline(self._inner.pipeline(transaction=transaction), self)

    def register_script(self, script: str) -> Any:
        return AsyncScript(cast(RedisClient, self), script)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name in ("connection_pool", "get_encoder") or not callable(attr):
            return attr

        async def command(*args: Any, **kwargs: Any) -> Any:
            return await self.timed(attr(*args, **kwargs))

        return command

    def stages(self) -> int:
        """Round trips that had to wait for one another: a trip starting after every trip
        of the current stage has ended begins the next stage."""
        stages, end = 0, -1.0
        for started, ended in sorted(self.trips):
            if started >= end:
                stages += 1
                end = ended
            else:
                end = max(end, ended)
        return stages


@dataclass
class Peers:
    """graph_svc and tweet_svc as feed_svc calls them; every call is recorded. The flags
    are answered as tweet_svc's Tweets.liked_by does: from its store, filling the cache."""

    tweets: TweetCache
    liked: set[int] = field(default_factory=set)
    calls: list[str] = field(default_factory=list)
    bodies: dict[int, tweet_pb2.Tweet] = field(default_factory=dict)

    async def following_ids(self, user_id: int, among: Sequence[int]) -> tuple[list[tuple[int, int]], bool]:
        self.calls.append("ListFollowingIds")
        raise AssertionError("the follow list is cached")

    async def recent_ids(self, authors: Sequence[int], before: int, limit: int) -> list[tuple[int, int]]:
        self.calls.append("ListRecentTweetIds")
        raise AssertionError("recent ids are cached")

    async def batch_tweets(self, tweet_ids: Sequence[int], viewer_id: int) -> list[tweet_pb2.Tweet]:
        self.calls.append(f"BatchGetTweets {sorted(tweet_ids)}")
        return [self.bodies[t] for t in tweet_ids if t in self.bodies]

    async def liked_ids(self, user_id: int, tweet_ids: Sequence[int]) -> set[int]:
        self.calls.append("ListLikedTweetIds")
        token = await self.tweets.liked_fill_token(user_id)
        liked = self.liked & set(tweet_ids)
        assert token is not None
        await self.tweets.fill_liked(user_id, token, tweet_ids, liked)
        return liked

    async def refresh_recent(self, author_ids: Sequence[int]) -> None:
        """As tweet_svc's ListRecentTweetIds with `refresh`: the store holds what the sets do."""
        self.calls.append(f"RefreshRecent {sorted(author_ids)}")
        held = await self.tweets.recent_due(author_ids)
        read = {a: sorted(ids, reverse=True) for a, ids in held.items()}
        await self.tweets.refresh_recent(read, held, time.time() * 1000)

    async def refresh_like_counts(self, tweet_ids: Sequence[int]) -> dict[int, int]:
        """As tweet_svc's BatchGetLikeCounts with `refresh`: rebuilt from the store's counts (8 here)."""
        self.calls.append(f"RefreshLikeCounts {sorted(tweet_ids)}")
        due = await self.tweets.refresh_due(tweet_ids)
        rebuilt = await self.tweets.refresh_like_counts({t: (8, version) for t, version in due.items()})
        return dict.fromkeys(rebuilt, 8)

    async def like_counts(self, tweet_ids: Sequence[int]) -> dict[int, int]:
        """As tweet_svc's BatchGetLikeCounts: the store's counts (7 here), filling the cache."""
        self.calls.append(f"BatchGetLikeCounts {sorted(tweet_ids)}")
        counts = dict.fromkeys(tweet_ids, 7)
        await self.tweets.fill_like_counts(counts)
        return counts

    async def nobody_hidden(self, user_id: int) -> frozenset[int]:
        self.calls.append("ListHiddenAuthorIds")
        return frozenset()


class NoStore:
    async def celebrities(self) -> set[int]:
        return set()


@dataclass
class Scene:
    counting: Counting
    peers: Peers
    feed: HomeFeed
    reader: int
    star: int
    pushed: list[int]  # by a followed account, fanned out to the reader
    starred: list[int]  # by a celebrity the reader follows, pulled at read time
    own: list[int]  # the reader's own


def record(tweet_id: int, author_id: int) -> TweetRecord:
    return TweetRecord(tweet_id, author_id, f"u{author_id % 1000}", f"tweet {tweet_id}", datetime.now(UTC))


@pytest.fixture
async def scene(redis: RedisClient) -> AsyncIterator[Scene]:
    reader, friend, star = IDS.next_id(), IDS.next_id(), IDS.next_id()
    pushed = [IDS.next_id() for _ in range(3)]
    starred = [IDS.next_id() for _ in range(2)]
    own = [IDS.next_id()]
    tweets = TweetCache(redis, ttl_seconds=60, count_ttl_seconds=60, recent_ttl_seconds=60)
    records = [record(t, friend) for t in pushed] + [record(t, star) for t in starred] + [record(own[0], reader)]
    await tweets.put(records)
    await tweets.fill_like_counts({t.tweet_id: 3 for t in records})
    await tweets.fill_recent({reader: own, star: starred})

    setup = FeedCache(redis, timeline_size=20, following_ttl=60, celebrity_ttl=60)
    await setup.rebuild(reader, pushed)
    token = await setup.claim_following(reader)
    assert isinstance(token, str)
    await setup.set_following(reader, [(friend, 1), (star, THRESHOLD)], True, token)

    counting = Counting(redis)
    cache = FeedCache(cast(RedisClient, counting), timeline_size=20, following_ttl=60, celebrity_ttl=60)
    peers = Peers(tweets, liked={pushed[1]})
    hidden = HiddenAuthorsCache(RedisHiddenStore(cast(RedisClient, counting)), peers.nobody_hidden, redis=redis)
    # A registry of its own (an in-memory Redis): the stack's copy is never written from here.
    own_registry = FeedCache(client(FakeRedis()), timeline_size=20, following_ttl=60, celebrity_ttl=60)
    registry = CelebrityRegistry(own_registry, cast(CelebrityStore, NoStore()), 60)
    feed = HomeFeed(
        cache,
        cast(CelebrityStore, NoStore()),
        peers.following_ids,
        peers.recent_ids,
        peers.batch_tweets,
        THRESHOLD,
        20,
        registry,
        hidden_authors=hidden,
        liked_ids=peers.liked_ids,
        like_counts=peers.like_counts,
        refresh_counts=peers.refresh_like_counts,
        refresh_recent=peers.refresh_recent,
    )
    await feed.page(reader, 20, "")  # warms what a steady reader has: the hidden set, flags, registry
    await asyncio.sleep(0.1)  # the reader's activity record, written in the background
    counting.trips.clear()
    peers.calls.clear()
    yield Scene(counting, peers, feed, reader, star, pushed, starred, own)
    keys = [tweet_key("body", t.tweet_id) for t in records] + [tweet_key("like_count", t.tweet_id) for t in records]
    keys += [tweet_key("author_recent", reader), feed_key("timeline", reader), feed_key("following", reader)]
    keys += [tweet_key("author_recent", star), hidden_key(reader), hidden_version_key(reader)]
    keys += [tweet_key("liked", reader), read_record_key(reader)]
    for key in keys:
        await redis.delete(key)


async def test_a_cached_read_takes_three_redis_round_trips_and_calls_no_peer(scene: Scene) -> None:
    tweets, token = await scene.feed.page(scene.reader, 20, "")

    everything = sorted(scene.pushed + scene.starred + scene.own, reverse=True)
    assert [t.tweet_id for t in tweets] == everything and token == ""
    assert [t.like_count for t in tweets] == [3] * len(everything)
    assert {t.tweet_id for t in tweets if t.liked_by_me} == {scene.pushed[1]}
    assert scene.peers.calls == []
    # following + hidden authors + timeline + own recent ids in one pipeline; the star's recent ids; tweets
    assert len(scene.counting.trips) == 3
    assert scene.counting.stages() == 3


async def test_a_deleted_tweet_is_gone_at_once_though_its_body_was_cached(scene: Scene, redis: RedisClient) -> None:
    doomed = scene.pushed[1]
    assert doomed in [t.tweet_id for t in (await scene.feed.page(scene.reader, 20, ""))[0]]

    await mark_tweet_deleted(redis, doomed)  # what tweet_svc writes before it acknowledges a delete

    tweets, _ = await scene.feed.page(scene.reader, 20, "")
    assert doomed not in [t.tweet_id for t in tweets]
    assert len(tweets) == len(scene.pushed + scene.starred + scene.own) - 1
    assert not any(c.startswith("BatchGetTweets") for c in scene.peers.calls)  # served from the cache


async def test_a_body_the_cache_cannot_read_is_asked_of_tweet_svc_alone(scene: Scene, redis: RedisClient) -> None:
    stale = scene.starred[0]
    await redis.set(tweet_key("body", stale), b'[1, "ada", "an old JSON body", 1764000000000]')
    scene.peers.bodies[stale] = tweet_pb2.Tweet(
        tweet_id=stale, author_id=scene.star, text="from tweet_svc", like_count=9
    )

    tweets, _ = await scene.feed.page(scene.reader, 20, "")

    assert f"BatchGetTweets {[stale]}" in scene.peers.calls
    assert [t.message().text for t in tweets if t.tweet_id == stale] == ["from tweet_svc"]


async def test_counts_that_expired_are_asked_for_alone_not_with_their_cached_bodies(
    scene: Scene, redis: RedisClient
) -> None:
    expired = sorted(scene.pushed[:2])
    for tweet_id in expired:
        await redis.delete(tweet_key("like_count", tweet_id))  # lives CHIRP_LIKE_COUNT_CACHE_SECONDS

    tweets, _ = await scene.feed.page(scene.reader, 20, "")

    assert scene.peers.calls == [f"BatchGetLikeCounts {expired}"]  # no BatchGetTweets: the bodies are cached
    counts = {t.tweet_id: t.like_count for t in tweets}
    assert [counts[t] for t in expired] == [7, 7]
    assert {t.tweet_id for t in tweets if t.liked_by_me} == {scene.pushed[1]}  # the flags as before
    assert len(tweets) == len(scene.pushed + scene.starred + scene.own)
    scene.peers.calls.clear()
    await scene.feed.page(scene.reader, 20, "")
    assert scene.peers.calls == []  # filled by tweet_svc's answer

    # Counts and the reader's flags expired together: both asked for, at once, and the flags right.
    for tweet_id in expired:
        await redis.delete(tweet_key("like_count", tweet_id))
    await redis.delete(tweet_key("liked", scene.reader))
    tweets, _ = await scene.feed.page(scene.reader, 20, "")
    assert sorted(scene.peers.calls) == sorted(["ListLikedTweetIds", f"BatchGetLikeCounts {expired}"])
    assert {t.tweet_id for t in tweets if t.liked_by_me} == {scene.pushed[1]}
    assert [{t.tweet_id: t.like_count for t in tweets}[t] for t in expired] == [7, 7]


async def test_counts_past_their_refresh_time_are_served_and_rebuilt_after_the_read(
    scene: Scene, redis: RedisClient
) -> None:
    due = sorted(scene.pushed[:2])
    for tweet_id in due:
        await redis.hset(tweet_key("like_count", tweet_id), "t", 1)  # its refresh time long past

    tweets, _ = await scene.feed.page(scene.reader, 20, "")

    assert scene.peers.calls == []  # the read waited for nothing
    assert [{t.tweet_id: t.like_count for t in tweets}[t] for t in due] == [3, 3]
    for _ in range(40):  # the refresh's first batch goes REFRESH_INTERVAL_SECONDS later
        await asyncio.sleep(0.05)
        if scene.peers.calls:
            break
    assert scene.peers.calls == [f"RefreshLikeCounts {due}"]  # the two due, in one batch
    for _ in range(40):  # the rebuild lands once the fake's Redis calls are done
        await asyncio.sleep(0.05)
        if not await scene.peers.tweets.refresh_due(due):
            break
    scene.peers.calls.clear()
    tweets, _ = await scene.feed.page(scene.reader, 20, "")
    assert [{t.tweet_id: t.like_count for t in tweets}[t] for t in due] == [8, 8]  # rebuilt from the store
    await asyncio.sleep(0.7)
    assert scene.peers.calls == []  # and no longer due


async def test_recent_ids_past_their_refresh_time_are_served_and_renewed_after_the_read(
    scene: Scene, redis: RedisClient
) -> None:
    for author in (scene.star, scene.reader):  # the celebrity's set (pulled) and the reader's own
        await redis.pexpire(tweet_key("author_recent", author), int(RECENT_GRACE_SECONDS * 1000))  # a lifetime ago

    tweets, _ = await scene.feed.page(scene.reader, 20, "")

    assert scene.peers.calls == []  # the read waited for nothing
    assert sorted(t.tweet_id for t in tweets) == sorted(scene.pushed + scene.starred + scene.own)
    for _ in range(40):  # the refresh's first batch goes REFRESH_INTERVAL_SECONDS later
        await asyncio.sleep(0.05)
        if scene.peers.calls:
            break
    assert scene.peers.calls == [f"RefreshRecent {sorted([scene.star, scene.reader])}"]  # one batch

    async def renewed() -> bool:
        pttls = [await redis.pttl(tweet_key("author_recent", a)) for a in (scene.star, scene.reader)]
        return min(pttls) > RECENT_GRACE_SECONDS * 1000

    for _ in range(40):
        if await renewed():
            break
        await asyncio.sleep(0.05)
    assert await renewed()


async def test_a_like_or_unlike_shows_at_once_though_the_flags_are_cached(scene: Scene, redis: RedisClient) -> None:
    tweets = TweetCache(redis, ttl_seconds=60)
    liked, other = scene.pushed[1], scene.pushed[2]

    await tweets.record_liked(scene.reader, other, IDS.next_id(), True)  # what a like writes before its ack
    await tweets.record_liked(scene.reader, liked, IDS.next_id(), False)

    page, _ = await scene.feed.page(scene.reader, 20, "")
    assert {t.tweet_id for t in page if t.liked_by_me} == {other}
    assert scene.peers.calls == []


async def state(redis: RedisClient, key: str, tweet: int) -> str:
    """The liked half of a cached like state, "" when there is none."""
    raw = await redis.hget(key, str(tweet))
    return "" if raw is None else (raw.decode() if isinstance(raw, bytes) else str(raw)).rsplit(":", 1)[1]


async def test_a_fill_never_hides_a_like_and_lands_nowhere_once_the_hash_is_gone(redis: RedisClient) -> None:
    tweets = TweetCache(redis, ttl_seconds=60)
    user, tweet = IDS.next_id(), IDS.next_id()
    key = tweet_key("liked", user)
    try:
        token = await tweets.liked_fill_token(user)
        assert token is not None
        await tweets.record_liked(user, tweet, IDS.next_id(), True)  # acknowledged while the store was read
        await tweets.fill_liked(user, token, [tweet], set())  # the store read before the like
        assert await state(redis, key, tweet) == "1"
        older = IDS.next_id()
        await tweets.record_liked(user, tweet, IDS.next_id(), False)
        await tweets.record_liked(user, tweet, older, True)  # an older event arriving late changes nothing
        assert await state(redis, key, tweet) == "0"
        assert 0 < await redis.pttl(key) <= 60_000

        await redis.delete(key)  # expired or evicted between the token and the fill
        await tweets.fill_liked(user, token, [tweet], {tweet})
        assert await redis.exists(key) == 0
    finally:
        await redis.delete(key)


class GatedGraph:
    """graph_svc's ListFollowingIds answering with `accounts` (cut at its limit when
    `truncated`), or raising `failure`, held until `gate` opens (open from the start when
    `opened`), counting its calls."""

    def __init__(
        self,
        accounts: list[tuple[int, int]],
        truncated: bool = False,
        opened: bool = False,
        failure: Exception | None = None,
    ) -> None:
        self.accounts = accounts
        self.truncated = truncated
        self.failure = failure
        self.gate = asyncio.Event()
        if opened:
            self.gate.set()
        self.calls = 0

    async def following_ids(self, user_id: int, among: Sequence[int]) -> tuple[list[tuple[int, int]], bool]:
        self.calls += 1
        accounts = list(self.accounts)  # what graph_svc read, before the gate
        await self.gate.wait()
        if self.failure is not None:
            raise self.failure
        return accounts, self.truncated

    async def unused(self, *args: Any) -> Any:
        raise AssertionError("not part of this test")


async def test_a_follow_list_read_before_a_follow_is_never_cached_after_it(redis: RedisClient) -> None:
    """The fan-out worker deletes a reader's cached follow list on every follow and
    unfollow. A reader that loaded the list from graph_svc just before a follow must
    not put the old list back after that delete: it would hide the new followee's
    tweets for the cache's whole TTL."""
    reader, friend, newcomer = IDS.next_id(), IDS.next_id(), IDS.next_id()
    graph = GatedGraph([(friend, 1)])
    cache = FeedCache(redis, timeline_size=20, following_ttl=300, celebrity_ttl=60)
    feed = HomeFeed(cache, cast(CelebrityStore, NoStore()), graph.following_ids, graph.unused, graph.unused, 10, 20)
    key = feed_key("following", reader)
    try:
        loading = asyncio.ensure_future(feed.following(reader))
        while graph.calls == 0:
            await asyncio.sleep(0.01)
        # Another reader meanwhile: the marker reads as a miss, and it shares the token.
        assert (await cache.home_reads(reader, None, 20, 0)).following is None
        token = await cache.claim_following(reader)
        assert isinstance(token, str)

        await redis.set(legacy_following_key(reader), f"{friend}:1")  # as a feed_svc from before fo2: cached it
        graph.accounts.append((newcomer, 1))  # the follow, applied in graph_svc...
        await cache.drop_following(reader)  # ...and by the fan-out worker
        assert await redis.get(legacy_following_key(reader)) is None
        graph.gate.set()
        assert await loading == ([(friend, 1)], True)  # this read's answer, from before the follow
        assert await redis.get(key) is None, "a list from before the follow was cached after it"
        await cache.set_following(reader, [(friend, 1)], True, token)  # the other reader's fill
        assert await redis.get(key) is None

        assert await feed.following(reader) == ([(friend, 1), (newcomer, 1)], True)  # loaded and kept
        calls = graph.calls
        assert await feed.following(reader) == ([(friend, 1), (newcomer, 1)], True)
        assert graph.calls == calls, "the list loaded after the follow is cached"
        assert 290_000 < await redis.pttl(key) <= 300_000
    finally:
        await redis.delete(key, legacy_following_key(reader))


def reloading_cache(redis: RedisClient, graph: GatedGraph, reader: int) -> tuple[FeedCache, str]:
    """A FeedCache (lists living 300 s) whose follow lists reads find due are reloaded
    from `graph`, and the reader's list key."""
    cache = FeedCache(redis, timeline_size=20, following_ttl=300, celebrity_ttl=60)
    store = cast(CelebrityStore, NoStore())
    HomeFeed(cache, store, graph.following_ids, graph.unused, graph.unused, 10, 20, refresh_following=True)
    return cache, feed_key("following", reader)


async def test_a_follow_list_served_near_its_end_is_loaded_again_after_the_read(redis: RedisClient) -> None:
    """Follow lists filled together (a warm-up, a cold start) would expire together and
    be loaded, by the readers waiting on them, together. One a read serves near the end
    of its lifetime is loaded again from graph_svc after the read, for a whole lifetime
    (a list graph_svc cut at its limit stays marked so); one earlier in its life is left
    alone."""
    reader, friend, newcomer = IDS.next_id(), IDS.next_id(), IDS.next_id()
    graph = GatedGraph([(friend, 1), (newcomer, 2)], truncated=True, opened=True)
    cache, key = reloading_cache(redis, graph, reader)
    try:
        await redis.set(key, f"{friend}:1", px=100_000)  # two thirds through its life: not due
        assert (await cache.home_reads(reader, None, 20, 0)).following == ([(friend, 1)], True)
        await asyncio.sleep(1.5)  # a refresh batch waits 0.5 s
        assert graph.calls == 0, "a list early in its life was loaded again"
        assert 95_000 < await redis.pttl(key) <= 100_000

        await redis.pexpire(key, 10_000)  # in its last twentieth: due for any reader
        assert (await cache.home_reads(reader, None, 20, 0)).following == ([(friend, 1)], True)  # served as is
        await wait_for_async(lambda: _renewed(redis, key), 5.0, "the list to be loaded again")
        assert graph.calls == 1
        assert await redis.get(key) == f"{friend}:1,{newcomer}:2;more".encode()
    finally:
        await redis.delete(key)


async def _renewed(redis: RedisClient, key: str) -> bool:
    return int(await redis.pttl(key)) > 290_000


def reloads(result: str) -> float:
    return REGISTRY.get_sample_value("chirp_following_reloads_total", {"result": result}) or 0.0


async def test_a_follow_list_reloaded_across_a_follow_never_replaces_the_newer_list(redis: RedisClient) -> None:
    """A reload stores its list only over the write it fingerprinted before its load: a
    follow or unfollow applied while graph_svc answered (the fan-out worker deletes the
    key, a reader may fill it again) keeps the reload's older list out, as it does a
    reader's fill, even when the reader's fill holds the same bytes as before."""
    reader, friend, newcomer = IDS.next_id(), IDS.next_id(), IDS.next_id()
    graph = GatedGraph([(friend, 1)])
    cache, key = reloading_cache(redis, graph, reader)
    claim = reload_claim_key(key)
    try:
        await redis.set(key, f"{friend}:1", px=10_000)
        changed = reloads("changed")
        assert (await cache.home_reads(reader, None, 20, 0)).following == ([(friend, 1)], True)
        await wait_for_async(lambda: _called(graph), 5.0, "a reload to start")
        graph.accounts.append((newcomer, 1))  # the follow, applied in graph_svc...
        await cache.drop_following(reader)  # ...and by the fan-out worker
        graph.gate.set()
        await wait_for_async(lambda: _counted("changed", changed), 5.0, "the reload to end as dropped")
        assert await redis.get(key) is None, "a reload from before the follow was stored after it"

        # A follow and its unfollow, both applied while a reload loads: the reader's fill
        # after them holds the same bytes as before, yet is a newer write. It stays.
        assert await redis.exists(claim) == 0, "the reload above ended and kept its claim"
        await redis.set(key, f"{friend}:1", px=10_000)
        fingerprint = await cache.following_fingerprint(reader, "mine")
        assert fingerprint is not None
        assert await cache.following_fingerprint(reader, "theirs") is None, "a second process reloads it too"
        assert 0 < await redis.pttl(claim) <= RELOAD_CLAIM_MS
        assert await cache.following_fingerprint(reader, "mine") is not None  # sent again: its own claim
        await cache.drop_following(reader)
        await asyncio.sleep(0.01)  # a fill at least a millisecond later
        await redis.set(key, f"{friend}:1", px=10_000)
        assert await cache.refresh_following(reader, fingerprint, [(friend, 1), (newcomer, 1)], True) is False
        assert await redis.get(key) == f"{friend}:1".encode()
        await cache.end_following_reload(reader, "theirs")  # not its claim: left alone
        assert await redis.get(claim) == b"mine"
        await cache.end_following_reload(reader, "mine")
        assert await redis.exists(claim) == 0
        # Over the write it fingerprinted, it is stored.
        fingerprint = await cache.following_fingerprint(reader, "mine")
        assert fingerprint is not None
        assert await cache.refresh_following(reader, fingerprint, [(friend, 2)], True) is True
        assert await redis.get(key) == f"{friend}:2".encode()
        assert 290_000 < await redis.pttl(key) <= 300_000
        await cache.end_following_reload(reader, "mine")
        assert await cache.following_fingerprint(reader, "theirs") is None, "a list just reloaded was reloaded again"
        # A reader's marker (a load in progress) is not fingerprinted, so never reloaded over.
        await redis.set(key, "pending:abc", px=10_000)
        assert await cache.following_fingerprint(reader, "mine") is None
        assert await redis.exists(claim) == 0, "a claim was taken on a marker"
    finally:
        graph.gate.set()
        await redis.delete(key)
        await redis.delete(claim)


async def _counted(result: str, before: float) -> bool:
    return reloads(result) > before


async def _called(graph: GatedGraph) -> bool:
    return graph.calls >= 1


async def test_a_follow_list_reload_that_fails_leaves_the_read_and_the_list_as_they_were(
    redis: RedisClient,
) -> None:
    """graph_svc failing a reload costs the reader nothing: the read is served from the
    cached list without waiting for the reload, the reload counts as failed, and the
    list is kept as it was, with its time left and no claim on it, so a later read, in
    any process, finds it due again and has it reloaded."""
    reader, friend = IDS.next_id(), IDS.next_id()
    graph = GatedGraph([(friend, 1)], failure=ConnectionError("graph_svc unavailable"))
    cache, key = reloading_cache(redis, graph, reader)
    try:
        await redis.set(key, f"{friend}:1", px=10_000)  # in its last twentieth: due
        failed = reloads("failed")
        read = asyncio.create_task(cache.home_reads(reader, None, 20, 0))
        assert (await asyncio.wait_for(read, 2.0)).following == ([(friend, 1)], True)  # the gate is still shut
        await wait_for_async(lambda: _called(graph), 5.0, "a reload to start")
        graph.gate.set()
        await wait_for_async(lambda: _counted("failed", failed), 5.0, "the reload to end as failed")
        assert await redis.get(key) == f"{friend}:1".encode()
        assert 0 < await redis.pttl(key) <= 10_000, "a failed reload changed the list's lifetime"
        assert cache.following_due(reader, int(await redis.pttl(key)))
        # Its claim ended with it: another process's read reloads the list at once.
        graph.failure = None
        other, _ = reloading_cache(redis, graph, reader)
        assert (await other.home_reads(reader, None, 20, 0)).following == ([(friend, 1)], True)
        await wait_for_async(lambda: _renewed(redis, key), 5.0, "another process to load the list again")
        assert graph.calls == 2
    finally:
        graph.gate.set()
        await redis.delete(key)
