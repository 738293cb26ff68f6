"""How a like is recorded for the viewer's liked_by_me flags.

`user_likes` (one partition per user) answers "which of these tweets does the
viewer like" in one read. A like is acknowledged once it is on Kafka and folded
into `tweet_likes` later, so the row is written twice: when the like is
acknowledged (read-your-writes) and when the like worker folds it (repairs an
acknowledgement whose write was lost). Both writes of one event are the same
cell with the same write time, and events of one (user, tweet) are ordered by
their versions, so whatever order they arrive in and however often, the cell
settles on the newest version, as the fold does:

- the write time is `write_time_us(version)`, never below an older version's;
- versions are denser than microseconds (about 4,200 per millisecond), so two
  versions can share a write time; the cell's value starts with the version,
  and on equal write times the store keeps the larger value (Cassandra and
  ScyllaDB both compare the bytes), which is then the newer version.
"""

from __future__ import annotations

from common.ids import INSTANCE_BITS, SEQUENCE_BITS, id_time_ms

_LOW_BITS = INSTANCE_BITS + SEQUENCE_BITS
_LOW_MASK = (1 << _LOW_BITS) - 1


def write_time_us(version: int) -> int:
    """A CQL write time (microseconds since the epoch, within the version's millisecond)
    that never decreases as versions grow: the millisecond times 1000, plus the id's low
    bits (instance, sequence) scaled down to 0..999."""
    return id_time_ms(version) * 1000 + ((version & _LOW_MASK) * 1000 >> _LOW_BITS)


def encode_state(liked: bool, version: int) -> bytes:
    """Version first (fixed width, big-endian): byte order is version order."""
    return version.to_bytes(8, "big") + (b"\x01" if liked else b"\x00")


def decode_version(state: bytes | None) -> int:
    """The version a state was written at; -1 for none."""
    return int.from_bytes(state[:8], "big") if state is not None and len(state) == 9 else -1


def decode_liked(state: bytes | None) -> bool:
    return state is not None and len(state) == 9 and state[8] == 1
