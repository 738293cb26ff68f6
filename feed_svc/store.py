"""All CQL of feed_svc: the durable copy of pushed home timelines."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from cassandra.query import PreparedStatement

from common.cql import CqlSession

STATEMENTS = {
    "push": "INSERT INTO home_timeline (user_id, tweet_id, author_id) VALUES (?, ?, ?)",
    "remove": "DELETE FROM home_timeline WHERE user_id = ? AND tweet_id = ?",
    "read": "SELECT tweet_id FROM home_timeline WHERE user_id = ? LIMIT ?",
    "is_celebrity": "SELECT author_id FROM celebrities WHERE shard = 0 AND author_id = ?",
    "celebrities": "SELECT author_id FROM celebrities WHERE shard = 0",
    "add_celebrity": "INSERT INTO celebrities (shard, author_id) VALUES (0, ?)",
    "remove_celebrity": "DELETE FROM celebrities WHERE shard = 0 AND author_id = ?",
}


class TimelineStore:
    def __init__(self, cql: CqlSession, concurrency: int) -> None:
        self._cql = cql
        self._q: dict[str, PreparedStatement] = {}
        self._limit = asyncio.Semaphore(concurrency)

    async def prepare(self) -> None:
        for name, query in STATEMENTS.items():
            self._q[name] = await self._cql.prepare(query)

    async def _run(self, name: str, params: tuple[object, ...]) -> None:
        async with self._limit:
            await self._cql.execute(self._q[name], params)

    async def push(self, user_ids: Sequence[int], tweet_id: int, author_id: int) -> None:
        """One tweet into many timelines (single-partition writes, bounded concurrency)."""
        await asyncio.gather(*(self._run("push", (u, tweet_id, author_id)) for u in user_ids))

    async def push_many(self, user_id: int, tweets: Sequence[tuple[int, int]]) -> None:
        await asyncio.gather(*(self._run("push", (user_id, t, a)) for t, a in tweets))

    async def remove(self, user_ids: Sequence[int], tweet_ids: Sequence[int]) -> None:
        await asyncio.gather(*(self._run("remove", (u, t)) for u in user_ids for t in tweet_ids))

    async def read(self, user_id: int, limit: int) -> list[int]:
        rows = await self._cql.execute(self._q["read"], (user_id, limit))
        return [r.tweet_id for r in rows]

    async def is_celebrity(self, author_id: int) -> bool:
        return bool(await self._cql.execute(self._q["is_celebrity"], (author_id,)))

    async def celebrities(self) -> set[int]:
        return {r.author_id for r in await self._cql.execute(self._q["celebrities"])}

    async def set_celebrity(self, author_id: int, celebrity: bool) -> None:
        await self._cql.execute(self._q["add_celebrity" if celebrity else "remove_celebrity"], (author_id,))
