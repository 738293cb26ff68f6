"""feed_svc/store.py's record of demotion backfills begun and not finished, over the
real store (feed_svc/fanout.py `_backfill` relies on it to backfill again after a cut),
and the registry's marks from hosts whose clocks disagree."""

from __future__ import annotations

import time

from common.cql import CqlSession
from common.ids import IdGenerator
from feed_svc.store import CelebrityStore
from infra import topology

IDS = IdGenerator(908)


async def test_a_backfill_is_recorded_as_begun_until_it_is_ended(cql: CqlSession) -> None:
    store = CelebrityStore(cql)
    await store.prepare()
    author, other = IDS.next_id(), IDS.next_id()
    assert not await store.backfill_begun(author)
    await store.begin_backfill(author)
    await store.begin_backfill(author)  # a retry begins again: no error
    assert await store.backfill_begun(author)
    assert not await store.backfill_begun(other)
    await store.end_backfill(author)
    await store.end_backfill(author)  # a retry ends again: no error
    assert not await store.backfill_begun(author)


async def test_a_mark_after_an_unmark_from_a_host_ahead_stands(cql: CqlSession) -> None:
    """Fan-out workers on several hosts mark and unmark an author; one whose clock is
    ahead must not outrank a later change from a host on time (the author would be
    neither pulled nor pushed)."""
    ahead = await CqlSession.connect(topology.cql_hosts(), topology.CQL_PORT, "chirp", 5.0)
    try:
        # Every write of this session is dated 30 s ahead, as from a host whose clock is.
        ahead._cluster.timestamp_generator = lambda: time.time_ns() // 1000 + 30_000_000
        on_time, skewed = CelebrityStore(cql), CelebrityStore(ahead)
        await on_time.prepare()
        await skewed.prepare()
        author = IDS.next_id()
        await on_time.set_celebrity(author, True)
        await skewed.set_celebrity(author, False)
        assert not await on_time.is_celebrity(author)
        await on_time.set_celebrity(author, True)
        assert await on_time.is_celebrity(author)
        await skewed.set_celebrity(author, True)
        await on_time.set_celebrity(author, False)
        assert not await on_time.is_celebrity(author)
    finally:
        ahead.close()
