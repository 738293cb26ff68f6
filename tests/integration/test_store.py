"""The CQL access layer against the real store: results bigger than one driver page,
and follow lists longer than graph_svc lists at once."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest

from common.buckets import BUCKET_MS, BUCKETS_LISTED_AT_ONCE, bucket_of
from common.cql import CqlSession
from common.errors import InvalidArgument
from common.ids import IdGenerator, id_time_ms
from common.kafka import TOPIC_TWEETS
from common.outbox import Event, Outbox
from tests.conftest import build_graph
from tweet_svc.likes import LikeState
from tweet_svc.store import BUCKETS_LISTED, TweetRecord, TweetStore
from tweet_svc.store import STATEMENTS as TWEET_STATEMENTS

DRIVER_PAGE = 5000  # the driver's default fetch size


async def write_follows(cql: CqlSession, follower: int, followees: list[int]) -> None:
    insert = await cql.prepare("INSERT INTO follows (follower_id, followee_id, followed_at) VALUES (?, ?, ?)")
    now = datetime.now(UTC)
    limit = asyncio.Semaphore(64)

    async def one(followee: int) -> None:
        async with limit:
            await cql.execute(insert, (follower, followee, now))

    await asyncio.gather(*(one(f) for f in followees))


async def test_a_user_following_more_than_one_driver_page_gets_every_followee(cql: CqlSession) -> None:
    ids = IdGenerator(902)
    graph = await build_graph(cql, ids)
    follower = ids.next_id()
    followees = sorted(ids.next_id() for _ in range(DRIVER_PAGE + 150))
    await write_follows(cql, follower, followees)
    try:
        listed, truncated = await graph.following_ids(follower)
        assert not truncated
        assert sorted(f for f, _ in listed) == followees
        assert {count for _, count in listed} == {0}  # none of them has a user_stats row
    finally:
        await cql.execute("DELETE FROM follows WHERE follower_id = %s", (follower,))


async def test_a_follow_list_past_the_limit_says_so_and_answers_about_any_account(cql: CqlSession) -> None:
    ids = IdGenerator(903)
    graph = await build_graph(cql, ids, following_ids_limit=100)
    follower = ids.next_id()
    followees = sorted(ids.next_id() for _ in range(130))
    strangers = [ids.next_id() for _ in range(5)]
    await write_follows(cql, follower, followees)
    try:
        listed, truncated = await graph.following_ids(follower)
        assert truncated
        assert [f for f, _ in listed] == followees[:100]

        asked = followees[95:130] + strangers
        found, truncated = await graph.following_ids(follower, asked)
        assert not truncated
        assert sorted(f for f, _ in found) == followees[95:130]

        with pytest.raises(InvalidArgument):
            await graph.following_ids(follower, list(range(1, 1002)))
    finally:
        await cql.execute("DELETE FROM follows WHERE follower_id = %s", (follower,))


async def test_a_like_whose_row_a_stale_read_missed_is_not_counted_again(cql: CqlSession) -> None:
    """The like worker reads a tweet's count and its users' rows with two queries.
    If the count already includes a like that the rows read missed (another worker
    applied it in between, or our own timed-out attempt landed late), folding that
    like again must not count it twice: the write is conditioned on the rows too."""
    store = TweetStore(cql, Outbox(cql, None))
    await store.prepare()
    ids = IdGenerator(905)
    tweet_id, liker = ids.next_id(), ids.next_id()
    like = LikeState(liked=True, version=ids.next_id())
    assert await store.write_likes(tweet_id, None, 1, {liker: like}, {})  # applied once
    # A second attempt that saw the new count but not the row.
    assert not await store.write_likes(tweet_id, 1, 2, {liker: like}, {})
    count, rows = await store.like_states(tweet_id, [liker])
    assert (count, rows) == (1, {liker: like})
    # With what is really stored, an unlike applies.
    unlike = LikeState(liked=False, version=ids.next_id())
    assert await store.write_likes(tweet_id, 1, 0, {liker: unlike}, rows)
    assert await store.like_states(tweet_id, [liker]) == (0, {liker: unlike})


async def test_newest_ids_of_many_authors_are_each_authors_own_walk(cql: CqlSession) -> None:
    """`newest_tweet_ids` (a few queries for many authors) against `author_tweet_ids` (each
    author walked alone) on the real store: authors with one bucket, more buckets than it
    lists, none, an emptied bucket, and more tweets than the limit."""
    store = TweetStore(cql, Outbox(cql, None))
    await store.prepare()
    tweet = await cql.prepare("INSERT INTO user_tweets (author_id, bucket, tweet_id) VALUES (?, ?, ?)")
    bucket_row = await cql.prepare("INSERT INTO user_tweet_buckets (author_id, bucket) VALUES (?, ?)")
    ids = IdGenerator(919)
    one, spread, exact, old, none, emptied, many, deleted_years = (ids.next_id() for _ in range(8))
    layout = {  # author -> {bucket: number of tweets}
        one: {693: 3},
        spread: {693 - 2 * i: 1 for i in range(BUCKETS_LISTED + 2)},
        exact: {693 - i: 1 for i in range(BUCKETS_LISTED)},
        old: {693 - i: 1 for i in range(BUCKETS_LISTED_AT_ONCE + 6)},  # more than one listing holds
        # Years of months emptied by deletes, more than one listing, above two older tweets.
        deleted_years: {**{693 - i: 0 for i in range(BUCKETS_LISTED_AT_ONCE + 6)}, 600: 2},
        emptied: {693: 0, 690: 2, 688: 1},
        many: {693: 60, 692: 5},
    }
    for author, buckets in layout.items():
        for bucket, count in buckets.items():
            await cql.execute(bucket_row, (author, bucket))
            for k in range(count):
                await cql.execute(tweet, (author, bucket, bucket * 1000 + k))
    authors = [one, spread, exact, old, none, emptied, many, deleted_years]
    for limit in (1, 2, 5, 50, 100):
        alone = {a: await store.author_tweet_ids(a, limit, None) for a in authors}
        assert await store.newest_tweet_ids(authors, limit) == alone
    assert len(alone[many]) == 65 and len(alone[spread]) == BUCKETS_LISTED + 2 and alone[none] == []
    assert len(alone[old]) == BUCKETS_LISTED_AT_ONCE + 6 and len(alone[exact]) == BUCKETS_LISTED
    assert alone[deleted_years] == [600_001, 600_000]


async def test_a_past_month_that_deletes_empty_is_listed_no_more(cql: CqlSession) -> None:
    """A delete that empties a month at least two months old drops its listing, so walks
    stop reading it; a month a delete leaves non-empty, and the previous month however
    empty (a retried post may still land there), stay listed. The tweets left are all read."""
    outbox = Outbox(cql, None)
    await outbox.prepare()
    store = TweetStore(cql, outbox)
    await store.prepare()
    author = IdGenerator(922).next_id()
    now = bucket_of(int(time.time() * 1000))
    old, kept, previous = now - 5, now - 4, now - 1

    async def post(bucket: int, n: int) -> TweetRecord:
        """A tweet of that month, its rows written as insert_tweet writes them (no event:
        a post months old would count as months of fan-out lag)."""
        at = bucket * BUCKET_MS + 1000 * (n + 1)
        tweet = TweetRecord(
            IdGenerator(922, lambda: at).next_id(), author, "ada", "hi", datetime.fromtimestamp(at / 1000, UTC)
        )
        for statement, params in (
            (TWEET_STATEMENTS["insert_tweet"], (tweet.tweet_id, author, "ada", "hi", tweet.created_at, at * 1000)),
            (TWEET_STATEMENTS["insert_user_tweet"], (author, bucket, tweet.tweet_id, at * 1000)),
            (TWEET_STATEMENTS["insert_bucket"], (author, bucket)),
        ):
            await cql.execute(await cql.prepare(statement), params)
        return tweet

    async def listed() -> list[int]:
        rows = await cql.execute("SELECT bucket FROM user_tweet_buckets WHERE author_id = %s", (author,))
        return [r.bucket for r in rows]

    async def delete(tweet: TweetRecord) -> None:
        """As tweet_svc deletes: the relay publishes the event, the fan-out handles it (no followers)."""
        payload = {"type": "tweet_deleted", "tweet_id": tweet.tweet_id, "author_id": author}
        await store.delete_tweet(tweet, Event(IdGenerator(923).next_id(), TOPIC_TWEETS, author, payload))
        await store.settled()

    olds = [await post(old, n) for n in range(2)]
    kept_tweets = [await post(kept, n) for n in range(2)]
    prev = await post(previous, 0)
    assert await listed() == [previous, kept, old]

    await delete(olds[0])
    assert await listed() == [previous, kept, old]  # one tweet of the month is left
    await delete(olds[1])
    await delete(kept_tweets[0])
    await delete(prev)
    assert await listed() == [previous, kept]
    assert await store.author_tweet_ids(author, 10, None) == [kept_tweets[1].tweet_id]


async def test_a_write_of_a_tweet_landing_after_its_delete_does_not_bring_it_back(cql: CqlSession) -> None:
    """A retried post still in flight when the tweet it made was deleted: its rows carry the
    tweet's own time, older than the delete, so they stay deleted."""
    outbox = Outbox(cql, None)
    await outbox.prepare()
    store = TweetStore(cql, outbox)
    await store.prepare()
    ids = IdGenerator(924)
    author, tweet_id = ids.next_id(), ids.next_id()
    created = datetime.fromtimestamp(id_time_ms(tweet_id) / 1000, UTC)
    tweet = TweetRecord(tweet_id, author, "ada", "deleted for good", created)

    def event(kind: str) -> Event:
        return Event(ids.next_id(), TOPIC_TWEETS, author, {"type": kind, "tweet_id": tweet_id, "author_id": author})

    await store.insert_tweet(tweet, event("tweet_created"))
    assert (await store.bodies([tweet_id]))[tweet_id].text == "deleted for good"
    await store.delete_tweet(tweet, event("tweet_deleted"))
    await store.settled()
    await store.insert_tweet(tweet, event("tweet_created"))  # the retry's write lands last

    assert await store.bodies([tweet_id]) == {}
    assert await store.author_tweet_ids(author, 10, None) == []
    assert await store.was_deleted(tweet_id)


async def test_a_delete_is_newer_than_the_rows_when_the_ids_clock_ran_ahead(cql: CqlSession) -> None:
    """The rows carry the id's time; the instance that made the id may run ahead of the one
    deleting. The delete's tombstones are still newer, so the tweet stays deleted."""
    outbox = Outbox(cql, None)
    await outbox.prepare()
    store = TweetStore(cql, outbox)
    await store.prepare()
    author = IdGenerator(926).next_id()
    ahead = IdGenerator(926, lambda: int(time.time() * 1000) + 30_000)  # its clock 30 s ahead
    tweet_id = ahead.next_id()
    tweet = TweetRecord(
        tweet_id, author, "ada", "from the future", datetime.fromtimestamp(id_time_ms(tweet_id) / 1000, UTC)
    )

    def event(kind: str) -> Event:
        payload = {"type": kind, "tweet_id": tweet_id, "author_id": author}
        return Event(IdGenerator(927).next_id(), TOPIC_TWEETS, author, payload)

    await store.insert_tweet(tweet, event("tweet_created"))
    await store.delete_tweet(tweet, event("tweet_deleted"))
    await store.settled()
    assert await store.bodies([tweet_id]) == {}
    assert tweet_id not in await store.author_tweet_ids(author, 10, None)
