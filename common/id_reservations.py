"""Ids stay unique across a restart on a clock behind the predecessor's.

An `IdGenerator` keeps its ids unique within its process: a clock stepped back
makes it stay on its last millisecond. A process started again on the same
instance id knows nothing of the ids its predecessor made, and with its clock
behind the predecessor's last id (a host's clock stepped back, a pod moved to a
host whose clock is behind) it makes those ids again: a second tweet under an
acknowledged tweet's id overwrites it, a second account under a user's id signs
in as that user.

So an instance reserves, in the CQL store, the time up to which it may make ids
(`id_reservations`, one row per instance id). It starts above its predecessor's
reservation, makes no id beyond its own acknowledged one (`IdGenerator.allow_until`;
past it a call fails with UNAVAILABLE), and moves it ahead while it runs.

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
# moves that on: a store unreachable for RESERVE_AHEAD_MS - RENEW_EVERY_SECONDS makes
# the instance's id-making calls fail, as its writes would anyway.
RESERVE_AHEAD_MS = 60_000
RENEW_EVERY_SECONDS = 10.0

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
    ) -> None:
        self._cql = cql
        self._instance = instance_id
        self._ids = ids
        self._ahead_ms = ahead_ms
        self._every = every_seconds
        self._statements: dict[str, object] = {}

    async def start(self) -> None:
        """Before the first id: start above the predecessor's reservation and make one's own."""
        for name, query in STATEMENTS.items():
            self._statements[name] = await self._cql.prepare(query)
        rows = await self._cql.execute(self._statements["read"], (self._instance,))
        if rows and rows[0].reserved_until_ms is not None:
            floor = rows[0].reserved_until_ms
            if floor > self._ids.clock_ms():
                log.warning(
                    "clock behind this instance's reserved ids: making ids from the reservation on",
                    extra={"instance_id": self._instance, "behind_ms": floor - self._ids.clock_ms()},
                )
            self._ids.start_after(floor)
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
