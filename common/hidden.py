"""The cache of each user's hidden authors (the ones they mute or block and the
ones blocking them), written once here: graph_svc invalidates it, feed_svc and
rank_svc read it. It must never be stale: a mute, unmute, block or unblock
applies to the very next read.

The set lists everyone the user mutes or blocks and up to a thousand of those
blocking them (graph_svc/relations.py, BLOCKERS_LISTED); with more, it also holds
BLOCKERS_UNLISTED (0, never a user id, so a reader that does not know it hides no
one by it), and its readers ask graph_svc which authors they are about to show
block the user (`without_blockers`).

Two keys per user, sharing the user's hash tag so one script touches both on a
Redis Cluster: `hid:{<user>}`, the set (ids comma-separated, empty for nobody),
and `hidv:{<user>}`, a random version token; and for a few seconds while one
process reloads the set, `hid:{<user>}:reload`, its claim.

- A reader GETs the set; on a miss it takes the token (creating one when there
  is none) in the same script, asks graph_svc, and fills only if the token is
  still the one it took. Tokens are random, never counters: a token that was
  evicted or expired and re-created can never equal the one a reader holds.
- A writer, for each user whose set it changes, deletes the set and sets a new
  token before its CQL write and again after it, before acknowledging. A fill
  computed from the rows before the write either lands before the second
  invalidation (which deletes it) or finds a new token (and is dropped).
- Concurrent readers of one user that took the same token share one fetch
  (common/singleflight.py): a write replaces the token before it is
  acknowledged, so a reader after it takes another token and never joins a
  fetch that began before the write.
- A set a read serves near the end of its lifetime (HIDDEN_REFRESH_FRACTION of it
  left, or less, at a point spread by the user's id) is loaded again after the read
  (`reload_after_reads`), by one process (RELOAD_TOKEN_SCRIPT claims it, and the
  claim is released when the reload ends, whatever its outcome): under the token it
  finds (none when the set is gone), graph_svc is asked, and FILL_SCRIPT stores the answer for a whole
  lifetime only while that token is still there, as a reader's fill does. So a
  change applied meanwhile drops the reload, and sets filled together (a warm-up, a
  cold start) are not all missed, and loaded by their readers waiting, together.
- Reads treat Redis errors as misses (the answer comes from graph_svc and
  nothing is filled). Writes raise Unavailable (503) instead: acknowledging a
  change Redis did not see would serve the old set for up to HIDDEN_SECONDS.
  The writes are idempotent and Envoy retries them, and every call
  invalidates, even a repeat that changes no row, so a retry repairs it.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from prometheus_client import Counter
from redis.commands.core import AsyncScript

from common.cache import (
    REDIS_UNAVAILABLE_ERRORS,
    RELOAD_CLAIM_MS,
    RedisClient,
    ReloadClaims,
    Tolerant,
    run_claimed_reloads,
    tolerant,
)
from common.errors import DEPENDENCY_DOWN_MESSAGE, Unavailable
from common.keys import reload_claim_key
from common.singleflight import BackgroundRefresh, Rebuilds, SingleFlight, due_by_pttl, due_point_ms

# How long a filled set lives; writers delete it, so this only bounds what an
# old copy can serve: a Redis failover that lost the invalidation (replication
# is asynchronous and the writer does not WAIT for a replica), or an RDB
# restore. Short, because a mute that comes back for a while is what users
# notice; an active reader still hits the cache on nearly every read.
HIDDEN_SECONDS = 60.0
# A token only needs to outlive one read-then-fill; expiring drops that fill.
VERSION_SECONDS = 3600.0
# Where a set a read serves falls due to be loaded again after the read: a fifth of
# its lifetime before its end, brought up to three quarters of that closer to the end
# by the reader's id (common/singleflight.py, `due_by_pttl`).
HIDDEN_REFRESH_FRACTION = 0.2
HIDDEN_REFRESH_SPREAD = 0.75
HIDDEN_RELOADS_AT_ONCE = 4  # per process

# In a set: it lists only some of the user's blockers (see the module docstring).
BLOCKERS_UNLISTED = 0

LOOKUPS = Counter("chirp_hidden_authors_cache_total", "Hidden-author set lookups by cache outcome.", ["result"])
RELOADS = Counter(
    "chirp_hidden_authors_reloads_total",
    "Hidden-author sets a read found near their end, loaded again after it: stored; changed "
    "(a block or mute applied meanwhile, or the token lost: nothing stored); skipped (gone, "
    "its token lost, or reloaded or being reloaded by another process); failed.",
    ["result"],
)
# Looked up once: labels() takes a lock and a dict lookup on every call.
_HITS = LOOKUPS.labels("hit")
_MISSES = LOOKUPS.labels("miss")

# KEYS: set, token. ARGV: a fresh token, token ttl_ms. Returns {set, nil, the set's PTTL}
# or {nil, token}.
READ_SCRIPT = """
local hidden = redis.call('GET', KEYS[1])
if hidden then return {hidden, false, redis.call('PTTL', KEYS[1])} end
local version = redis.call('GET', KEYS[2])
if not version then
  version = ARGV[1]
  redis.call('SET', KEYS[2], version, 'PX', ARGV[2])
end
return {false, version}
"""

# KEYS: set, token. ARGV: the token read before graph_svc was asked, the set, ttl_ms.
FILL_SCRIPT = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""

# KEYS: set, token. ARGV: a fresh token, token ttl_ms.
INVALIDATE_SCRIPT = """
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return 1
"""


# KEYS: set, token, the reload's claim (common/keys.py, in the user's slot). ARGV: the
# claim's token, claim ms, token ttl_ms, the set's due point (ms left). Returns the
# token a reload fills under, taking the claim and keeping the token for another
# VERSION_SECONDS (reloads keep a set in use alive); nil, claiming nothing, when the
# set is gone (a change deleted it, or it expired: the next read's miss fills it), no
# longer due (another process reloaded it), its token is lost, or another process
# claimed the reload.
RELOAD_TOKEN_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
if redis.call('PTTL', KEYS[1]) > tonumber(ARGV[4]) then return false end
local token = redis.call('GET', KEYS[2])
if not token then return false end
local held = redis.call('GET', KEYS[3])
if held and held ~= ARGV[1] then return false end
redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return token
"""


def hidden_key(user_id: int) -> str:
    return f"hid:{{{user_id}}}"


def hidden_version_key(user_id: int) -> str:
    return f"hidv:{{{user_id}}}"


def _keys(user_id: int) -> list[str]:
    return [hidden_key(user_id), hidden_version_key(user_id)]


def new_token() -> str:
    return secrets.token_hex(8)


def encode(hidden: frozenset[int]) -> str:
    return ",".join(str(u) for u in sorted(hidden))


def decode(raw: bytes | str) -> frozenset[int]:
    text = raw.decode() if isinstance(raw, bytes) else raw
    return frozenset(int(u) for u in text.split(",")) if text else frozenset()


@dataclass(frozen=True)
class Read:
    """One read of a user's keys: the set when cached (with its PTTL), else the token to
    fill under."""

    hidden: frozenset[int] | None
    version: str
    pttl_ms: int | None = None


class HiddenStore(Protocol):
    """One user's two keys, each call atomic on them."""

    async def read(self, user_id: int) -> Read:
        """The cached set, or none and the token (created when absent)."""
        ...

    async def fill(self, user_id: int, version: str, hidden: frozenset[int], ttl_seconds: float) -> bool:
        """Sets the set only while the token is `version`."""
        ...

    async def invalidate(self, user_id: int) -> None:
        """Deletes the set and replaces the token."""
        ...

    async def reload_token(self, user_id: int, claim: str, due_ms: int) -> str | None:
        """The token a reload of the cached set fills under, this process claiming the
        reload with `claim`; None when there is no set or token, it has more than
        `due_ms` left (reloaded since it was found due), or another process claimed it."""
        ...

    async def end_reload(self, user_id: int, claim: str) -> None:
        """Releases the claim `reload_token` took, whatever became of the reload."""
        ...


class RedisHiddenStore:
    """HiddenStore as five scripts; each touches one user's keys, all in one slot (the
    set, the token and, for a reload, its claim)."""

    def __init__(self, redis: RedisClient) -> None:
        # EVALSHA: the script text goes to each node once, not per read.
        self._read = redis.register_script(READ_SCRIPT)
        self._fill = redis.register_script(FILL_SCRIPT)
        self._invalidate = redis.register_script(INVALIDATE_SCRIPT)
        self._reload_token = redis.register_script(RELOAD_TOKEN_SCRIPT)
        self._claims = ReloadClaims(redis)

    async def read(self, user_id: int) -> Read:
        hidden, version, *pttl = await _run(self._read, user_id, [new_token(), _ms(VERSION_SECONDS)])
        if hidden is not None:
            return Read(decode(hidden), "", int(pttl[0]) if pttl else None)
        return Read(None, _text(version))

    async def fill(self, user_id: int, version: str, hidden: frozenset[int], ttl_seconds: float) -> bool:
        return bool(await _run(self._fill, user_id, [version, encode(hidden), _ms(ttl_seconds)]))

    async def invalidate(self, user_id: int) -> None:
        await _run(self._invalidate, user_id, [new_token(), _ms(VERSION_SECONDS)])

    async def reload_token(self, user_id: int, claim: str, due_ms: int) -> str | None:
        keys = [*_keys(user_id), reload_claim_key(hidden_key(user_id))]
        token = await self._reload_token(keys=keys, args=[claim, RELOAD_CLAIM_MS, _ms(VERSION_SECONDS), due_ms])
        return None if token is None else _text(token)

    async def end_reload(self, user_id: int, claim: str) -> None:
        await self._claims.release(hidden_key(user_id), claim)


FetchHidden = Callable[[int], Awaitable[frozenset[int]]]


class HiddenAuthorsCache(Tolerant):
    """The read side: `hidden(user)` from Redis, else from `fetch` (graph_svc's RPC)."""

    def __init__(
        self,
        store: HiddenStore,
        fetch: FetchHidden,
        ttl_seconds: float = HIDDEN_SECONDS,
        rebuilds: Rebuilds | None = None,
        *,
        redis: RedisClient | None,
        reload_after_reads: bool = False,
    ) -> None:
        super().__init__(redis)  # the store's client: on a cluster, a failure misses that call alone
        self._store = store
        self._fetch = fetch
        self._ttl_seconds = ttl_seconds
        # Sets reads served near their end, loaded again after those reads (`due`).
        self._reloads = BackgroundRefresh("hidden_authors", self._reload) if reload_after_reads else None
        self._reloading = asyncio.Semaphore(HIDDEN_RELOADS_AT_ONCE)
        # Keyed by (user, token); `rebuilds` is best the one the process's other fills share.
        self._fetches: SingleFlight[tuple[int, str], frozenset[int]] = SingleFlight(
            "hidden_authors", rebuilds or Rebuilds()
        )

    def due_point_ms(self, user_id: int) -> int:
        """The time left (ms) at which the user's set falls due to be loaded again."""
        return due_point_ms(user_id, _ms(self._ttl_seconds), HIDDEN_REFRESH_FRACTION, HIDDEN_REFRESH_SPREAD)

    def due(self, user_id: int, pttl_ms: object) -> bool:
        """Whether the user's set, whose PTTL is `pttl_ms`, is due to be loaded again."""
        return due_by_pttl(user_id, pttl_ms, _ms(self._ttl_seconds), HIDDEN_REFRESH_FRACTION, HIDDEN_REFRESH_SPREAD)

    async def hidden(
        self, user_id: int, cached: bytes | str | None = None, redis_answered: bool = True, pttl_ms: object = None
    ) -> frozenset[int]:
        """The user's hidden authors. `cached`: the reply to a GET of `hidden_key(user_id)`
        a caller sent with its own reads (None: a miss, or not read), so that a hit costs
        no round trip of its own. A set read by a plain GET is as current as the read
        script's: writers delete the set, they never write it; only a miss needs the
        script, for the token a fill is made under. `redis_answered` False: those reads
        found Redis unavailable (or this process out of connections), so the set comes
        from `fetch` without trying Redis again (a second wait), and is not filled.
        `pttl_ms`: the PTTL of that key, read with it; a set served near its end is
        loaded again after the read, when this cache reloads (`reload_after_reads`)."""
        if cached is not None:
            _HITS.inc()
            if self._reloads is not None and self.due(user_id, pttl_ms):
                self._reloads.request((user_id,))
            return decode(cached)
        read = await self._read(user_id) if redis_answered else None
        if read is not None and read.hidden is not None:
            _HITS.inc()
            if self._reloads is not None and self.due(user_id, read.pttl_ms):
                self._reloads.request((user_id,))  # a caller that read no PTTL of its own (rank_svc)
            return read.hidden
        _MISSES.inc()
        if read is None:  # Redis unreachable: without a token, a fill could be stale
            return await self._fetch(user_id)
        version = read.version

        async def fetch_and_fill() -> frozenset[int]:
            hidden = await self._fetch(user_id)
            await self._fill(user_id, version, hidden)
            return hidden

        return await self._fetches.load((user_id, version), fetch_and_fill)

    async def _reload(self, user_ids: list[int]) -> None:
        """Load again, from graph_svc, the sets reads served near their end, each stored
        only under the token taken before its load (a change applied meanwhile replaces
        the token, and the load is dropped). Not `tolerant`: a failure is the reload's
        alone (counted, the set left as it is and still due), never a reason to serve
        reads without Redis."""

        await run_claimed_reloads(
            user_ids,
            lambda user_id, claim: self._store.reload_token(user_id, claim, self.due_point_ms(user_id)),
            self._reload_one,
            self._store.end_reload,
            self._reloading,
            RELOADS,
            "hidden-author",
        )

    async def _reload_one(self, user_id: int, token: str) -> bool:
        hidden = await self._fetch(user_id)
        return await self._store.fill(user_id, token, hidden, self._ttl_seconds)

    @tolerant()
    async def _read(self, user_id: int) -> Read | None:
        return await self._store.read(user_id)

    @tolerant()
    async def _fill(self, user_id: int, version: str, hidden: frozenset[int]) -> None:
        await self._store.fill(user_id, version, hidden, self._ttl_seconds)


# (viewer id, author ids) -> the ones blocking the viewer (graph_svc GetRelations)
BlockersAmong = Callable[[int, Sequence[int]], Awaitable[set[int]]]
Shown = TypeVar("Shown")


async def without_blockers(
    viewer: int,
    hidden: frozenset[int],
    show: Callable[[frozenset[int]], list[Shown]],
    author_of: Callable[[Shown], int],
    blockers_among: BlockersAmong | None,
    asked: set[int] | None = None,
) -> tuple[list[Shown], frozenset[int]]:
    """What `show(hidden)` shows, and `hidden`, each without the viewer's blockers. When
    the viewer's set lists only some of them (BLOCKERS_UNLISTED), graph_svc is asked
    which authors about to be shown block the viewer, until none does: each round hides
    at least one more author or ends. The viewer is never asked about, nor any author in
    `asked`, which gathers those asked about (a caller serving one page in several calls
    passes the same set to each)."""
    shown = show(hidden)
    if BLOCKERS_UNLISTED not in hidden or blockers_among is None:
        return shown, hidden
    asked = set() if asked is None else asked
    asked.add(viewer)
    while unasked := list(dict.fromkeys(a for a in map(author_of, shown) if a not in asked)):
        asked.update(unasked)
        blockers = await blockers_among(viewer, unasked)
        if not blockers:
            break
        hidden |= blockers
        shown = show(hidden)
    return shown, hidden


class HiddenInvalidator:
    """The write side: graph_svc runs `invalidate` on every user whose set a change
    touches, before its CQL write and again after it."""

    def __init__(self, store: HiddenStore) -> None:
        self._store = store

    async def invalidate(self, user_ids: Sequence[int]) -> None:
        try:
            for user_id in user_ids:
                await self._store.invalidate(user_id)
        except REDIS_UNAVAILABLE_ERRORS as exc:
            raise Unavailable(DEPENDENCY_DOWN_MESSAGE) from exc


async def _run(script: AsyncScript, user_id: int, args: list[str | int]) -> Any:
    return await script(keys=_keys(user_id), args=args)


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw
