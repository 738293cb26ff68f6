"""The consume-apply-commit loop every Kafka worker runs.

A batch is handed to `apply`; offsets are committed only after it returns. If
it raises, the consumer is rewound to the last commit (a new one is built when
the client itself failed), so the batch is applied again: every `apply` must
be idempotent.

With `commit_interval_seconds`, a busy loop commits at most that often (and
always once a poll comes back empty, and at close): each commit is a
synchronous round trip and a write to the broker's offsets log, and at tens of
events a second a commit per batch was most of a worker's Kafka traffic. What
that trades: a worker that dies re-applies up to that many seconds of batches,
which idempotent applies absorb.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Literal, TypeVar, get_args

from confluent_kafka import KafkaError, KafkaException, Message
from prometheus_client import Counter, Gauge, Histogram

from common.kafka import BatchConsumer, OffsetReset, is_fatal

log = logging.getLogger(__name__)

T = TypeVar("T")

LAG = Gauge("chirp_consumer_lag_messages", "Messages not yet consumed by this worker.", ["group"])
BATCH = Histogram(
    "chirp_consumer_batch_messages",
    "Messages per consumed batch.",
    ["group"],
    buckets=(1, 10, 50, 100, 250, 500, 1000, 5000),
)
LAG_INTERVAL_SECONDS = 5.0
# An idle consumer waits this long for the first message of the next batch, in
# one blocking call that returns as soon as it comes: polling for a whole batch
# every `batch_wait_seconds` (50-200 ms) woke every worker up to 20 times a
# second with nothing to do, and at 1 s each of the 8 idle consumer loops of the
# local stack still took 0.05-0.06% of a core more than at 5 s (workers side by
# side, 90 s; docs/BENCHMARKS.md). What it delays: a stop (closing the consumer
# waits for the call under way; infra/stack.py gives an instance 20 s for drain,
# grace and this), and what a loop does between idle polls (the lag gauge, the
# rank worker's check of quiet partitions) comes every 5 s at most.
IDLE_WAIT_SECONDS = 5.0
FAILURES = Gauge("chirp_consumer_failing", "1 while the worker's last batch failed.", ["group"])
COMMIT_FAILURES = Counter("chirp_consumer_commit_failures_total", "Offset commits the broker refused.", ["group"])
SKIPPED_EVENTS = Counter(
    "chirp_consumer_skipped_total",
    "Events a worker skipped for good: malformed, of a type it does not know, naming a user who does not exist,"
    " or removed by retention before it read them.",
    ["group", "reason"],
)
SkipReason = Literal["malformed", "unknown_type", "not_found", "retention"]
SKIP_REASONS: tuple[str, ...] = get_args(SkipReason)
# Commit refusals that mean the group is changing hands (a rebalance, the coordinator
# moving): the next commit, or the partition's next owner, takes over.
MEMBERSHIP_CHANGING = frozenset(
    {
        KafkaError.REBALANCE_IN_PROGRESS,
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError._WAIT_COORD,
        KafkaError._TIMED_OUT,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError._TRANSPORT,
    }
)
RETRY_PAUSE_SECONDS = 1.0
RETRY_PAUSE_MAX_SECONDS = 16.0


def _kafka_error(error: BaseException) -> KafkaError | None:
    """The client's error inside a KafkaException; None for any other exception."""
    inner = error.args[0] if isinstance(error, KafkaException) and error.args else None
    return inner if isinstance(inner, KafkaError) else None


def retry_pause(
    failed_before: int, first: float = RETRY_PAUSE_SECONDS, ceiling: float = RETRY_PAUSE_MAX_SECONDS
) -> float:
    """Seconds to wait before trying again after `failed_before` failures in a row:
    `first`, doubling, at most `ceiling`."""
    return min(ceiling, first * 2 ** min(failed_before, 10))


async def apply_each(jobs: Iterable[Callable[[], Awaitable[T]]], limit: int) -> list[T]:
    """Run the jobs of one batch, at most `limit` at a time, and return their results.
    The first that fails cancels the others, waits for them to stop, and is raised; a
    cancellation from outside cancels every job and goes on (a worker shutting down).

    A batch fails as a whole and is applied again from the last commit, so a job
    left running after its batch failed would meet its own retry: under a slow
    store that doubled the load on every retry and the batch never got through.
    (Work a job shields from cancellation, such as graph_svc's shared recounts,
    still finishes.) The limit keeps one batch (hundreds of tweets or users) from
    putting all its requests on the store at once."""
    slots = asyncio.Semaphore(limit)

    async def one(job: Callable[[], Awaitable[T]]) -> T:
        async with slots:
            return await job()

    tasks = [asyncio.ensure_future(one(job)) for job in jobs]
    if not tasks:
        return []
    try:
        _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except BaseException:  # cancelled from outside
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    failed = next((t for t in tasks if t.done() and not t.cancelled() and t.exception() is not None), None)
    if failed is None:
        return [task.result() for task in tasks]
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    error = failed.exception()
    assert error is not None
    raise error


class ConsumerLoop:
    def __init__(
        self,
        group: str,
        consumer_factory: Callable[[], BatchConsumer],
        apply: Callable[[Sequence[Message]], Awaitable[None]],
        batch_size: int,
        batch_wait_seconds: float,
        idle_wait_seconds: float = IDLE_WAIT_SECONDS,
        commit_interval_seconds: float = 0.0,
    ) -> None:
        self.group = group
        for reason in SKIP_REASONS:  # at 0 from the start, so the alert's increase() sees the first skip
            SKIPPED_EVENTS.labels(group, reason)
        self._factory = consumer_factory
        self._gaps_counted: set[tuple[str, int, int]] = set()
        self.consumer = self._made_consumer()
        self._apply = apply
        self._batch_size = batch_size
        self._wait = batch_wait_seconds
        self._idle_wait = idle_wait_seconds
        self._idle = False  # the last batch was empty
        self._commit_interval = commit_interval_seconds
        # Applied and not yet committed: the last message of each partition.
        self._uncommitted: dict[tuple[str, int], Message] = {}
        self._committed_at = 0.0

    async def _next_batch(self) -> list[Message]:
        """Up to batch_size messages, gathered for at most batch_wait_seconds once
        the first has come. While idle, the first is awaited alone (for up to
        idle_wait_seconds, returning as soon as it arrives), so a message waits
        no longer than it would have in a batch poll."""
        if not self._idle:
            return await self.consumer.poll_batch(self._batch_size, self._wait)
        first = await self.consumer.poll_batch(1, self._idle_wait)
        if not first or self._batch_size == 1:
            return first
        return first + await self.consumer.poll_batch(self._batch_size - 1, self._wait)

    async def run_once(self) -> int:
        """Consume, apply and commit one batch; returns how many messages it had."""
        messages = await self._next_batch()
        self._idle = not messages
        if messages:
            await self._apply(messages)
            BATCH.labels(self.group).observe(len(messages))
            if not self._commit_interval:
                await self._commit(messages)
                return len(messages)
            for msg in messages:
                self._uncommitted[(str(msg.topic()), int(msg.partition() or 0))] = msg
        now = asyncio.get_running_loop().time()
        if self._uncommitted and (not messages or now - self._committed_at >= self._commit_interval):
            await self._commit(list(self._uncommitted.values()))
            self._uncommitted.clear()
            self._committed_at = now
        return len(messages)

    async def _commit(self, messages: Sequence[Message]) -> None:
        """Commit, and let a commit refused while the group changes hands go: the batch
        is applied, the next commit covers it (offsets are per partition), and if this
        member's partitions moved meanwhile their new owner applies it again, which
        idempotent applies absorb. Any other refusal fails the batch."""
        try:
            await self.consumer.commit(messages)
        except KafkaException as exc:
            error = _kafka_error(exc)
            if error is None or not (error.retriable() or error.code() in MEMBERSHIP_CHANGING):
                raise  # fatal, or one that would refuse every commit (authorization, unknown topic)
            COMMIT_FAILURES.labels(self.group).inc()
            log.warning("commit failed; the batch stays applied: %s", error)

    async def lag(self) -> int:
        return await asyncio.get_running_loop().run_in_executor(None, self.consumer.lag)

    async def drain(self, within_seconds: float) -> int:
        """Run until nothing is left to consume (for tests and tools); returns messages consumed."""
        consumed = 0
        deadline = asyncio.get_running_loop().time() + within_seconds
        while asyncio.get_running_loop().time() < deadline:
            got = await self.run_once()
            consumed += got
            if got == 0 and self.consumer.assignment_ready() and await self.lag() == 0:
                return consumed
        raise TimeoutError(f"{self.group} did not drain in {within_seconds}s")

    async def run_forever(self) -> None:
        lag_due = 0.0
        failures = 0  # batches failed in a row
        while True:
            try:
                await self.run_once()
                failures = 0
                FAILURES.labels(self.group).set(0)
                lag_due = await self._report_lag(lag_due)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # resume from the last committed offsets (logged with its traceback)
                FAILURES.labels(self.group).set(1)
                log.warning("batch failed, re-reading from the last commit: %r", exc, exc_info=True)
                self._uncommitted.clear()  # read and applied again
                # Longer after each failure in a row: a batch that fails because its store is
                # overloaded, re-applied at once, adds its whole load again every time.
                await asyncio.sleep(retry_pause(failures))
                failures += 1
                await self._read_again(exc)
                # Back at the last commit: a group whose batches keep failing shows its lag
                # growing (dashboards, ChirpConsumerLagGrowing), not the value of its last success.
                lag_due = await self._report_lag(lag_due)

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    async def _report_lag(self, due: float) -> float:
        """Set the lag gauge if it is due (not on every batch); returns when it is next due."""
        now = self._now()
        if now < due:
            return due
        try:
            if not self.consumer.assignment_ready():
                return due  # a new client not yet given its partitions would read 0
            LAG.labels(self.group).set(await self.lag())
        except Exception as exc:  # noqa: BLE001 - Kafka may be what fails; the next one tells
            log.debug("could not read the consumer lag: %r", exc)
        return now + LAG_INTERVAL_SECONDS

    async def _read_again(self, failure: Exception) -> None:
        """Back to the last commit: the same client rewound, so the group does not
        rebalance (a client closed and built again leaves and rejoins it, and every
        member pauses for that); a new client when this one failed for good or
        cannot rewind."""
        error = _kafka_error(failure)
        if error is None or not is_fatal(error):
            try:
                await asyncio.get_running_loop().run_in_executor(None, self.consumer.rewind)
                return
            except Exception as exc:  # noqa: BLE001 - e.g. a partition just assigned; a new client will do
                log.warning("could not rewind, building a new client: %r", exc)
        self.consumer.close()
        self.consumer = self._made_consumer()

    def _made_consumer(self) -> BatchConsumer:
        consumer = self._factory()
        consumer.on_reset = self._reset_past_retention
        return consumer

    def _reset_past_retention(self, reset: OffsetReset) -> None:
        """A partition's committed offset was no longer on the broker: the events from it
        to the earliest one kept are never applied (a group stopped for longer than the
        topic's retention, or that far behind). Counted once: a batch that fails before its
        commit goes back to the same offset, and is reset from it again."""
        topic, partition, at, skipped = reset
        if skipped and (topic, partition, at) not in self._gaps_counted:
            self._gaps_counted.add((topic, partition, at))
            where = {"topic": topic, "partition": partition, "offset": at}
            skip_events(self.group, "retention", f"{skipped} events removed before they were read", skipped, where)

    def close(self) -> None:
        if self._uncommitted:  # what was applied since the last commit is not applied again
            try:
                self.consumer.commit_now(list(self._uncommitted.values()))
            except Exception as exc:  # noqa: BLE001 - a restart re-applies them, which is harmless
                log.warning("commit at close failed: %r", exc)
            self._uncommitted.clear()
        self.consumer.close()


def skip_event(group: str, reason: SkipReason, what: str, **context: object) -> None:
    """Log and count an event skipped for good (ChirpConsumerSkippingEvents): applied again
    it would fail the same way and hold back every event after it in its partition, but
    its effect is lost, so someone must look (a producer of a newer schema deployed before
    its consumers, a bug)."""
    skip_events(group, reason, what, 1, context)


def skip_events(group: str, reason: SkipReason, what: str, count: int, context: dict[str, object]) -> None:
    """`skip_event` for `count` events at once (removed by retention before they were read)."""
    log.error("skipping %s", what, extra={"group": group, "reason": reason, **context})
    SKIPPED_EVENTS.labels(group, reason).inc(count)
