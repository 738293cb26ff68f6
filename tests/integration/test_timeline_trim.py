"""A pushed timeline is trimmed on about one push in TRIM_EVERY (feed_svc/cache.py):
it stays near its size, and always holds the newest entries, on the stack's Redis."""

from __future__ import annotations

import secrets

from common.cache import RedisClient
from common.ids import min_id_at_ms
from common.keys import feed_key
from feed_svc.cache import TRIM_EVERY, FeedCache, trims

SIZE = 20


async def test_timelines_pushed_one_tweet_at_a_time_stay_near_their_size_and_keep_the_newest(
    redis: RedisClient,
) -> None:
    cache = FeedCache(redis, timeline_size=SIZE, following_ttl=60, celebrity_ttl=60)
    users = [2**40 + secrets.randbelow(2**30) for _ in range(3)]
    start_ms = 1_790_000_000_000
    tweets = [min_id_at_ms(start_ms + i) for i in range(600)]
    longest = 0
    try:
        for tweet in tweets:
            await cache.push(users, [tweet])
            sizes = [await redis.zcard(feed_key("timeline", u)) for u in users]
            longest = max(longest, *sizes)
        assert SIZE < longest <= SIZE + 40, "trimmed now and then, never far over its size"
        for user in users:
            newest = await redis.zrevrange(feed_key("timeline", user), 0, SIZE - 1)
            assert [int(str(t, "ascii") if isinstance(t, bytes) else str(t)) for t in newest] == tweets[::-1][:SIZE]
    finally:
        await redis.delete(*(feed_key("timeline", u) for u in users))


def test_about_one_push_in_trim_every_trims_and_a_backfill_always_does() -> None:
    pairs = [(user, min_id_at_ms(1_790_000_000_000 + ms)) for user in range(100) for ms in range(100)]
    share = sum(trims(u, [t]) for u, t in pairs) / len(pairs)
    assert 0.8 / TRIM_EVERY < share < 1.2 / TRIM_EVERY
    assert all(trims(u, [t, t + 1]) for u, t in pairs[:50])
