"""All CQL of feed_svc: the durable copy of pushed home timelines, and the
celebrity registry (authors pulled at read time).

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
from collections.abc import Sequence

from cassandra.query import BatchType, PreparedStatement

from common.cql import Batch, CqlSession, prepare_all

CELEBRITY_SHARDS = 16
# Timeline rows per unlogged batch when one tweet goes to many timelines: one
# request instead of one each, since the driver's per-request work in the
# fan-out worker cost more than the writes themselves (see push).
ROWS_PER_BATCH = 50
_GOLDEN = 0x9E3779B97F4A7C15  # 2^64 / golden ratio: Fibonacci hashing
_MASK64 = (1 << 64) - 1


def celebrity_shard(author_id: int) -> int:
    """The registry partition of an author. Not `author_id % 16`: the low bits of a
    Snowflake id are the per-millisecond sequence, almost always 0, so that would
    put nearly every author in shard 0. The top bits of the id times a 64-bit odd
    constant depend on all of its bits."""
    return ((author_id * _GOLDEN) & _MASK64) * CELEBRITY_SHARDS >> 64


STATEMENTS = {
    "push": "INSERT INTO home_timeline (user_id, tweet_id, author_id) VALUES (?, ?, ?)",
    "remove": "DELETE FROM home_timeline WHERE user_id = ? AND tweet_id = ?",
    "read": "SELECT tweet_id FROM home_timeline WHERE user_id = ? LIMIT ?",
    "is_celebrity": "SELECT author_id FROM celebrities_by_shard WHERE shard = ? AND author_id = ?",
    "celebrities": "SELECT author_id FROM celebrities_by_shard WHERE shard = ?",
    "add_celebrity": "INSERT INTO celebrities_by_shard (shard, author_id) VALUES (?, ?)",
    "remove_celebrity": "DELETE FROM celebrities_by_shard WHERE shard = ? AND author_id = ?",
    # The single-partition table 007 replaced: read and emptied, never written.
    "is_celebrity_old": "SELECT author_id FROM celebrities WHERE shard = 0 AND author_id = ?",
    "celebrities_old": "SELECT author_id FROM celebrities WHERE shard = 0",
    "remove_celebrity_old": "DELETE FROM celebrities WHERE shard = 0 AND author_id = ?",
}


class TimelineStore:
    def __init__(self, cql: CqlSession, concurrency: int) -> None:
        self._cql = cql
        self._q: dict[str, PreparedStatement] = {}
        self._limit = asyncio.Semaphore(concurrency)

    async def prepare(self) -> None:
        self._q = await prepare_all(self._cql, STATEMENTS)

    async def _run_batch(self, name: str, rows: Sequence[tuple[object, ...]]) -> None:
        batch = Batch(BatchType.UNLOGGED)  # no batchlog: each row is idempotent and retried as a whole
        for params in rows:
            batch.add(self._q[name], params)
        async with self._limit:
            await self._cql.execute(batch)

    async def push(self, user_ids: Sequence[int], tweet_id: int, author_id: int) -> None:
        """One tweet into many timelines, ROWS_PER_BATCH rows per request, bounded concurrency.

        Unlogged multi-partition batches: the coordinator forwards each row to its
        replicas, an extra hop on a cluster bought back many times over in the
        worker's CPU (measured in the issue 15 report)."""
        rows = [(u, tweet_id, author_id) for u in user_ids]
        await asyncio.gather(
            *(self._run_batch("push", rows[i : i + ROWS_PER_BATCH]) for i in range(0, len(rows), ROWS_PER_BATCH))
        )

    async def push_many(self, user_id: int, tweets: Sequence[tuple[int, int]]) -> None:
        """Many tweets into one timeline: one partition, one batch."""
        if tweets:
            await self._run_batch("push", [(user_id, t, a) for t, a in tweets])

    async def remove(self, user_ids: Sequence[int], tweet_ids: Sequence[int]) -> None:
        rows = [(u, t) for u in user_ids for t in tweet_ids]
        await asyncio.gather(
            *(self._run_batch("remove", rows[i : i + ROWS_PER_BATCH]) for i in range(0, len(rows), ROWS_PER_BATCH))
        )

    async def read(self, user_id: int, limit: int) -> list[int]:
        rows = await self._cql.execute(self._q["read"], (user_id, limit))
        return [r.tweet_id for r in rows]

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

    async def set_celebrity(self, author_id: int, celebrity: bool) -> None:
        shard = celebrity_shard(author_id)
        if not celebrity:
            await self._cql.execute(self._q["remove_celebrity"], (shard, author_id))
            await self._cql.execute(self._q["remove_celebrity_old"], (author_id,))
            return
        # Written before the old row goes, so a concurrent load never misses the author.
        await self._cql.execute(self._q["add_celebrity"], (shard, author_id))
        # Marks repeat at every celebrity tweet: delete only a row that is there, or
        # each would leave a tombstone in the partition every registry load reads.
        if await self._cql.execute(self._q["is_celebrity_old"], (author_id,)):
            await self._cql.execute(self._q["remove_celebrity_old"], (author_id,))
