"""What a Kafka worker does when its client or its batch fails: a fatal client error
gets a new client, and failed batches are re-read after longer and longer pauses."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from common import worker
from common.kafka import BatchConsumer
from common.worker import RETRY_PAUSE_MAX_SECONDS, ConsumerLoop, retry_pause
from tests.unit.test_idle_loops import Msg


class Record:
    """Just what poll_batch reads of a consumed record."""

    def __init__(self, error: KafkaError | None = None) -> None:
        self._error = error

    def error(self) -> KafkaError | None:
        return self._error


class Client:
    """confluent_kafka.Consumer's consume() and close(), handing out one scripted result."""

    def __init__(self, records: list[Record]) -> None:
        self.records = records

    def consume(self, _max: int, _wait: float) -> list[Record]:
        return self.records

    def close(self) -> None:
        pass


def consumer_with(records: list[Record]) -> BatchConsumer:
    consumer = BatchConsumer("127.0.0.1:9", "g", ["t"], "c")  # never connects: consume() is replaced
    consumer._consumer.close()
    consumer._consumer = Client(records)  # type: ignore[assignment]
    return consumer


async def test_a_fatal_client_error_is_raised_so_the_worker_builds_a_new_client() -> None:
    # A client librdkafka gave up on hands out nothing ever again, and a worker
    # that only logged it would look idle while its partitions went unread.
    # As a consumer gets it: a message's error with the code _FATAL, `fatal()` False.
    fatal = KafkaError(KafkaError._FATAL, "the client can go on no more")
    consumer = consumer_with([Record(), Record(fatal)])
    with pytest.raises(KafkaException):
        await consumer.poll_batch(10, 0.1)


async def test_other_consume_errors_are_skipped_and_the_good_records_handed_out() -> None:
    good = Record()
    consumer = consumer_with(
        [Record(KafkaError(KafkaError._PARTITION_EOF)), good, Record(KafkaError(KafkaError._TRANSPORT))]
    )
    assert await consumer.poll_batch(10, 0.1) == [good]


def test_pauses_after_failed_batches_double_up_to_a_ceiling() -> None:
    pauses = [retry_pause(n) for n in range(8)]
    assert pauses[:3] == [1.0, 2.0, 4.0]
    assert max(pauses) == RETRY_PAUSE_MAX_SECONDS == pauses[-1]
    assert retry_pause(10_000) == RETRY_PAUSE_MAX_SECONDS


class FailingConsumer:
    def __init__(self, rewind_error: Exception | None = None) -> None:
        self.closed = False
        self.rewinds = 0
        self.rewind_error = rewind_error

    async def poll_batch(self, max_messages: int, wait_seconds: float) -> list[str]:
        return ["m"]

    async def commit(self, messages: Sequence[Any]) -> None:
        pass

    def lag(self) -> int:
        return 0

    def assignment_ready(self) -> bool:
        return True

    def close(self) -> None:
        self.closed = True

    def rewind(self) -> None:
        self.rewinds += 1
        if self.rewind_error is not None:
            raise self.rewind_error


async def test_failed_batches_in_a_row_wait_longer_and_a_success_resets_the_pause(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    outcomes = [False, False, False, True, False, True]  # each batch's fate, in turn
    pauses: list[float] = []
    built: list[FailingConsumer] = []

    async def fake_sleep(seconds: float) -> None:
        pauses.append(seconds)

    async def apply(messages: Sequence[Any]) -> None:
        if not outcomes:
            raise asyncio.CancelledError  # the script is done: stop the loop
        if not outcomes.pop(0):
            raise TimeoutError("store overloaded")

    def factory() -> FailingConsumer:
        built.append(FailingConsumer())
        return built[-1]

    monkeypatch.setattr(worker.asyncio, "sleep", fake_sleep)
    loop = ConsumerLoop("g", factory, apply, 10, 0.01)  # type: ignore[arg-type]
    with pytest.raises(asyncio.CancelledError):
        await loop.run_forever()
    assert pauses == [retry_pause(0), retry_pause(1), retry_pause(2), retry_pause(0)]
    assert pauses[:3] == sorted(pauses[:3]) and pauses[0] < pauses[2]
    # Every failure rewound the one client to the last commit: no new client, so no
    # leaving and rejoining the group (a rebalance that pauses every member).
    assert len(built) == 1 and built[0].rewinds == 4 and not built[0].closed


async def failing_once(loop: ConsumerLoop, error: Exception, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run `loop` until its first batch failed with `error` and it read again."""
    calls = 0

    async def apply(messages: Sequence[Any]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise error
        raise asyncio.CancelledError  # read again: stop here

    async def no_pause(seconds: float) -> None:
        pass

    monkeypatch.setattr(worker.asyncio, "sleep", no_pause)
    loop._apply = apply
    with pytest.raises(asyncio.CancelledError):
        await loop.run_forever()


@pytest.mark.parametrize(
    ("failure", "rewind_error"),
    [
        (KafkaException(KafkaError(KafkaError._FATAL, "gone")), None),  # the client failed for good
        (TimeoutError("store overloaded"), KafkaException(KafkaError(KafkaError._STATE))),  # it cannot rewind
    ],
)
async def test_a_new_client_is_built_when_the_old_one_cannot_go_on(
    failure: Exception, rewind_error: Exception | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[FailingConsumer] = []

    def factory() -> FailingConsumer:
        built.append(FailingConsumer(rewind_error))
        return built[-1]

    loop = ConsumerLoop("g", factory, lambda m: asyncio.sleep(0), 10, 0.01)  # type: ignore[arg-type]
    await failing_once(loop, failure, monkeypatch)
    assert len(built) == 2 and built[0].closed and not built[1].closed


class RefusingCommits(FailingConsumer):
    """Hands out one message per batch; its commits fail with `error` while set."""

    def __init__(self, error: KafkaError | None) -> None:
        super().__init__()
        self.error = error
        self.commits: list[list[Any]] = []

    async def commit(self, messages: Sequence[Any]) -> None:
        self.commits.append(list(messages))
        if self.error is not None:
            raise KafkaException(self.error)


class PartlyRefusing(Client):
    """confluent_kafka.Consumer's synchronous commit when the broker refused some of the
    partitions: no exception, each partition returned with its own error."""

    def __init__(self, records: list[Record], assigned: tuple[int, ...] = (0, 1)) -> None:
        super().__init__(records)
        self.assigned = assigned
        self.committed: list[tuple[int, int]] = []

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition("t", p) for p in self.assigned]

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> list[Answer]:
        assert asynchronous is False
        self.committed += [(tp.partition, tp.offset) for tp in offsets]
        refused = KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)
        return [Answer(tp.topic, tp.partition, refused if tp.partition == 1 else None) for tp in offsets]


class Answer:
    """A committed partition as the commit returns it (TopicPartition's `error` is set
    only by librdkafka)."""

    def __init__(self, topic: str, partition: int, error: KafkaError | None) -> None:
        self.topic, self.partition, self.error = topic, partition, error


def test_a_commit_refused_for_some_partitions_raises() -> None:
    """librdkafka raises only when every partition's commit was refused: one refused for
    some would otherwise pass as committed, and those partitions be read again for good."""
    consumer = consumer_with([])
    consumer._consumer = PartlyRefusing([])  # type: ignore[assignment]
    with pytest.raises(KafkaException) as refused:
        consumer.commit_now([Msg(0, 5), Msg(1, 7)])  # type: ignore[list-item]
    assert refused.value.args[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    consumer.commit_now([Msg(0, 6)])  # type: ignore[list-item]


def test_a_partition_moved_to_another_member_is_not_committed() -> None:
    """A batch read before a rebalance may hold a partition revoked since: its offset
    committed would overwrite the new owner's newer one (librdkafka does not check)."""
    consumer = consumer_with([])
    client = PartlyRefusing([], assigned=(0, 2))
    consumer._consumer = client  # type: ignore[assignment]
    consumer.commit_now([Msg(0, 5), Msg(3, 9), Msg(2, 7)])  # type: ignore[list-item]
    assert sorted(client.committed) == [(0, 6), (2, 8)]


async def test_a_commit_refused_for_good_fails_the_batch() -> None:
    # Not a rebalance: every commit would be refused, and a worker that took it as one
    # would apply on and never commit, with nothing saying it is failing.
    consumer = RefusingCommits(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))

    async def apply(messages: Sequence[Any]) -> None:
        pass

    loop = ConsumerLoop("g", lambda: consumer, apply, 10, 0.01)  # type: ignore[arg-type,return-value]
    with pytest.raises(KafkaException):
        await loop.run_once()


async def test_a_refused_commit_leaves_the_batch_applied_and_the_worker_going_on() -> None:
    # During a rebalance the broker refuses commits. Taken for a failed batch, the
    # refusal closed the client and rejoined the group: the batch applied again,
    # and the rejoin could start the next rebalance.
    consumer = RefusingCommits(KafkaError(KafkaError.REBALANCE_IN_PROGRESS))
    applied: list[list[Any]] = []

    async def apply(messages: Sequence[Any]) -> None:
        applied.append(list(messages))

    loop = ConsumerLoop("g", lambda: consumer, apply, 10, 0.01)  # type: ignore[arg-type,return-value]
    assert await loop.run_once() == 1
    consumer.error = None
    assert await loop.run_once() == 1  # the same client: the next batch's commit goes through
    assert applied == [["m"], ["m"]] and len(consumer.commits) == 2 and not consumer.closed


async def test_a_fatal_commit_error_fails_the_batch() -> None:
    consumer = RefusingCommits(KafkaError(KafkaError._FATAL, "fenced"))

    async def apply(messages: Sequence[Any]) -> None:
        pass

    loop = ConsumerLoop("g", lambda: consumer, apply, 10, 0.01)  # type: ignore[arg-type,return-value]
    with pytest.raises(KafkaException):
        await loop.run_once()


async def test_the_lag_gauge_keeps_growing_while_batches_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    # ChirpConsumerLagGrowing and the dashboards read it: it must not freeze at the
    # value of the last batch that succeeded.
    class Growing(FailingConsumer):
        def __init__(self) -> None:
            super().__init__()
            self.behind = 0

        def lag(self) -> int:
            self.behind += 100  # events keep arriving while the group stays at its last commit
            return self.behind

    failures = 0

    async def apply(messages: Sequence[Any]) -> None:
        nonlocal failures
        failures += 1
        if failures > 3:
            raise asyncio.CancelledError
        raise TimeoutError("store down")

    async def no_pause(seconds: float) -> None:
        pass

    clock = iter(float(t) for t in range(0, 1000, 10))  # each lag check finds it due
    monkeypatch.setattr(worker.asyncio, "sleep", no_pause)
    monkeypatch.setattr(ConsumerLoop, "_now", staticmethod(lambda: next(clock)))
    consumer = Growing()
    loop = ConsumerLoop("lagging", lambda: consumer, apply, 10, 0.01)  # type: ignore[arg-type,return-value]
    with pytest.raises(asyncio.CancelledError):
        await loop.run_forever()
    assert worker.LAG.labels("lagging")._value.get() == 300  # read after each of the three failures


async def test_a_client_not_yet_given_its_partitions_does_not_report_a_lag_of_zero(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Unassigned(FailingConsumer):
        def assignment_ready(self) -> bool:
            return False  # a new client, before the group's rebalance

        def lag(self) -> int:
            raise AssertionError("no lag to read without partitions")

    async def apply(messages: Sequence[Any]) -> None:
        raise asyncio.CancelledError

    worker.LAG.labels("unassigned").set(500)
    consumer = Unassigned()
    loop = ConsumerLoop("unassigned", lambda: consumer, apply, 10, 0.01)  # type: ignore[arg-type,return-value]
    assert await loop._report_lag(0.0) == 0.0  # still due: read once the partitions come
    assert worker.LAG.labels("unassigned")._value.get() == 500
