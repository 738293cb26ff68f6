"""Kafka for asyncio: an idempotent producer whose sends can be awaited, and a
consumer whose blocking polls run off the event loop."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

log = logging.getLogger(__name__)

KAFKA_UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (KafkaException, BufferError)

TOPIC_TWEETS = "chirp.tweets.v1"  # tweet created / deleted, keyed by author
TOPIC_FOLLOWS = "chirp.follows.v1"  # follow / unfollow, keyed by follower
TOPIC_LIKES = "chirp.likes.v1"  # like / unlike, keyed by tweet
TOPICS = (TOPIC_TWEETS, TOPIC_FOLLOWS, TOPIC_LIKES)
POLL_IDLE_SECONDS = 1.0
# How often the poll thread of a producer with nothing in flight looks for
# client events (ALL_BROKERS_DOWN; `send` also serves them first). confluent-kafka's
# poll() waits in 200 ms slices, whatever its timeout, so a thread left polling an
# idle producer would wake five times a second; it sleeps on an event instead,
# set by every produce, and serves what is queued when it wakes.
IDLE_CHECK_SECONDS = 5.0
# How long the broker holds a consumer's fetch that finds nothing. A fetch is
# answered as soon as a record arrives on any of its partitions, so this sets
# only how often an idle consumer asks: at librdkafka's 500 ms default, eight
# idle consumers cost the broker about 1% of a core. It also bounds how long a
# request queued behind the fetch on the leader's connection waits (ListOffsets:
# `offsets_for_times`, an uncached watermark), which must stay well inside
# their own timeouts (half of the 5 s in rank_svc/events.py).
FETCH_WAIT_MS = 2500


# librdkafka's line for a partition whose committed offset is no longer on the broker
# (`rd_kafka_offset_reset`, WARNING, facility OFFSET): retention removed it before the
# group read that far, or the log was truncated. It goes on from the earliest offset
# kept (auto.offset.reset), and what lay between is never read. Its only other trace.
OFFSET_RESET_LINE = re.compile(
    r"(?P<topic>\S+) \[(?P<partition>\d+)\]: offset reset \(at offset (?P<at>\d+)\b.*Offset out of range"
)
# (topic, partition, where its fetch stood, events never read: None where the log
# starts below it, as after a topic was made again). A stopped group's fetch starts at
# its committed offset.
OffsetReset = tuple[str, int, int, int | None]


class ClientLog:
    """librdkafka's log lines, passed to this process's log; an offset reset past what
    the broker keeps is also noted for `BatchConsumer` to report. As confluent-kafka's
    `logger`, they are served only within the consumer's own calls (consume(), close()),
    in their thread: a consumer's lines wait while a batch is applied, and any after its
    close are lost (they went to stderr at once before). Producers log as before."""

    def __init__(self) -> None:
        self._log = logging.getLogger("librdkafka")
        self._lock = threading.Lock()
        self._resets: list[tuple[str, int, int]] = []

    def log(self, level: int, msg: str, *args: object) -> None:
        try:
            text = msg % args if args else msg
            self._log.log(level, text)
            found = OFFSET_RESET_LINE.search(text)
            if found:
                with self._lock:
                    self._resets.append((found["topic"], int(found["partition"]), int(found["at"])))
        except Exception:  # raised here, it would fail the consume() serving it
            log.exception("handling a librdkafka log line failed")

    def take_resets(self) -> list[tuple[str, int, int]]:
        with self._lock:
            resets, self._resets = self._resets, []
        return resets


def is_fatal(error: KafkaError) -> bool:
    """A client error it cannot recover from. confluent-kafka marks `fatal()` only on what
    it raises from a producer's poll(); a consumer's fatal error comes as a message's
    error, with the code _FATAL and `fatal()` False."""
    return bool(error.fatal()) or error.code() == KafkaError._FATAL


class AsyncProducer:
    """Idempotent producer (acks=all); `send` resolves once the broker has the record."""

    def __init__(
        self,
        bootstrap: str,
        client_id: str,
        *,
        on_fatal: Callable[[], None] | None,
        delivery_timeout_ms: int = 10000,
    ) -> None:
        """`on_fatal` runs once after a fatal error (on the thread that met it), after
        which every send fails: a service passes `common.server.stop_with_failure`, so
        that it is started afresh. Required, so that no process leaves it out by
        mistake; None (only logged) is for tools and tests."""
        # Set while librdkafka reports every broker down, so callers that need
        # an acknowledgement fail at once instead of waiting out the timeout.
        self._all_down = threading.Event()
        self._on_fatal = on_fatal
        self._failed = threading.Event()
        self._failing = threading.Lock()  # the poll thread and the event loop may both meet it
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "client.id": client_id,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 2,
                "compression.type": "lz4",
                "message.timeout.ms": delivery_timeout_ms,
                "socket.connection.setup.timeout.ms": 3000,
                "error_cb": self._on_error,
            }
        )
        self._stop = threading.Event()
        self._produced = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="kafka-producer-poll", daemon=True)
        self._poller.start()

    def _on_error(self, err: KafkaError) -> None:
        # Never a fatal error: confluent-kafka raises those from poll() instead (`_serve`).
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            self._all_down.set()
            log.warning("all Kafka brokers are down")

    def _fatal(self, err: KafkaError) -> None:
        # An idempotent producer's fatal error (a sequence the broker lost, say) is
        # for good: every later send fails, while the process keeps serving and
        # holding its outbox relay's shards, which no one then publishes. A service
        # stops (drain, shards handed over) and exits with a failure, for the
        # platform to start it afresh; its unsent events wait in the outbox.
        with self._failing:
            if self._failed.is_set():
                return
            self._failed.set()
        log.critical("the Kafka producer failed for good", extra={"error": err.str()})
        if self._on_fatal is not None:
            self._on_fatal()

    def _serve(self, timeout: float) -> None:
        """poll(): delivery reports and client events. A fatal error never reaches
        `error_cb`: confluent-kafka raises it, as a KafkaException, from the poll() (or
        flush()) that serves it, and from every produce() after it."""
        try:
            self._producer.poll(timeout)
        except KafkaException as exc:
            self._fatal_if_so(exc)
            raise

    def _fatal_if_so(self, exc: KafkaException) -> None:
        err = exc.args[0] if exc.args else None
        if isinstance(err, KafkaError) and is_fatal(err):
            self._fatal(err)

    def _poll(self) -> None:
        # poll() returns as soon as a delivery report is served. len() counts the
        # records not yet acknowledged and the reports and events not yet served;
        # a produce counts itself before it sets `_produced`, and the count is read
        # after the event is cleared, so no record waits for IDLE_CHECK_SECONDS.
        while not self._stop.is_set():
            try:
                if len(self._producer):
                    self._serve(POLL_IDLE_SECONDS)
                    continue
                self._produced.wait(IDLE_CHECK_SECONDS)
                self._produced.clear()
                self._serve(0)
            except Exception as exc:  # noqa: BLE001 - the thread must outlive it: sends wait on its reports
                log.error("serving the Kafka producer's events failed", extra={"error": repr(exc)})
                self._stop.wait(POLL_IDLE_SECONDS)

    async def send(self, topic: str, key: bytes, value: bytes) -> None:
        # An idle poll thread serves client events only every IDLE_CHECK_SECONDS:
        # serve any queued now (ALL_BROKERS_DOWN), so a send after an outage fails fast.
        self._serve(0)
        if self._all_down.is_set() and not await self.ping():
            raise KafkaException(KafkaError(KafkaError._ALL_BROKERS_DOWN, "all brokers are down"))
        self._all_down.clear()
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            loop.call_soon_threadsafe(_settle, done, err)

        self._produce(topic, key, value, on_delivery)
        await done

    def send_nowait(self, topic: str, key: bytes, value: bytes, on_done: Any) -> None:
        """Queue a record; `on_done(err)` runs on the poll thread once it is settled."""
        self._produce(topic, key, value, lambda err, _msg: on_done(err))

    def _produce(self, topic: str, key: bytes, value: bytes, on_delivery: Any) -> None:
        try:
            self._producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
        except KafkaException as exc:
            self._fatal_if_so(exc)
            raise
        self._produced.set()

    def reachable(self, timeout: float = 0.5) -> bool:
        try:
            self._producer.list_topics(timeout=timeout)
        except KafkaException:
            return False
        return True

    async def ping(self) -> bool:
        return await asyncio.get_running_loop().run_in_executor(None, self.reachable)

    def close(self, timeout: float = 5.0) -> None:
        try:
            self._producer.flush(timeout)
        except KafkaException as exc:  # a fatal error served here: nothing more will be sent
            log.warning("flushing the Kafka producer failed", extra={"error": repr(exc)})
        self._stop.set()
        self._produced.set()
        self._poller.join(POLL_IDLE_SECONDS + 1.0)


def _settle(done: asyncio.Future[None], err: KafkaError | None) -> None:
    if done.done():
        return
    if err is not None:
        done.set_exception(KafkaException(err))
    else:
        done.set_result(None)


class BatchConsumer:
    """A consumer group member that hands out batches and commits only on request."""

    def __init__(self, bootstrap: str, group: str, topics: Sequence[str], client_id: str, rack: str = "") -> None:
        """`client_id` names the member in the group's description and the broker's
        logs. With a `rack` (its zone), it fetches from the in-sync replica in that zone.

        Members are dynamic and every rebalance assigns all partitions at once (an
        eager assignor). Static members (group.instance.id) with incremental
        rebalancing (cooperative-sticky) left partitions with no owner: in a fault
        run a like worker SIGKILLed and started again held nothing, the other held
        3 of 6 partitions, the group was STABLE, and half the likes waited until a
        worker restarted. What this costs: a restarted or crashed worker's group
        rebalances (all members pause for it, about a second), and a crashed one's
        partitions wait out the session timeout; a batch under way when its
        partitions move is applied again by their new owner, which idempotent
        applies absorb."""
        rack_config = {"client.rack": rack} if rack else {}
        self._client_log = ClientLog()
        # Partitions reset past retention whose first offset kept is not known yet.
        self._resets: list[tuple[str, int, int]] = []
        self.on_reset: Callable[[OffsetReset], None] | None = None
        self._consumer = Consumer(
            {
                **rack_config,
                "bootstrap.servers": bootstrap,
                "group.id": group,
                "client.id": client_id,
                "partition.assignment.strategy": "roundrobin",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                "session.timeout.ms": 10000,
                "fetch.wait.max.ms": FETCH_WAIT_MS,
                # A batch may hold a large fan-out (minutes in push-everything
                # mode); past this the member is dropped and its batch re-applied.
                "max.poll.interval.ms": 300000,
            },
            logger=self._client_log,
        )
        self._consumer.subscribe(list(topics))
        # Held by the thread blocked in consume(): close() waits for it, since a
        # cancelled poll goes on in its thread and the client must not be closed under it.
        self._consuming = threading.Lock()

    def _consume(self, max_messages: int, wait_seconds: float) -> list[Message]:
        with self._consuming:
            return self._consumer.consume(max_messages, wait_seconds)

    async def poll_batch(self, max_messages: int, wait_seconds: float) -> list[Message]:
        """The next batch; `on_reset` hears of each partition reset past what the broker
        keeps (`OFFSET_RESET_LINE`), once the offset it went on from is known."""
        loop = asyncio.get_running_loop()
        messages = await loop.run_in_executor(None, self._consume, max_messages, wait_seconds)
        for reset in self._settle_resets(messages):
            if self.on_reset is not None:
                self.on_reset(reset)
        good = []
        for msg in messages:
            error = msg.error()
            if error is None:
                good.append(msg)
            elif is_fatal(error):
                # The client is dead for good: it would hand out nothing from now
                # on, so the caller must build a new one.
                raise KafkaException(error)
            elif error.code() != KafkaError._PARTITION_EOF:
                log.warning("consume error: %s", error)
        return good

    def _settle_resets(self, messages: Sequence[Message]) -> list[OffsetReset]:
        """Resets whose new offset is known: the low watermark from the fetches that
        followed (the failed fetch leaves it unknown), or the first message read from at
        least where the fetch stood (a group reading behind has messages from below it
        queued still). A reset of a partition this member no longer holds is dropped."""
        self._resets += self._client_log.take_resets()
        if not self._resets:
            return []
        assigned = {(tp.topic, tp.partition) for tp in self._consumer.assignment()}
        settled, pending = [], []
        for topic, partition, at in self._resets:
            if (topic, partition) not in assigned:
                log.error(
                    "offset reset of a partition no longer held: how many events were never read is not known",
                    extra={"topic": topic, "partition": partition, "fetch_position": at},
                )
                continue
            read = (m.offset() for m in messages if m.topic() == topic and m.partition() == partition)
            first = next((o for o in read if o is not None and o >= at), None)
            low, _high = self._consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
            went_on = low if low >= 0 else first
            if went_on is None:
                pending.append((topic, partition, at))
                continue
            skipped = went_on - at if went_on > at else None
            settled.append((topic, partition, at, skipped))
            where = {"topic": topic, "partition": partition, "fetch_position": at, "went_on_from": went_on}
            if skipped is None:  # the log starts below where the fetch stood: made again, or truncated
                log.error("offset reset: events read again from the start of the log", extra=where)
            else:
                log.error("offset reset past what the broker keeps: events never read", extra=where)
        self._resets = pending
        return settled

    async def commit(self, messages: Sequence[Message]) -> None:
        """Commit the offsets after `messages`, synchronously (the writes are done)."""
        if messages:
            await asyncio.get_running_loop().run_in_executor(None, self.commit_now, messages)

    def commit_now(self, messages: Sequence[Message]) -> None:
        """`commit`, blocking the calling thread (at close, with no loop to run it on)."""
        latest: dict[tuple[str, int], int] = {}
        for msg in messages:
            key = (str(msg.topic()), int(msg.partition() or 0))
            latest[key] = max(latest.get(key, -1), msg.offset() or 0)
        # Only partitions this member still holds: a batch can span a rebalance (two
        # consume() calls, or offsets kept for a commit interval), and librdkafka commits
        # a revoked partition's offset all the same, over its new owner's newer one, so
        # that events were applied again after the next move. Nothing is revoked while
        # this runs: revocations are served inside consume().
        assigned = {(tp.topic, tp.partition) for tp in self._consumer.assignment()}
        offsets = [TopicPartition(t, p, o + 1) for (t, p), o in latest.items() if (t, p) in assigned]
        if not offsets:
            return
        # A commit refused for every partition raises; one refused for some of them returns
        # each partition with its own error (librdkafka's OffsetCommit handling).
        for tp in self._consumer.commit(offsets=offsets, asynchronous=False) or []:
            if tp.error is not None:
                raise KafkaException(tp.error)

    def rewind(self) -> None:
        """Move each assigned partition back to its last committed offset (the start,
        where nothing was committed), so what was read since is read again."""
        with self._consuming:
            assigned = self._consumer.assignment()
            if not assigned:
                return
            for tp in self._consumer.committed(assigned, timeout=10):
                offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
                self._consumer.seek(TopicPartition(tp.topic, tp.partition, offset))

    def assignment_ready(self) -> bool:
        """True once the group has given this consumer its partitions."""
        return bool(self._consumer.assignment())

    def lag(self) -> int:
        """Messages not yet consumed on the assigned partitions.

        Uses the high watermarks the fetcher already received with each fetch
        response. Asking the broker instead queues behind the consumer's long-poll
        fetches (about half a second per partition here), which stalled the loop.
        """
        total = 0
        for tp in self._consumer.assignment():
            try:
                _low, high = self._consumer.get_watermark_offsets(tp, cached=True)
                if high < 0:  # nothing fetched from this partition yet
                    _low, high = self._consumer.get_watermark_offsets(tp, timeout=1.0, cached=False)
            except KafkaException:  # e.g. just assigned in a rebalance: count it next time
                continue
            position = self._consumer.position([tp])[0].offset
            if position >= 0:
                total += max(0, high - position)
        return total

    def close(self) -> None:
        with self._consuming:
            self._consumer.close()


def group_offsets(
    bootstrap: str, group: str, topics: Sequence[str], timeout: float = 5.0
) -> dict[str, tuple[int, int]]:
    """For each "topic[partition]": (where consumer group `group` has committed to,
    the partition's end). Read from the outside, without joining the group."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        partitions = [
            TopicPartition(topic, p)
            for topic in topics
            for p in consumer.list_topics(topic, timeout=timeout).topics[topic].partitions
        ]
        offsets: dict[str, tuple[int, int]] = {}
        for tp in consumer.committed(partitions, timeout=timeout):
            low, high = consumer.get_watermark_offsets(tp, timeout=timeout, cached=False)
            offsets[f"{tp.topic}[{tp.partition}]"] = (max(tp.offset, low), high)
        return offsets
    finally:
        consumer.close()
