"""How like events become hourly tallies, and how lost tallies are rebuilt.

Folding is idempotent (see `FOLD_SCRIPT` in rank_svc/store.py): a batch folded
twice, or a whole partition replayed, counts every event once. So the tallies
can always be rebuilt from the likes topic, which Kafka keeps for longer than
the window. Each partition has a marker in Redis, written in the same atomic
step as its tallies: the next offset folded, so every like before it is in the
tallies. A batch starting past the marker, or a marker missing, means Redis
lost what had been folded (a restart without data, a failover that dropped
writes, a restore of an older snapshot); the consumer owning the partition
then seeks it back to the window's first like and refolds. Quiet partitions,
where no batch arrives, are checked every few seconds the same way.

Only the owner of a partition folds it and touches its marker, so any number
of rank workers in the group rebuild their own partitions without talking to
each other. A worker that dies mid-rebuild leaves a marker behind the group's
commit (when it had not committed the rebuild yet) or at it (when it had): the
next owner rebuilds again, or carries on from the commit, and either way no
like before the commit is missing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from prometheus_client import Counter

from common.events import MALFORMED, LikeEvent
from common.ids import id_time_ms
from common.worker import skip_event
from rank_svc.store import HOUR_MS, Like, PartitionFold, TrendingStore, hour_of

log = logging.getLogger(__name__)

GROUP = "chirp-rank"

# Kafka's timestamp of a like is taken a little after its version; replaying
# from a bit before the window's first hour catches every like made in it.
REPLAY_SLACK_MS = 5 * 60_000

REWINDS = Counter(
    "chirp_rank_tally_rebuilds_total", "Likes-topic partitions rewound to rebuild trending tallies Redis had lost."
)

Partition = tuple[str, int]


class Record(Protocol):
    """What the folder reads of a consumed message (confluent_kafka's Message has it)."""

    def topic(self) -> str | None: ...

    def partition(self) -> int | None: ...

    def offset(self) -> int | None: ...

    def value(self) -> bytes | None: ...


class PartitionControl(Protocol):
    """What the folder needs of the consumer holding the partitions."""

    async def offset_at(self, topic: str, partition: int, at_ms: int) -> int:
        """The first offset whose timestamp is at or after `at_ms`; -1 if there is none."""
        ...

    def seek(self, topic: str, partition: int, offset: int) -> None: ...

    async def positions(self) -> dict[Partition, int]:
        """Next offset to consume of each assigned partition whose position is known."""
        ...


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class LikeFolder:
    """Folds batches of like events into the tallies and rebuilds lost partitions."""

    def __init__(
        self,
        store: TrendingStore,
        window_hours: int,
        clock_ms: Callable[[], int] = _now_ms,
    ) -> None:
        self._store = store
        self._window = window_hours
        self._clock = clock_ms
        # Partitions rewound whose first batch from the rewind point is still to come.
        self._rewound: dict[Partition, int] = {}

    @property
    def rebuilding(self) -> frozenset[Partition]:
        """Partitions rewound and not yet refolding (for checks and tests)."""
        return frozenset(self._rewound)

    def forget(self, partitions: Iterable[Partition]) -> None:
        """These partitions were taken away: whoever gets them checks their markers afresh."""
        for tp in partitions:
            self._rewound.pop(tp, None)

    def forget_all(self) -> None:
        self._rewound.clear()

    def first_hour(self) -> int:
        """The oldest hour of the window; likes made before it no longer count."""
        return hour_of(self._clock()) - self._window + 1

    async def fold(self, messages: Sequence[Record], control: PartitionControl) -> None:
        first_hour = self.first_hour()
        spans: dict[Partition, tuple[int, int]] = {}
        likes: list[tuple[Partition, LikeEvent, int]] = []
        for msg in messages:
            tp = (str(msg.topic()), int(msg.partition() or 0))
            offset = int(msg.offset() or 0)
            low, high = spans.get(tp, (offset, offset))
            spans[tp] = (min(low, offset), max(high, offset))
            try:
                event = LikeEvent.decode(msg.value() or b"")
            except MALFORMED:
                skip_event(GROUP, "malformed", "a malformed like event", partition=tp[1], offset=offset)
                continue
            hour = hour_of(id_time_ms(event.version))
            # Older likes are out of the window; newer than next hour means a
            # clock far ahead, and such a like waits for a rebuild to count.
            if first_hour <= hour <= first_hour + self._window:
                likes.append((tp, event, hour))
        order = [tp for tp in spans if self._rewound.get(tp, spans[tp][0]) == spans[tp][0]]
        for tp in spans.keys() - set(order):
            # Fetched before the rewind took effect: fold from the rewind point instead.
            control.seek(tp[0], tp[1], self._rewound[tp])
        parts = [
            PartitionFold(tp[0], tp[1], spans[tp][0], spans[tp][1] + 1, "start" if tp in self._rewound else "check")
            for tp in order
        ]
        index = {tp: n for n, tp in enumerate(order)}
        lost = await self._store.fold(
            parts,
            [Like(index[tp], e.tweet_id, e.user_id, e.version, e.liked, hour) for tp, e, hour in likes if tp in index],
            first_hour,
        )
        for n, tp in enumerate(order):
            self._rewound.pop(tp, None)
            if n in lost:
                await self._rewind(control, tp, parts[n].first, first_hour, quiet=False)

    async def check(self, control: PartitionControl) -> None:
        """Find partitions whose tallies were lost while no like arrived on them."""
        positions = {tp: at for tp, at in (await control.positions()).items() if tp not in self._rewound}
        if not positions:
            return
        first_hour = self.first_hour()
        order = sorted(positions)
        parts = [
            PartitionFold(topic, partition, positions[(topic, partition)], positions[(topic, partition)])
            for topic, partition in order
        ]
        lost = await self._store.fold(parts, [], first_hour)
        for n in sorted(lost):
            tp = order[n]
            await self._rewind(control, tp, positions[tp], first_hour, quiet=True)

    async def _rewind(self, control: PartitionControl, tp: Partition, at: int, first_hour: int, quiet: bool) -> None:
        """Refold `tp` from the window's first like; `at` is where the consumer stands in it."""
        found = await control.offset_at(tp[0], tp[1], first_hour * HOUR_MS - REPLAY_SLACK_MS)
        # Never skip forward: from `at` on, everything is read anyway.
        start = at if found < 0 or found > at else found
        if quiet and start == at:
            # Nothing of the window lies before where the consumer stands: this
            # partition's tallies are complete as they are (empty).
            await self._store.fold([PartitionFold(tp[0], tp[1], at, at, "start")], [], first_hour)
            return
        control.seek(tp[0], tp[1], start)
        self._rewound[tp] = start
        REWINDS.inc()
        log.warning(
            "trending tallies lost in Redis: refolding the partition",
            extra={"topic": tp[0], "partition": tp[1], "from_offset": start, "was_at": at},
        )
