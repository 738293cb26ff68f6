"""common/id_reservations.py with a store that fails: renewals that fail or hang are
tried again soon, ids are refused only once the reservation has passed, and a start
waits for a store that does not answer yet."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import pytest
from cassandra import ConsistencyLevel, OperationTimedOut, WriteTimeout, WriteType

from common import id_reservations
from common.cql import CqlSession
from common.errors import Unavailable
from common.id_reservations import IdReservations
from common.ids import CHIRP_EPOCH_MS, IdGenerator, id_time_ms


class Row:
    def __init__(self, reserved_until_ms: int) -> None:
        self.reserved_until_ms = reserved_until_ms


@dataclass
class Generation:
    generation: int | None = None
    stopped_generation: int | None = None
    stopped_last_ms: int | None = None
    stopped_reserved_until_ms: int | None = None


@dataclass
class Applied:
    applied: bool


@dataclass
class Statement:
    name: str
    consistency_level: int | None = None


class FlakyStore:
    """The statements over one instance's rows; `failing` calls raise, `hanging` ones never
    answer, and the next `lost_answers` claims are applied but answered with a timeout."""

    def __init__(self) -> None:
        self.row: int | None = None
        self.generation = Generation()
        self.failing = 0
        self.hanging = 0
        self.lost_answers = 0
        self.hanging_records = False
        self.calls = 0

    async def prepare(self, query: str) -> Statement:
        names = {"SELECT reserved": "read", "INSERT": "reserve", "SELECT generation": "generation"}
        names |= {"UPDATE id_generations SET generation": "claim", "UPDATE id_generations SET stopped": "record_stop"}
        return Statement(next(name for start, name in names.items() if query.startswith(start)))

    async def execute(self, statement: Statement, params: Sequence[Any]) -> list[Any]:
        self.calls += 1
        if self.hanging:
            self.hanging -= 1
            await asyncio.sleep(3600)
        if self.failing:
            self.failing -= 1
            raise OperationTimedOut("no answer")
        row = self.generation
        match statement.name:
            case "read":
                return [] if self.row is None else [Row(self.row)]
            case "reserve":
                self.row = max(self.row or 0, params[1])
                return []
            case "generation":
                assert statement.consistency_level == ConsistencyLevel.LOCAL_SERIAL  # sees every claim
                return [] if row.generation is None else [dataclasses.replace(row)]
            case "claim":
                if row.generation != params[2]:
                    return [Applied(False)]
                row.generation = params[0]
                if self.lost_answers:
                    self.lost_answers -= 1
                    raise WriteTimeout("CAS outcome unknown", write_type=WriteType.CAS)
                return [Applied(True)]
            case _:
                if self.hanging_records:
                    await asyncio.sleep(3600)
                if row.generation != params[4]:
                    return [Applied(False)]
                row.stopped_generation, row.stopped_last_ms, row.stopped_reserved_until_ms = params[:3]
                return [Applied(True)]


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


async def running(store: FlakyStore, now: list[int]) -> tuple[IdGenerator, IdReservations]:
    """A process on instance 1 that started (reserving 20 s ahead) and made an id."""
    ids = IdGenerator(1, clock_ms=lambda: now[0])
    reservations = IdReservations(cast(CqlSession, store), 1, ids, ahead_ms=20_000)
    await reservations.start()
    ids.next_id()
    return ids, reservations


async def stopped_cleanly(store: FlakyStore, now: list[int]) -> IdGenerator:
    """A process on instance 1 that made an id and stopped cleanly."""
    first, reservations = await running(store, now)
    await reservations.stop()
    return first


async def test_a_clean_stop_lets_its_successor_start_at_once() -> None:
    store = FlakyStore()
    now = [CHIRP_EPOCH_MS + 1_000_000]
    first = await stopped_cleanly(store, now)
    last = first.last_ms
    with pytest.raises(Unavailable):
        first.next_id()  # none after the record

    now[0] += 1
    second = IdGenerator(1, clock_ms=lambda: now[0])
    await asyncio.wait_for(IdReservations(cast(CqlSession, store), 1, second, ahead_ms=20_000).start(), 1)
    made = second.next_id()  # at once: no wait for the 20 s reservation
    assert id_time_ms(made) > last and id_time_ms(made) == now[0]


async def test_a_record_vouches_for_its_own_generation_only() -> None:
    """A successor that trusted a record and crashed, on a clock behind (its reservation
    then stays under the record's): the next start must not trust that record again."""
    store = FlakyStore()
    now = [CHIRP_EPOCH_MS + 1_000_000]
    await stopped_cleanly(store, now)

    behind = IdGenerator(1, clock_ms=lambda: now[0] - 10_000)
    await IdReservations(cast(CqlSession, store), 1, behind, ahead_ms=20_000, start_wait_ms=0).start()
    made = [behind.next_id() for _ in range(10_000)]  # from the record on, ahead of its clock
    assert store.row == now[0] + 20_000  # its reservation did not pass the first one's
    # It crashes (no record of its own).
    now[0] += 1
    third = IdGenerator(1, clock_ms=lambda: now[0])
    await IdReservations(cast(CqlSession, store), 1, third, ahead_ms=20_000, start_wait_ms=0).start()
    assert third.next_id() > max(made)
    assert store.generation.generation == 3


async def test_a_claim_whose_outcome_is_unknown_trusts_no_record() -> None:
    store = FlakyStore()
    now = [CHIRP_EPOCH_MS + 1_000_000]
    await stopped_cleanly(store, now)
    reserved = store.row
    assert reserved is not None
    store.lost_answers = 1  # the claim lands, its answer does not
    now[0] += 1
    second = IdGenerator(1, clock_ms=lambda: now[0])
    await IdReservations(cast(CqlSession, store), 1, second, ahead_ms=20_000, start_wait_ms=0).start()
    assert id_time_ms(second.next_id()) > reserved  # from the reservation, not the record
    assert store.generation.generation == 3  # the claim read again and claimed the next


async def test_a_record_vouches_only_for_reservations_acknowledged() -> None:
    """A renewal sent and lost is not vouched for: a process of a version from before
    generations that started from the acknowledged reservation reserved a second past it
    (below the lost one), and its ids are above the record's last one."""
    store = FlakyStore()
    now = [CHIRP_EPOCH_MS + 1_000_000]
    _, reservations = await running(store, now)
    acknowledged = store.row
    assert acknowledged is not None
    now[0] += 5_000
    store.failing = 1
    with pytest.raises(OperationTimedOut):
        await reservations.reserve()  # sent, never landed
    await reservations.stop()
    store.row = acknowledged + 1_000  # the older version's reservation, and its ids below it
    now[0] += 1
    second = IdGenerator(1, clock_ms=lambda: now[0])
    await IdReservations(cast(CqlSession, store), 1, second, ahead_ms=20_000, start_wait_ms=0).start()
    assert id_time_ms(second.next_id()) > acknowledged + 1_000


async def test_a_stop_whose_record_does_not_land_leaves_its_successor_waiting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(id_reservations, "STOP_RECORD_TIMEOUT_SECONDS", 0.05)
    store = FlakyStore()
    now = [CHIRP_EPOCH_MS + 1_000_000]
    _, reservations = await running(store, now)
    store.hanging_records = True
    await asyncio.wait_for(reservations.stop(), 1)  # given up, not hung
    assert store.generation.stopped_generation is None
    now[0] += 1
    second = IdGenerator(1, clock_ms=lambda: now[0])
    await IdReservations(cast(CqlSession, store), 1, second, ahead_ms=20_000, start_wait_ms=0).start()
    assert id_time_ms(second.next_id()) > now[0] + 20_000 - 2  # from the reservation
