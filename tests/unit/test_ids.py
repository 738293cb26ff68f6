import pytest

from common.errors import Unavailable
from common.ids import CHIRP_EPOCH_MS, IdGenerator, id_time_ms, min_id_at_ms


def test_ids_are_unique_and_increasing_within_one_millisecond() -> None:
    gen = IdGenerator(5, clock_ms=lambda: CHIRP_EPOCH_MS + 1000)
    ids = [gen.next_id() for _ in range(4096)]
    assert ids == sorted(ids)
    assert len(set(ids)) == 4096


def test_sequence_overflow_waits_for_next_millisecond() -> None:
    ticks = iter([CHIRP_EPOCH_MS + 7] * 4097 + [CHIRP_EPOCH_MS + 8] * 10)
    gen = IdGenerator(1, clock_ms=lambda: next(ticks))
    ids = [gen.next_id() for _ in range(4097)]
    assert len(set(ids)) == 4097
    assert id_time_ms(ids[-1]) == CHIRP_EPOCH_MS + 8


def test_instances_never_collide_and_time_is_recoverable() -> None:
    now = CHIRP_EPOCH_MS + 123_456
    a = IdGenerator(1, clock_ms=lambda: now).next_id()
    b = IdGenerator(2, clock_ms=lambda: now).next_id()
    assert a != b
    assert id_time_ms(a) == id_time_ms(b) == now
    assert min_id_at_ms(now) <= a < min_id_at_ms(now + 1)


def test_clock_going_backwards_does_not_reuse_ids() -> None:
    ticks = iter([CHIRP_EPOCH_MS + 50, CHIRP_EPOCH_MS + 40, CHIRP_EPOCH_MS + 40])
    gen = IdGenerator(3, clock_ms=lambda: next(ticks))
    first, second, third = gen.next_id(), gen.next_id(), gen.next_id()
    assert first < second < third


def test_a_full_millisecond_with_the_clock_stepped_back_takes_the_next_one_without_waiting() -> None:
    ticks = iter([CHIRP_EPOCH_MS + 5000] + [CHIRP_EPOCH_MS + 1000] * 9000)  # 4 s back, and it stays there
    gen = IdGenerator(4, clock_ms=lambda: next(ticks))  # a wait would exhaust the ticks: StopIteration
    ids = [gen.next_id() for _ in range(9000)]
    assert ids == sorted(ids) and len(set(ids)) == 9000
    assert id_time_ms(ids[-1]) == CHIRP_EPOCH_MS + 5002  # two milliseconds borrowed, not four seconds waited


def test_an_id_after_a_floor_from_a_clock_ahead_is_above_it_and_unique() -> None:
    ahead = IdGenerator(900, clock_ms=lambda: CHIRP_EPOCH_MS + 9_000).next_id()
    gen = IdGenerator(2, clock_ms=lambda: CHIRP_EPOCH_MS + 5_000)
    ids = [gen.next_id_after(ahead) for _ in range(3)] + [gen.next_id() for _ in range(3)]
    assert all(i > ahead for i in ids)
    assert ids == sorted(ids) and len(set(ids)) == len(ids)  # two racing changes never share one
    past = IdGenerator(3, clock_ms=lambda: CHIRP_EPOCH_MS + 5_000)
    assert id_time_ms(past.next_id_after(min_id_at_ms(CHIRP_EPOCH_MS + 10))) == CHIRP_EPOCH_MS + 5_000
    assert id_time_ms(past.next_id_after(-1)) == CHIRP_EPOCH_MS + 5_000


def test_a_fork_moved_past_a_floor_leaves_the_generator_it_came_from_where_it_was() -> None:
    ahead = IdGenerator(900, clock_ms=lambda: CHIRP_EPOCH_MS + 9_000).next_id()
    gen = IdGenerator(2, clock_ms=lambda: CHIRP_EPOCH_MS + 5_000)
    versions = gen.fork()
    assert versions.next_id_after(ahead) > ahead
    assert id_time_ms(gen.next_id()) == CHIRP_EPOCH_MS + 5_000  # tweets keep this clock's time


def test_ids_started_after_a_floor_ahead_of_the_clock_are_above_it() -> None:
    gen = IdGenerator(4, clock_ms=lambda: CHIRP_EPOCH_MS + 1_000)
    gen.start_after(CHIRP_EPOCH_MS + 5_000)
    ids = [gen.next_id() for _ in range(5_000)]  # more than one millisecond's worth
    assert min(ids) >= min_id_at_ms(CHIRP_EPOCH_MS + 5_001)
    assert len(set(ids)) == 5_000 and ids == sorted(ids)
    gen.start_after(CHIRP_EPOCH_MS + 10)  # an older floor moves nothing back
    assert gen.next_id() > ids[-1]


def test_no_id_is_made_past_the_limit_and_a_refused_call_uses_up_nothing() -> None:
    now = [CHIRP_EPOCH_MS + 100]
    gen = IdGenerator(4, clock_ms=lambda: now[0])
    gen.allow_until(CHIRP_EPOCH_MS + 100)
    first = gen.next_id()
    now[0] += 1
    with pytest.raises(Unavailable):
        gen.next_id()
    gen.allow_until(CHIRP_EPOCH_MS + 50)  # a limit only moves on
    with pytest.raises(Unavailable):
        gen.next_id()
    gen.allow_until(CHIRP_EPOCH_MS + 101)
    assert gen.next_id() == min_id_at_ms(CHIRP_EPOCH_MS + 101) | (4 << 12)
    assert id_time_ms(first) == CHIRP_EPOCH_MS + 100
