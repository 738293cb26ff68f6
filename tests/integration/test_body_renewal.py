"""Tweet bodies being read are renewed, so bodies filled together (a warm-up, a cold
start) do not expire together (tweet_svc/cache.py `renew_bodies`, run with each like-count
refresh a read asks for). Against the stack's Redis; tweet_svc's own path is in
tests/e2e/test_internal_rpcs.py."""

from __future__ import annotations

from datetime import UTC, datetime

from common.cache import RedisClient, mark_tweet_deleted
from common.cql import CqlSession
from common.ids import IdGenerator
from common.keys import TWEET_DELETED_SECONDS, tweet_key
from common.outbox import Outbox
from tweet_svc.cache import TweetCache
from tweet_svc.domain import Tweets, Usernames
from tweet_svc.store import TweetRecord, TweetStore

TTL_MS = 60_000


async def test_bodies_being_read_get_a_whole_lifetime_again(redis: RedisClient) -> None:
    ids = IdGenerator(906)
    body, gone, absent = ids.next_id(), ids.next_id(), ids.next_id()
    keys = [tweet_key("body", t) for t in (body, gone, absent)]
    cache = TweetCache(redis, ttl_seconds=TTL_MS / 1000)
    try:
        await cache.put([TweetRecord(body, 7, "ada", "renew me", datetime(2026, 1, 2, tzinfo=UTC))])
        await redis.pexpire(keys[0], 5_000)  # near the end of its lifetime
        await mark_tweet_deleted(redis, gone)  # a delete's marker: TWEET_DELETED_SECONDS
        await cache.renew_bodies([body, gone, absent])

        assert TTL_MS - 5_000 < await redis.pttl(keys[0]) <= TTL_MS
        assert await redis.pttl(keys[1]) > TTL_MS  # a marker is lengthened, never shortened
        assert TWEET_DELETED_SECONDS * 1000 > TTL_MS
        assert await redis.exists(keys[2]) == 0  # nothing cached: still a miss
        found, deleted = await cache.get([body, gone, absent])
        assert set(found) == {body} and deleted == {gone}
    finally:
        for key in keys:  # one slot each on a cluster
            await redis.delete(key)


async def test_a_body_the_store_no_longer_has_is_not_renewed(cql: CqlSession, redis: RedisClient) -> None:
    """A deleted tweet whose marker Redis lost (a restart from its snapshot, a failover) keeps
    its body cached: being read must not keep it there past its lifetime."""
    outbox = Outbox(cql, None)
    await outbox.prepare()
    store = TweetStore(cql, outbox)
    await store.prepare()
    cache = TweetCache(redis, ttl_seconds=TTL_MS / 1000)

    async def username(user_id: int) -> str:
        return f"author{user_id}"

    tweets = Tweets(store, cache, outbox, None, Usernames(username), IdGenerator(907))  # type: ignore[arg-type]
    ids = IdGenerator(908)
    kept, lost = ids.next_id(), ids.next_id()
    created = datetime(2026, 1, 2, tzinfo=UTC)
    await cql.execute(
        "INSERT INTO tweets (tweet_id, author_id, author_username, text, created_at) VALUES (%s, %s, %s, %s, %s)",
        (kept, 7, "ada", "kept", created),
    )
    keys = [tweet_key("body", t) for t in (kept, lost)]
    try:
        await cache.put([TweetRecord(t, 7, "ada", "cached", created) for t in (kept, lost)])
        for key in keys:
            await redis.pexpire(key, 5_000)
        await tweets.refresh_like_counts([kept, lost])
        assert TTL_MS - 5_000 < await redis.pttl(keys[0]) <= TTL_MS
        assert 0 < await redis.pttl(keys[1]) <= 5_000  # deleted in the store: left to expire
    finally:
        await cql.execute("DELETE FROM tweets WHERE tweet_id = %s", (kept,))
        for key in keys:
            await redis.delete(key)
