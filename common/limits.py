"""Rate limits counted in shared Redis, so they hold across every instance.

Each limit is a fixed window: one counter key per subject (a user, an account,
a client address), created by its first hit with the window as its TTL. A hit
is one pipelined round trip of single-key commands on that key (INCR, PEXPIRE
NX, PTTL), so it is Redis-Cluster-safe, and a counter left without a TTL (a
connection cut between the INCR and the PEXPIRE) gets one from its next hit
rather than locking anyone out for good. Retry-After is the counter's TTL.

Per-user limits (posts, likes and unlikes, follows and unfollows) and the
per-address sign-up limit (each account is a password hash, and a way around
the per-user limits) fail open:
while Redis cannot answer, the action is allowed (availability first; the
edge's token buckets still bound the rate).

Failed logins are counted three ways, all over one window:
- per (account, client address): the tight limit. One address guessing an
  account's password is stopped after a handful of failures;
- per account, over all addresses: looser, so guessing spread over many
  addresses is bounded too. One address cannot reach it on its own (it is
  stopped by the first counter, and a refused attempt is not counted), so an
  attacker at one address cannot lock the owner out from another;
- per client address, over all accounts: looser still, so one address
  spraying a common password over many accounts is stopped without touching
  logins from other addresses.
An attempt is counted before its password is checked (so concurrent guesses
cannot all slip in before the first failure lands) and given back when it
succeeds, when it is refused, or when something other than the password
failed (an outage must not lock anyone out). The account counter is keyed by
the username as typed (lower-cased), whether or not the account exists, and a
refusal is the same 429 with the same message for all three counters: a
lockout tells nothing about the account. While Redis cannot answer, logins
are counted in each instance's memory instead (the limits then hold per
instance), so an outage does not open the door to unlimited guessing.

The counters live in the state Redis (CHIRP_REDIS_STATE_URL), which never
evicts: a counter evicted inside its window would forgive silently. When it
is full it refuses the INCR but still answers reads: each limit then counts
what Redis holds plus the hits this instance could not store (`RedisCounters`
keeps them until their window ends, and gives back there first), so an
account locked there stays locked, and every limit holds, per instance, on
top of the shared count.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol
from urllib.parse import unquote

import grpc
from redis.exceptions import OutOfMemoryError

from common.cache import RedisClient, Tolerant, tolerant
from common.errors import ResourceExhausted
from common.identity import metadata_value
from common.keys import limit_key

CLIENT_ADDRESS_HEADER = "x-chirp-client-ip"  # set by the edge from the connection, client copies removed
UNKNOWN_ADDRESS = "unknown"
LOGIN_REFUSED = "too many failed logins; try again later"

# ---- key subjects ----------------------------------------------------------------------
# The keys are built in common/keys.py (limit_key); subjects are normalized here.
Action = Literal["post", "like", "follow", "signup"]
_ACCOUNT_SUBJECT = re.compile(r"[a-z0-9_]{1,64}")
_ADDRESS_SUBJECT = re.compile(r"[0-9a-f.:/]{1,64}|" + UNKNOWN_ADDRESS)
_ACTION_NOUNS: dict[Action, str] = {
    "post": "posts",
    "like": "likes",
    "follow": "follows, blocks and mutes",
    "signup": "sign-ups from this address",
}


def account_subject(username_key: str) -> str:
    """A username key as a key part; anything no one could register is hashed, so a client
    cannot make keys of any size or shape."""
    return username_key if _ACCOUNT_SUBJECT.fullmatch(username_key) else _digest(username_key)


def address_subject(address: str) -> str:
    """A `normalize_address` result as a key part (anything else is hashed)."""
    return address if _ADDRESS_SUBJECT.fullmatch(address) else _digest(address)


def _digest(text: str) -> str:
    return "~" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


# ---- client address ------------------------------------------------------------------


def client_address(context: grpc.aio.ServicerContext) -> str:
    """The caller's address as the edge saw it; for a direct internal call, the peer's."""
    value = metadata_value(context, CLIENT_ADDRESS_HEADER)
    if value is None:
        value = _peer_host(context.peer() or "")
    return normalize_address(value)


def _peer_host(peer: str) -> str:
    # gRPC peers read "ipv4:10.0.0.1:5000" or "ipv6:%5B::1%5D:5000" (a URI: the brackets
    # percent-encoded).
    kind, _, rest = unquote(peer).partition(":")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]")
    return UNKNOWN_ADDRESS


def normalize_address(value: str) -> str:
    """One subject per client: IPv6 clients by their /64 (a single host usually holds a
    whole /64, so per-address counting would not stop it), IPv4-mapped as IPv4."""
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError:
        return UNKNOWN_ADDRESS
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False).network_address) + "/64"
    return str(address)


# ---- counters --------------------------------------------------------------------------


@dataclass(frozen=True)
class Limit:
    """At most `count` per window (0: no limit)."""

    count: int
    window_seconds: float

    @property
    def window_ms(self) -> int:
        return max(1, int(self.window_seconds * 1000))


@dataclass(frozen=True)
class Hit:
    count: int  # the counter after this hit
    remaining_ms: int  # until the window ends


class Counters(Protocol):
    async def hit(self, keys: Sequence[tuple[str, int]]) -> list[Hit] | None:
        """Count one hit on each (key, window ms); None when the counters cannot answer now."""
        ...

    async def give_back(self, keys: Sequence[str]) -> None: ...


# What the limits do while Redis cannot answer, or is full, for the log lines then.
WITHOUT_REDIS = "per-user limits fail open and failed logins are counted in each instance"
WHILE_FULL = "each instance counts the hits Redis refused on top of what it holds"


# A give-back to a counter whose window ended meanwhile would make it anew at -1, with
# no TTL: kept for ever unless its subject is counted again, and one attempt too many.
GIVE_BACK_SCRIPT = "if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('DECR', KEYS[1]) end return 0"


class RedisCounters(Tolerant):
    """Counters in shared Redis; answer None while Redis is unreachable (and for a second after).

    While Redis is full, the hits it refused are kept in `overflow` (this process's memory),
    and every count is what Redis holds plus what is kept, full or not, until the kept hits'
    window ends: a Redis that fills and empties in turn neither forgives nor counts twice. A
    give-back goes where its subject's hits are kept first (the module docstring).
    `overflow` is also what LoginGuard falls back to while Redis is down: pass the same one."""

    def __init__(self, redis: RedisClient, overflow: LocalCounters | None = None) -> None:
        super().__init__(redis)
        self._redis = redis
        self._overflow = overflow or LocalCounters()

    @tolerant(unavailable=WITHOUT_REDIS)
    async def hit(self, keys: Sequence[tuple[str, int]]) -> list[Hit] | None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key, window_ms in keys:
                    pipe.incr(key)
                    pipe.pexpire(key, window_ms, nx=True)
                    pipe.pttl(key)
                replies = await pipe.execute()
        except OutOfMemoryError as exc:
            return await self._hit_while_full(keys, exc)
        return [
            self._with_kept(key, int(replies[i]), _remaining(int(replies[i + 2]), window_ms))
            for i, (key, window_ms) in zip(range(0, len(replies), 3), keys, strict=True)
        ]

    def _with_kept(self, key: str, count: int, remaining_ms: int) -> Hit:
        kept, kept_ms = self._overflow.kept(key)
        return Hit(count + kept, max(remaining_ms, kept_ms)) if kept else Hit(count, remaining_ms)

    async def _hit_while_full(self, keys: Sequence[tuple[str, int]], exc: OutOfMemoryError) -> list[Hit]:
        """Redis refused to count (full, and it may not evict): each count is what it holds
        plus this process's own hits, and the window lasts until both have ended. (On a
        cluster, a shard with room may have counted its keys too: that errs toward refusing.)"""
        self.full(exc, WHILE_FULL)
        async with self._redis.pipeline(transaction=False) as pipe:
            for key, _ in keys:
                pipe.get(key)
                pipe.pttl(key)
            replies = await pipe.execute()
        kept = await self._overflow.hit(keys) or []
        return [
            Hit(int(replies[2 * n] or 0) + own.count, max(int(replies[2 * n + 1]), own.remaining_ms))
            for n, own in enumerate(kept)
        ]

    @tolerant(unavailable=WITHOUT_REDIS)
    async def give_back(self, keys: Sequence[str]) -> None:
        # Where the subject's hits are kept first: a give-back to Redis for a key it never
        # held (it was full) would be lost, and the hit kept here counted for good.
        kept = [key for key in keys if self._overflow.kept(key)[0] > 0]
        await self._overflow.give_back(kept)
        rest = [key for key in keys if key not in kept]
        if not rest:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in rest:
                    pipe.eval(GIVE_BACK_SCRIPT, 1, key)
                await pipe.execute()
        except OutOfMemoryError as exc:  # the DECR refused: that hit stays counted until its window ends
            self.full(exc, WHILE_FULL)


def _remaining(pttl: int, window_ms: int) -> int:
    # -1 (no TTL yet) cannot follow PEXPIRE NX; -2 (gone) means the window just ended.
    return window_ms if pttl == -1 else max(0, pttl)


class LocalCounters:
    """The same counters in this process's memory: logins fall back to them while Redis is
    down. Bounded: past `max_keys`, expired counters go first, then the oldest."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000) -> None:
        self._clock = clock
        self._max_keys = max_keys
        self._counts: dict[str, tuple[int, float]] = {}  # key -> (count, window end)

    async def hit(self, keys: Sequence[tuple[str, int]]) -> list[Hit] | None:
        now = self._clock()
        hits = []
        for key, window_ms in keys:
            count, ends = self._counts.get(key, (0, 0.0))
            if ends <= now:
                count, ends = 0, now + window_ms / 1000
            self._counts[key] = (count + 1, ends)
            hits.append(Hit(count + 1, math.ceil((ends - now) * 1000)))
        self._evict(now)
        return hits

    async def give_back(self, keys: Sequence[str]) -> None:
        for key in keys:
            if key in self._counts:
                count, ends = self._counts[key]
                self._counts[key] = (max(0, count - 1), ends)

    def kept(self, key: str) -> tuple[int, int]:
        """(count, ms until its window ends) of `key`, without a hit; (0, 0) once it ended."""
        count, ends = self._counts.get(key, (0, 0.0))
        if count <= 0:
            return 0, 0
        now = self._clock()
        return (count, math.ceil((ends - now) * 1000)) if ends > now else (0, 0)

    def _evict(self, now: float) -> None:
        if len(self._counts) <= self._max_keys:
            return
        for key in [k for k, (_, ends) in self._counts.items() if ends <= now]:
            del self._counts[key]
        while len(self._counts) > self._max_keys:
            del self._counts[next(iter(self._counts))]  # dicts keep insertion order


def retry_after_seconds(remaining_ms: int) -> int:
    """Whole seconds, rounded up and at least 1: a client that waits that long is let in."""
    return max(1, math.ceil(remaining_ms / 1000))


# ---- per-user limits -------------------------------------------------------------------


class UserLimits:
    """Per-user limits on actions; fail open while the counters cannot answer."""

    def __init__(self, counters: Counters, limits: Mapping[Action, Limit]) -> None:
        self._counters = counters
        self._limits = {action: limit for action, limit in limits.items() if limit.count > 0}

    @classmethod
    def unlimited(cls) -> UserLimits:
        return cls(LocalCounters(), {})

    async def take(self, action: Action, subject: int | str) -> None:
        """Count one `action` by `subject` (a user id; for sign-ups, an `address_subject`);
        ResourceExhausted (429) past its limit."""
        limit = self._limits.get(action)
        if limit is None:
            return
        hits = await self._counters.hit([(limit_key(action, subject), limit.window_ms)])
        if hits is None:
            return
        if hits[0].count > limit.count:
            raise ResourceExhausted(
                f"too many {_ACTION_NOUNS[action]}: at most {limit.count} every "
                f"{_seconds(limit.window_seconds)} seconds; try again later",
                retry_after_seconds(hits[0].remaining_ms),
            )


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


# ---- failed logins ---------------------------------------------------------------------


@dataclass(frozen=True)
class LoginLimits:
    """Failed logins allowed per window (0: that counter is off)."""

    window_seconds: float
    per_account_address: int
    per_account: int
    per_address: int


@dataclass(frozen=True)
class LoginAttempt:
    """An attempt counted as a failure until given back: each step's keys with the
    counters that counted them (Redis for the first, this instance's for the second
    when Redis stopped answering in between: a state shard away on a cluster)."""

    counted: tuple[tuple[Counters, tuple[str, ...]], ...]

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(key for _, keys in self.counted for key in keys)


class LoginGuard:
    """Counts failed logins before the password is checked; see the module docstring."""

    def __init__(self, counters: Counters, limits: LoginLimits, fallback: Counters | None = None) -> None:
        self._counters = counters
        self._fallback = fallback or LocalCounters()
        self._limits = limits

    @classmethod
    def unlimited(cls) -> LoginGuard:
        return cls(LocalCounters(), LoginLimits(1.0, 0, 0, 0))

    async def begin(self, account: str, address: str) -> LoginAttempt:
        """Count an attempt on `account` (its username key) from `address`;
        ResourceExhausted (429) when any of its counters is past its limit."""
        limits = self._limits
        window_ms = Limit(0, limits.window_seconds).window_ms
        acct, addr = account_subject(account), address_subject(address)
        pair = [(limit_key("login_pair", f"{acct}:{addr}"), limits.per_account_address)]
        wider = [
            (limit_key("login_account", acct), limits.per_account),
            (limit_key("login_address", addr), limits.per_address),
        ]
        # Two steps: the (account, address) counter first, alone. An address already past
        # it is refused before it touches the account's and the address's counters, so no
        # burst of refused attempts from one address can push the account over its limit
        # and lock the owner out from elsewhere, even for the moment before a give-back.
        steps = [[(key, cap) for key, cap in step if cap > 0] for step in (pair, wider)]
        counters = self._counters
        counted: list[tuple[Counters, tuple[str, ...]]] = []
        for step in (step for step in steps if step):
            hits = await counters.hit([(key, window_ms) for key, _ in step])
            if hits is None:  # Redis unreachable: this instance's own counts from here on
                counters = self._fallback
                hits = await counters.hit([(key, window_ms) for key, _ in step]) or []
            over = [hit for hit, (_, cap) in zip(hits, step, strict=True) if hit.count > cap]
            if over:
                # A refused attempt is no failure: give back what it added under the limits.
                under = tuple(key for hit, (key, cap) in zip(hits, step, strict=True) if hit.count <= cap)
                await self.give_back(LoginAttempt((*counted, (counters, under))))
                raise ResourceExhausted(LOGIN_REFUSED, retry_after_seconds(max(h.remaining_ms for h in over)))
            counted.append((counters, tuple(key for key, _ in step)))
        return LoginAttempt(tuple(counted))

    async def give_back(self, attempt: LoginAttempt) -> None:
        """The attempt was not a wrong password (it succeeded, or something else failed):
        each key given back to the counters that counted it. (All to the last step's, a
        pair counted in Redis before it stopped answering stayed counted there: a user who
        logged in five times while a state shard was away was refused with the right
        password.)"""
        for counters, keys in attempt.counted:
            if keys:
                await counters.give_back(keys)
