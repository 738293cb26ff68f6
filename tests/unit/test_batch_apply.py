"""How a worker applies one batch when the store is slow: at most so many items at
once, a timed-out item tried again where it stands, and a batch that fails leaves
nothing of itself running (common/worker.py apply_each, tweet_svc/like_applier.py,
feed_svc/fanout.py)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from cassandra import OperationTimedOut
from confluent_kafka import Message as KafkaMessage
from prometheus_client import REGISTRY

from common.events import LikeEvent
from common.worker import apply_each
from feed_svc.fanout import Fanout
from tests.unit.test_redis_cluster_safety import FakeMessage
from tweet_svc import like_applier
from tweet_svc.like_applier import CONCURRENT_TWEETS, STORE_ATTEMPTS, LikeApplier
from tweet_svc.likes import LikeState
from tweet_svc.store import TweetStore


async def test_jobs_run_at_most_limit_at_a_time_and_results_keep_their_order() -> None:
    running, most = 0, 0

    async def job(n: int) -> int:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.001 * (n % 3))
        running -= 1
        return n * n

    results = await apply_each([lambda n=n: job(n) for n in range(40)], 4)  # type: ignore[misc]
    assert results == [n * n for n in range(40)]
    assert most == 4


async def test_the_first_failure_cancels_the_other_jobs_and_is_raised_as_itself() -> None:
    cancelled: list[int] = []

    async def waiting(n: int) -> None:
        try:
            await asyncio.Event().wait()  # never set: only a cancel ends it
        except asyncio.CancelledError:
            cancelled.append(n)
            raise

    async def failing() -> None:
        await asyncio.sleep(0.01)
        raise OperationTimedOut("client timeout")

    with pytest.raises(OperationTimedOut):
        await apply_each([lambda: waiting(1), failing, lambda: waiting(2)], 8)
    assert sorted(cancelled) == [1, 2]  # stopped before the failure was raised: nothing goes on beside the retry


async def test_a_cancelled_batch_cancels_its_jobs_and_stays_cancelled() -> None:
    """A worker shutting down while a job fails must still stop, not retry the batch."""
    cancelled: list[int] = []
    started = asyncio.Event()

    async def waiting(n: int) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(n)
            raise

    async def failing_when_cancelled() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:  # as a store call cut short may fail instead
            raise OperationTimedOut("cut short") from None

    jobs = [lambda: waiting(1), failing_when_cancelled, lambda: waiting(2)]
    batch = asyncio.ensure_future(apply_each(jobs, 8))
    await started.wait()
    batch.cancel()
    with pytest.raises(asyncio.CancelledError):
        await batch
    assert sorted(cancelled) == [1, 2]


class SlowStore:
    """Likes of many tweets; calls listed in `timeouts` raise OperationTimedOut, and a
    write listed in `applied_then_timeout` is applied before it raises (the client gave
    up, the store did not)."""

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.rows: dict[int, dict[int, LikeState]] = {}
        self.timeouts: dict[tuple[str, int], int] = {}
        self.applied_then_timeout: set[int] = set()
        self.in_flight, self.most_in_flight = 0, 0
        self.reads: dict[int, int] = {}  # like_states calls per tweet

    def _maybe_time_out(self, call: str, tweet_id: int) -> None:
        left = self.timeouts.get((call, tweet_id), 0)
        if left:
            self.timeouts[(call, tweet_id)] = left - 1
            raise OperationTimedOut(f"{call} of {tweet_id} timed out")

    async def like_states(self, tweet_id: int, user_ids: list[int]) -> tuple[int | None, dict[int, LikeState]]:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.001)
            self.reads[tweet_id] = self.reads.get(tweet_id, 0) + 1
            self._maybe_time_out("read", tweet_id)
            rows = self.rows.get(tweet_id, {})
            return self.counts.get(tweet_id), {u: s for u, s in rows.items() if u in user_ids}
        finally:
            self.in_flight -= 1

    async def write_likes(
        self, tweet_id: int, expected: int | None, count: int, changed: dict[int, LikeState], *_: Any
    ) -> bool:
        await asyncio.sleep(0.001)
        self._maybe_time_out("write", tweet_id)
        if self.counts.get(tweet_id) != expected:
            return False
        self.counts[tweet_id] = count
        self.rows.setdefault(tweet_id, {}).update(changed)
        if tweet_id in self.applied_then_timeout:
            self.applied_then_timeout.discard(tweet_id)
            raise OperationTimedOut("write applied, answer lost")
        return True

    async def record_user_likes(self, tweet_id: int, states: dict[int, LikeState]) -> None:
        self._maybe_time_out("user_likes", tweet_id)


class Message:
    def __init__(self, event: LikeEvent, offset: int) -> None:
        self._value = event.encode()
        self._offset = offset

    def value(self) -> bytes:
        return self._value

    def topic(self) -> str:
        return "likes"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset


def batch(tweets: int, likers: int, liked: bool = True, version: int = 0) -> list[KafkaMessage]:
    """Every tweet liked (or unliked) by `likers` users, the events at offsets from 0 on
    (a batch read again has the same offsets)."""
    events = [
        LikeEvent(t, u, liked, version + 1_000 * t + u) for t in range(1, tweets + 1) for u in range(1, likers + 1)
    ]
    return cast(list[KafkaMessage], [Message(e, i) for i, e in enumerate(events)])


@pytest.fixture(autouse=True)
def no_retry_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(like_applier, "STORE_RETRY_SECONDS", 0.0)


async def test_a_timed_out_tweet_is_tried_again_and_the_batch_goes_through() -> None:
    store = SlowStore()
    store.timeouts = {("read", 3): 1, ("write", 5): 1, ("user_likes", 7): STORE_ATTEMPTS - 1}
    await LikeApplier(cast(TweetStore, store), None)(batch(tweets=60, likers=3))
    assert store.counts == {t: 3 for t in range(1, 61)}
    assert 1 < store.most_in_flight <= CONCURRENT_TWEETS


class RawMessage(Message):
    def __init__(self, raw: bytes, offset: int) -> None:
        self._value, self._offset = raw, offset


async def test_like_events_no_store_would_take_are_skipped_counted_and_the_rest_applied() -> None:
    """An infinite number raised OverflowError, which escaped the check and failed the batch
    for good; an id out of range failed in the store, batch after batch."""
    store = SlowStore()
    labels = {"group": like_applier.GROUP, "reason": "malformed"}
    before = REGISTRY.get_sample_value("chirp_consumer_skipped_total", labels) or 0.0
    poison = [
        b'{"tweet_id":Infinity,"user_id":1,"liked":true,"version":5}',
        b'{"tweet_id":1,"user_id":0,"liked":true,"version":5}',
        b'{"tweet_id":1,"user_id":1,"liked":true,"version":18446744073709551616}',
    ]
    good = batch(tweets=2, likers=2)
    messages = [*good, *(cast(KafkaMessage, RawMessage(raw, 100 + i)) for i, raw in enumerate(poison))]
    await LikeApplier(cast(TweetStore, store), None)(messages)
    assert store.counts == {1: 2, 2: 2}
    assert REGISTRY.get_sample_value("chirp_consumer_skipped_total", labels) == before + 3


async def test_a_write_applied_though_it_timed_out_is_not_counted_twice() -> None:
    store = SlowStore()
    store.applied_then_timeout = {2}
    applier = LikeApplier(cast(TweetStore, store), None)
    await applier(batch(tweets=3, likers=2))
    await applier(batch(tweets=3, likers=2))  # and the whole batch re-delivered
    assert store.counts == {1: 2, 2: 2, 3: 2}


async def test_a_tweet_that_keeps_timing_out_fails_its_batch_and_leaves_nothing_running() -> None:
    store = SlowStore()
    store.timeouts = {("read", 4): STORE_ATTEMPTS}
    with pytest.raises(OperationTimedOut):
        await LikeApplier(cast(TweetStore, store), None)(batch(tweets=200, likers=1))
    applied = len(store.counts)
    await asyncio.sleep(0.2)
    assert store.in_flight == 0 and len(store.counts) == applied  # the rest stopped with it
    assert applied < 199


async def test_a_batch_read_again_after_a_failure_redoes_only_the_tweets_not_applied() -> None:
    store = SlowStore()
    store.timeouts = {("read", 40): STORE_ATTEMPTS}
    applier = LikeApplier(cast(TweetStore, store), None)
    with pytest.raises(OperationTimedOut):
        await applier(batch(tweets=60, likers=2))
    done_before = set(store.counts)
    assert done_before and 40 not in done_before
    store.reads.clear()
    await applier(batch(tweets=60, likers=2))  # read again from the last commit: the same offsets
    assert store.counts == {t: 2 for t in range(1, 61)}
    assert set(store.reads) == set(range(1, 61)) - done_before  # the applied tweets were not read again
    # Once a batch went through, nothing is skipped: the next one (unlikes at the same
    # offsets, as a new partition would have) is applied whole.
    store.reads.clear()
    await applier(batch(tweets=60, likers=2, liked=False, version=500))
    assert set(store.reads) == set(range(1, 61)) and store.counts == {t: 0 for t in range(1, 61)}


class ProbedFanout(Fanout):
    """The fan-out worker's batch handling, with each event's work replaced by a probe."""

    def __init__(self, keys_at_once: int, failing_tweet: int = 0) -> None:
        unused: Any = None  # the probe replaces every use of the caches and graph calls
        super().__init__(unused, unused, unused, unused, unused, 3, keys_at_once)
        self.failing_tweet = failing_tweet
        self.applied: list[tuple[int, int]] = []
        self.running = self.most = 0

    async def handle(self, kind: str, event: dict[str, Any]) -> None:
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await asyncio.sleep(0.002)
            if event["tweet_id"] == self.failing_tweet:
                raise OperationTimedOut("slow store")
            self.applied.append((event["author_id"], event["tweet_id"]))
        finally:
            self.running -= 1


def fanout_batch(authors: int, tweets_each: int) -> list[KafkaMessage]:
    return cast(
        list[KafkaMessage],
        [
            FakeMessage(
                {"type": "tweet_created", "tweet_id": 100 * a + n, "author_id": a, "created_at_ms": 1_700_000_000_000}
            )
            for n in range(tweets_each)
            for a in range(1, authors + 1)
        ],
    )


async def test_fanout_applies_each_authors_events_in_order_a_few_authors_at_a_time() -> None:
    fanout = ProbedFanout(keys_at_once=3)
    await fanout(fanout_batch(authors=10, tweets_each=4))
    assert len(fanout.applied) == 40 and 1 < fanout.most <= 3
    for author in range(1, 11):
        assert [t for a, t in fanout.applied if a == author] == [100 * author + n for n in range(4)]


async def test_a_fanout_batch_that_fails_is_raised_as_itself_and_stops_the_rest() -> None:
    fanout = ProbedFanout(keys_at_once=2, failing_tweet=101)  # author 1's second tweet
    with pytest.raises(OperationTimedOut):
        await fanout(fanout_batch(authors=20, tweets_each=3))
    applied = len(fanout.applied)
    await asyncio.sleep(0.05)
    assert fanout.running == 0 and len(fanout.applied) == applied < 59
