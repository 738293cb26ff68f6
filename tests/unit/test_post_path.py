"""tweet_svc's post (Tweets.create) with in-memory fakes: what a post reads and
writes, with and without an Idempotency-Key."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import pytest

from common.errors import NotFound
from common.ids import IdGenerator
from common.outbox import Event, Outbox
from tweet_svc.cache import TweetCache
from tweet_svc.domain import Tweets, Usernames
from tweet_svc.store import TweetRecord, TweetStore


class Store:
    """The post path's CQL over dicts; an LWT claim is a setdefault."""

    def __init__(self) -> None:
        self.keys: dict[tuple[int, str], int] = {}
        self.tweets: dict[int, TweetRecord] = {}
        self.body_reads: list[list[int]] = []
        self.inserts: list[int] = []
        self.deleted: set[int] = set()  # deleted_tweets

    async def claim_idempotency_key(self, user_id: int, key: str, tweet_id: int) -> int:
        return self.keys.setdefault((user_id, key), tweet_id)

    async def insert_tweet(self, tweet: TweetRecord, event: Event) -> None:
        self.inserts.append(tweet.tweet_id)
        self.tweets[tweet.tweet_id] = tweet

    async def bodies(self, tweet_ids: Sequence[int]) -> dict[int, TweetRecord]:
        self.body_reads.append(list(tweet_ids))
        return {t: self.tweets[t] for t in tweet_ids if t in self.tweets}

    async def like_counts(self, tweet_ids: Sequence[int]) -> dict[int, int]:
        return {}

    async def was_deleted(self, tweet_id: int) -> bool:
        return tweet_id in self.deleted

    async def delete_tweet(self, tweet: TweetRecord, event: Event) -> None:
        self.tweets.pop(tweet.tweet_id, None)
        self.deleted.add(tweet.tweet_id)

    def delete(self, tweet_id: int) -> None:
        """As the delete's batch leaves the store: the tweet gone, its id in deleted_tweets."""
        del self.tweets[tweet_id]
        self.deleted.add(tweet_id)


class Cache:
    """Only what a post touches: body reads miss, recent ids are recorded."""

    def __init__(self) -> None:
        self.reads = 0
        self.recent: list[tuple[int, int]] = []
        self.marked_deleted: list[int] = []

    async def get(self, tweet_ids: Sequence[int]) -> tuple[dict[int, TweetRecord], set[int]]:
        self.reads += 1
        return {}, set()

    async def put(self, tweets: Sequence[TweetRecord]) -> None:
        return None

    async def like_counts_due(self, tweet_ids: Sequence[int]) -> tuple[dict[int, int], set[int]]:
        return {}, set()

    async def fill_like_counts(self, counts: dict[int, int]) -> None:
        return None

    async def add_recent(self, author_id: int, tweet_id: int) -> None:
        self.recent.append((author_id, tweet_id))

    async def mark_deleted(self, tweet_id: int) -> None:
        self.marked_deleted.append(tweet_id)

    async def remove_recent(self, author_id: int, tweet_id: int) -> None:
        if (author_id, tweet_id) in self.recent:
            self.recent.remove((author_id, tweet_id))


class FakeOutbox:
    def __init__(self) -> None:
        self.published: list[int] = []

    def publish_soon(self, event: Event) -> None:
        self.published.append(event.payload["tweet_id"])


async def name_of(user_id: int) -> str:
    return f"user{user_id}"


def build() -> tuple[Tweets, Store, Cache, FakeOutbox]:
    store, cache, outbox = Store(), Cache(), FakeOutbox()
    tweets = Tweets(
        cast(TweetStore, store),
        cast(TweetCache, cache),
        cast(Outbox, outbox),
        cast(Any, None),
        Usernames(name_of),
        IdGenerator(1),
    )
    return tweets, store, cache, outbox


async def test_a_post_with_a_new_key_reads_nothing_back() -> None:
    tweets, store, cache, outbox = build()
    tweet = await tweets.create(7, "hello", "key-1")
    assert store.keys == {(7, "key-1"): tweet.tweet_id}
    assert store.inserts == [tweet.tweet_id]
    # The claimed id is the one just minted: no tweet can have it, so no read.
    assert store.body_reads == [] and cache.reads == 0
    assert cache.recent == [(7, tweet.tweet_id)]
    assert outbox.published == [tweet.tweet_id]
    assert tweet.author_username == "user7"


async def test_a_retry_returns_the_first_tweet_and_writes_nothing() -> None:
    tweets, store, cache, outbox = build()
    first = await tweets.create(7, "hello", "key-1")
    again = await tweets.create(7, "changed text", "key-1")
    assert again == first
    assert store.inserts == [first.tweet_id]
    assert store.body_reads == [[first.tweet_id]]
    assert outbox.published == [first.tweet_id]
    assert cache.recent == [(7, first.tweet_id)] * 2  # again, should the first attempt have died before it


async def test_a_retry_after_a_first_attempt_that_died_before_writing_writes_under_the_claimed_id() -> None:
    tweets, store, _, outbox = build()
    store.keys[(7, "key-1")] = 123_456_789  # claimed, then the process died before its batch
    tweet = await tweets.create(7, "hello", "key-1")
    assert tweet.tweet_id == 123_456_789
    assert store.inserts == [123_456_789]
    assert outbox.published == [123_456_789]
    assert await tweets.create(7, "hello", "key-1") == tweet
    assert store.inserts == [123_456_789]


async def test_the_same_key_from_another_user_or_no_key_is_a_new_tweet() -> None:
    tweets, store, _, _ = build()
    mine = await tweets.create(7, "hello", "key-1")
    theirs = await tweets.create(8, "hello", "key-1")
    plain = await tweets.create(7, "hello", "")
    assert len({mine.tweet_id, theirs.tweet_id, plain.tweet_id}) == 3
    assert store.inserts == [mine.tweet_id, theirs.tweet_id, plain.tweet_id]


async def test_a_retry_after_its_tweet_was_deleted_writes_nothing_and_is_not_found() -> None:
    """The delete was acknowledged: a retry of the post that made the tweet (its key lives
    24 h) must not write it again, as a first attempt that died before writing would."""
    tweets, store, _, outbox = build()
    first = await tweets.create(7, "hello", "key-1")
    store.delete(first.tweet_id)
    with pytest.raises(NotFound, match="was deleted"):
        await tweets.create(7, "hello", "key-1")
    assert store.inserts == [first.tweet_id] and first.tweet_id not in store.tweets
    assert outbox.published == [first.tweet_id]


async def test_a_retry_writing_while_its_first_attempt_lands_and_is_deleted_deletes_it_again() -> None:
    """The retry looked while the first attempt was still writing (no tweet, not deleted);
    the first attempt landed and the user deleted the tweet; then the retry's write, newer
    than the delete, brought it back. It reads deleted_tweets after writing and undoes it."""
    tweets, store, cache, outbox = build()
    store.keys[(7, "key-1")] = claimed = IdGenerator(2).next_id()  # the first attempt's claim
    real_insert = store.insert_tweet

    async def first_attempt_lands_and_is_deleted(tweet: TweetRecord, event: Event) -> None:
        await real_insert(tweet, event)  # the first attempt's write
        store.delete(tweet.tweet_id)  # the user's delete, acknowledged
        await real_insert(tweet, event)  # this retry's own write

    store.insert_tweet = first_attempt_lands_and_is_deleted  # type: ignore[method-assign]
    with pytest.raises(NotFound, match="was deleted"):
        await tweets.create(7, "hello", "key-1")
    assert claimed not in store.tweets and claimed in store.deleted
    assert cache.marked_deleted == [claimed] and (7, claimed) not in cache.recent
    assert outbox.published == [claimed, claimed]  # created, then deleted: the fan-out ends with it gone
