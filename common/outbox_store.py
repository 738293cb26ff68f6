"""All CQL of the outbox (tables in infra/cql/008_outbox_v3.cql; the rules in
common/outbox.py).

Layout: an event lives in partition (shard, minute of its id), clustered by id.
Rows are never deleted: `published` is set by an update and rows expire by the
table's TTL. Per shard, `outbox_v3_heads` holds the highest event id written,
`outbox_v3_shards` the relay lease and the published-through checkpoint, and
`outbox_v3_relays` lists the live relays (for sharing the shards out).

The pre-006 `outbox` table and the 006 `outbox_events`/`outbox_minutes` tables
are read only to publish what was left in them (legacy_*).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cassandra.query import BatchStatement, BatchType, PreparedStatement

from common.cql import CqlSession, in_lists, prepare_all
from common.ids import id_time_ms, min_id_at_ms

SHARD_BITS = 5
SHARDS = 1 << SHARD_BITS
MINUTE_MS = 60_000
RING = 0  # the one partition of outbox_v3_shards and outbox_v3_relays
MAX_MINUTES_PER_SCAN = 60  # a scan after a long stop goes on in the next call
LEGACY_SHARDS = 8  # shards of the pre-006 and 006 tables
# Partitions per unlogged batch of published marks: Cassandra warns above 10
# (unlogged_batch_across_partitions_warn_threshold).
MARK_PARTITIONS = 10
_MASK64 = (1 << 64) - 1
_FIBONACCI = 0x9E3779B97F4A7C15


def shard_of(event_id: int) -> int:
    """The event's shard: a multiplicative hash of the whole id.

    Not `event_id % SHARDS`: at low rates every id has sequence 0, so its low
    bits are all zero and a modulo put every event in shard 0.
    """
    return ((event_id * _FIBONACCI) & _MASK64) >> (64 - SHARD_BITS)


def minute_of(event_id: int) -> int:
    """The partition (with the shard) an event lives in: its id's minute."""
    return id_time_ms(event_id) // MINUTE_MS


@dataclass(frozen=True)
class StoredEvent:
    event_id: int
    topic: str
    key: bytes
    payload: bytes


@dataclass(frozen=True)
class Scan:
    """Ids and published flags in id order, and the id through which the range was read."""

    rows: list[tuple[int, bool]]
    through: int


@dataclass(frozen=True)
class ShardRow:
    """A shard's lease holder (None when free) and published-through checkpoint (None if never set)."""

    shard: int
    owner: str | None
    checkpoint: int | None


@dataclass(frozen=True)
class LegacyEvent:
    """A row left in a pre-v3 table; `minute` is None for the pre-006 `outbox`."""

    shard: int
    minute: int | None
    event: StoredEvent


STATEMENTS = {
    "insert": "INSERT INTO outbox_v3 (shard, minute, event_id, topic, key, payload) VALUES (?, ?, ?, ?, ?, ?)",
    # The id's own time as the write time: the highest id wins even when
    # writers' clocks disagree (equal times go to the larger value).
    "head": "UPDATE outbox_v3_heads USING TIMESTAMP ? SET head = ? WHERE shard = ?",
    "mark": "UPDATE outbox_v3 SET published = true WHERE shard = ? AND minute = ? AND event_id = ?",
    "heads": "SELECT shard, head FROM outbox_v3_heads WHERE shard IN ?",
    "scan": "SELECT event_id, published FROM outbox_v3 "
    "WHERE shard = ? AND minute = ? AND event_id > ? AND event_id <= ? LIMIT ?",
    "load": "SELECT event_id, topic, key, payload FROM outbox_v3 WHERE shard = ? AND minute = ? AND event_id IN ?",
    "all_in_minute": "SELECT event_id, topic, key, payload, published FROM outbox_v3 WHERE shard = ? AND minute = ?",
    "shards": "SELECT shard, owner, checkpoint FROM outbox_v3_shards WHERE ring = ?",
    "relays": "SELECT relay FROM outbox_v3_relays WHERE ring = ?",
    "heartbeat": "INSERT INTO outbox_v3_relays (ring, relay) VALUES (?, ?) USING TTL ?",
    "acquire": "UPDATE outbox_v3_shards USING TTL ? SET owner = ? WHERE ring = ? AND shard = ? IF owner = null",
    "renew": "UPDATE outbox_v3_shards USING TTL ? SET owner = ? WHERE ring = ? AND shard = ? IF owner = ?",
    "release": "UPDATE outbox_v3_shards SET owner = null WHERE ring = ? AND shard = ? IF owner = ?",
    # Not under the lease's TTL: the checkpoint outlives every holder.
    "checkpoint": "UPDATE outbox_v3_shards SET checkpoint = ? WHERE ring = ? AND shard = ?",
    "legacy_rows": "SELECT shard, event_id, topic, key, payload FROM outbox WHERE shard IN ? LIMIT ?",
    "legacy_delete": "DELETE FROM outbox WHERE shard = ? AND event_id = ?",
    "legacy_minutes": "SELECT shard, minute FROM outbox_minutes WHERE shard IN ?",
    "legacy_minute_rows": "SELECT event_id, topic, key, payload FROM outbox_events "
    "WHERE shard = ? AND minute = ? LIMIT ?",
    "legacy_minute_delete": "DELETE FROM outbox_events WHERE shard = ? AND minute = ? AND event_id = ?",
}


class OutboxStore:
    def __init__(self, cql: CqlSession) -> None:
        self._cql = cql
        self._q: dict[str, PreparedStatement] = {}

    async def prepare(self) -> None:
        # CqlSession.prepare marks what is safe to retry (everything here but
        # the lightweight transactions).
        self._q = await prepare_all(self._cql, STATEMENTS)

    # ---- write path ---------------------------------------------------------

    def add_to(self, batch: BatchStatement, event_id: int, topic: str, key: bytes, payload: bytes) -> None:
        """The event's row and its shard's head, into the caller's logged batch."""
        shard = shard_of(event_id)
        batch.add(self._q["insert"], (shard, minute_of(event_id), event_id, topic, key, payload))
        batch.add(self._q["head"], (id_time_ms(event_id) * 1000, event_id, shard))

    async def mark_published(self, event_ids: Iterable[int]) -> None:
        """One request per MARK_PARTITIONS partitions: an unlogged batch of their marks
        (one mutation per partition), the requests sent together. A request costs the
        client and the coordinator far more than a mark: one statement per mark cost the
        writer 1.3 ms of driver CPU per post, one batch of five marks 0.4 ms each."""
        partitions = list(partitions_of(event_ids).items())
        requests = []
        for start in range(0, len(partitions), MARK_PARTITIONS):
            chunk = partitions[start : start + MARK_PARTITIONS]
            if len(chunk) == 1 and len(chunk[0][1]) == 1:
                (shard, minute), (event_id,) = chunk[0]
                requests.append(self._cql.execute(self._q["mark"], (shard, minute, event_id)))
                continue
            batch = BatchStatement(batch_type=BatchType.UNLOGGED)
            batch.is_idempotent = True
            for (shard, minute), ids in chunk:
                for event_id in ids:
                    batch.add(self._q["mark"], (shard, minute, event_id))
            requests.append(self._cql.execute(batch))
        await asyncio.gather(*requests)

    # ---- relay --------------------------------------------------------------

    async def heads(self, shards: Sequence[int]) -> dict[int, int]:
        """Highest event id written per shard (shards never written are left out)."""
        rows = await self._cql.execute(self._q["heads"], (list(shards),))
        return {r.shard: r.head for r in rows if r.head is not None}

    async def scan(self, shard: int, after: int, through: int, limit: int) -> Scan:
        """The shard's events in (after, through], oldest first (see walk_minutes)."""

        async def read(minute: int, lower: int, want: int) -> list[tuple[int, bool]]:
            rows = await self._cql.execute(self._q["scan"], (shard, minute, lower, through, want))
            return [(r.event_id, bool(r.published)) for r in rows]

        return await walk_minutes(read, after, through, limit)

    async def load(self, shard: int, event_ids: Sequence[int]) -> list[StoredEvent]:
        """The events with these ids, in id order; a row without its body (expired) is left out."""
        by_minute: dict[int, list[int]] = defaultdict(list)
        for event_id in event_ids:
            by_minute[minute_of(event_id)].append(event_id)
        events: list[StoredEvent] = []
        for minute, ids in sorted(by_minute.items()):
            for chunk in in_lists(ids):
                rows = await self._cql.execute(self._q["load"], (shard, minute, chunk))
                events += [_event(r) for r in rows if r.topic is not None]
        return sorted(events, key=lambda e: e.event_id)

    async def unpublished(self, from_ms: int, to_ms: int) -> list[StoredEvent]:
        """Every event made in [from_ms, to_ms] not yet marked published (a full
        walk of SHARDS partitions per minute: for tests and operators, not the relay)."""
        found: list[StoredEvent] = []
        for shard in range(SHARDS):
            for minute in range(from_ms // MINUTE_MS, to_ms // MINUTE_MS + 1):
                rows = await self._cql.execute(self._q["all_in_minute"], (shard, minute))
                found += [_event(r) for r in rows if not r.published and r.topic is not None]
        return sorted(found, key=lambda e: e.event_id)

    # ---- leases -------------------------------------------------------------

    async def shard_rows(self) -> list[ShardRow]:
        rows = await self._cql.execute(self._q["shards"], (RING,))
        return [ShardRow(r.shard, r.owner, r.checkpoint) for r in rows]

    async def relays(self) -> list[str]:
        return [r.relay for r in await self._cql.execute(self._q["relays"], (RING,))]

    async def heartbeat(self, relay: str, ttl_seconds: int) -> None:
        await self._cql.execute(self._q["heartbeat"], (RING, relay, ttl_seconds))

    async def acquire(self, owner: str, shards: Sequence[int], ttl_seconds: int) -> bool:
        """Take every one of these free shards, or none (one conditional batch)."""
        batch = BatchStatement(batch_type=BatchType.UNLOGGED)
        for shard in shards:
            batch.add(self._q["acquire"], (ttl_seconds, owner, RING, shard))
        rows = await self._cql.execute(batch)
        return bool(rows[0][0]) or _all_owned_by(rows, owner, shards)

    async def renew(
        self,
        owner: str,
        keep: Sequence[int],
        release: Sequence[int],
        checkpoints: Mapping[int, int],
        ttl_seconds: int,
    ) -> dict[int, str | None] | None:
        """Extend the leases in `keep`, give up those in `release` and save the
        checkpoints, all only if every one of these shards is still ours (one
        conditional batch, so a relay that lost a lease cannot move its checkpoint).

        Returns None when applied, else the holder of each shard named.
        """
        batch = BatchStatement(batch_type=BatchType.UNLOGGED)
        for shard in keep:
            batch.add(self._q["renew"], (ttl_seconds, owner, RING, shard, owner))
        for shard in release:
            batch.add(self._q["release"], (RING, shard, owner))
        for shard, checkpoint in checkpoints.items():
            batch.add(self._q["checkpoint"], (checkpoint, RING, shard))
        rows = await self._cql.execute(batch)
        if rows[0][0]:
            return None
        holders: dict[int, str | None] = {shard: None for shard in [*keep, *release]}
        holders.update({r.shard: r.owner for r in rows if getattr(r, "shard", None) is not None})
        return holders

    # ---- what earlier layouts left ------------------------------------------

    async def legacy_events(self, limit: int) -> list[LegacyEvent]:
        """Up to `limit` events still in the pre-006 and 006 tables."""
        shards = list(range(LEGACY_SHARDS))
        rows = await self._cql.execute(self._q["legacy_rows"], (shards, limit))
        found = [LegacyEvent(r.shard, None, _event(r)) for r in rows]
        for m in await self._cql.execute(self._q["legacy_minutes"], (shards,)):
            if len(found) >= limit:
                break
            rows = await self._cql.execute(self._q["legacy_minute_rows"], (m.shard, m.minute, limit - len(found)))
            found += [LegacyEvent(m.shard, m.minute, _event(r)) for r in rows]
        return found

    async def forget_legacy(self, events: Iterable[LegacyEvent]) -> None:
        """Delete published legacy rows: few (what the old relays left), and
        nothing reads those tables once they have been empty for a while."""
        for e in events:
            if e.minute is None:
                await self._cql.execute(self._q["legacy_delete"], (e.shard, e.event.event_id))
            else:
                await self._cql.execute(self._q["legacy_minute_delete"], (e.shard, e.minute, e.event.event_id))


async def walk_minutes(
    read: Callable[[int, int, int], Awaitable[list[tuple[int, bool]]]], after: int, through: int, limit: int
) -> Scan:
    """Read ids in (after, through] minute partition by minute, `read(minute,
    after, at most)` being one query, until `limit` rows or MAX_MINUTES_PER_SCAN
    partitions; the result's `through` is where the next scan starts."""
    rows: list[tuple[int, bool]] = []
    minute, last = minute_of(after + 1), minute_of(through)
    walked = 0
    while minute <= last and walked < MAX_MINUTES_PER_SCAN:
        rows += await read(minute, after, limit - len(rows))
        if len(rows) >= limit:
            return Scan(rows, rows[-1][0])
        minute += 1
        walked += 1
    return Scan(rows, through if minute > last else min_id_at_ms(minute * MINUTE_MS) - 1)


def partitions_of(event_ids: Iterable[int]) -> dict[tuple[int, int], list[int]]:
    """Ids grouped by their (shard, minute) partition."""
    by_partition: dict[tuple[int, int], list[int]] = defaultdict(list)
    for event_id in event_ids:
        by_partition[(shard_of(event_id), minute_of(event_id))].append(event_id)
    return by_partition


def _event(row: Any) -> StoredEvent:
    return StoredEvent(event_id=row.event_id, topic=row.topic, key=bytes(row.key), payload=bytes(row.payload))


def _all_owned_by(rows: list[Any], owner: str, shards: Sequence[int]) -> bool:
    """An acquire asked again after one that had in fact applied (its answer lost)
    reads back "not applied" with us as the owner of every shard: that is success."""
    owners = {getattr(r, "shard", None): getattr(r, "owner", None) for r in rows}
    return all(owners.get(shard) == owner for shard in shards)
