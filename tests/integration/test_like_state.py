"""A tweet's like state in Redis (tweet_svc/cache.py) against the real Redis: the
count an acknowledged like answers counts every like acknowledged before it,
once per user, by version, and the worker's write-through moves likes from
pending to stored without changing the count."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

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
    assert 0 < await redis.pttl(tweet_key("like_count", tweet)) <= TTL_SECONDS * 1000


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
