"""A tweet's like state in Redis (tweet_svc/cache.py) against the real Redis: the
count an acknowledged like answers counts every like acknowledged before it,
once per user, by version, and the worker's write-through moves likes from
pending to stored without changing the count."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import cast

import pytest

from common.cache import RedisClient
from common.ids import IdGenerator
from common.keys import tweet_key
from tweet_svc.cache import TweetCache
from tweet_svc.likes import NEVER, LikeState

TTL_SECONDS = 60


@pytest.fixture
def ids() -> IdGenerator:
    return IdGenerator(905)


@pytest.fixture
async def tweet(redis: RedisClient, ids: IdGenerator) -> AsyncIterator[int]:
    tweet_id = ids.next_id()
    yield tweet_id
    await redis.delete(tweet_key("like_count", tweet_id))


def cache_on(redis: RedisClient) -> TweetCache:
    return TweetCache(redis, ttl_seconds=TTL_SECONDS, count_ttl_seconds=TTL_SECONDS)


async def ack(
    cache: TweetCache,
    ids: IdGenerator,
    tweet: int,
    user: int,
    liked: bool = True,
    count: int = 0,
    row: LikeState = NEVER,
) -> int:
    """A like (or unlike) of `user` just acknowledged; `count` and `row` are what the store held."""
    answer = await cache.acknowledged_like(tweet, user, ids.next_id(), liked, count, row)
    assert answer is not None
    return answer


async def test_each_like_counts_every_like_acknowledged_before_it(
    redis: RedisClient, ids: IdGenerator, tweet: int
) -> None:
    cache = cache_on(redis)
    assert [await ack(cache, ids, tweet, user) for user in range(1, 7)] == [1, 2, 3, 4, 5, 6]
    assert await ack(cache, ids, tweet, 3) == 6  # liking twice counts once
    assert await ack(cache, ids, tweet, 3, liked=False) == 5
    assert await ack(cache, ids, tweet, 9, liked=False) == 5  # unliking what was never liked
    assert await cache.like_counts([tweet]) == {tweet: 5}
    # Due to be rebuilt TTL_SECONDS after its creation, served for as long again after that.
    assert TTL_SECONDS * 1000 < await redis.pttl(tweet_key("like_count", tweet)) <= 2 * TTL_SECONDS * 1000
    refresh_at = int(cast(bytes, await redis.hget(tweet_key("like_count", tweet), "t")))
    assert 0 < refresh_at - time.time() * 1000 <= TTL_SECONDS * 1000


async def test_the_worker_fold_moves_likes_from_pending_to_stored(
    redis: RedisClient, ids: IdGenerator, tweet: int
) -> None:
    cache = cache_on(redis)
    versions = {}
    for user in (1, 2, 3):
        versions[user] = ids.next_id()
        await cache.acknowledged_like(tweet, user, versions[user], True, 0, NEVER)
    folded = {user: LikeState(True, versions[user]) for user in (1, 2)}
    await cache.folded_likes(tweet, 2, folded)
    assert await cache.like_counts([tweet]) == {tweet: 3}
    await cache.folded_likes(tweet, 2, folded)  # a re-delivered batch changes nothing
    assert await cache.like_counts([tweet]) == {tweet: 3}
    # User 1 unlikes after the fold: counted from the stored like, not from the pending one.
    assert await ack(cache, ids, tweet, 1, liked=False) == 2
    await cache.folded_likes(tweet, 3, {3: LikeState(True, versions[3])})
    assert await cache.like_counts([tweet]) == {tweet: 2}


async def test_a_fold_the_hash_never_heard_of_is_counted_once(redis: RedisClient, ids: IdGenerator, tweet: int) -> None:
    """An acknowledgement whose write to Redis was lost, or a fold written before its
    acknowledgement's script ran: the fold counts it, and the late script does not again."""
    cache = cache_on(redis)
    assert await ack(cache, ids, tweet, 1) == 1
    late = ids.next_id()
    await cache.folded_likes(tweet, 2, {2: LikeState(True, late)})  # user 1 not folded yet
    assert await cache.like_counts([tweet]) == {tweet: 3}
    assert await cache.acknowledged_like(tweet, 2, late, True, 0, NEVER) == 3


async def test_an_older_event_than_one_seen_changes_nothing(redis: RedisClient, ids: IdGenerator, tweet: int) -> None:
    cache = cache_on(redis)
    older, newer = ids.next_id(), ids.next_id()
    assert await cache.acknowledged_like(tweet, 1, newer, True, 0, NEVER) == 1
    assert await cache.acknowledged_like(tweet, 1, older, False, 0, NEVER) == 1  # a skewed clock's unlike
    await cache.folded_likes(tweet, 1, {1: LikeState(True, newer)})
    await cache.folded_likes(tweet, 1, {1: LikeState(False, older)})  # a stale fold
    assert await cache.like_counts([tweet]) == {tweet: 1}


async def test_a_lost_hash_starts_again_from_the_stored_count(redis: RedisClient, ids: IdGenerator, tweet: int) -> None:
    cache = cache_on(redis)
    assert await ack(cache, ids, tweet, 1) == 1
    await redis.delete(tweet_key("like_count", tweet))
    assert await cache.like_counts([tweet]) == {}
    # The stored count (4) already has this user's like: it is not counted twice.
    assert await ack(cache, ids, tweet, 1, count=4, row=LikeState(True, 1)) == 4
    assert await ack(cache, ids, tweet, 2, count=4) == 5


async def test_a_count_stored_before_the_hash_is_replaced_not_an_error(
    redis: RedisClient, ids: IdGenerator, tweet: int
) -> None:
    cache = cache_on(redis)
    await redis.set(tweet_key("like_count", tweet), 7, px=60_000)  # what an older worker wrote
    assert await cache.like_counts([tweet]) == {}  # a miss, not WRONGTYPE
    await cache.fill_like_counts({tweet: 6})  # a reader does not replace it
    assert await ack(cache, ids, tweet, 1, count=7) == 8


async def test_a_reader_fill_never_replaces_the_like_state(redis: RedisClient, ids: IdGenerator, tweet: int) -> None:
    cache = cache_on(redis)
    assert await ack(cache, ids, tweet, 1) == 1
    await cache.fill_like_counts({tweet: 0})  # read the store before the worker folded
    assert await cache.like_counts([tweet]) == {tweet: 1}


async def test_concurrent_likes_answer_each_count_once(redis: RedisClient, ids: IdGenerator, tweet: int) -> None:
    cache = cache_on(redis)
    answers = await asyncio.gather(*(ack(cache, ids, tweet, user) for user in range(1, 21)))
    assert sorted(answers) == list(range(1, 21))


# ---- rebuilds of counts past their refresh time --------------------------------------------


async def past_refresh_time(redis: RedisClient, cache: TweetCache, tweet: int) -> None:
    """The hash, as if created a lifetime ago (its refresh time long past)."""
    assert await cache.refresh_due([tweet]) == {}  # not due: a rebuild would not read the store
    await redis.hset(tweet_key("like_count", tweet), "t", 1)


async def test_a_count_past_its_refresh_time_is_served_and_rebuilt_from_the_store(
    redis: RedisClient, tweet: int
) -> None:
    cache = cache_on(redis)
    await cache.fill_like_counts({tweet: 4})
    assert await cache.like_counts_due([tweet]) == ({tweet: 4}, set())
    await past_refresh_time(redis, cache, tweet)
    assert await cache.like_counts_due([tweet]) == ({tweet: 4}, {tweet})  # still served, and due

    due = await cache.refresh_due([tweet])
    assert due == {tweet: "0"}
    assert await cache.refresh_like_counts({tweet: (6, due[tweet])}) == {tweet}  # a like folded meanwhile
    assert await cache.like_counts_due([tweet]) == ({tweet: 6}, set())
    assert await cache.refresh_like_counts({tweet: (6, due[tweet])}) == set()  # rebuilt already: left
    assert TTL_SECONDS * 1000 < await redis.pttl(tweet_key("like_count", tweet)) <= 2 * TTL_SECONDS * 1000


async def test_a_rebuild_never_replaces_a_state_written_after_it_read_m(
    redis: RedisClient, ids: IdGenerator, tweet: int
) -> None:
    cache = cache_on(redis)
    await cache.fill_like_counts({tweet: 4})
    await past_refresh_time(redis, cache, tweet)
    due = await cache.refresh_due([tweet])  # the rebuild reads `m`, then the store: 4
    await cache.folded_likes(tweet, 5, {})  # meanwhile the worker folds a like and writes through
    assert await cache.refresh_like_counts({tweet: (4, due[tweet])}) == set()
    assert await cache.like_counts([tweet]) == {tweet: 5}

    due = await cache.refresh_due([tweet])
    assert await ack(cache, ids, tweet, 1, count=5, row=LikeState(True, 1)) == 5  # a repeated like: no change
    assert await cache.refresh_like_counts({tweet: (4, due[tweet])}) == set()  # the script ran all the same


async def test_no_rebuild_while_an_acknowledged_like_or_unlike_waits_for_its_fold(
    redis: RedisClient, ids: IdGenerator, tweet: int
) -> None:
    cache = cache_on(redis)
    assert await ack(cache, ids, tweet, 1, count=4) == 5  # pending: the store still says 4
    assert await ack(cache, ids, tweet, 2, liked=False, count=4, row=LikeState(True, 1)) == 4  # and an unlike
    await past_refresh_time(redis, cache, tweet)
    assert await cache.like_counts_due([tweet]) == ({tweet: 4}, {tweet})
    # The pending sum is 0, but two users wait for their folds: a rebuild would drop both.
    assert await cache.refresh_due([tweet]) == {}
    assert await cache.refresh_like_counts({tweet: (4, "2")}) == set()
    versions = await redis.hmget(tweet_key("like_count", tweet), ["1", "2"])
    assert all(versions)  # the users' states are still there for their folds
    assert await redis.pttl(tweet_key("like_count", tweet)) > 0  # it lives out its second lifetime


async def test_a_rebuild_replaces_a_count_stored_before_the_hash_and_fills_a_missing_one(
    redis: RedisClient, ids: IdGenerator, tweet: int
) -> None:
    cache = cache_on(redis)
    await redis.set(tweet_key("like_count", tweet), 7, px=60_000)  # what an older worker wrote
    due = await cache.refresh_due([tweet])
    assert due == {tweet: "0"}
    assert await cache.refresh_like_counts({tweet: (8, due[tweet])}) == {tweet}
    assert await cache.like_counts_due([tweet]) == ({tweet: 8}, set())
    other = ids.next_id()
    try:
        assert await cache.refresh_due([other]) == {other: "0"}  # gone: the store's count fills it
        assert await cache.refresh_like_counts({other: (2, "0")}) == {other}
        assert await cache.like_counts([other]) == {other: 2}
    finally:
        await redis.delete(tweet_key("like_count", other))
