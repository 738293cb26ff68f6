"""The newest-first walk over month buckets that graph_svc (followers) and
tweet_svc (a user's tweets) share: which queries run, in which order."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

from common.buckets import NEWEST, bucket_of
from common.cql import CqlSession, named_rows
from common.ids import id_time_ms
from graph_svc.store import STATEMENTS as GRAPH_STATEMENTS
from graph_svc.store import FollowEdge, GraphStore
from tweet_svc.store import STATEMENTS as TWEET_STATEMENTS
from tweet_svc.store import TweetStore


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
