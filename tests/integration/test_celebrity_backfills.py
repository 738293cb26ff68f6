"""feed_svc/store.py's record of demotion backfills begun and not finished, over the
real store (feed_svc/fanout.py `_backfill` relies on it to backfill again after a cut)."""

from __future__ import annotations

from common.cql import CqlSession
from common.ids import IdGenerator
from feed_svc.store import CelebrityStore

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
