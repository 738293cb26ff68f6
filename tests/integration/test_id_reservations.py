"""common/id_reservations.py over the real store: a process started again on an
instance id, with its clock behind its predecessor's, makes no id its predecessor
made."""

from __future__ import annotations

import random
import time

import pytest

from common.cql import CqlSession
from common.errors import Unavailable
from common.id_reservations import IdReservations, ReservationTooFarAhead
from common.ids import MAX_INSTANCE, IdGenerator, id_time_ms

# Instance ids neither the local topology nor k8s/ gives a process (they stop at 255):
# some for tests whose clocks run ahead (their reservations stay ahead of the real clock
# for a while), the others for tests on the real clock.
CLOCK_AHEAD_INSTANCES = range(512, 640)
CLEAN_STOP_INSTANCES = range(640, 704)
VOIDED_STOP_INSTANCES = range(704, 768)
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


async def test_a_successor_of_a_clean_stop_starts_at_once_and_its_own_crash_is_covered(cql: CqlSession) -> None:
    """The stop's mark spares its successor the wait; the successor's own reservation
    voids the mark, so a crash of the successor leaves the reservation to go by again."""
    instance = random.choice(CLEAN_STOP_INSTANCES)
    now = time.time_ns() // 1_000_000
    first = IdGenerator(instance, clock_ms=Clock(now))
    first_reservations = IdReservations(cql, instance, first, ahead_ms=60_000)
    await first_reservations.start()
    made = first.next_id()
    await first_reservations.release()
    with pytest.raises(Unavailable):
        first.next_id()  # no id after the mark

    # Its successor, on a clock 30 s ahead: no wait for the reservation 60 s ahead.
    second = await started(cql, instance, Clock(now + 30_000))
    again = [second.next_id() for _ in range(3)]
    assert min(again) > made
    assert id_time_ms(max(again)) < now + 60_000  # started at its clock, not at the reservation
    # It crashes (no mark). A third, on the first's clock, makes none of the second's ids.
    third = await started(cql, instance, Clock(now))
    assert third.next_id() > max(again)


async def test_a_clean_stops_mark_is_void_once_a_successor_on_a_clock_behind_reserved(cql: CqlSession) -> None:
    """A successor whose clock is behind reserves no further ahead than the predecessor
    did: its reservation must still go above, or the row would keep vouching for the mark."""
    instance = random.choice(VOIDED_STOP_INSTANCES)
    now = time.time_ns() // 1_000_000
    first = IdGenerator(instance, clock_ms=Clock(now + 30_000))
    first_reservations = IdReservations(cql, instance, first, ahead_ms=60_000)
    await first_reservations.start()
    first.next_id()
    await first_reservations.release()
    second = await started(cql, instance, Clock(now))  # trusts the mark: right after the first's last id
    made = [second.next_id() for _ in range(3)]
    # It crashes. A third, on its clock, makes none of its ids.
    third = await started(cql, instance, Clock(now))
    assert third.next_id() > max(made)
