"""The consume-apply-commit loop every Kafka worker runs.

A batch is handed to `apply`; offsets are committed only after it returns. If
it raises, the consumer is rebuilt and resumes from the last commit, so the
batch is applied again: every `apply` must be idempotent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from confluent_kafka import Message
from prometheus_client import Gauge, Histogram

from common.kafka import BatchConsumer

log = logging.getLogger(__name__)

LAG = Gauge("chirp_consumer_lag_messages", "Messages not yet consumed by this worker.", ["group"])
BATCH = Histogram(
    "chirp_consumer_batch_messages",
    "Messages per consumed batch.",
    ["group"],
    buckets=(1, 10, 50, 100, 250, 500, 1000, 5000),
)
LAG_INTERVAL_SECONDS = 5.0
FAILURES = Gauge("chirp_consumer_failing", "1 while the worker's last batch failed.", ["group"])


class ConsumerLoop:
    def __init__(
        self,
        group: str,
        consumer_factory: Callable[[], BatchConsumer],
        apply: Callable[[Sequence[Message]], Awaitable[None]],
        batch_size: int,
        batch_wait_seconds: float,
    ) -> None:
        self.group = group
        self._factory = consumer_factory
        self.consumer = consumer_factory()
        self._apply = apply
        self._batch_size = batch_size
        self._wait = batch_wait_seconds

    async def run_once(self) -> int:
        """Consume, apply and commit one batch; returns how many messages it had."""
        messages = await self.consumer.poll_batch(self._batch_size, self._wait)
        if messages:
            await self._apply(messages)
            await self.consumer.commit(messages)
            BATCH.labels(self.group).observe(len(messages))
        return len(messages)

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
        while True:
            try:
                await self.run_once()
                FAILURES.labels(self.group).set(0)
                now = asyncio.get_running_loop().time()
                if now >= lag_due:  # not on every batch
                    lag_due = now + LAG_INTERVAL_SECONDS
                    LAG.labels(self.group).set(await self.lag())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # resume from the last committed offsets (logged with its traceback)
                FAILURES.labels(self.group).set(1)
                log.warning("batch failed, re-reading from the last commit: %r", exc, exc_info=True)
                self.consumer.close()
                await asyncio.sleep(1.0)
                self.consumer = self._factory()

    def close(self) -> None:
        self.consumer.close()
