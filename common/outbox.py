"""Transactional outbox on the CQL store: an event is written in the same
logged batch as the change it describes, then published to Kafka.

The request path queues the record right away and deletes the outbox row once
the broker has it. A relay in every instance re-publishes rows that are older
than a few seconds (the broker was down, or the process died), so an
acknowledged change always reaches Kafka. Delivery is at least once;
consumers are idempotent.

Rows live in partitions of (shard, minute of the event id), listed in
outbox_minutes until they are old and empty, so a relay pass reads the few
recent minutes and never the ever-growing run of tombstones that published
(deleted) events leave behind in one partition per shard.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from cassandra.query import BatchStatement, PreparedStatement
from confluent_kafka import KafkaError
from prometheus_client import Counter

from common.cql import CqlSession
from common.ids import id_time_ms, min_id_at_ms
from common.kafka import AsyncProducer

log = logging.getLogger(__name__)

SHARDS = 8
RELAY_INTERVAL_SECONDS = 1.0
RELAY_MIN_AGE_MS = 5000
RELAY_BATCH = 200
MINUTE_MS = 60_000
RELAY_MINUTES = 1000  # minutes per shard looked at per pass (an outage of ~16 h drains over several passes)
SETTLED_MS = 60_000  # a minute this far in the past can get no more writes (writes time out in seconds)

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
        self._legacy_drained = False

    async def prepare(self) -> None:
        for name, query in {
            "insert": "INSERT INTO outbox_events (shard, minute, event_id, topic, key, payload) VALUES (?, ?, ?, ?, ?, ?)",
            "add_minute": "INSERT INTO outbox_minutes (shard, minute) VALUES (?, ?)",
            "delete": "DELETE FROM outbox_events WHERE shard = ? AND minute = ? AND event_id = ?",
            "minutes": "SELECT minute FROM outbox_minutes WHERE shard = ? AND minute <= ? LIMIT ?",
            "drop_minute": "DELETE FROM outbox_minutes WHERE shard = ? AND minute = ?",
            "due": "SELECT event_id, topic, key, payload FROM outbox_events "
            "WHERE shard = ? AND minute = ? AND event_id < ? LIMIT ?",
            "legacy_due": "SELECT event_id, topic, key, payload FROM outbox WHERE shard = ? LIMIT ?",
            "legacy_delete": "DELETE FROM outbox WHERE shard = ? AND event_id = ?",
        }.items():
            self._q[name] = await self._cql.prepare(query)

    def add_to(self, batch: BatchStatement, event: Event) -> None:
        """Put the event into the caller's logged batch, so it is stored with the change."""
        minute = minute_of(event.event_id)
        batch.add(
            self._q["insert"], (event.shard, minute, event.event_id, event.topic, event.key_bytes(), event.value())
        )
        batch.add(self._q["add_minute"], (event.shard, minute))

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
        task = asyncio.create_task(
            self._cql.execute(self._q["delete"], (event.shard, minute_of(event.event_id), event.event_id))
        )
        task.add_done_callback(_log_failure)

    async def relay_once(self, min_age_ms: int = RELAY_MIN_AGE_MS) -> int:
        """Publish every due event of every shard; returns how many were published.

        Due means older than `min_age_ms` (the fast path had its chance). A minute
        that ended more than SETTLED_MS before that and has nothing left is dropped
        from outbox_minutes: no write can still land in it, because each event's
        minute comes from its id, made when the change was written.
        """
        assert self._producer is not None, "this outbox has no producer"
        if not self._legacy_drained:
            await self._drain_legacy()
        due_ms = int(time.time() * 1000) - min_age_ms
        before = min_id_at_ms(due_ms)
        published = 0
        for shard in range(SHARDS):
            minutes = await self._cql.execute(self._q["minutes"], (shard, due_ms // MINUTE_MS, RELAY_MINUTES))
            for row in minutes:
                rows = await self._cql.execute(self._q["due"], (shard, row.minute, before, RELAY_BATCH))
                for event in rows:
                    await self._producer.send(event.topic, bytes(event.key), bytes(event.payload))
                    await self._cql.execute(self._q["delete"], (shard, row.minute, event.event_id))
                    PUBLISHED.labels("relay").inc()
                    published += 1
                if len(rows) < RELAY_BATCH and (row.minute + 1) * MINUTE_MS < due_ms - SETTLED_MS:
                    await self._cql.execute(self._q["drop_minute"], (shard, row.minute))
        return published

    async def _drain_legacy(self) -> None:
        """Publish what is left in the pre-006 outbox table (once per process)."""
        for shard in range(SHARDS):
            while rows := await self._cql.execute(self._q["legacy_due"], (shard, RELAY_BATCH)):
                for row in rows:
                    assert self._producer is not None
                    await self._producer.send(row.topic, bytes(row.key), bytes(row.payload))
                    await self._cql.execute(self._q["legacy_delete"], (shard, row.event_id))
                    PUBLISHED.labels("relay").inc()
        self._legacy_drained = True

    async def relay_forever(self) -> None:
        while True:
            try:
                count = await self.relay_once()
                if count:
                    log.info("outbox relayed events", extra={"count": count})
            except Exception as exc:  # noqa: BLE001 - keep relaying once the dependency is back
                log.warning("outbox relay failed, will retry: %r", exc)
            await asyncio.sleep(RELAY_INTERVAL_SECONDS)


def minute_of(event_id: int) -> int:
    """The outbox partition (with the shard) an event lives in: its id's minute."""
    return id_time_ms(event_id) // MINUTE_MS


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("outbox delete failed (the row will be re-published): %r", task.exception())
