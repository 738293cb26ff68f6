"""All CQL of feed_svc: the celebrity registry (authors pulled at read time).
Home timelines have no durable copy (feed_svc/fanout.py says why); the
`home_timeline` table (migration 001) is no longer written or read.

The registry is spread over CELEBRITY_SHARDS partitions of
`celebrities_by_shard` (migration 007), read concurrently, so no partition
takes every load. It replaced `celebrities`, one partition (`shard = 0`);
CQL cannot copy rows in a migration, so until every old row has been
rewritten the store reads both: a mark writes the new table and deletes the
old row (the fan-out worker marks a celebrity again at each of its tweets, so
the old table drains by itself), an unmark deletes both. Once
`SELECT * FROM celebrities LIMIT 1` is empty everywhere, a later release can
drop the old table and the `_old` statements here.
"""

from __future__ import annotations

import asyncio

from cassandra.query import PreparedStatement

from common.cql import CqlSession, prepare_all

CELEBRITY_SHARDS = 16
_GOLDEN = 0x9E3779B97F4A7C15  # 2^64 / golden ratio: Fibonacci hashing
_MASK64 = (1 << 64) - 1


def celebrity_shard(author_id: int) -> int:
    """The registry partition of an author. Not `author_id % 16`: the low bits of a
    Snowflake id are the per-millisecond sequence, almost always 0, so that would
    put nearly every author in shard 0. The top bits of the id times a 64-bit odd
    constant depend on all of its bits."""
    return ((author_id * _GOLDEN) & _MASK64) * CELEBRITY_SHARDS >> 64


STATEMENTS = {
    "is_celebrity": "SELECT author_id FROM celebrities_by_shard WHERE shard = ? AND author_id = ?",
    "celebrities": "SELECT author_id FROM celebrities_by_shard WHERE shard = ?",
    # Lightweight transactions only: fan-out workers on several hosts mark and unmark an
    # author, and a plain write from a host whose clock is ahead outranked a later change
    # from one on time (an unmark outranking a mark left the author neither pulled nor
    # pushed until its next tweet). Ballots order them whatever the clocks. A mark of an
    # author marked already (one at each of its tweets) writes nothing.
    "add_celebrity": "INSERT INTO celebrities_by_shard (shard, author_id) VALUES (?, ?) IF NOT EXISTS",
    "remove_celebrity": "DELETE FROM celebrities_by_shard WHERE shard = ? AND author_id = ? IF EXISTS",
    # The single-partition table 007 replaced: read and emptied, never written.
    "is_celebrity_old": "SELECT author_id FROM celebrities WHERE shard = 0 AND author_id = ?",
    "celebrities_old": "SELECT author_id FROM celebrities WHERE shard = 0",
    "remove_celebrity_old": "DELETE FROM celebrities WHERE shard = 0 AND author_id = ?",
    "backfill_begun": "SELECT author_id FROM celebrity_backfills WHERE author_id = ?",
    "begin_backfill": "INSERT INTO celebrity_backfills (author_id) VALUES (?) IF NOT EXISTS",
    "end_backfill": "DELETE FROM celebrity_backfills WHERE author_id = ? IF EXISTS",
}


class CelebrityStore:
    def __init__(self, cql: CqlSession) -> None:
        self._cql = cql
        self._q: dict[str, PreparedStatement] = {}

    async def prepare(self) -> None:
        self._q = await prepare_all(self._cql, STATEMENTS)

    async def is_celebrity(self, author_id: int) -> bool:
        new, old = await asyncio.gather(
            self._cql.execute(self._q["is_celebrity"], (celebrity_shard(author_id), author_id)),
            self._cql.execute(self._q["is_celebrity_old"], (author_id,)),
        )
        return bool(new) or bool(old)

    async def celebrities(self) -> set[int]:
        """The whole registry: every shard and the old table, read concurrently."""
        reads = [self._cql.execute(self._q["celebrities"], (shard,)) for shard in range(CELEBRITY_SHARDS)]
        pages = await asyncio.gather(*reads, self._cql.execute(self._q["celebrities_old"]))
        return {r.author_id for rows in pages for r in rows}

    async def set_celebrity(self, author_id: int, celebrity: bool, read_first: bool = True) -> None:
        """`read_first=False` for a mark that undoes an unmark which may have failed: a
        quorum read does not see a transaction accepted but not decided (an unmark that
        timed out), which the next transaction on the partition decides first; the mark's
        own transaction then lands after it."""
        shard = celebrity_shard(author_id)
        if not celebrity:
            await self._cql.execute(self._q["remove_celebrity"], (shard, author_id))
            await self._cql.execute(self._q["remove_celebrity_old"], (author_id,))
            return
        # Marks repeat at every celebrity tweet and follow: a mark already there is read,
        # not written again (a transaction each would contend on the shard's partition),
        # and the old row is deleted only when it is there, or each would leave a
        # tombstone in the partition every registry load reads.
        reads = [self._cql.execute(self._q["is_celebrity_old"], (author_id,))]
        if read_first:
            reads.append(self._cql.execute(self._q["is_celebrity"], (shard, author_id)))
        old, *new = await asyncio.gather(*reads)
        if not (new and new[0]):
            # Written before the old row goes, so a concurrent load never misses the author.
            await self._cql.execute(self._q["add_celebrity"], (shard, author_id))
        if old:
            await self._cql.execute(self._q["remove_celebrity_old"], (author_id,))

    async def backfill_begun(self, author_id: int) -> bool:
        """Whether a demotion backfill of the author began and has not finished."""
        return bool(await self._cql.execute(self._q["backfill_begun"], (author_id,)))

    async def begin_backfill(self, author_id: int) -> None:
        await self._cql.execute(self._q["begin_backfill"], (author_id,))

    async def end_backfill(self, author_id: int) -> None:
        await self._cql.execute(self._q["end_backfill"], (author_id,))
