"""Ids stay unique across a restart on a clock behind the predecessor's.

An `IdGenerator` keeps its ids unique within its process: a clock stepped back
makes it stay on its last millisecond. A process started again on the same
instance id knows nothing of the ids its predecessor made, and with its clock
behind the predecessor's last id (a host's clock stepped back, a pod moved to a
host whose clock is behind) it makes those ids again: a second tweet under an
acknowledged tweet's id overwrites it, a second account under a user's id signs
in as that user.

So an instance reserves, in the CQL store, the time up to which it may make ids
(`id_reservations`, one row per instance id): RESERVE_AHEAD_MS past its clock,
moved on every RENEW_EVERY_SECONDS. It makes no id beyond its acknowledged
reservation (`IdGenerator.allow_until`; past it a call fails with UNAVAILABLE):
that takes about 15 s of every renewal failing or timing out, a store outage for
that one row.

A successor waits, before its first id, until its clock passes the predecessor's
reservation: up to RESERVE_AHEAD_MS after a quick restart. A clock further behind
than that starts from the reservation instead (logged): its ids are then ahead
of its own clock, as a running generator's are after its clock steps back. A
reservation more than START_BEHIND_MAX_MS ahead is refused (the process exits):
a clock that far behind, or a predecessor's that far ahead, needs an operator
(its ids would be dated that far from now). Ids from different instances sort
by the time they were made, which the feeds rely on, so no successor on a right
clock starts ahead of it unless its predecessor's clock was ahead.

A reservation is written with its own value as the write's timestamp, so the
larger of two always wins, whatever the clocks of the hosts that wrote them; and
the limit moves only once a write is acknowledged, so a successor's quorum read
sees at least every reservation its predecessor made ids under.

A successor of a clean stop does not wait (a rolling update would take
RESERVE_AHEAD_MS longer per pod). Each process claims the next generation of
its instance id at its start (`id_generations`, written only by lightweight
transactions, so claims and records are ordered whatever the clocks). One that
stops cleanly makes no id after `stop` begins, then records, under its
generation and only while that is still the latest, its last id's millisecond
and the furthest reservation acknowledged to it. A successor that claims the generation
right after a recorded one starts above that millisecond at once, unless the
reservation row has moved past what the record says (a process that claims no
generation, from before them, ran since). Any other start, after a crash, a
stop whose record did not land, or a claim whose outcome is unknown, waits for
the reservation as above: a record vouches for one generation only, so a
successor that crashed after trusting it is never vouched for by it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from cassandra import ConsistencyLevel

from common.cql import CQL_UNAVAILABLE_ERRORS, CqlSession
from common.ids import IdGenerator

log = logging.getLogger(__name__)

T = TypeVar("T")

# How far ahead of its clock (or of its last id) an instance reserves, and how often it
# moves that on. A renewal that takes longer than RENEW_TIMEOUT_SECONDS is given up (it
# may still land: it only raises the row) and tried again after RETRY_SECONDS, so only
# a store that takes no reservation for about RESERVE_AHEAD_MS - RENEW_EVERY_SECONDS
# makes the instance refuse ids. A successor started sooner than RESERVE_AHEAD_MS after
# its predecessor's last renewal waits out the rest. A renewal is a write to every replica
# of one row: at one every 2 s, the local stack's four instances cost an idle Cassandra
# 0.5-0.8% of a core more (docs/RELIABILITY.md, stop 48).
RESERVE_AHEAD_MS = 20_000
RENEW_EVERY_SECONDS = 5.0
RENEW_TIMEOUT_SECONDS = 1.5
RETRY_SECONDS = 0.5
# Ids a generator ahead of its clock (started from the reservation) may make past its last
# one: 4,096 a millisecond, more than it makes before its clock catches up.
JUMPED_MARGIN_MS = 1_000
# A successor's clock further behind the reservation than this is not waited for...
START_WAIT_MAX_MS = RESERVE_AHEAD_MS + 1_000
# ...and one further behind than this does not start.
START_BEHIND_MAX_MS = 300_000
# At start, a store that does not answer is asked again until this long after the start
# began (with the wait above, inside the startup probe's 120 s) before the process gives up.
START_RETRY_SECONDS = 60.0

# How long a clean stop tries to record its last id before it gives up (its successor
# then waits for the reservation).
STOP_RECORD_TIMEOUT_SECONDS = 3.0
# A claim not applied is tried again after this long.
CLAIM_RETRY_SECONDS = 0.2

STATEMENTS = {
    "read": "SELECT reserved_until_ms FROM id_reservations WHERE instance_id = ?",
    "reserve": "INSERT INTO id_reservations (instance_id, reserved_until_ms) VALUES (?, ?) USING TIMESTAMP ?",
    # Read at LOCAL_SERIAL: it sees every claim and record made so far.
    "generation": (
        "SELECT generation, stopped_generation, stopped_last_ms, stopped_reserved_until_ms "
        "FROM id_generations WHERE instance_id = ?"
    ),
    # `IF generation = null` also applies to a row that does not exist yet.
    "claim": "UPDATE id_generations SET generation = ? WHERE instance_id = ? IF generation = ?",
    "record_stop": (
        "UPDATE id_generations SET stopped_generation = ?, stopped_last_ms = ?, stopped_reserved_until_ms = ? "
        "WHERE instance_id = ? IF generation = ?"
    ),
}


class ReservationTooFarAhead(RuntimeError):
    pass


class IdReservations:
    def __init__(
        self,
        cql: CqlSession,
        instance_id: int,
        ids: IdGenerator,
        ahead_ms: int = RESERVE_AHEAD_MS,
        every_seconds: float = RENEW_EVERY_SECONDS,
        start_wait_ms: int = START_WAIT_MAX_MS,
        start_retry_seconds: float = START_RETRY_SECONDS,
    ) -> None:
        self._cql = cql
        self._instance = instance_id
        self._ids = ids
        self._ahead_ms = ahead_ms
        self._every = every_seconds
        self._start_wait_ms = start_wait_ms
        self._start_retry = start_retry_seconds
        self._statements: dict[str, Any] = {}
        self._give_up_at = 0.0
        self._generation: int | None = None  # claimed at start
        # The furthest reservation acknowledged, or read at start: what this process's
        # clean-stop record vouches for. Not one only sent: a process of a version from before
        # generations that starts from the acknowledged one reserves a second past it, which
        # could be below a reservation sent and lost, and the record would then cover its ids.
        self._acked_until = 0

    async def start(self) -> None:
        """Before the first id: claim the next generation, start above the predecessor's
        last id (a clean stop) or reservation, and make one's own reservation."""
        self._give_up_at = asyncio.get_running_loop().time() + self._start_retry
        for name, query in STATEMENTS.items():
            self._statements[name] = await self._cql.prepare(query)
        self._statements["generation"].consistency_level = ConsistencyLevel.LOCAL_SERIAL
        stopped = await self._claim_generation()
        rows = await self._asking_again(lambda: self._cql.execute(self._statements["read"], (self._instance,)))
        reserved = rows[0].reserved_until_ms if rows else None
        floor = reserved
        if stopped is not None and (reserved is None or reserved <= stopped.stopped_reserved_until_ms):
            # The predecessor stopped cleanly, and nothing reserved ids on this instance id
            # since: its last id is the floor, not its reservation.
            floor = stopped.stopped_last_ms
            log.info(
                "id reservation: the predecessor stopped cleanly; starting after its last id",
                extra={"instance_id": self._instance, "generation": self._generation},
            )
        self._acked_until = max(self._acked_until, reserved or 0)
        if floor is not None:
            behind = floor - self._ids.clock_ms()
            if behind > START_BEHIND_MAX_MS:
                raise ReservationTooFarAhead(
                    f"instance {self._instance} reserved ids up to {floor} ms, {behind} ms ahead of this clock: "
                    "fix this host's clock; if it is right, a predecessor's clock was ahead and made ids that far "
                    "ahead, which this instance id must not make again: run the process under another instance id"
                )
            if 0 < behind <= self._start_wait_ms:
                await asyncio.sleep(behind / 1000)  # a quick restart: the clock passes it soon
            elif behind > 0:
                log.warning(
                    "clock behind this instance's reserved ids: making ids from the reservation on",
                    extra={"instance_id": self._instance, "behind_ms": behind},
                )
            self._ids.start_after(floor)  # nothing, once the clock has passed it
        await self._asking_again(self.reserve)

    async def _claim_generation(self) -> Any:
        """Claim the generation after the latest; returns the latest's clean-stop record
        when it made one, else None. A claim not applied (its outcome unknown and tried
        again, or another process's claim first) reads again: the latest then has no
        record of its own, and this start waits for the reservation."""
        while True:
            rows = await self._asking_again(
                lambda: self._cql.execute(self._statements["generation"], (self._instance,))
            )
            latest = rows[0].generation if rows else None
            params = ((latest or 0) + 1, self._instance, latest)
            claimed = await self._asking_again(functools.partial(self._cql.execute, self._statements["claim"], params))
            if claimed and claimed[0].applied:
                self._generation = params[0]
                stopped = rows[0] if rows and latest is not None and rows[0].stopped_generation == latest else None
                return stopped
            if asyncio.get_running_loop().time() >= self._give_up_at:
                raise RuntimeError(f"instance {self._instance}: could not claim a generation of this instance id")
            await asyncio.sleep(CLAIM_RETRY_SECONDS)

    async def stop(self) -> None:
        """After the last call that may make an id: make none from now on, and record the
        last one's millisecond under this process's generation, so that its successor
        starts at once. Gives up (the successor then waits) after STOP_RECORD_TIMEOUT_SECONDS."""
        self._ids.close()
        if self._generation is None:
            return
        params = (self._generation, self._ids.last_ms, self._acked_until, self._instance, self._generation)
        try:
            async with asyncio.timeout(STOP_RECORD_TIMEOUT_SECONDS):
                rows = await self._cql.execute(self._statements["record_stop"], params)
        except Exception as exc:  # noqa: BLE001 - the successor waits for the reservation instead
            log.warning("id reservation: could not record the clean stop: %r", exc)
            return
        if not (rows and rows[0].applied):
            log.warning("id reservation: another process claimed this instance id; no clean stop recorded")

    async def _asking_again(self, call: Callable[[], Awaitable[T]]) -> T:
        """`call`, asked again while the store does not answer, until start_retry_seconds
        after the start began: a process started while its store is down or overloaded
        waits for it."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                return await call()
            except CQL_UNAVAILABLE_ERRORS as exc:
                if loop.time() >= self._give_up_at:
                    raise
                log.warning("id reservation: the store did not answer; asking again: %r", exc)
                await asyncio.sleep(1.0)

    async def reserve(self) -> int:
        """Reserve up to `ahead_ms` past the clock, or JUMPED_MARGIN_MS past the last id when
        that is further (ids ahead of a clock that is behind); returns the new limit. Not
        `ahead_ms` past such an id: each successor that jumped would put the next one's
        floor another `ahead_ms` ahead of the time, for a clock that is right too."""
        until = max(self._ids.clock_ms() + self._ahead_ms, self._ids.last_ms + JUMPED_MARGIN_MS)
        await self._cql.execute(self._statements["reserve"], (self._instance, until, until * 1000))
        self._ids.allow_until(until)
        self._acked_until = max(self._acked_until, until)
        return until

    async def renew_forever(self) -> None:
        """Move the reservation on every `every_seconds`, the first time at once (the
        process may have taken a while to start serving since `start`); a renewal that
        fails or is slow is tried again soon."""
        while True:
            delay = self._every
            try:
                # Not asyncio.wait_for: on 3.11 it can swallow the cancel of a stop that comes
                # as the call ends, and the loop would run on, holding the shutdown.
                async with asyncio.timeout(RENEW_TIMEOUT_SECONDS):
                    await self.reserve()
            except Exception as exc:  # noqa: BLE001 - keep reserving once the store is back
                log.warning("could not move the id reservation on: %r", exc)
                delay = RETRY_SECONDS
            await asyncio.sleep(delay)
