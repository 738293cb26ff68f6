"""Nothing acknowledged is lost: the outbox carries tweet events over a Kafka
outage, and the like worker survives crashes and replays without double counting."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from confluent_kafka import Consumer

from common.cql import CqlSession
from common.events import LikeEvent
from common.ids import IdGenerator
from common.kafka import TOPIC_FOLLOWS, TOPIC_LIKES, TOPIC_TWEETS, AsyncProducer, BatchConsumer
from common.outbox import Outbox
from common.outbox_store import OutboxStore
from tests import faults
from tests.conftest import KAFKA, unique_name
from tweet_svc.like_worker import like_loop
from tweet_svc.store import TweetStore


def sign_in(edge: httpx.Client) -> tuple[int, dict[str, str]]:
    name = unique_name()
    edge.post("/v1/users", json={"username": name, "password": "correct horse"}).raise_for_status()
    session = edge.post("/v1/sessions", json={"username": name, "password": "correct horse"})
    session.raise_for_status()
    body = session.json()
    return int(body["user"]["user_id"]), {"authorization": f"Bearer {body['access_token']}"}


def events_where(
    topic: str, match: Callable[[dict[str, Any]], bool], want: int, timeout: float
) -> list[dict[str, Any]]:
    """Events on `topic` (read from the start) that `match`, once `want` are found."""
    consumer = Consumer(
        {"bootstrap.servers": KAFKA, "group.id": f"test-{secrets.token_hex(4)}", "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topic])
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and len(found) < want:
            for msg in consumer.consume(500, 1.0):
                if msg.error() is None:
                    event = json.loads(msg.value() or b"{}")
                    if match(event):
                        found.append(event)
    finally:
        consumer.close()
    return found


def tweet_events(tweet_id: int, timeout: float) -> list[dict[str, Any]]:
    return events_where(TOPIC_TWEETS, lambda e: e.get("tweet_id") == tweet_id, 1, timeout)


def test_follow_and_unfollow_go_out_as_events(edge: httpx.Client) -> None:
    follower, auth = sign_in(edge)
    followee, _ = sign_in(edge)
    assert edge.post(f"/v1/users/{followee}/follow", headers=auth).status_code == 200
    assert edge.delete(f"/v1/users/{followee}/follow", headers=auth).status_code == 200
    events = events_where(
        TOPIC_FOLLOWS,
        lambda e: e.get("follower_id") == follower and e.get("followee_id") == followee,
        2,
        timeout=30,
    )
    assert [e["type"] for e in sorted(events, key=lambda e: e["at_ms"])] == ["follow", "unfollow"]


@pytest.mark.slow
async def test_tweet_posted_while_kafka_is_down_reaches_kafka_after_it_returns(
    edge: httpx.Client, cql: CqlSession
) -> None:
    _, auth = sign_in(edge)
    faults.stop("kafka")
    try:
        reply = edge.post("/v1/tweets", json={"text": "posted during a Kafka outage"}, headers=auth)
        assert reply.status_code == 200, reply.text  # acknowledged: it is in the CQL store
        tweet_id = int(reply.json()["tweet"]["tweet_id"])
        assert edge.get(f"/v1/tweets/{tweet_id}").status_code == 200
        await asyncio.sleep(4)  # longer than the producer's delivery timeout: the fast path has given up
        pending = await pending_outbox_events(cql)
        assert any(e.get("tweet_id") == tweet_id for e in pending), "the event is not in the outbox"
    finally:
        faults.restore()
    events = tweet_events(tweet_id, timeout=60)
    assert events, "the tweet_created event never reached Kafka"
    assert events[0]["type"] == "tweet_created"


async def pending_outbox_events(cql: CqlSession) -> list[dict[str, Any]]:
    """Every event of the last two minutes not yet marked published."""
    store = OutboxStore(cql)
    await store.prepare()
    now = int(time.time() * 1000)
    return [json.loads(e.payload) for e in await store.unpublished(now - 120_000, now)]


async def _like_count(store: TweetStore, tweet_id: int) -> int:
    return await store.like_count(tweet_id)


class CrashAfterWrite(Exception):
    """Stands for the worker being killed between its CQL write and its offset commit."""


async def test_like_worker_killed_before_commit_and_topic_replay_double_count_nothing(cql: CqlSession) -> None:
    store = TweetStore(cql, Outbox(cql, None))
    await store.prepare()
    producer = AsyncProducer(KAFKA, "test-likes", on_fatal=None)
    ids = IdGenerator(1000)
    tweet_id = ids.next_id()  # a tweet of its own, so other tests cannot move its count
    users = [ids.next_id() for _ in range(5)]
    events = [LikeEvent(tweet_id, u, True, ids.next_id()) for u in users]
    events += [LikeEvent(tweet_id, users[0], True, ids.next_id())]  # a second like by the same user
    events += [LikeEvent(tweet_id, users[1], False, ids.next_id())]  # and one unlike
    for event in events:
        await producer.send(TOPIC_LIKES, str(tweet_id).encode(), event.encode())
    producer.close()
    expected = 4

    group = f"test-like-worker-{secrets.token_hex(4)}"

    def consumer() -> BatchConsumer:
        return BatchConsumer(KAFKA, group, [TOPIC_LIKES], "test")

    crashing = like_loop(store, consumer, batch_size=100_000, wait_seconds=1.0)

    async def crash(_messages: object) -> None:
        raise CrashAfterWrite

    crashing.consumer.commit = crash  # type: ignore[method-assign,assignment]
    with pytest.raises(CrashAfterWrite):
        await crashing.drain(60)  # the first batch with messages is written, then the commit "kills" it
    crashing.close()
    assert await _like_count(store, tweet_id) == expected

    # The restarted worker re-reads everything since the last commit (here: the
    # whole topic, a full replay) and must change no count.
    restarted = like_loop(store, consumer, batch_size=100_000, wait_seconds=1.0)
    await restarted.drain(60)
    restarted.close()
    assert await _like_count(store, tweet_id) == expected


async def test_full_replay_of_the_like_topic_leaves_every_count_unchanged(cql: CqlSession, edge: httpx.Client) -> None:
    _, auth = sign_in(edge)
    tweet_ids = [
        int(edge.post("/v1/tweets", json={"text": f"replay {i}"}, headers=auth).json()["tweet"]["tweet_id"])
        for i in range(3)
    ]
    likers = [sign_in(edge)[1] for _ in range(3)]
    for n, tweet_id in enumerate(tweet_ids):
        for liker in likers[: n + 1]:
            assert edge.post(f"/v1/tweets/{tweet_id}/like", headers=liker).status_code == 200
    expected = {tweet_id: n + 1 for n, tweet_id in enumerate(tweet_ids)}

    def applied() -> bool:
        return all(edge.get(f"/v1/tweets/{t}").json()["tweet"]["like_count"] == c for t, c in expected.items())

    faults.wait_for(applied, 20, "the like worker to apply the likes")

    store = TweetStore(cql, Outbox(cql, None))
    await store.prepare()
    replay = like_loop(
        store,
        lambda: BatchConsumer(KAFKA, f"test-replay-{secrets.token_hex(4)}", [TOPIC_LIKES], "test"),
        batch_size=100_000,
        wait_seconds=1.0,
    )
    consumed = await replay.drain(60)
    replay.close()
    assert consumed >= sum(expected.values())
    assert {t: await store.like_count(t) for t in tweet_ids} == expected
