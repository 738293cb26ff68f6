"""The newest-first walk over month buckets that graph_svc (followers) and
tweet_svc (a user's tweets) share: which queries run, in which order."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from cassandra import OperationTimedOut

import tweet_svc.store
from common.buckets import BUCKET_MS, BUCKETS_LISTED_AT_ONCE, NEWEST, bucket_of
from common.cql import CqlSession, named_rows
from common.ids import IdGenerator, id_time_ms
from graph_svc.store import STATEMENTS as GRAPH_STATEMENTS
from graph_svc.store import FollowEdge, GraphStore
from tweet_svc.store import STATEMENTS as TWEET_STATEMENTS
from tweet_svc.store import TweetRecord, TweetStore


class FakeCql:
    """Answers each query from `answers[statement name]` (one list of rows per call) and records the calls."""

    def __init__(self, answers: dict[str, list[list[tuple[Any, ...]]]], columns: dict[str, list[str]]) -> None:
        self.answers = answers
        self.columns = columns
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    async def execute(self, statement: str, params: tuple[Any, ...]) -> list[Any]:
        self.calls.append((statement, params))
        return named_rows(self.columns[statement], self.answers[statement].pop(0))


def _store(cls: Any, statements: dict[str, str], cql: FakeCql) -> Any:
    store = cls(cast(CqlSession, cql), None)
    store._q = {name: name for name in statements}
    return store


async def test_tweets_walk_buckets_newest_first_until_the_page_is_full() -> None:
    cql = FakeCql(
        {"buckets_from": [[(9,), (7,), (3,)]], "tweets_first": [[(95,), (94,)], [(71,)]]},
        {"buckets_from": ["bucket"], "tweets_first": ["tweet_id"]},
    )
    ids = await _store(TweetStore, TWEET_STATEMENTS, cql).author_tweet_ids(5, 3, None)
    assert ids == [95, 94, 71]
    assert cql.calls == [
        ("buckets_from", (5, NEWEST, 64)),
        ("tweets_first", (5, 9, 3)),
        ("tweets_first", (5, 7, 1)),
    ]


async def test_a_full_listing_of_buckets_is_followed_by_the_next_below_it() -> None:
    """64 buckets listed (one listing's worth), all emptied by deletes: the walk lists on
    below them and finds the older tweets; a short listing ends it."""
    top = 500
    emptied = [(top - i,) for i in range(BUCKETS_LISTED_AT_ONCE)]
    cql = FakeCql(
        {
            "buckets_from": [emptied, [(300,), (299,)]],
            "tweets_first": [[] for _ in emptied] + [[(3001,)], [(2991,)]],
        },
        {"buckets_from": ["bucket"], "tweets_first": ["tweet_id"]},
    )
    ids = await _store(TweetStore, TWEET_STATEMENTS, cql).author_tweet_ids(5, 3, None)
    assert ids == [3001, 2991]
    listings = [params for name, params in cql.calls if name == "buckets_from"]
    assert listings == [(5, NEWEST, 64), (5, top - BUCKETS_LISTED_AT_ONCE, 64)]
    assert len(cql.calls) == 2 + BUCKETS_LISTED_AT_ONCE + 2


async def test_a_walk_from_a_cursor_lists_on_below_a_full_listing() -> None:
    """From a cursor, a full listing is followed by the next one below it too; only the
    cursor's own bucket is read from the cursor."""
    before = 1 << 40
    start = bucket_of(id_time_ms(before))
    full = [(start - i,) for i in range(BUCKETS_LISTED_AT_ONCE)]
    cql = FakeCql(
        {
            "buckets_from": [full, []],
            "tweets_before": [[(before - 1,)]],
            "tweets_first": [[] for _ in full[1:]],
        },
        {"buckets_from": ["bucket"], "tweets_before": ["tweet_id"], "tweets_first": ["tweet_id"]},
    )
    ids = await _store(TweetStore, TWEET_STATEMENTS, cql).author_tweet_ids(5, 2, before)
    assert ids == [before - 1]
    assert [name for name, _ in cql.calls].count("tweets_before") == 1
    assert cql.calls[-1] == ("buckets_from", (5, start - BUCKETS_LISTED_AT_ONCE, 64))


async def test_tweets_read_from_the_cursor_only_in_its_own_bucket() -> None:
    before = 1 << 40
    start = bucket_of(id_time_ms(before))
    cql = FakeCql(
        {"buckets_from": [[(start,), (start - 1,)]], "tweets_before": [[(before - 1,)]], "tweets_first": [[(7,)]]},
        {"buckets_from": ["bucket"], "tweets_before": ["tweet_id"], "tweets_first": ["tweet_id"]},
    )
    ids = await _store(TweetStore, TWEET_STATEMENTS, cql).author_tweet_ids(5, 10, before)
    assert ids == [before - 1, 7]
    assert cql.calls == [
        ("buckets_from", (5, start, 64)),
        ("tweets_before", (5, start, before, 10)),
        ("tweets_first", (5, start - 1, 9)),
    ]


NEWEST_COLUMNS = {
    "newest_buckets": ["author_id", "bucket"],
    "tweets_in_bucket": ["author_id", "tweet_id"],
    "buckets_from": ["bucket"],
    "tweets_first": ["tweet_id"],
}


async def test_newest_ids_of_many_authors_read_by_bucket_not_by_author() -> None:
    """Authors' newest buckets listed in one query, then one query per bucket read next
    (authors 1 and 2 share their newest), until each has `limit` ids or no bucket left."""
    cql = FakeCql(
        {
            "newest_buckets": [[(1, 9), (1, 7), (2, 9), (3, 8)]],
            "tweets_in_bucket": [[(1, 95), (2, 92), (2, 91)], [(3, 81)], [(1, 71)]],
        },
        NEWEST_COLUMNS,
    )
    ids = await _store(TweetStore, TWEET_STATEMENTS, cql).newest_tweet_ids([1, 2, 3, 4], 2)
    assert ids == {1: [95, 71], 2: [92, 91], 3: [81], 4: []}
    assert cql.calls == [
        ("newest_buckets", ([1, 2, 3, 4], 4)),
        ("tweets_in_bucket", ([1, 2], 9, 2)),
        ("tweets_in_bucket", ([3], 8, 2)),
        ("tweets_in_bucket", ([1], 7, 1)),  # 1 lacks one; 2 has its two; 3 has no older bucket
    ]


async def test_an_author_short_after_every_listed_bucket_walks_on_below_them() -> None:
    """Four buckets listed (BUCKETS_LISTED) and read, still short: older buckets may hold
    more, listed from below the fourth."""
    cql = FakeCql(
        {
            "newest_buckets": [[(1, 9), (1, 8), (1, 7), (1, 6), (2, 9), (2, 8)]],
            "tweets_in_bucket": [[(1, 91), (2, 92)], [], [], []],
            "buckets_from": [[(2,), (1,)]],
            "tweets_first": [[(21,), (20,)]],
        },
        NEWEST_COLUMNS,
    )
    ids = await _store(TweetStore, TWEET_STATEMENTS, cql).newest_tweet_ids([1, 2], 3)
    assert ids == {1: [91, 21, 20], 2: [92]}
    assert cql.calls == [
        ("newest_buckets", ([1, 2], 4)),
        ("tweets_in_bucket", ([1, 2], 9, 3)),
        ("tweets_in_bucket", ([1, 2], 8, 2)),
        ("tweets_in_bucket", ([1], 7, 2)),  # 2 has no older bucket: it has all its tweets
        ("tweets_in_bucket", ([1], 6, 2)),
        ("buckets_from", (1, 5, 64)),
        ("tweets_first", (1, 2, 2)),  # two found: bucket 1 is not read
    ]


async def test_no_ids_asked_reads_nothing() -> None:
    cql = FakeCql({}, NEWEST_COLUMNS)
    assert await _store(TweetStore, TWEET_STATEMENTS, cql).newest_tweet_ids([1, 2], 0) == {1: [], 2: []}
    assert cql.calls == []


async def test_newest_ids_query_at_most_authors_per_query_partitions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tweet_svc.store, "KEYS_PER_QUERY", 2)
    cql = FakeCql(
        {
            "newest_buckets": [[(1, 9), (2, 9)], [(3, 9)]],
            "tweets_in_bucket": [[(1, 91), (2, 92)], [(3, 93)]],
        },
        NEWEST_COLUMNS,
    )
    ids = await _store(TweetStore, TWEET_STATEMENTS, cql).newest_tweet_ids([1, 2, 3, 2], 1)
    assert ids == {1: [91], 2: [92], 3: [93]}
    assert cql.calls == [
        ("newest_buckets", ([1, 2], 4)),
        ("newest_buckets", ([3], 4)),
        ("tweets_in_bucket", ([1, 2], 9, 1)),
        ("tweets_in_bucket", ([3], 9, 1)),
    ]


async def test_followers_read_after_the_cursor_then_whole_older_buckets() -> None:
    at_ms = 1_700_000_000_123
    start = bucket_of(at_ms)
    at = datetime.fromtimestamp(at_ms / 1000, UTC)
    cql = FakeCql(
        {
            "buckets_from": [[(start,), (start - 1,)]],
            "followers_after": [[(at, 8)]],
            "followers_first": [[(at, 6), (at, 4)]],
        },
        {
            "buckets_from": ["bucket"],
            "followers_after": ["followed_at", "follower_id"],
            "followers_first": ["followed_at", "follower_id"],
        },
    )
    edges = await _store(GraphStore, GRAPH_STATEMENTS, cql).followers(1, 3, FollowEdge(9, at_ms))
    assert [e.user_id for e in edges] == [8, 6, 4]
    assert [(name, params[:2]) for name, params in cql.calls] == [
        ("buckets_from", (1, start)),
        ("followers_after", (1, start)),
        ("followers_first", (1, start - 1)),
    ]
    assert cql.calls[1][1][2:] == (datetime(2023, 11, 14, 22, 13, 20, 123000, UTC), 9, 3)
    assert cql.calls[2][1][2:] == (2,)


async def test_followers_without_a_cursor_never_read_from_one() -> None:
    cql = FakeCql(
        {"buckets_from": [[(4,)]], "followers_first": [[]]},
        {"buckets_from": ["bucket"], "followers_first": ["followed_at", "follower_id"]},
    )
    assert await _store(GraphStore, GRAPH_STATEMENTS, cql).followers(1, 20, None) == []
    assert cql.calls == [("buckets_from", (1, NEWEST, 64)), ("followers_first", (1, 4, 20))]


class MonthCql:
    """A delete's statements by name; the emptiness check answers `month` (or raises it)."""

    def __init__(self, month: list[tuple[Any, ...]] | Exception) -> None:
        self.month = month
        self.calls: list[str] = []

    async def execute(self, statement: Any, params: tuple[Any, ...] = ()) -> list[Any]:
        name = statement if isinstance(statement, str) else "batch:" + ",".join(statement.statements)
        self.calls.append(name)
        if name == "month_has_tweets":
            if isinstance(self.month, Exception):
                raise self.month
            return named_rows(["tweet_id"], self.month)
        return []


class NamedBatch:
    def __init__(self, *_: Any) -> None:
        self.statements: list[str] = []

    def add(self, statement: str, params: Any = None) -> None:
        self.statements.append(statement)


class NoOutbox:
    def add_to(self, batch: NamedBatch, event: Any) -> None:
        batch.add("outbox")


async def _delete_in(
    month: list[tuple[Any, ...]] | Exception, months_ago: int, monkeypatch: pytest.MonkeyPatch
) -> list[str]:
    monkeypatch.setattr(tweet_svc.store, "Batch", NamedBatch)
    monkeypatch.setattr(tweet_svc.store, "MONTH_CHECK_SECONDS", 0.0)
    cql = MonthCql(month)
    store = _store(TweetStore, TWEET_STATEMENTS, cast(Any, cql))
    store._outbox = NoOutbox()
    at_ms = (bucket_of(int(time.time() * 1000)) - months_ago) * BUCKET_MS + 5000
    tweet = TweetRecord(IdGenerator(3, lambda: at_ms).next_id(), 5, "ada", "hi", datetime.now(UTC))
    await store.delete_tweet(tweet, cast(Any, None))
    assert cql.calls[1:] == []  # the month is read after the delete's answer
    await store.settled()
    return cql.calls


async def test_a_delete_drops_the_listing_of_an_old_month_it_empties(monkeypatch: pytest.MonkeyPatch) -> None:
    batch = "batch:delete_tweet,delete_user_tweet,delete_likes,mark_deleted,outbox"
    assert await _delete_in([], 3, monkeypatch) == [batch, "month_has_tweets", "delete_bucket"]
    assert await _delete_in([(7,)], 3, monkeypatch) == [batch, "month_has_tweets"]  # a tweet is left
    # The current and the previous month stay listed, unread: a (retried) post may still land there.
    assert await _delete_in([], 1, monkeypatch) == [batch]
    assert await _delete_in([], 0, monkeypatch) == [batch]


async def test_a_failed_emptiness_check_leaves_the_month_listed_and_the_delete_answered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = await _delete_in(OperationTimedOut("a replica is down"), 3, monkeypatch)
    assert calls[1:] == ["month_has_tweets"]
