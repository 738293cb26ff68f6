"""tweet_svc's post path against the real stores: the batch a post writes, one
Idempotency-Key posted at once through two processes' worth of tweet_svc, and a
like then an unlike through two instances whose clocks disagree, the like's send
timed out yet written or acknowledged."""

from __future__ import annotations

import asyncio
import secrets
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from confluent_kafka import KafkaError, KafkaException

from common.cache import RedisClient
from common.cql import CqlSession
from common.events import LikeEvent
from common.ids import IdGenerator, id_time_ms
from common.kafka import TOPIC_LIKES, TOPIC_TWEETS, AsyncProducer
from common.outbox import Event, Outbox
from tests.conftest import KAFKA, unique_name
from tweet_svc.cache import TweetCache
from tweet_svc.domain import Tweets, Usernames
from tweet_svc.store import TweetRecord, TweetStore


class RecordingCql:
    """The real session, keeping the statements of every batch it runs."""

    def __init__(self, cql: CqlSession) -> None:
        self._cql = cql
        self.batches: list[list[bytes]] = []

    async def prepare(self, query: str, idempotent: bool | None = None) -> Any:
        return await self._cql.prepare(query, idempotent)

    async def execute(self, statement: Any, params: Any = None) -> list[Any]:
        if hasattr(statement, "_statements_and_parameters"):
            self.batches.append([query_id for _, query_id, _ in statement._statements_and_parameters])
        return await self._cql.execute(statement, params)


class LikeSends(AsyncProducer):
    """The real producer, keeping the like events it sends. With `ack_lost`, a send fails
    as one whose acknowledgement timed out does, and its record is written only when
    `written_late` is called: librdkafka cannot tell such a send from one never written,
    and the worker folds a like's changes by version, whatever their order on the topic
    (written late, the like is not folded before the test's next change reads)."""

    def __init__(self, name: str, ack_lost: bool = False) -> None:
        super().__init__(KAFKA, name, on_fatal=None)
        self.likes: list[LikeEvent] = []
        self._ack_lost = ack_lost
        self._unwritten: list[tuple[str, bytes, bytes]] = []

    async def send(self, topic: str, key: bytes, value: bytes) -> None:
        if topic == TOPIC_LIKES:
            self.likes.append(LikeEvent.decode(value))
        if self._ack_lost:
            self._unwritten.append((topic, key, value))
            raise KafkaException(KafkaError(KafkaError._MSG_TIMED_OUT, "Local: Message timed out"))
        await super().send(topic, key, value)

    async def written_late(self) -> None:
        for topic, key, value in self._unwritten:
            await super().send(topic, key, value)
        self._unwritten.clear()


def new_author(edge: httpx.Client) -> int:
    reply = edge.post("/v1/users", json={"username": unique_name("pp"), "password": "post path pw"})
    assert reply.status_code == 200, reply.text
    return int(reply.json()["user"]["user_id"])


async def tweets_of(
    cql: CqlSession, producer: AsyncProducer, redis: RedisClient, instance: int, ahead_ms: int = 0
) -> Tweets:
    """tweet_svc's domain wired to the real stores as its main.py does (one per "process")."""
    outbox = Outbox(cql, producer)
    await outbox.prepare()
    store = TweetStore(cql, outbox)
    await store.prepare()

    async def username(user_id: int) -> str:
        return f"author{user_id}"

    def clock_ms() -> int:
        return time.time_ns() // 1_000_000 + ahead_ms

    ids = IdGenerator(instance, clock_ms)
    return Tweets(store, TweetCache(redis, 60, 30, 30), outbox, producer, Usernames(username), ids)


async def test_the_bucket_row_is_written_once_per_store_and_every_tweet_is_listed(
    cql: CqlSession, edge: httpx.Client
) -> None:
    author = new_author(edge)
    recording = RecordingCql(cql)
    outbox = Outbox(cql, None)
    await outbox.prepare()
    store = TweetStore(recording, outbox)  # type: ignore[arg-type]
    await store.prepare()
    other = TweetStore(cql, outbox)  # another process, which has not written the row yet
    await other.prepare()
    ids = IdGenerator(915)
    bucket_row = store._q["insert_bucket"].query_id

    async def post(into: TweetStore) -> int:
        tweet_id = ids.next_id()
        created = datetime.fromtimestamp(id_time_ms(tweet_id) / 1000, UTC)
        record = TweetRecord(tweet_id, author, f"author{author}", "bucket", created)
        payload = {
            "type": "tweet_created",
            "tweet_id": tweet_id,
            "author_id": author,
            "created_at_ms": id_time_ms(tweet_id),
        }
        await into.insert_tweet(record, Event(ids.next_id(), TOPIC_TWEETS, author, payload))
        return tweet_id

    posted = [await post(store), await post(store), await post(other), await post(store)]
    with_row = [bucket_row in b for b in recording.batches]
    assert with_row == [True, False, False], with_row
    assert await store.author_tweet_ids(author, 10, None) == sorted(posted, reverse=True)


async def test_one_key_posted_at_once_through_two_instances_makes_one_tweet(
    cql: CqlSession, redis: RedisClient, edge: httpx.Client
) -> None:
    author = new_author(edge)
    producer = AsyncProducer(KAFKA, "tests-post-path", on_fatal=None)
    try:
        first, second = await tweets_of(cql, producer, redis, 916), await tweets_of(cql, producer, redis, 917)
        key = f"race-{secrets.token_hex(6)}"
        posts = await asyncio.gather(*(t.create(author, "once", key) for t in [first, second] * 5))
        assert len({p.tweet_id for p in posts}) == 1, posts
        assert await first.recent_ids([author], 0, 10) == [(posts[0].tweet_id, author)]
        again = await second.create(author, "once", key)
        assert again.tweet_id == posts[0].tweet_id
        fresh = await first.create(author, "twice", key + "-2")
        assert fresh.tweet_id != posts[0].tweet_id
    finally:
        producer.close()


async def test_an_unlike_after_a_like_wins_though_the_like_came_from_a_clock_ahead(
    cql: CqlSession, redis: RedisClient, edge: httpx.Client
) -> None:
    author, fan = new_author(edge), new_author(edge)
    producer = AsyncProducer(KAFKA, "tests-post-path", on_fatal=None)
    try:
        # Two instances a second apart: the like goes through the one ahead.
        ahead = await tweets_of(cql, producer, redis, 918, ahead_ms=1000)
        behind = await tweets_of(cql, producer, redis, 919)
        tweet = (await behind.create(author, "liked, then not", "")).tweet_id

        assert await ahead.set_like(fan, tweet, liked=True) == 1
        assert await behind.liked_by(fan, [tweet]) == {tweet}
        assert await behind.set_like(fan, tweet, liked=False) == 0
        # The unlike is the newer change wherever versions order them: here, the
        # viewer's flag in `user_likes`, read through either instance.
        assert await behind.liked_by(fan, [tweet]) == set()
        assert await ahead.liked_by(fan, [tweet]) == set()
        assert await behind.set_like(fan, tweet, liked=True) == 1
        assert await ahead.liked_by(fan, [tweet]) == {tweet}
    finally:
        producer.close()


async def test_an_unlike_after_a_like_that_timed_out_yet_was_written_wins_on_a_clock_behind(
    cql: CqlSession, redis: RedisClient, edge: httpx.Client
) -> None:
    author, fan = new_author(edge), new_author(edge)
    timed_out, answered = LikeSends("tests-like-ack-lost", ack_lost=True), LikeSends("tests-like-acked")
    try:
        ahead = await tweets_of(cql, timed_out, redis, 920, ahead_ms=2000)
        behind = await tweets_of(cql, answered, redis, 921)
        tweet = (await behind.create(author, "liked (not known), then not", "")).tweet_id
        # Answered UNAVAILABLE (503, "not known"), yet written: the worker will fold it.
        with pytest.raises(KafkaException):
            await ahead.set_like(fan, tweet, liked=True)
        assert await behind.liked_by(fan, [tweet]) == set()  # never acknowledged: not shown
        assert await behind.set_like(fan, tweet, liked=False) == 0  # acknowledged
        await timed_out.written_late()
        (like,), (unlike,) = timed_out.likes, answered.likes
        # Versioned above the like whose send timed out, though this clock is 2 s behind its.
        assert unlike.version > like.version, (like, unlike)
        # And once the worker has folded both, the unlike stands.
        store = TweetStore(cql, Outbox(cql, None))
        await store.prepare()
        deadline = time.monotonic() + 30
        newest = max(like.version, unlike.version)
        while True:
            count, rows = await store.like_states(tweet, [fan])
            if (fan in rows and rows[fan].version >= newest) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert rows[fan].version == unlike.version and not rows[fan].liked, rows
        assert count == 0
        assert await ahead.liked_by(fan, [tweet]) == set() == await behind.liked_by(fan, [tweet])
    finally:
        timed_out.close()
        answered.close()
