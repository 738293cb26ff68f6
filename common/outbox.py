"""Transactional outbox on the CQL store: an event is written in the same
logged batch as the change it describes, then published to Kafka.

The request path queues the record right away and deletes the outbox row once
the broker has it. A relay in every instance re-publishes rows that are older
than a few seconds (the broker was down, or the process died), so an
acknowledged change always reaches Kafka. Delivery is at least once;
consumers are idempotent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from cassandra.query import PreparedStatement
from confluent_kafka import KafkaError
from prometheus_client import Counter

from common.cql import CqlSession
from common.ids import min_id_at_ms
from common.kafka import AsyncProducer

log = logging.getLogger(__name__)

SHARDS = 8
RELAY_INTERVAL_SECONDS = 1.0
RELAY_MIN_AGE_MS = 5000
RELAY_BATCH = 200

PUBLISHED = Counter("chirp_outbox_published_total", "Outbox events delivered to Kafka.", ["path"])


@dataclass(frozen=True)
class Event:
    event_id: int
    topic: str
    key: int
    payload: dict[str, Any]

    @property
    def shard(self) -> int:
        return self.event_id % SHARDS

    def value(self) -> bytes:
        return json.dumps(self.payload, separators=(",", ":")).encode()

    def key_bytes(self) -> bytes:
        return str(self.key).encode()


class Outbox:
    def __init__(self, cql: CqlSession, producer: AsyncProducer | None) -> None:
        """`producer` may be None for a process that only reads (it publishes nothing)."""
        self._cql = cql
        self._producer = producer
        self._q: dict[str, PreparedStatement] = {}

    async def prepare(self) -> None:
        for name, query in {
            "insert": "INSERT INTO outbox (shard, event_id, topic, key, payload) VALUES (?, ?, ?, ?, ?)",
            "delete": "DELETE FROM outbox WHERE shard = ? AND event_id = ?",
            "due": "SELECT event_id, topic, key, payload FROM outbox WHERE shard = ? AND event_id < ? LIMIT ?",
        }.items():
            self._q[name] = await self._cql.prepare(query)

    def insert(self, event: Event) -> tuple[PreparedStatement, tuple[Any, ...]]:
        """The statement to put in the caller's logged batch."""
        return self._q["insert"], (event.shard, event.event_id, event.topic, event.key_bytes(), event.value())

    def publish_soon(self, event: Event) -> None:
        """Fast path after the batch is written; the relay covers any failure."""
        assert self._producer is not None, "this outbox has no producer"
        loop = asyncio.get_running_loop()

        def on_done(err: KafkaError | None) -> None:
            if err is None:
                loop.call_soon_threadsafe(self._forget, event)

        try:
            self._producer.send_nowait(event.topic, event.key_bytes(), event.value(), on_done)
        except Exception as exc:  # noqa: BLE001 - the relay will publish it
            log.warning("outbox fast path failed; the relay will publish: %r", exc)

    def _forget(self, event: Event) -> None:
        PUBLISHED.labels("fast").inc()
        task = asyncio.create_task(self._cql.execute(self._q["delete"], (event.shard, event.event_id)))
        task.add_done_callback(_log_failure)

    async def relay_once(self, min_age_ms: int = RELAY_MIN_AGE_MS) -> int:
        """Publish every due row of every shard; returns how many were published."""
        assert self._producer is not None, "this outbox has no producer"
        before = min_id_at_ms(int(time.time() * 1000) - min_age_ms)
        published = 0
        for shard in range(SHARDS):
            rows = await self._cql.execute(self._q["due"], (shard, before, RELAY_BATCH))
            for row in rows:
                await self._producer.send(row.topic, bytes(row.key), bytes(row.payload))
                await self._cql.execute(self._q["delete"], (shard, row.event_id))
                PUBLISHED.labels("relay").inc()
                published += 1
        return published

    async def relay_forever(self) -> None:
        while True:
            try:
                count = await self.relay_once()
                if count:
                    log.info("outbox relayed events", extra={"count": count})
            except Exception as exc:  # noqa: BLE001 - keep relaying once the dependency is back
                log.warning("outbox relay failed, will retry: %r", exc)
            await asyncio.sleep(RELAY_INTERVAL_SECONDS)


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("outbox delete failed (the row will be re-published): %r", task.exception())
