"""Push only to those who read, through Envoy REST (feed_svc/activity.py).

A follower who has not read their home feed for CHIRP_ACTIVE_DAYS (30 by
default) is not pushed to: their Redis timeline (`tl:{user}`), the only copy,
does not get the tweet and is dropped. Their first read after that shows
exactly what an active follower of the same accounts sees, and from then on
they are pushed to again. A timeline Redis lost is rebuilt the same way.

Time passing is what the test fakes, not the rule: it sets the follower's read
record (`ra:{user}`, milliseconds of the last read) to 31 days ago, which is
what a month without reading leaves behind, and runs with the default window.
"Not pushed" is claimed only once the fan-out worker has applied every event
that was on Kafka after the post (as tests/e2e/test_feed.py does)."""

from __future__ import annotations

import time
from functools import partial

import httpx
import redis

from common.keys import feed_key
from feed_svc.activity import DAY_SECONDS, read_record_key
from tests.conftest import unique_name
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


def last_read_ms(rds: redis.Redis, user_id: str) -> int | None:
    raw = rds.get(read_record_key(int(user_id)))
    return None if raw is None else int(raw)


def post(edge: httpx.Client, who: Account) -> str:
    return str(post_tweet(edge, who, f"active readers {unique_name('t')}")["tweet_id"])


def test_a_follower_away_for_a_month_is_not_pushed_to_and_sees_everything_when_back(
    edge: httpx.Client, rds: redis.Redis
) -> None:
    author, active, away = new_accounts(edge, 3, "ar")
    for follower in (active, away):
        follow(edge, follower, author.user_id)
    first = post(edge, author)
    wait_pushed(rds, [active.user_id, away.user_id], [first])
    # The follows' own events too: applied late, a follow's backfill would push the
    # author's newest tweets, the ones posted while away included (seen on a fresh stack).
    wait_fanout_caught_up()
    for follower in (active, away):  # both read: each has a record
        wait_feed(edge, follower, lambda ids: ids == [first], "the first tweet in the feed")
        eventually(partial(last_read_ms, rds, follower.user_id), bool, f"a read record for {follower.user_id}")

    # A month without reading. Each feed_svc instance records a reader in the background,
    # once per process: a record from the reads above may still land after this one, so
    # it is set again until it holds.
    aged = str(int((time.time() - AWAY_DAYS * DAY_SECONDS) * 1000))

    def aged_record_holds() -> bool:
        rds.set(read_record_key(int(away.user_id)), aged)
        time.sleep(1.0)
        return rds.get(read_record_key(int(away.user_id))) == aged

    eventually(aged_record_holds, bool, "the aged read record never held", deadline=15.0)
    while_away = [post(edge, author) for _ in range(3)]
    wait_pushed(rds, [active.user_id], while_away)
    wait_fanout_caught_up()

    assert not pushed(rds, away.user_id) & set(while_away), "pushed to Redis of a follower away for a month"

    back = time.time()
    expected = newest_first([first, *while_away])
    assert feed_ids(edge, active) == expected
    assert feed_ids(edge, away) == expected, "the returning reader's first read differs from an active follower's"
    recorded = last_read_ms(rds, away.user_id)
    assert recorded is not None and recorded >= int(back * 1000) - 1000, "the return was not recorded"

    after = post(edge, author)
    wait_pushed(rds, [away.user_id, active.user_id], [after])
    assert feed_ids(edge, away) == feed_ids(edge, active) == [after, *expected]


def test_a_timeline_redis_lost_is_rebuilt_from_the_follow_graph_and_the_tweets(
    edge: httpx.Client, rds: redis.Redis
) -> None:
    """There is no durable copy of a home timeline (feed_svc/fanout.py): a lost one
    comes back from the accounts followed and their tweets, whole, at the next read."""
    first_author, second_author, reader = new_accounts(edge, 3, "lost")
    for author in (first_author, second_author):
        follow(edge, reader, author.user_id)
    posted = [post(edge, author) for author in (first_author, second_author, first_author)]
    wait_pushed(rds, [reader.user_id], posted)
    wait_feed(edge, reader, lambda ids: ids == newest_first(posted), "the pushed tweets in the feed")

    key = feed_key("timeline", int(reader.user_id))
    assert rds.delete(key) == 1  # Redis lost it

    assert feed_ids(edge, reader) == newest_first(posted), "the rebuilt timeline differs from the pushed one"
    assert pushed(rds, reader.user_id) >= set(posted), "the rebuild was not written back"
    later = post(edge, second_author)
    wait_pushed(rds, [reader.user_id], [later])
    assert feed_ids(edge, reader) == newest_first([*posted, later])
