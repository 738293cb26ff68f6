"""common/id_reservations.py over the real store: a process started again on an
instance id, with its clock behind its predecessor's, makes no id its predecessor
made."""

from __future__ import annotations

import random
import time

import pytest

from common.cql import CqlSession
from common.errors import Unavailable
from common.id_reservations import JUMPED_MARGIN_MS, IdReservations, ReservationTooFarAhead
from common.ids import MAX_INSTANCE, IdGenerator, id_time_ms

# Instance ids neither the local topology nor k8s/ gives a process (they stop at 255):
# some for tests whose clocks run ahead (their reservations stay ahead of the real clock
# for a while), the others for tests on the real clock.
CLOCK_AHEAD_INSTANCES = range(512, 640)
JUMPED_INSTANCES = range(640, 768)
REAL_CLOCK_INSTANCES = range(768, 992)
FAR_AHEAD_INSTANCES = range(992, MAX_INSTANCE + 1)


class Clock:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


async def started(cql: CqlSession, instance: int, clock: Clock, ahead_ms: int = 60_000) -> IdGenerator:
    ids = IdGenerator(instance, clock_ms=clock)
    await IdReservations(cql, instance, ids, ahead_ms=ahead_ms).start()
    return ids


async def test_a_restart_on_a_clock_behind_its_predecessors_makes_none_of_its_ids(cql: CqlSession) -> None:
    instance = random.choice(CLOCK_AHEAD_INSTANCES)
    ahead = Clock(time.time_ns() // 1_000_000 + 30_000)  # this host's clock is 30 s ahead
    first = await started(cql, instance, ahead)
    made = [first.next_id() for _ in range(3)]
    ahead.ms += 20_000  # the predecessor ran on for 20 s
    made.append(first.next_id())

    # Its successor's clock is five seconds behind the predecessor's start.
    behind = Clock(ahead.ms - 25_000)
    second = await started(cql, instance, behind)
    again = [second.next_id() for _ in range(5_000)]
    assert min(again) > max(made)
    assert len(set(again)) == len(again)
    # The successor's reservation (written from a clock behind) is what a third process reads.
    third = await started(cql, instance, Clock(behind.ms))
    assert third.next_id() > max(again)


async def test_no_id_is_made_past_the_acknowledged_reservation(cql: CqlSession) -> None:
    instance = random.choice(CLOCK_AHEAD_INSTANCES)
    clock = Clock(time.time_ns() // 1_000_000)
    ids = IdGenerator(instance, clock_ms=clock)
    reservations = IdReservations(cql, instance, ids, ahead_ms=1_000)
    await reservations.start()
    start = clock.ms
    first = ids.next_id()
    assert id_time_ms(first) >= start
    clock.ms = id_time_ms(first) + 1_001
    with pytest.raises(Unavailable):
        ids.next_id()
    until = await reservations.reserve()
    assert until == clock.ms + 1_000
    assert id_time_ms(ids.next_id()) == clock.ms


async def test_a_quick_restart_waits_for_its_clock_to_pass_the_reservation(cql: CqlSession) -> None:
    """Not ahead of its clock: ids of different instances sort by when they were made."""
    instance = random.choice(REAL_CLOCK_INSTANCES)
    first = IdGenerator(instance)
    await IdReservations(cql, instance, first, ahead_ms=1_000).start()
    made = first.next_id()
    (row,) = await cql.execute("SELECT reserved_until_ms FROM id_reservations WHERE instance_id = %s", (instance,))
    second = IdGenerator(instance)  # started at once, on the same (right) clock
    await IdReservations(cql, instance, second, ahead_ms=1_000).start()
    again = second.next_id()
    assert again > made
    assert id_time_ms(again) > row.reserved_until_ms  # it waited for its clock to pass the reservation...
    assert id_time_ms(again) <= time.time_ns() // 1_000_000  # ...and did not start ahead of its clock


async def test_a_reservation_far_ahead_of_the_clock_is_refused(cql: CqlSession) -> None:
    """Made by a clock far ahead (or read by one far behind): starting from it would date
    every id that far from now; an operator decides."""
    instance = random.choice(FAR_AHEAD_INSTANCES)
    now = time.time_ns() // 1_000_000
    await started(cql, instance, Clock(now + 600_000))
    with pytest.raises(ReservationTooFarAhead):
        await started(cql, instance, Clock(now))


async def test_a_successor_that_started_from_the_reservation_reserves_only_a_second_past_it(cql: CqlSession) -> None:
    """Its ids are ahead of its clock already: `ahead_ms` past them would put the next
    successor's floor that much further ahead of the time, for a clock that is right too."""
    instance = random.choice(JUMPED_INSTANCES)
    now = time.time_ns() // 1_000_000
    await started(cql, instance, Clock(now), ahead_ms=20_000)  # a right clock: reserves 20 s ahead
    behind = await started(cql, instance, Clock(now - 60_000), ahead_ms=20_000)  # starts from the reservation
    behind.next_id()
    third = IdGenerator(instance, clock_ms=Clock(now))  # a right clock again, after a crash
    await IdReservations(cql, instance, third, ahead_ms=20_000, start_wait_ms=0).start()
    assert id_time_ms(third.next_id()) <= now + 20_000 + JUMPED_MARGIN_MS + 1


async def _reserved(cql: CqlSession, instance: int) -> int:
    (row,) = await cql.execute("SELECT reserved_until_ms FROM id_reservations WHERE instance_id = %s", (instance,))
    return int(row.reserved_until_ms)


async def test_a_successor_of_a_clean_stop_starts_at_once_above_its_last_id(cql: CqlSession) -> None:
    instance = random.choice(REAL_CLOCK_INSTANCES)
    first = IdGenerator(instance)
    reservations = IdReservations(cql, instance, first, ahead_ms=20_000)
    await reservations.start()
    made = [first.next_id() for _ in range(3)]
    await reservations.stop()
    reserved = await _reserved(cql, instance)
    second = IdGenerator(instance)
    await IdReservations(cql, instance, second, ahead_ms=20_000).start()
    again = second.next_id()
    assert again > max(made)
    assert id_time_ms(again) < reserved  # it did not wait for the reservation
    assert id_time_ms(again) <= time.time_ns() // 1_000_000  # nor start ahead of its clock


async def test_a_clean_stop_is_not_trusted_once_the_reservation_moved_past_it(cql: CqlSession) -> None:
    """A process that claims no generation (a version from before them) ran after the
    clean stop: its ids are above the record's last one, so its successor starts above its
    reservation."""
    instance = random.choice(CLOCK_AHEAD_INSTANCES)
    first = IdGenerator(instance)
    reservations = IdReservations(cql, instance, first, ahead_ms=1_000)
    await reservations.start()
    first.next_id()
    await reservations.stop()
    until = max(await _reserved(cql, instance), time.time_ns() // 1_000_000) + 40_000
    await cql.execute(
        "INSERT INTO id_reservations (instance_id, reserved_until_ms) VALUES (%s, %s) USING TIMESTAMP %s",
        (instance, until, until * 1000),
    )
    second = IdGenerator(instance)
    await IdReservations(cql, instance, second, ahead_ms=1_000, start_wait_ms=0).start()
    assert id_time_ms(second.next_id()) > until
