"""The CQL access layer against the real store: results bigger than one driver page."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from common.cql import CqlSession
from common.ids import IdGenerator
from tests.conftest import build_graph

DRIVER_PAGE = 5000  # the driver's default fetch size


async def test_a_user_following_more_than_one_driver_page_gets_every_followee(cql: CqlSession) -> None:
    ids = IdGenerator(902)
    graph = await build_graph(cql, ids)
    follower = ids.next_id()
    followees = sorted(ids.next_id() for _ in range(DRIVER_PAGE + 150))
    insert = await cql.prepare("INSERT INTO follows (follower_id, followee_id, followed_at) VALUES (?, ?, ?)")
    now = datetime.now(UTC)
    limit = asyncio.Semaphore(64)

    async def one(followee: int) -> None:
        async with limit:
            await cql.execute(insert, (follower, followee, now))

    try:
        await asyncio.gather(*(one(f) for f in followees))
        listed = await graph.following_ids(follower)
        assert sorted(f for f, _ in listed) == followees
        assert {count for _, count in listed} == {0}  # none of them has a user_stats row
    finally:
        await cql.execute("DELETE FROM follows WHERE follower_id = %s", (follower,))
