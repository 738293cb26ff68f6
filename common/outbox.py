"""Transactional outbox: an event is written in the same logged batch as the
change it describes, then published to Kafka, at least once (consumers are
idempotent). The CQL is in common/outbox_store.py; this module holds the rules.

Fast path: once the batch is written, the request queues the record, and when
the broker has it the row is marked published (an UPDATE of one column: no
tombstone). A send that fails is kept by the writing process, which sends it
again itself at once (its relay loop is woken) and then every interval while
Kafka refuses it. Rows are never deleted; they expire by the table's TTL (2
days, TimeWindowCompactionStrategy, so whole SSTables are dropped).

Relay: events live in partitions of (shard, minute of the id), 32 shards. Each
shard is relayed by one process at a time, holding a lease (a lightweight
transaction with a TTL of 120 s, renewed every ~40 s; a process that dies loses
its leases within 120 s and the others share them out, each taking at most its
fair share of the shards). Per shard the holder keeps
- a cursor in memory: every event up to it is published. Each pass (every 2 s
  while passes find unpublished events, backing off to every 40 s while they
  find none, which is nearly always: only a crashed writer leaves any) it
  reads the shard's ids and flags from the cursor up to now - min_age (5 s,
  the fast path's chance), only when the shard's head (highest id written) is
  past the cursor; sends the unpublished ones together, awaits every delivery,
  marks them, and moves the cursor to just before the first failure;
- a durable checkpoint, saved with the lease renewal (so only the holder can move
  it): every sweep (due every 30 s, so at every idle pass, about 40 s) the
  range from the checkpoint to min(cursor, now - settle) is read once more, for
  a write that landed late (a batch replayed from the batchlog; settle is 60 s),
  and the checkpoint moves to its end. A new holder starts from the checkpoint.
Reads never meet tombstones: nothing is deleted and the range read is at most
minutes old (hours after an outage of every relay), never near the TTL.

Cost at 10x today's write rate. Today's peak is about 250 events/s (posts,
deletes, follows; likes do not use the outbox), so 2,500 events/s:
- partitions: 2,500 / 32 shards = 78 events/s per shard, 4,700 rows (about
  1.4 MB at ~300 B a row) per (shard, minute) partition; 32 partitions take the
  writes at any time (8 before, and in fact 1: ids made at low rates all have
  sequence 0, so `id % 8` put every event in shard 0). A partition reaches
  100,000 rows at 53,000 events/s: raise SHARDS (and move the relay state) first.
- writes: per event one row and one head cell in the caller's batch (006 had a
  row and a minute-index row), one published mark (006 had a delete). Marks
  are gathered for 0.1 s and sent as unlogged batches of up to 10 partitions,
  one request each: the request, not the mark, is what costs (one statement per
  mark cost the writer 1.3 ms of driver CPU per post, batches of five 0.4 ms).
  One statement per partition was measured before and did not help at 100
  events/s per process: a second's marks fall in ~30 of the 32 shards anyway.
- relay reads: each event's id and flag are read twice (fresh pass, sweep) and
  payloads only of events to send: at 2,500 events/s the simulation in
  tests/unit/test_outbox_relay.py counts 23 relay statements/s in all (18.5
  range reads, 2 head reads, 2.7 for leases) besides the 2,500 marks/s.
- idle: per relay process, every 40-40.5 s, one pass: one head read and the
  lease cycle (one read of the lease rows, one of the relay list, one heartbeat
  and one conditional batch): about 0.12 statements/s, 0.5/s for the 4 relaying
  processes of the default stack (1.0/s with a pass and a lease cycle every
  20-20.5 s, 2.0/s every 10-10.5 s, 3.3/s every 5-6 s, 4.7/s with a pass every
  2 s, 31/s before that), 0.1/s of them lightweight transactions, as the same
  tests count. On an idle Cassandra each statement costs some 3 ms of CPU: its
  request threads spin after every request, about 120 thread runs for a read
  and 185 for a lightweight transaction whose condition fails (stop 38). Halving
  the cycle from 10 s took Cassandra about 0.4 points of a core lower and the
  four relaying processes about 0.25 (alternated A/B, docs/BENCHMARKS.md, stop
  36).

Orphans (acknowledged, never delivered, and the writer gone) are published
within about 46 s when another live relay holds their shard (min_age 5 s
plus one idle pass gap of up to 40.5 s: passes wait at most until the next
lease cycle), and within about 161 s when the dead writer held the lease itself
(the lease runs out 120 s after its last renewal, a survivor takes the shard at
its next lease cycle, 40-40.5 s, and relays it in that pass; 201 s when two
survivors reached for the same shard and one more cycle is needed). A writer
stopped in order hands its leases over at once (`release_shards`); one that
crashed after its fast path had also failed is rare, and its events are late,
never lost. Each halving of the cycle costs every idle relay two reads, a
heartbeat write and a lightweight transaction more per cycle.

What the pre-006 `outbox` and the 006 `outbox_events` tables still hold is
published by whoever leases the LEGACY pseudo-shard, until they have been empty
for LEGACY_QUIET (so a rolling deploy's last old process is covered); then a
marker is saved and nobody reads them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import random
import secrets
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cassandra.query import BatchStatement
from confluent_kafka import KafkaError
from prometheus_client import Counter, Gauge

from common.cql import CqlSession
from common.ids import id_time_ms, min_id_at_ms
from common.outbox_store import SHARDS, LegacyEvent, OutboxStore, Scan, ShardRow, StoredEvent, minute_of, shard_of

log = logging.getLogger(__name__)

__all__ = ["SHARDS", "Event", "Outbox", "RelaySettings", "minute_of"]

# Fast-path deliveries whose marks are written together (ten at 100 posts/s per
# process). Nothing waits for a mark but the relay, which leaves events younger
# than min_age_ms (5 s) to the fast path.
MARK_WINDOW_SECONDS = 0.1
LEGACY = -1  # the pseudo-shard whose holder drains the pre-v3 tables
LEGACY_DONE = 1  # its checkpoint once they are drained

PUBLISHED = Counter("chirp_outbox_published_total", "Outbox events delivered to Kafka.", ["path"])
OLDEST_UNPUBLISHED = Gauge(
    "chirp_outbox_oldest_unpublished_seconds",
    "Age of the oldest event the relay has not yet got to Kafka, per shard this process relays (0: none due).",
    ["shard"],
)
SHARDS_HELD = Gauge("chirp_outbox_relay_shards", "Outbox shards this process relays (leases held).")


@dataclass(frozen=True)
class RelaySettings:
    interval_seconds: float = 2.0  # between passes while they find work (or a fast-path send failed)
    # A fast-path failure wakes the loop at once, but woken passes stay this far apart:
    # while Kafka is down every post fails its fast path.
    wake_gap_seconds: float = 0.5
    # The longest gap between passes while they find nothing. A pass also renews
    # the leases, so passes come at least every lease_renew_seconds anyway.
    idle_interval_seconds: float = 40.0
    min_age_ms: int = 5_000  # the fast path's chance before the relay sends an event
    settle_ms: int = 60_000  # a write landing later than this after its id was made is the fast path's alone
    sweep_seconds: float = 30.0
    # Every lease cycle is four statements, one a lightweight transaction, in every
    # relaying process: renewing every 5 s (TTL 15 s), then every 10 s (TTL 30 s),
    # then every 20 s (TTL 60 s), was most of an idle stack's CQL traffic. What a longer lease costs is only how
    # late an orphan of a crashed writer that held its own shard is published (see
    # the module docstring).
    lease_ttl_seconds: int = 120
    # A third of the lease: one renewal may fail and the next (40 s later, plus
    # the pass itself) still comes before lease_ttl - lease_margin_ms = 115 s.
    lease_renew_seconds: float = 40.0
    lease_margin_ms: int = 5_000  # stop relaying this long before the store lets the lease go
    batch: int = 500  # ids read, and events sent together, per step
    # Per shard and pass, so one shard's backlog does not hold up the others and
    # a pass stays far shorter than a lease (8 shards x 2,000 events per pass
    # and process: a backlog drains at several thousand events/s per process).
    steps_per_pass: int = 4
    new_shard_lookback_ms: int = 3_600_000  # where a shard with no checkpoint yet starts
    retention_ms: int = 172_800_000  # the table's default_time_to_live: older rows are gone
    legacy_interval_seconds: float = 30.0
    legacy_quiet_ms: int = 600_000
    redo_limit: int = 10_000  # fast-path failures this process retries itself; past it the relay finds them


@dataclass
class IdleBackoff:
    """Seconds until the next relay pass: `busy` after a pass that found work,
    doubling with each pass that found none, up to `idle`."""

    busy: float
    idle: float
    current: float = 0.0

    def after(self, found_work: bool) -> float:
        if found_work or self.current <= 0:
            self.current = self.busy
        else:
            self.current = min(max(self.idle, self.busy), self.current * 2)
        return self.current


class OutboxStorage(Protocol):
    """What the outbox needs from its store (OutboxStore, or a fake in tests)."""

    async def prepare(self) -> None: ...
    def add_to(self, batch: Any, event_id: int, topic: str, key: bytes, payload: bytes) -> None: ...
    async def mark_published(self, event_ids: Iterable[int]) -> None: ...
    async def heads(self, shards: Sequence[int]) -> dict[int, int]: ...
    async def scan(self, shard: int, after: int, through: int, limit: int) -> Scan: ...
    async def load(self, shard: int, event_ids: Sequence[int]) -> list[StoredEvent]: ...
    async def shard_rows(self) -> list[ShardRow]: ...
    async def relays(self) -> list[str]: ...
    async def heartbeat(self, relay: str, ttl_seconds: int) -> None: ...
    async def acquire(self, owner: str, shards: Sequence[int], ttl_seconds: int) -> bool: ...
    async def renew(
        self,
        owner: str,
        keep: Sequence[int],
        release: Sequence[int],
        checkpoints: Mapping[int, int],
        ttl_seconds: int,
    ) -> dict[int, str | None] | None: ...
    async def legacy_events(self, limit: int) -> list[LegacyEvent]: ...
    async def forget_legacy(self, events: Iterable[LegacyEvent]) -> None: ...


class EventProducer(Protocol):
    async def send(self, topic: str, key: bytes, value: bytes) -> None: ...
    def send_nowait(self, topic: str, key: bytes, value: bytes, on_done: Any) -> None: ...


@dataclass(frozen=True)
class Event:
    event_id: int
    topic: str
    key: int
    payload: dict[str, Any]

    @property
    def shard(self) -> int:
        return shard_of(self.event_id)

    def value(self) -> bytes:
        return json.dumps(self.payload, separators=(",", ":")).encode()

    def key_bytes(self) -> bytes:
        return str(self.key).encode()


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Outbox:
    def __init__(
        self,
        cql: CqlSession | OutboxStorage,
        producer: EventProducer | None,
        *,
        settings: RelaySettings | None = None,
        clock_ms: Callable[[], int] = _now_ms,
        relay_id: str | None = None,
    ) -> None:
        """`producer` may be None for a process that only writes events (it publishes nothing)."""
        self._store: OutboxStorage = OutboxStore(cql) if isinstance(cql, CqlSession) else cql
        self._producer = producer
        self._settings = settings or RelaySettings()
        self._relay = (
            _Relay(self._store, producer, self._settings, clock_ms, relay_id or _relay_name()) if producer else None
        )
        self._marking: set[asyncio.Task[None]] = set()
        # Fast-path sends that failed: this process still has them, so it sends
        # them again itself, at once, rather than leaving them to whichever
        # relay holds their shard.
        self._redo: dict[int, Event] = {}
        self._wake = asyncio.Event()
        self._to_mark: list[int] = []  # delivered, their marks not yet sent
        self._mark_due: asyncio.TimerHandle | None = None

    async def prepare(self) -> None:
        await self._store.prepare()

    def add_to(self, batch: BatchStatement, event: Event) -> None:
        """Put the event into the caller's logged batch, so it is stored with the change."""
        self._store.add_to(batch, event.event_id, event.topic, event.key_bytes(), event.value())

    def publish_soon(self, event: Event) -> None:
        """Fast path after the batch is written. A failed send is retried by this
        process's relay loop (woken at once); the relay covers a crash."""
        assert self._producer is not None, "this outbox has no producer"
        loop = asyncio.get_running_loop()

        def on_done(err: KafkaError | None) -> None:  # on the producer's poll thread
            with contextlib.suppress(RuntimeError):  # the loop closed at shutdown: the relay marks it
                if err is None:
                    loop.call_soon_threadsafe(self._delivered, event.event_id)
                else:
                    loop.call_soon_threadsafe(self._failed, event)

        try:
            self._producer.send_nowait(event.topic, event.key_bytes(), event.value(), on_done)
        except Exception as exc:  # noqa: BLE001 - sent again by the relay loop
            log.warning("outbox fast path failed; sending again shortly: %r", exc)
            self._failed(event)

    def _delivered(self, event_id: int) -> None:
        """Marks are gathered for MARK_WINDOW_SECONDS and written together: a
        request per mark cost more than the rest of the fast path. A crash in the
        window leaves the events unmarked, and the relay sends them again (at
        least once, as after any crash)."""
        PUBLISHED.labels("fast").inc()
        self._to_mark.append(event_id)
        if self._mark_due is None:
            self._mark_due = asyncio.get_running_loop().call_later(MARK_WINDOW_SECONDS, self._mark_gathered)

    def _mark_gathered(self) -> None:
        self._mark_due = None
        ids, self._to_mark = self._to_mark, []
        if ids:
            self._mark_soon(ids)

    def _failed(self, event: Event) -> None:
        if len(self._redo) < self._settings.redo_limit:
            self._redo[event.event_id] = event
        self._wake.set()

    def _mark_soon(self, event_ids: list[int]) -> None:
        task = asyncio.create_task(self._store.mark_published(event_ids))
        self._marking.add(task)
        task.add_done_callback(self._marked)

    def _marked(self, task: asyncio.Task[None]) -> None:
        self._marking.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("outbox mark failed (the relay will publish the event again): %r", task.exception())

    async def relay_once(self, min_age_ms: int | None = None) -> int:
        """One relay pass over the shards this process leases; returns how many events it published."""
        assert self._relay is not None, "this outbox has no producer"
        return await self._relay.run_pass(self._settings.min_age_ms if min_age_ms is None else min_age_ms)

    async def wait_marked(self) -> None:
        """Until the marks of fast-path deliveries so far are written (before closing the CQL session)."""
        # Reports a closing producer's flush just handed to the loop (call_soon_threadsafe)
        # run first, or their marks are written after the session closed, and fail.
        await asyncio.sleep(0)
        if self._mark_due is not None:
            self._mark_due.cancel()
            self._mark_gathered()
        if self._marking:
            await asyncio.gather(*self._marking, return_exceptions=True)

    async def release_shards(self) -> None:
        """Give up every lease now (saving the checkpoints), rather than letting them expire."""
        if self._relay is not None:
            await self._relay.release_all()

    def relayed_shards(self) -> list[int]:
        """Shards (LEGACY included) whose lease this process holds and may still use."""
        return self._relay.usable_shards() if self._relay else []

    async def send_failed(self) -> int:
        """Send again what the fast path failed to deliver; returns how many the broker took."""
        assert self._relay is not None, "this outbox has no producer"
        events = list(self._redo.values())[: self._settings.batch]
        if not events:
            return 0
        sent = await self._relay.send_all([_stored(e) for e in events])
        delivered = [e.event_id for e, ok in zip(events, sent, strict=True) if ok]
        for event_id in delivered:
            del self._redo[event_id]
        if delivered:
            PUBLISHED.labels("fast").inc(len(delivered))
            self._mark_soon(delivered)
        return len(delivered)

    async def relay_forever(self) -> None:
        """Relay passes, quick while they find work, backing off to
        idle_interval_seconds while they find none; a fast-path failure wakes it at once."""
        relay = self._relay
        assert relay is not None, "this outbox has no producer"
        backoff = IdleBackoff(self._settings.interval_seconds, self._settings.idle_interval_seconds)
        try:
            while True:
                self._wake.clear()
                started = time.monotonic()
                found = True  # a failing pass is tried again at the busy pace
                try:
                    count = await self.send_failed()
                    count += await self.relay_once()
                    found = count > 0 or relay.found > 0 or bool(self._redo)
                    if count:
                        log.info("outbox relayed events", extra={"count": count})
                except Exception as exc:  # noqa: BLE001 - keep relaying once the dependency is back
                    log.warning("outbox relay failed, will retry: %r", exc)
                # Jitter keeps the processes' lease cycles from meeting on the one partition;
                # the leases are renewed on time however long the passes are apart.
                due = relay.seconds_to_lease_cycle() + random.uniform(0.0, 0.5)
                delay = min(backoff.after(found) * random.uniform(0.8, 1.2), due)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
                gap = self._settings.wake_gap_seconds - (time.monotonic() - started)
                if gap > 0:
                    await asyncio.sleep(gap)
        finally:
            # Hand the shards over now rather than when the leases expire.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.release_shards(), 2.0)


@dataclass
class _Lease:
    until_ms: int  # our own, early, end of the lease
    checkpoint: int  # published through this id, and nothing later than SETTLE can still land below it
    cursor: int  # published through this id (in memory only)
    saved: int | None  # the checkpoint as the store has it


class _Relay:
    def __init__(
        self,
        store: OutboxStorage,
        producer: EventProducer,
        settings: RelaySettings,
        clock_ms: Callable[[], int],
        relay_id: str,
    ) -> None:
        self._store = store
        self._producer = producer
        self._s = settings
        self._clock = clock_ms
        self.relay_id = relay_id
        self._leases: dict[int, _Lease] = {}
        self._next_cycle_ms = 0
        self._next_sweep_ms = 0
        self._next_legacy_ms = 0
        self._legacy_quiet_since_ms = 0
        self._legacy_finished = False  # drained and quiet: the next renewal saves the marker
        self._rng = random.Random(relay_id)
        self._send_error: Exception | None = None  # logged once per pass, not once per shard
        self.found = 0  # unpublished events the last pass came upon (sent or not)

    def usable_shards(self) -> list[int]:
        now = self._clock()
        return sorted(s for s, lease in self._leases.items() if lease.until_ms > now)

    def seconds_to_lease_cycle(self) -> float:
        """Until the pass that renews the leases is due (a little after, so it is)."""
        return max(0.0, (self._next_cycle_ms - self._clock()) / 1000) + 0.01

    async def run_pass(self, min_age_ms: int) -> int:
        now = self._clock()
        self.found = 0
        if now >= self._next_cycle_ms:
            self._next_cycle_ms = now + int(self._s.lease_renew_seconds * 1000)
            await self._lease_cycle(now)
        for shard in [s for s, lease in self._leases.items() if lease.until_ms <= now]:
            self._lose(shard)
        SHARDS_HELD.set(len(self._leases))
        shards = sorted(s for s in self._leases if s != LEGACY)
        published = 0
        if shards:
            sweep = now >= self._next_sweep_ms
            if sweep:
                self._next_sweep_ms = now + int(self._s.sweep_seconds * 1000)
            heads = await self._store.heads(shards)
            results = await asyncio.gather(
                *(self._relay_shard(s, heads.get(s, 0), now, min_age_ms, sweep) for s in shards),
                return_exceptions=True,
            )
            for shard, result in zip(shards, results, strict=True):
                if isinstance(result, BaseException):
                    log.warning("outbox relay of shard %d failed, will retry: %r", shard, result)
                else:
                    published += result
        if LEGACY in self._leases and now >= self._next_legacy_ms:
            self._next_legacy_ms = now + int(self._s.legacy_interval_seconds * 1000)
            published += await self._drain_legacy(now)
        if self._send_error is not None:
            log.warning("outbox relay could not publish, will retry: %r", self._send_error)
            self._send_error = None
        return published

    async def _relay_shard(self, shard: int, head: int, now: int, min_age_ms: int, sweep: bool) -> int:
        lease = self._leases[shard]
        published = 0
        due = min_id_at_ms(now - min_age_ms) - 1
        pending: int | None = None
        if head > lease.cursor and due > lease.cursor:
            lease.cursor, count, pending = await self._publish_range(shard, lease.cursor, due)
            published += count
        elif head <= lease.cursor:  # nothing written past the cursor; a later write below `due` is the sweep's
            lease.cursor = max(lease.cursor, due)
        if sweep:
            settled = min(lease.cursor, min_id_at_ms(now - self._s.settle_ms) - 1)
            if settled > lease.checkpoint and head > lease.checkpoint:
                lease.checkpoint, count, _ = await self._publish_range(shard, lease.checkpoint, settled)
                published += count
            elif settled > lease.checkpoint:  # nothing was written past the checkpoint
                lease.checkpoint = settled
        # The first id not yet published (a failed send, or where a backlog
        # stopped this pass); when the fresh path did not run, nothing due is left.
        age_ms = now - id_time_ms(pending) if pending is not None else 0
        OLDEST_UNPUBLISHED.labels(str(shard)).set(max(0, age_ms) / 1000)
        return published

    async def _publish_range(self, shard: int, after: int, through: int) -> tuple[int, int, int | None]:
        """Publish what is unpublished in (after, through].

        Returns the id through which everything is now published, how many were
        sent, and the first id still to do (None when the range is done).
        """
        count = 0
        for _ in range(self._s.steps_per_pass):
            scan = await self._store.scan(shard, after, through, self._s.batch)
            pending = [event_id for event_id, published in scan.rows if not published]
            self.found += len(pending)
            if pending:
                events = await self._store.load(shard, pending)
                sent = await self.send_all(events)
                delivered = [e.event_id for e, ok in zip(events, sent, strict=True) if ok]
                if delivered:
                    await self._store.mark_published(delivered)
                    PUBLISHED.labels("relay").inc(len(delivered))
                    count += len(delivered)
                failed = next((e.event_id for e, ok in zip(events, sent, strict=True) if not ok), None)
                if failed is not None:
                    return failed - 1, count, failed
            after = scan.through
            if after >= through:
                return after, count, None
        return after, count, after + 1

    async def send_all(self, events: Sequence[StoredEvent]) -> list[bool]:
        """Produce all, then await every delivery; which ones the broker has.

        The first is sent alone: when Kafka is down that one failure stands for
        the batch, instead of hundreds of sends each probing the brokers.
        """
        if not events:
            return []
        first, *rest = events
        try:
            await self._producer.send(first.topic, first.key, first.payload)
        except Exception as exc:  # noqa: BLE001 - retried on the next pass
            self._send_error = exc
            return [False] * len(events)
        results = await asyncio.gather(
            *(self._producer.send(e.topic, e.key, e.payload) for e in rest), return_exceptions=True
        )
        return [True] + [not isinstance(r, BaseException) for r in results]

    async def _drain_legacy(self, now: int) -> int:
        published = 0
        found = False
        while rows := await self._store.legacy_events(self._s.batch):
            found = True
            self.found += len(rows)
            sent = await self.send_all([r.event for r in rows])
            delivered = [r for r, ok in zip(rows, sent, strict=True) if ok]
            await self._store.forget_legacy(delivered)
            PUBLISHED.labels("relay").inc(len(delivered))
            published += len(delivered)
            if len(delivered) < len(rows) or len(rows) < self._s.batch:
                break
        if found:
            self._legacy_quiet_since_ms = now
        elif now - self._legacy_quiet_since_ms >= self._s.legacy_quiet_ms:
            self._legacy_finished = True
        return published

    async def _lease_cycle(self, now: int) -> None:
        rows = {r.shard: r for r in await self._store.shard_rows()}
        relays = {*await self._store.relays(), self.relay_id}
        await self._store.heartbeat(self.relay_id, self._s.lease_ttl_seconds)
        legacy_row = rows.get(LEGACY)
        legacy_done = legacy_row is not None and legacy_row.checkpoint == LEGACY_DONE
        wanted = list(range(SHARDS)) + ([] if legacy_done else [LEGACY])
        for shard in list(self._leases):
            row = rows.get(shard)
            if row is None or row.owner != self.relay_id:
                self._lose(shard)  # expired, or another relay holds it now
        fair = math.ceil(len(wanted) / len(relays))
        held = sorted(self._leases)
        excess = held[fair:] if len(held) > fair else []
        if self._legacy_finished and LEGACY in self._leases and LEGACY not in excess:
            excess.append(LEGACY)
        if held:
            await self._renew([s for s in held if s not in excess], excess, now)
        want = fair - len(self._leases)
        free = [s for s in wanted if s not in self._leases and (s not in rows or rows[s].owner is None)]
        if want > 0 and free:
            pick = sorted(self._rng.sample(free, min(want, len(free))))
            if await self._store.acquire(self.relay_id, pick, self._s.lease_ttl_seconds):
                for shard in pick:
                    self._leases[shard] = self._new_lease(shard, rows.get(shard), now)

    async def _renew(self, keep: list[int], release: list[int], now: int) -> None:
        for _attempt in range(2):
            checkpoints = {s: lease.checkpoint for s, lease in self._leases.items() if lease.checkpoint != lease.saved}
            checkpoints = {s: c for s, c in checkpoints.items() if s != LEGACY}
            if LEGACY in release and self._legacy_finished:
                checkpoints[LEGACY] = LEGACY_DONE
            holders = await self._store.renew(self.relay_id, keep, release, checkpoints, self._s.lease_ttl_seconds)
            if holders is None:
                for shard in keep:
                    lease = self._leases[shard]
                    lease.until_ms = now + self._s.lease_ttl_seconds * 1000 - self._s.lease_margin_ms
                    lease.saved = lease.checkpoint
                for shard in release:
                    self._lose(shard)
                return
            # Some lease went to another relay: drop those, renew the rest.
            for shard, holder in holders.items():
                if holder != self.relay_id:
                    self._lose(shard)
            keep = [s for s in keep if s in self._leases]
            release = [s for s in release if s in self._leases]
            if not keep and not release:
                return
        for shard in [*keep, *release]:
            self._lose(shard)  # could not renew twice in a row: let the leases run out

    def _new_lease(self, shard: int, row: ShardRow | None, now: int) -> _Lease:
        saved = row.checkpoint if row is not None else None
        start = saved if saved is not None else min_id_at_ms(now - self._s.new_shard_lookback_ms) - 1
        start = max(start, min_id_at_ms(now - self._s.retention_ms) - 1)
        until = now + self._s.lease_ttl_seconds * 1000 - self._s.lease_margin_ms
        if shard == LEGACY:
            self._legacy_quiet_since_ms = now
            self._next_legacy_ms = 0
        return _Lease(until_ms=until, checkpoint=start, cursor=start, saved=saved)

    def _lose(self, shard: int) -> None:
        if self._leases.pop(shard, None) is not None and shard != LEGACY:
            with contextlib.suppress(KeyError):
                OLDEST_UNPUBLISHED.remove(str(shard))
        if shard == LEGACY:
            self._legacy_finished = False

    async def release_all(self) -> None:
        if self._leases:
            await self._renew([], list(self._leases), self._clock())
        # Gone from the relay list in a second, so the others' fair share counts without us.
        await self._store.heartbeat(self.relay_id, 1)


def _stored(event: Event) -> StoredEvent:
    return StoredEvent(event.event_id, event.topic, event.key_bytes(), event.value())


def _relay_name() -> str:
    """Unique per process, and readable in the lease table."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
