"""Ids stay unique across a restart on a clock behind the predecessor's.

An `IdGenerator` keeps its ids unique within its process: a clock stepped back
makes it stay on its last millisecond. A process started again on the same
instance id knows nothing of the ids its predecessor made, and with its clock
behind the predecessor's last id (a host's clock stepped back, a pod moved to a
host whose clock is behind) it makes those ids again: a second tweet under an
acknowledged tweet's id overwrites it, a second account under a user's id signs
in as that user.

So an instance reserves, in the CQL store, the time up to which it may make ids
(`id_reservations`, one row per instance id): a few seconds past its clock,
moved on every second. It makes no id beyond its acknowledged reservation
(`IdGenerator.allow_until`; past it a call fails with UNAVAILABLE, after some
seconds of the store not answering, when writes fail too).

A successor waits, before its first id, until its clock passes the predecessor's
reservation: a few seconds at most after a quick restart. A clock further behind
than that starts from the reservation instead (logged): its ids are then ahead
of its own clock, as a running generator's are after its clock steps back. It
never starts ahead of a clock that is right: ids from different instances sort
by the time they were made, which the feeds rely on.

A reservation is written with its own value as the write's timestamp, so the
larger of two always wins, whatever the clocks of the hosts that wrote them; and
the limit moves only once a write is acknowledged, so a successor's quorum read
sees at least every reservation its predecessor made ids under.
"""

from __future__ import annotations

import asyncio
import logging

from common.cql import CqlSession
from common.ids import IdGenerator

log = logging.getLogger(__name__)

# How far ahead of its clock (or of its last id) an instance reserves, and how often it
# moves that on: a store that answers no reservation for about 4 s makes the instance's
# id-making calls fail, as its writes would anyway. A successor started sooner than
# RESERVE_AHEAD_MS after its predecessor's last reservation waits out the rest.
RESERVE_AHEAD_MS = 5_000
RENEW_EVERY_SECONDS = 1.0
# A successor's clock further behind the reservation than this is not waited for.
START_WAIT_MAX_MS = RESERVE_AHEAD_MS + 1_000

STATEMENTS = {
    "read": "SELECT reserved_until_ms FROM id_reservations WHERE instance_id = ?",
    "reserve": "INSERT INTO id_reservations (instance_id, reserved_until_ms) VALUES (?, ?) USING TIMESTAMP ?",
}


class IdReservations:
    def __init__(
        self,
        cql: CqlSession,
        instance_id: int,
        ids: IdGenerator,
        ahead_ms: int = RESERVE_AHEAD_MS,
        every_seconds: float = RENEW_EVERY_SECONDS,
        start_wait_ms: int = START_WAIT_MAX_MS,
    ) -> None:
        self._cql = cql
        self._instance = instance_id
        self._ids = ids
        self._ahead_ms = ahead_ms
        self._every = every_seconds
        self._start_wait_ms = start_wait_ms
        self._statements: dict[str, object] = {}

    async def start(self) -> None:
        """Before the first id: start above the predecessor's reservation and make one's own."""
        for name, query in STATEMENTS.items():
            self._statements[name] = await self._cql.prepare(query)
        rows = await self._cql.execute(self._statements["read"], (self._instance,))
        if rows and rows[0].reserved_until_ms is not None:
            floor = rows[0].reserved_until_ms
            behind = floor - self._ids.clock_ms()
            if 0 < behind <= self._start_wait_ms:
                await asyncio.sleep(behind / 1000)  # a quick restart: the clock passes it soon
            elif behind > 0:
                log.warning(
                    "clock behind this instance's reserved ids: making ids from the reservation on",
                    extra={"instance_id": self._instance, "behind_ms": behind},
                )
            self._ids.start_after(floor)  # nothing, once the clock has passed it
        await self.reserve()

    async def reserve(self) -> int:
        """Reserve up to `ahead_ms` past the later of the clock and the last id; returns the new limit."""
        until = max(self._ids.clock_ms(), self._ids.last_ms) + self._ahead_ms
        await self._cql.execute(self._statements["reserve"], (self._instance, until, until * 1000))
        self._ids.allow_until(until)
        return until

    async def renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self._every)
            try:
                await self.reserve()
            except Exception as exc:  # noqa: BLE001 - keep reserving once the store is back
                log.warning("could not move the id reservation on: %r", exc)
