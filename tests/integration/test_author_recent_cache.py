"""Authors' recent tweet ids in Redis (`ar:{author}`) against the real Redis and
stack: posts and deletes change the set before they are acknowledged, a
reader's fill merges and never hides a newer post, and a set only answers
for as many ids as it is known to cover."""

from __future__ import annotations

import httpx

from common.cache import RedisClient
from common.ids import IdGenerator
from common.keys import tweet_key
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
        assert 0 < await redis.pttl(tweet_key("author_recent", author)) <= TTL_SECONDS * 1000
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
