"""Push only to those who read, through Envoy REST (feed_svc/activity.py).

A follower who has not read their home feed for CHIRP_ACTIVE_DAYS (30 by
default) is not pushed to: neither their Redis timeline (`tl:{user}`) nor the
durable CQL copy (`home_timeline`) gets the tweet. Their first read after that
shows exactly what an active follower of the same accounts sees, and from then
on they are pushed to again.

Time passing is what the test fakes, not the rule: it sets the follower's read
record (`ra:{user}`, milliseconds of the last read) to 31 days ago, which is
what a month without reading leaves behind, and runs with the default window.
"Not pushed" is claimed only once the fan-out worker has applied every event
that was on Kafka after the post (as tests/e2e/test_feed.py does)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from functools import partial

import httpx
import pytest
import redis
from cassandra.cluster import Cluster, Session

from feed_svc.activity import DAY_SECONDS, read_record_key
from infra import topology
from tests.conftest import REDIS_URL, unique_name
from tests.e2e.test_feed import (
    feed_ids,
    follow,
    newest_first,
    pushed,
    wait_fanout_caught_up,
    wait_feed,
    wait_pushed,
)
from tests.e2e.test_write_path import Account, eventually, new_accounts, post_tweet

AWAY_DAYS = 31  # beyond the default CHIRP_ACTIVE_DAYS=30


@pytest.fixture(scope="module")
def rds() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    client.ping()
    yield client
    client.close()


@pytest.fixture(scope="module")
def timelines() -> Iterator[Session]:
    cluster = Cluster(topology.cql_hosts(), port=topology.CQL_PORT)
    session = cluster.connect("chirp")
    yield session
    cluster.shutdown()


def stored(session: Session, user_id: str) -> set[str]:
    """The durable pushed timeline of `user_id` (CQL home_timeline)."""
    rows = session.execute("SELECT tweet_id FROM home_timeline WHERE user_id = %s", (int(user_id),))
    return {str(r.tweet_id) for r in rows}


def last_read_ms(rds: redis.Redis, user_id: str) -> int | None:
    raw = rds.get(read_record_key(int(user_id)))
    return None if raw is None else int(raw)


def post(edge: httpx.Client, who: Account) -> str:
    return str(post_tweet(edge, who, f"active readers {unique_name('t')}")["tweet_id"])


def test_a_follower_away_for_a_month_is_not_pushed_to_and_sees_everything_when_back(
    edge: httpx.Client, rds: redis.Redis, timelines: Session
) -> None:
    author, active, away = new_accounts(edge, 3, "ar")
    for follower in (active, away):
        follow(edge, follower, author.user_id)
    first = post(edge, author)
    wait_pushed(rds, [active.user_id, away.user_id], [first])
    for follower in (active, away):  # both read: each has a record
        wait_feed(edge, follower, lambda ids: ids == [first], "the first tweet in the feed")
        eventually(partial(last_read_ms, rds, follower.user_id), bool, f"a read record for {follower.user_id}")

    # A month without reading.
    rds.set(read_record_key(int(away.user_id)), str(int((time.time() - AWAY_DAYS * DAY_SECONDS) * 1000)))
    while_away = [post(edge, author) for _ in range(3)]
    wait_pushed(rds, [active.user_id], while_away)
    wait_fanout_caught_up()

    assert not pushed(rds, away.user_id) & set(while_away), "pushed to Redis of a follower away for a month"
    assert not stored(timelines, away.user_id) & set(while_away), "pushed to CQL of a follower away for a month"
    assert set(while_away) <= stored(timelines, active.user_id)

    back = time.time()
    expected = newest_first([first, *while_away])
    assert feed_ids(edge, active) == expected
    assert feed_ids(edge, away) == expected, "the returning reader's first read differs from an active follower's"
    recorded = last_read_ms(rds, away.user_id)
    assert recorded is not None and recorded >= int(back * 1000) - 1000, "the return was not recorded"

    after = post(edge, author)
    wait_pushed(rds, [away.user_id, active.user_id], [after])
    eventually(lambda: after in stored(timelines, away.user_id), bool, "the later tweet in CQL", deadline=10.0)
    assert feed_ids(edge, away) == feed_ids(edge, active) == [after, *expected]
