"""Like counts in Redis against the real Redis and store: the worker writes
through, readers only fill gaps, so a reader never puts back an older count."""

from __future__ import annotations

import httpx

from common.cache import connect_redis
from common.ids import IdGenerator
from common.keys import tweet_key
from tests import faults
from tests.conftest import REDIS_URL
from tests.integration.test_durability import sign_in
from tweet_svc.cache import TweetCache


async def test_a_reader_fill_never_overwrites_the_count_the_worker_wrote() -> None:
    redis = connect_redis(REDIS_URL)
    cache = TweetCache(redis, ttl_seconds=60, count_ttl_seconds=60)
    tweet_id = IdGenerator(904).next_id()
    try:
        assert await cache.like_counts([tweet_id]) == {}
        await cache.set_like_counts({tweet_id: 3})  # the worker applied a like
        await cache.fill_like_counts({tweet_id: 2})  # a reader that read the store just before
        assert await cache.like_counts([tweet_id]) == {tweet_id: 3}
        await cache.set_like_counts({tweet_id: 2})  # an unlike, applied later
        assert await cache.like_counts([tweet_id]) == {tweet_id: 2}
        assert 60_000 < await redis.pttl(tweet_key("like_count", tweet_id)) <= 120_000  # due at 60 s, kept twice that
    finally:
        await redis.delete(tweet_key("like_count", tweet_id))
        await redis.aclose()


def test_reads_follow_likes_and_unlikes_through_the_cache(edge: httpx.Client) -> None:
    _, author = sign_in(edge)
    tweet_id = edge.post("/v1/tweets", json={"text": "count me"}, headers=author).json()["tweet"]["tweet_id"]
    assert edge.get(f"/v1/tweets/{tweet_id}").json()["tweet"]["like_count"] == 0  # cached as 0 now
    likers = [sign_in(edge)[1] for _ in range(2)]
    for liker in likers:
        assert edge.post(f"/v1/tweets/{tweet_id}/like", headers=liker).status_code == 200

    def count_is(n: int) -> bool:
        return bool(edge.get(f"/v1/tweets/{tweet_id}").json()["tweet"]["like_count"] == n)

    faults.wait_for(lambda: count_is(2), 10, "the cached count to follow two likes")
    assert edge.delete(f"/v1/tweets/{tweet_id}/like", headers=likers[0]).status_code == 200
    faults.wait_for(lambda: count_is(1), 10, "the cached count to follow an unlike")
