"""Every `IN ?` list a store sends holds at most IN_LIST_SIZE keys (ScyllaDB refuses more
than 100 partition or clustering key restrictions in one query by default), however many
keys the caller asks for; every key's row still comes back."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

from common.cql import IN_LIST_SIZE, CqlSession, named_rows
from common.ids import IdGenerator
from common.outbox_store import STATEMENTS as OUTBOX_STATEMENTS
from common.outbox_store import OutboxStore
from tweet_svc.store import STATEMENTS as TWEET_STATEMENTS
from tweet_svc.store import TweetStore

MANY = 2 * IN_LIST_SIZE + 50
CREATED = datetime(2026, 1, 2, tzinfo=UTC)

COLUMNS = {
    "get_tweets": ["tweet_id", "author_id", "author_username", "text", "created_at"],
    "existing": ["tweet_id"],
    "like_counts": ["tweet_id", "like_count"],
    "like_rows": ["user_id", "liked", "version"],
    "like_count": ["like_count"],
    "load": ["event_id", "topic", "key", "payload"],
}


class KeyedCql:
    """Answers one row per key of the query's `IN ?` list and records each list's size."""

    def __init__(self) -> None:
        self.list_sizes: list[int] = []

    async def execute(self, statement: str, params: tuple[Any, ...]) -> list[Any]:
        keys = next((p for p in params if isinstance(p, list)), None)
        if keys is None:  # like_count: one partition, no list
            return named_rows(COLUMNS[statement], [(7,)])
        self.list_sizes.append(len(keys))
        rows = {
            "get_tweets": lambda k: (k, 1, "ada", "hi", CREATED),
            "existing": lambda k: (k,),
            "like_counts": lambda k: (k, k % 5),
            "like_rows": lambda k: (k, True, k),
            "load": lambda k: (k, "tweets", b"1", b"{}"),
        }[statement]
        return named_rows(COLUMNS[statement], [rows(k) for k in keys])


def _with_names(store: Any, statements: dict[str, str]) -> Any:
    store._q = {name: name for name in statements}
    return store


async def test_tweet_reads_of_many_ids_send_lists_of_at_most_one_in_list_each() -> None:
    cql = KeyedCql()
    store = _with_names(TweetStore(cast(CqlSession, cql), cast(Any, None)), TWEET_STATEMENTS)
    ids = list(range(1, MANY + 1))

    assert set(await store.bodies(ids)) == set(ids)
    assert await store.existing(ids) == set(ids)
    assert await store.like_counts(ids) == {k: k % 5 for k in ids}
    count, states = await store.like_states(99, ids)
    assert count == 7 and set(states) == set(ids)

    assert max(cql.list_sizes) == IN_LIST_SIZE
    assert len(cql.list_sizes) == 4 * 3  # four reads of 250 keys: three lists each


async def test_outbox_events_of_one_minute_load_in_lists_of_at_most_one_in_list_each() -> None:
    cql = KeyedCql()
    store = _with_names(OutboxStore(cast(CqlSession, cql)), OUTBOX_STATEMENTS)
    clock = iter(range(1_760_000_000_000, 1_760_000_000_000 + MANY))
    ids = IdGenerator(5, lambda: next(clock))
    event_ids = [ids.next_id() for _ in range(MANY)]  # one millisecond apart: a single minute

    loaded = await store.load(3, event_ids)

    assert [e.event_id for e in loaded] == event_ids
    assert max(cql.list_sizes) == IN_LIST_SIZE and len(cql.list_sizes) == 3
