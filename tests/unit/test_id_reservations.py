"""common/id_reservations.py with a store that fails: renewals that fail or hang are
tried again soon, ids are refused only once the reservation has passed, and a start
waits for a store that does not answer yet."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, cast

import pytest
from cassandra import OperationTimedOut

from common.cql import CqlSession
from common.errors import Unavailable
from common.id_reservations import IdReservations
from common.ids import CHIRP_EPOCH_MS, IdGenerator


class Row:
    def __init__(self, reserved_until_ms: int) -> None:
        self.reserved_until_ms = reserved_until_ms


class FlakyStore:
    """The two statements over one row; `failing` calls raise, `hanging` ones never answer."""

    def __init__(self) -> None:
        self.row: int | None = None
        self.failing = 0
        self.hanging = 0
        self.calls = 0

    async def prepare(self, query: str) -> str:
        return "read" if query.startswith("SELECT") else "reserve"

    async def execute(self, statement: str, params: Sequence[Any]) -> list[Row]:
        self.calls += 1
        if self.hanging:
            self.hanging -= 1
            await asyncio.sleep(3600)
        if self.failing:
            self.failing -= 1
            raise OperationTimedOut("no answer")
        if statement == "read":
            return [] if self.row is None else [Row(self.row)]
        self.row = max(self.row or 0, params[1])
        return []


async def test_renewals_that_fail_or_hang_are_tried_again_and_ids_refused_only_past_the_reservation() -> None:
    store = FlakyStore()
    now = [CHIRP_EPOCH_MS + 1_000_000]
    ids = IdGenerator(1, clock_ms=lambda: now[0])
    reservations = IdReservations(cast(CqlSession, store), 1, ids, ahead_ms=1_000, every_seconds=0.01)
    await reservations.start()
    store.failing, store.hanging = 3, 1  # every renewal fails for a while, one of them hangs
    renewing = asyncio.create_task(reservations.renew_forever())
    try:
        now[0] += 1_001  # the clock passes the reservation while no renewal lands
        with pytest.raises(Unavailable):
            ids.next_id()
        for _ in range(400):  # a hung renewal is given up after RENEW_TIMEOUT_SECONDS
            await asyncio.sleep(0.01)
            if store.row is not None and store.row >= now[0] + 1_000:
                break
        assert store.row == now[0] + 1_000
        assert ids.next_id() > 0  # ids again, once a renewal landed
    finally:
        renewing.cancel()


async def test_a_start_waits_for_a_store_that_does_not_answer_yet() -> None:
    store = FlakyStore()
    store.failing = 2
    ids = IdGenerator(1, clock_ms=lambda: CHIRP_EPOCH_MS + 5_000)
    reservations = IdReservations(cast(CqlSession, store), 1, ids, ahead_ms=1_000, start_retry_seconds=30)
    await asyncio.wait_for(reservations.start(), 10)
    assert store.row == CHIRP_EPOCH_MS + 6_000
    store.failing = 10
    with pytest.raises(OperationTimedOut):
        await IdReservations(cast(CqlSession, store), 1, ids, start_retry_seconds=0).start()
