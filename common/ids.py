"""Time-ordered 64-bit ids, unique across instances (Snowflake layout).

41 bits of milliseconds since CHIRP_EPOCH_MS, 10 bits of instance id, 12 bits
of sequence. Ids sort by creation time, so "newest first" is "largest id first".
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from common.errors import Unavailable

CHIRP_EPOCH_MS = 1_577_836_800_000  # 2020-01-01T00:00:00Z
INSTANCE_BITS = 10
SEQUENCE_BITS = 12
MAX_INSTANCE = (1 << INSTANCE_BITS) - 1
MAX_SEQUENCE = (1 << SEQUENCE_BITS) - 1


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class IdGenerator:
    def __init__(self, instance_id: int, clock_ms: Callable[[], int] = _now_ms) -> None:
        if not 0 <= instance_id <= MAX_INSTANCE:
            raise ValueError(f"instance id must be in 0..{MAX_INSTANCE}, got {instance_id}")
        self._instance = instance_id
        self._clock = clock_ms
        self._last_ms = -1
        self._sequence = 0
        self._limit_ms: int | None = None  # no id in a later millisecond (`allow_until`)
        self._closed = False
        self._lock = threading.Lock()

    def next_id(self) -> int:
        with self._lock:
            if self._closed:
                raise Unavailable("stopping; try again")
            clock = self._clock()
            # A clock that steps back must not reuse ids: stay on the last millisecond.
            now = max(clock, self._last_ms)
            sequence = 0
            if now == self._last_ms:
                sequence = (self._sequence + 1) & MAX_SEQUENCE
                if sequence == 0:
                    # A full millisecond: wait for the next one while the clock is on it, but
                    # while it is behind (stepped back), take the next one at once. Waiting
                    # would hold the event loop until the clock caught up, seconds maybe.
                    now = self._wait_next_ms(now) if clock >= now else now + 1
            if self._limit_ms is not None and now > self._limit_ms:
                raise Unavailable("ids are not reserved this far ahead; try again")
            self._last_ms, self._sequence = now, sequence
            return (
                ((now - CHIRP_EPOCH_MS) << (INSTANCE_BITS + SEQUENCE_BITS))
                | (self._instance << SEQUENCE_BITS)
                | self._sequence
            )

    @property
    def last_ms(self) -> int:
        """The millisecond of the last id made (or of the floor started from)."""
        return self._last_ms

    def clock_ms(self) -> int:
        return self._clock()

    def start_after(self, floor_ms: int) -> None:
        """Make every later id in a millisecond after `floor_ms` (ids made up to then
        elsewhere, by a predecessor on this instance id maybe)."""
        with self._lock:
            if floor_ms >= self._last_ms:
                self._last_ms, self._sequence = floor_ms, MAX_SEQUENCE  # the next id is in a later ms

    def allow_until(self, limit_ms: int) -> None:
        """Make no id in a millisecond after `limit_ms` (ids reserved up to there,
        common/id_reservations.py); a later call only moves the limit on."""
        with self._lock:
            self._limit_ms = limit_ms if self._limit_ms is None else max(self._limit_ms, limit_ms)

    def close(self) -> None:
        """Make no id from now on (a clean stop records `last_ms` as its last,
        common/id_reservations.py)."""
        with self._lock:
            self._closed = True

    def fork(self) -> IdGenerator:
        """A generator of its own on the same instance id and clock, for values compared only
        among themselves (like versions): moved past a floor from a clock ahead
        (`next_id_after`), it does not date this process's other ids in the future. Its
        ids may equal the other generator's."""
        return IdGenerator(self._instance, self._clock)

    def next_id_after(self, floor: int) -> int:
        """A new id above `floor` (an id made anywhere, by a clock ahead of this one maybe):
        this generator moves on to the millisecond after the floor's when it is not past
        it already, so the id is above the floor and still unique among its own."""
        if floor >= 0:
            self.start_after(id_time_ms(floor))
        return self.next_id()

    def _wait_next_ms(self, current: int) -> int:
        now = self._clock()
        while now <= current:
            time.sleep(0.0001)
            now = self._clock()
        return now


def id_time_ms(snowflake: int) -> int:
    """Milliseconds since the Unix epoch at which the id was made."""
    return (snowflake >> (INSTANCE_BITS + SEQUENCE_BITS)) + CHIRP_EPOCH_MS


def min_id_at_ms(unix_ms: int) -> int:
    """The smallest id that can be made at `unix_ms`; handy as a range bound."""
    return (unix_ms - CHIRP_EPOCH_MS) << (INSTANCE_BITS + SEQUENCE_BITS)
