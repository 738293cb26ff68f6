"""Authors' recent tweet ids in Redis (`ar:{author}`) against the real Redis and
stack: posts and deletes change the set before they are acknowledged, a
reader's fill merges and never hides a newer post, and a set only answers
for as many ids as it is known to cover."""

from __future__ import annotations

import time

import httpx

from common.cache import RedisClient
from common.ids import IdGenerator
from common.keys import tweet_key
from common.tweet_cache import RECENT_GRACE_SECONDS
from tests.integration.test_durability import sign_in
from tweet_svc.cache import RECENT_DEPTH, TweetCache

TTL_SECONDS = 30


async def test_a_fill_from_an_older_read_never_hides_a_newer_post(redis: RedisClient) -> None:
    cache = TweetCache(redis, ttl_seconds=60, recent_ttl_seconds=TTL_SECONDS)
    ids = IdGenerator(905)
    author, old1, old2, new = (ids.next_id() for _ in range(4))
    try:
        await cache.add_recent(author, new)  # the post, acknowledged
        assert await cache.recent([author], 20) == {}  # not filled yet: a miss
        await cache.fill_recent({author: [old2, old1]})  # a reader that read the store before the post
        assert await cache.recent([author], 20) == {author: [new, old2, old1]}
        await cache.remove_recent(author, old2)  # a delete
        assert await cache.recent([author], 20) == {author: [new, old1]}
        # Due for a refresh TTL_SECONDS after the fill, kept RECENT_GRACE_SECONDS after that.
        life = (TTL_SECONDS + RECENT_GRACE_SECONDS) * 1000
        assert life - 5000 < await redis.pttl(tweet_key("author_recent", author)) <= life
        assert await cache.recent_due([author]) == {}  # not due
    finally:
        await redis.delete(tweet_key("author_recent", author))


async def test_a_set_answers_only_as_deep_as_it_covers(redis: RedisClient) -> None:
    cache = TweetCache(redis, ttl_seconds=60, recent_ttl_seconds=TTL_SECONDS)
    ids = IdGenerator(906)
    prolific, quiet = ids.next_id(), ids.next_id()
    newest_first = sorted((ids.next_id() for _ in range(RECENT_DEPTH)), reverse=True)
    try:
        await cache.fill_recent({prolific: newest_first, quiet: [newest_first[0]]})
        hit = await cache.recent([prolific, quiet], RECENT_DEPTH)
        assert hit == {prolific: newest_first, quiet: [newest_first[0]]}  # quiet: every tweet it has

        await cache.remove_recent(prolific, newest_first[3])
        # Older tweets than the set holds may exist: a full page is now a miss, a short one still a hit.
        assert await cache.recent([prolific], RECENT_DEPTH) == {}
        short = [t for t in newest_first if t != newest_first[3]][:20]
        assert await cache.recent([prolific], 20) == {prolific: short}
    finally:
        await redis.delete(tweet_key("author_recent", prolific), tweet_key("author_recent", quiet))


async def test_a_post_does_not_extend_the_sets_lifetime(redis: RedisClient) -> None:
    cache = TweetCache(redis, ttl_seconds=60, recent_ttl_seconds=TTL_SECONDS)
    ids = IdGenerator(907)
    author = ids.next_id()
    try:
        await cache.fill_recent({author: [ids.next_id()]})
        await redis.pexpire(tweet_key("author_recent", author), 5000)  # as if filled 25 s ago
        await cache.add_recent(author, ids.next_id())
        assert 0 < await redis.pttl(tweet_key("author_recent", author)) <= 5000
    finally:
        await redis.delete(tweet_key("author_recent", author))


def made_at(unix_ms: int, count: int) -> list[int]:
    """`count` tweet ids made at `unix_ms`, newest first."""
    clock = iter(range(unix_ms, unix_ms + count))
    ids = IdGenerator(909, clock_ms=lambda: next(clock))
    return sorted((ids.next_id() for _ in range(count)), reverse=True)


async def test_a_set_past_its_refresh_time_becomes_the_store_read_and_the_posts_since(redis: RedisClient) -> None:
    cache = TweetCache(redis, ttl_seconds=60, recent_ttl_seconds=TTL_SECONDS)
    author, gone = IdGenerator(908).next_id(), IdGenerator(910).next_id()
    key = tweet_key("author_recent", author)
    read_at = time.time() * 1000
    old = made_at(int(read_at) - 3_600_000, 4)  # an hour before the store read
    deleted = old[1]  # deleted, its removal from Redis lost
    lost = made_at(int(read_at) - 60_000, 1)[0]  # posted a minute before it, its Redis write lost
    posted = made_at(int(read_at) + 1, 1)[0]  # posted after it
    settling = made_at(int(read_at) - 2_000, 1)[0]  # still being written when the store was read
    retried = made_at(int(read_at) - 600_000, 1)[0]  # a retry's post, its id claimed 10 minutes before
    try:
        await cache.fill_recent({author: old})  # every tweet of the author: ALL
        await cache.add_recent(author, settling)
        assert await cache.recent_due([author]) == {}  # not due yet
        await redis.pexpire(key, int(RECENT_GRACE_SECONDS * 1000))  # as if filled TTL_SECONDS ago
        held = await cache.recent_due([author, gone])  # read before the store read; gone: left out
        assert held == {author: {*old, settling}}
        await cache.add_recent(author, posted)  # both added after `held` was read
        await cache.add_recent(author, retried)

        # The store has `lost`, and no longer `deleted`.
        read = sorted([lost, *(t for t in old if t != deleted)], reverse=True)
        assert await cache.refresh_recent({author: read}, held, read_at) == {author}
        expected = sorted([posted, settling, retried, *read], reverse=True)
        assert await cache.recent([author], 20) == {author: expected}  # ALL: every tweet
        assert await cache.recent_due([author]) == {}  # renewed
        assert await cache.refresh_recent({author: []}, {author: set(expected)}, read_at) == set()  # left
        assert await cache.refresh_recent({gone: [posted]}, {}, read_at) == set()  # a gone set is a reader's to fill
        assert await redis.exists(tweet_key("author_recent", gone)) == 0
    finally:
        await redis.delete(key)


async def test_after_a_full_store_read_the_set_keeps_what_the_read_covers(redis: RedisClient) -> None:
    cache = TweetCache(redis, ttl_seconds=60, recent_ttl_seconds=TTL_SECONDS)
    author = IdGenerator(911).next_id()
    key = tweet_key("author_recent", author)
    read_at = time.time() * 1000
    older = made_at(int(read_at) - 7_200_000, 5)  # beyond the newest RECENT_DEPTH by now
    newest = made_at(int(read_at) - 3_600_000, RECENT_DEPTH)
    deleted = newest[10]
    try:
        await cache.fill_recent({author: older[:2]})
        await cache.fill_recent({author: newest})  # both fills merged: ALL and TOP
        await redis.pexpire(key, int(RECENT_GRACE_SECONDS * 1000))
        held = await cache.recent_due([author])
        read = [t for t in newest if t != deleted] + older[:1]  # RECENT_DEPTH ids: a full read
        assert await cache.refresh_recent({author: read}, held, read_at) == {author}
        assert await cache.recent([author], RECENT_DEPTH) == {author: read}  # TOP: the newest RECENT_DEPTH
        assert await cache.recent([author], RECENT_DEPTH + 1) == {}  # and no more
        assert await redis.zcard(key) == RECENT_DEPTH + 1  # older ids than the read's oldest are gone
    finally:
        await redis.delete(key)


async def test_with_reads_that_may_miss_writes_a_refresh_drops_nothing_it_did_not_read(redis: RedisClient) -> None:
    cache = TweetCache(redis, ttl_seconds=60, recent_ttl_seconds=TTL_SECONDS, prune_recent=False)
    author = IdGenerator(912).next_id()
    key = tweet_key("author_recent", author)
    read_at = time.time() * 1000
    old = made_at(int(read_at) - 3_600_000, 3)
    try:
        await cache.fill_recent({author: old})
        await redis.pexpire(key, int(RECENT_GRACE_SECONDS * 1000))
        held = await cache.recent_due([author])
        assert await cache.refresh_recent({author: old[1:]}, held, read_at) == {author}  # a replica behind
        assert await cache.recent([author], 20) == {author: old}
    finally:
        await redis.delete(key)


def test_a_users_first_page_follows_posts_and_deletes_at_once(edge: httpx.Client) -> None:
    user_id, me = sign_in(edge)

    def first_page() -> list[str]:
        reply = edge.get(f"/v1/users/{user_id}/tweets", params={"page_size": 10})
        assert reply.status_code == 200, reply.text
        return [t["tweet_id"] for t in reply.json()["tweets"]]

    def post(text: str) -> str:
        reply = edge.post("/v1/tweets", json={"text": text}, headers=me)
        assert reply.status_code == 200, reply.text
        return str(reply.json()["tweet"]["tweet_id"])

    assert first_page() == []  # the cache now covers "no tweets"
    t1 = post("one")
    assert first_page() == [t1]
    t2 = post("two")
    assert first_page() == [t2, t1]
    assert edge.delete(f"/v1/tweets/{t2}", headers=me).status_code == 200
    assert first_page() == [t1]
    t3 = post("three")
    assert first_page() == [t3, t1]
