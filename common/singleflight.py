"""One load per missing key at a time, and a bound on concurrent cache rebuilds.

When a cached key is missing, every request asking for it loads it from the store
and fills the cache; after a restart or a lost Redis node that is the same load
made by every request at once, and the requests time out in the store's queue.
A SingleFlight makes the first caller's load answer every caller asking for the
same key while it runs: later callers wait on it and get its values or its
exception. Nothing is kept once it ends: the cache is the cache, this is only
the queue in front of it.

A value is as fresh as its load's start, which may precede a caller's own start:
callers whose keys can change meanwhile (a post adding to an author's recent ids)
read the cache again for the keys they joined (`Loaded.joined`), which the load
filled before it ended.

Loads run under a Rebuilds bound shared by the process's flights: a cold cache
queues its rebuilds instead of taking every store connection and the event loop
from the reads the cache still answers (those never come here). A load runs in a
task of its own, so a caller that stops waiting (its deadline ended) cancels
nothing another caller waits on; a load that no one waits for any more before it
got a slot is dropped. A load may itself load through a flight (a timeline rebuild
reading the followed accounts): that inner load runs within the outer one's slot,
as waiting for a second slot while holding one could leave every slot so held.

A BackgroundRefresh is for the other way a cache goes cold at once: keys filled
together reaching their refresh time together. The reads keep serving them and
ask for their rebuild, which runs after the read answered, bounded per process.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Generic, TypeVar

from prometheus_client import Counter, Gauge

from common import deadlines

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# Rebuilds at once per process. A rebuild is one or a few CQL reads of a few ms, so
# 8 at once still refill thousands of keys a second, while the store and the event
# loop keep room for everything else.
DEFAULT_REBUILDS = 8

FILLS = Counter(
    "chirp_cache_fill_keys_total",
    "Cache keys a miss asked to load, by whether this call loaded them or joined a load in flight.",
    ["cache", "role"],
)
QUEUED = Gauge("chirp_cache_rebuilds_waiting", "Cache rebuilds waiting for a slot (Rebuilds) in this process.")

# Set in a load's task (and so in the tasks it starts): an inner load needs no slot.
_IN_REBUILD: ContextVar[bool] = ContextVar("chirp_in_rebuild", default=False)


class Rebuilds:
    """At most `limit` loads at once in this process; the others wait for a slot."""

    def __init__(self, limit: int = DEFAULT_REBUILDS) -> None:
        if limit < 1:
            raise ValueError(f"rebuilds must be at least 1, got {limit}")
        self.limit = limit
        self.running = 0
        self._slots = asyncio.Semaphore(limit)

    async def run(self, load: Callable[[], Awaitable[V]]) -> V:
        if _IN_REBUILD.get():
            return await load()
        QUEUED.inc()
        try:
            await self._slots.acquire()
        finally:
            QUEUED.dec()
        self.running += 1
        token = _IN_REBUILD.set(True)
        try:
            return await load()
        finally:
            _IN_REBUILD.reset(token)
            self.running -= 1
            self._slots.release()


@dataclass(frozen=True)
class Loaded(Generic[K, V]):
    values: dict[K, V]  # the keys the loads found (a key a load left out was not found)
    joined: frozenset[K]  # keys a load started before this call answered


class _Flight(Generic[K, V]):
    __slots__ = ("keys", "started", "task", "waiters")

    def __init__(self, keys: list[K], task: asyncio.Task[dict[K, V]]) -> None:
        self.keys = keys
        self.task = task
        self.started = False  # holds a Rebuilds slot: it runs to its end
        self.waiters = 0


class SingleFlight(Generic[K, V]):
    """Loads of one cache family (`name` labels its metrics), keyed by cache key."""

    def __init__(self, name: str, rebuilds: Rebuilds) -> None:
        self._name = name
        self._rebuilds = rebuilds
        self._flights: dict[K, _Flight[K, V]] = {}

    def in_flight(self) -> int:
        """Keys being loaded now."""
        return len(self._flights)

    async def load(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        """The value `load` returns for `key`, loaded once for every concurrent caller."""

        async def one(keys: list[K]) -> dict[K, V]:
            return {key: await load()}

        return (await self.load_many([key], one)).values[key]

    async def load_many(self, keys: Iterable[K], load: Callable[[list[K]], Awaitable[Mapping[K, V]]]) -> Loaded[K, V]:
        """`load` is called with the keys no load in flight covers yet, and returns the
        values it found; the other keys wait on the loads already covering them."""
        wanted = list(dict.fromkeys(keys))
        flights: dict[int, _Flight[K, V]] = {}
        mine: list[K] = []
        for key in wanted:
            flight = self._flights.get(key)
            if flight is None:
                mine.append(key)
            else:
                flights[id(flight)] = flight
        joined = frozenset(wanted) - frozenset(mine)
        if mine:
            flight = self._start(mine, load)
            flights[id(flight)] = flight
        FILLS.labels(self._name, "load").inc(len(mine))
        FILLS.labels(self._name, "join").inc(len(joined))
        found: dict[K, V] = {}
        for values in await self._wait(list(flights.values())):
            found.update(values)
        return Loaded({k: found[k] for k in wanted if k in found}, joined)

    def _start(self, keys: list[K], load: Callable[[list[K]], Awaitable[Mapping[K, V]]]) -> _Flight[K, V]:
        # The task first runs at the loop's next turn, when `flight` below is set.
        async def run() -> dict[K, V]:
            flight.started = True
            values = await load(list(keys))
            return {k: values[k] for k in keys if k in values}

        async def guarded() -> dict[K, V]:
            try:
                return await self._rebuilds.run(run)
            finally:
                self._forget(flight)

        # The task copies this caller's context (its request id) but not its deadline: a
        # load that waited for a slot, or that later callers joined, would end for all of
        # them at the first caller's time. Each caller stops waiting at its own.
        flight: _Flight[K, V] = _Flight(keys, deadlines.shared_task(guarded()))
        flight.task.add_done_callback(_retrieve)
        for key in keys:
            self._flights[key] = flight
        return flight

    async def _wait(self, flights: list[_Flight[K, V]]) -> list[dict[K, V]]:
        for flight in flights:
            flight.waiters += 1
        try:
            # shield: a caller leaving (cancelled at its deadline) leaves the load running
            # for the others.
            return await asyncio.gather(*(asyncio.shield(f.task) for f in flights))
        finally:
            for flight in flights:
                flight.waiters -= 1
                if not flight.waiters and not flight.started:
                    # No one wants it any more and it has not begun: drop it, and first
                    # stop new callers from joining a load about to be cancelled.
                    self._forget(flight)
                    flight.task.cancel()

    def _forget(self, flight: _Flight[K, V]) -> None:
        for key in flight.keys:
            if self._flights.get(key) is flight:
                del self._flights[key]


def _retrieve(task: asyncio.Task[object]) -> None:
    """A load's error reaches its waiters; with none left, it is not logged as never retrieved."""
    if not task.cancelled():
        task.exception()


# Background refreshes, per process: a batch of at most REFRESH_BATCH keys every
# REFRESH_INTERVAL_SECONDS, so keys due together are rebuilt over seconds rather
# than in one burst beside the reads (and their next refresh times spread out as
# well); a key sent is not asked again for REFRESH_COOLDOWN_SECONDS; at most
# REFRESH_PENDING keys wait.
REFRESH_BATCH = 50
REFRESH_INTERVAL_SECONDS = 0.5
REFRESH_COOLDOWN_SECONDS = 5.0
REFRESH_PENDING = 5000


def id_share(key_id: int) -> float:
    """A share in [0, 1) drawn from an id by Fibonacci hashing: the same in every process
    and on every read, and spread evenly over ids made one after another (Snowflake)."""
    return ((key_id * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF) / 2**64


def due_by_pttl(key_id: int, pttl_ms: object, ttl_ms: float, fraction: float, spread: float) -> bool:
    """Whether an entry that lives `ttl_ms` and has `pttl_ms` left (a PTTL reply) is due to
    be loaded again after the read that served it. Its due point is `fraction` of its
    lifetime before its end, brought closer to the end by up to `spread` of that by
    `id_share(key_id)`: entries filled together (a warm-up, a cold start) fall due over
    a span, not at once. One with no expiry (-1) is due; one not answered is not."""
    if not isinstance(pttl_ms, int) or pttl_ms > ttl_ms * fraction:
        return False  # not answered, or early in its life (most reads: no hash)
    return pttl_ms == -1 or 0 <= pttl_ms <= due_point_ms(key_id, ttl_ms, fraction, spread)


def due_point_ms(key_id: int, ttl_ms: float, fraction: float, spread: float) -> int:
    """The time left (ms) at which `due_by_pttl` finds the entry due. A reload's claim
    checks it again in Redis: one that another process stored meanwhile is not due."""
    return int(ttl_ms * fraction * (1.0 - spread * id_share(key_id)))


REFRESHES = Counter(
    "chirp_cache_refresh_keys_total",
    "Cache keys a read found due for a rebuild, by what became of the request.",
    ["cache", "outcome"],
)


class BackgroundRefresh(Generic[K]):
    """Rebuilds of keys reads served but found due, made after the reads answered and
    paced, so no read waits on them and they do not come as one burst. One task per
    process drains the keys in batches (REFRESH_BATCH every REFRESH_INTERVAL_SECONDS);
    a key sent is not asked again for the cooldown (a rebuild that declined leaves it
    due: reads would otherwise ask at their own rate); keys beyond REFRESH_PENDING are
    dropped, as is a batch that fails: a later read finds them due again. The task runs
    in a context of its own: no read's deadline or request id is its."""

    def __init__(
        self,
        name: str,
        refresh: Callable[[list[K]], Awaitable[object]],
        batch: int = REFRESH_BATCH,
        interval_seconds: float = REFRESH_INTERVAL_SECONDS,
        cooldown_seconds: float = REFRESH_COOLDOWN_SECONDS,
        max_pending: int = REFRESH_PENDING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._name = name
        self._refresh = refresh
        self._batch = batch
        self._interval = interval_seconds
        self._cooldown = cooldown_seconds
        self._max_pending = max_pending
        self._clock = clock
        self._pending: dict[K, None] = {}  # insertion-ordered: the oldest request first
        self._sent: dict[K, float] = {}  # key -> when it was last sent
        self._task: asyncio.Task[None] | None = None

    def pending(self) -> int:
        """Keys waiting for their batch."""
        return len(self._pending)

    def draining(self) -> bool:
        """Whether a batch is waiting or running."""
        return self._task is not None

    def request(self, keys: Iterable[K]) -> None:
        now = self._clock()
        if len(self._sent) > 2 * self._max_pending:
            self._sent = {k: at for k, at in self._sent.items() if now - at < self._cooldown}
        dropped = 0
        for key in keys:
            if key in self._pending or now - self._sent.get(key, now - self._cooldown) < self._cooldown:
                continue
            if len(self._pending) >= self._max_pending:
                dropped += 1
                continue
            self._pending[key] = None
        if dropped:
            REFRESHES.labels(self._name, "dropped").inc(dropped)
        if self._pending and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._drain(), context=contextvars.Context())

    async def _drain(self) -> None:
        try:
            while self._pending:
                await asyncio.sleep(self._interval)
                batch = list(itertools.islice(self._pending, self._batch))
                now = self._clock()
                for key in batch:
                    del self._pending[key]
                    self._sent[key] = now
                try:
                    await self._refresh(batch)
                except Exception as exc:  # noqa: BLE001 - the keys stay due; a later read asks again
                    REFRESHES.labels(self._name, "failed").inc(len(batch))
                    log.debug("refresh of %d %s keys failed: %r", len(batch), self._name, exc)
                else:
                    REFRESHES.labels(self._name, "sent").inc(len(batch))
        finally:
            self._task = None
