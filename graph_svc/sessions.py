"""Sessions: refresh tokens, their chains, logout and password changes.

A login starts a session (a chain, `session_chains`) and returns a short-lived
access token carrying the chain's id (`sid`) and a refresh token. A refresh
token is 32 random bytes, URL-safe base64; only its SHA-256 hash is stored
(`refresh_tokens`), so a read of the table gives nobody a usable token.

Rotation: a refresh retires the presented token with a conditional update
(`IF retired = false`), so of two refreshes racing with one token exactly one
gets the next pair. Presenting a retired token again (a replay, or the loser
of such a race) revokes the whole chain: one of the two holders is not the
owner, and we cannot tell which. Unknown, expired, retired and revoked tokens
all get the same 401, so the answer tells a guesser nothing.

Revocation (logout, reuse, a password change) marks the chain, and every
refresh checks the chain: the chain's tokens, including one a refresh racing
the revocation issued, then fail. Access tokens are verified only at the edge
and are not revoked: they work until they expire (CHIRP_TOKEN_TTL_SECONDS).

Rows expire by TTL with the tokens: a token row when the token does, a chain
row when its newest token does (each refresh extends it), a revocation mark
after every token of the chain has expired.

A password change writes the new hash, then revokes every chain of the user.
A login that checked the old password just before may create its chain after
that revocation saw the user's chains, so a login reads the hash again once
its chain exists and gives up if it changed.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Protocol

from cassandra import OperationTimedOut, WriteTimeout
from cassandra.connection import ConnectionShutdown
from cassandra.query import PreparedStatement

from common.cql import CqlSession, in_lists, prepare_all
from common.errors import InvalidArgument, Unauthenticated
from common.ids import IdGenerator
from graph_svc.tokens import TokenSigner

log = logging.getLogger(__name__)

REFRESH_TOKEN_BYTES = 32
# URL-safe base64 of 32 bytes, unpadded: what `_new_token` makes and nothing else.
REFRESH_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{43}")
DEFAULT_REFRESH_TTL = timedelta(days=30)
# Cassandra refuses TTLs beyond 20 years; the revocation mark needs the margin on top.
MAX_REFRESH_TTL = timedelta(days=3650)
# A revocation mark outlives the chain's newest token, including one issued by a
# refresh that read the chain just before it was revoked.
REVOKED_MARGIN = timedelta(hours=1)

BAD_REFRESH = "the refresh token is invalid, expired or revoked; log in again"
MALFORMED_REFRESH = "refresh_token must be a refresh token as login or refresh returned it (43 URL-safe characters)"
PASSWORD_CHANGED = "the password changed while logging in; log in again"


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _ms_precision(at: datetime) -> datetime:
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


def token_hash(refresh_token: str) -> bytes:
    """What is stored of a refresh token. Hashed as sent, not decoded: base64 has
    several spellings of the same bytes, and only the one we issued is valid."""
    return hashlib.sha256(refresh_token.encode("ascii")).digest()


@dataclass(frozen=True)
class Tokens:
    """A new pair: the access token of session `session_id` and its next refresh token."""

    session_id: int
    access_token: str
    expires_at: datetime
    refresh_token: str
    refresh_expires_at: datetime


@dataclass(frozen=True)
class RefreshRecord:
    chain_id: int
    user_id: int
    expires_at: datetime
    retired: bool


@dataclass(frozen=True)
class Chain:
    created_at: datetime | None  # None: only a revocation mark is left
    revoked: bool


class SessionStore(Protocol):
    async def write_chain(self, user_id: int, chain_id: int, created_at: datetime, ttl_seconds: int) -> None:
        """Create a chain, or extend its life; never touches whether it is revoked."""

    async def chain(self, user_id: int, chain_id: int) -> Chain | None: ...

    async def chain_ids(self, user_id: int) -> list[int]: ...

    async def revoke_chains(self, user_id: int, chain_ids: Sequence[int], ttl_seconds: int) -> None: ...

    async def add_refresh_token(self, token_hash: bytes, record: RefreshRecord, ttl_seconds: int) -> None: ...

    async def refresh_token(self, token_hash: bytes) -> RefreshRecord | None: ...

    async def retire(self, token_hash: bytes, ttl_seconds: int) -> bool:
        """Retire a live token; False when it was already retired (or is gone)."""

    async def password_hash(self, user_id: int) -> str | None: ...

    async def set_password_hash(self, user_id: int, password_hash: str) -> None: ...


class Sessions:
    def __init__(
        self,
        store: SessionStore,
        signer: TokenSigner,
        ids: IdGenerator,
        refresh_ttl: timedelta = DEFAULT_REFRESH_TTL,
        clock: Callable[[], datetime] = _utcnow,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        if not timedelta(seconds=1) <= refresh_ttl <= MAX_REFRESH_TTL:
            raise ValueError(f"the refresh token lifetime must be 1 s to {MAX_REFRESH_TTL.days} days")
        self._store = store
        self._signer = signer
        self._ids = ids
        self._ttl = refresh_ttl
        self._clock = clock
        self._random_bytes = random_bytes

    @classmethod
    def unshared(cls, signer: TokenSigner, ids: IdGenerator, clock: Callable[[], datetime] = _utcnow) -> Sessions:
        """Sessions only this process knows: for tests and tools that build a domain object
        in-process. Services use the CQL store, or one instance would refuse another's tokens."""
        return cls(MemorySessionStore(), signer, ids, clock=clock)

    async def start(self, user_id: int, password_hash: str) -> Tokens:
        """A new session for a user whose password was just checked against `password_hash`."""
        now = self._clock()
        chain_id = self._ids.next_id()
        await self._store.write_chain(user_id, chain_id, _ms_precision(now), self._ttl_seconds(self._ttl))
        tokens = await self._issue(user_id, chain_id, now)
        current = await self._store.password_hash(user_id)
        if current is not None and current != password_hash:
            await self.end(user_id, chain_id)
            raise Unauthenticated(PASSWORD_CHANGED)
        return tokens

    async def refresh(self, refresh_token: str) -> tuple[int, Tokens]:
        """Exchange a live refresh token for a new pair in the same session; returns the user id too."""
        if not REFRESH_TOKEN_RE.fullmatch(refresh_token):
            raise InvalidArgument(MALFORMED_REFRESH, field="refresh_token")
        hashed = token_hash(refresh_token)
        now = self._clock()
        record = await self._store.refresh_token(hashed)
        if record is None or record.expires_at <= now:
            raise Unauthenticated(BAD_REFRESH)
        chain = await self._store.chain(record.user_id, record.chain_id)
        if chain is None or chain.revoked or chain.created_at is None:
            raise Unauthenticated(BAD_REFRESH)
        remaining = self._ttl_seconds(record.expires_at - now)
        if record.retired or not await self._store.retire(hashed, remaining):
            log.warning("a retired refresh token was presented again: ending its session %d", record.chain_id)
            await self.end(record.user_id, record.chain_id)
            raise Unauthenticated(BAD_REFRESH)
        await self._store.write_chain(record.user_id, record.chain_id, chain.created_at, self._ttl_seconds(self._ttl))
        return record.user_id, await self._issue(record.user_id, record.chain_id, now)

    async def end(self, user_id: int, session_id: int) -> None:
        """Revoke one session of `user_id` (logout); ending an unknown or ended one is fine."""
        await self._store.revoke_chains(user_id, [session_id], self._revoked_ttl())

    async def end_all(self, user_id: int) -> int:
        """Revoke every session of `user_id`; returns how many there were."""
        chain_ids = await self._store.chain_ids(user_id)
        for chunk in in_lists(chain_ids):  # one `IN` list per statement
            await self._store.revoke_chains(user_id, chunk, self._revoked_ttl())
        return len(chain_ids)

    async def replace_password(self, user_id: int, password_hash: str) -> None:
        """Store a new password hash, then end every session (see the module docstring for the order)."""
        await self._store.set_password_hash(user_id, password_hash)
        await self.end_all(user_id)

    async def _issue(self, user_id: int, chain_id: int, now: datetime) -> Tokens:
        refresh_token = base64.urlsafe_b64encode(self._random_bytes(REFRESH_TOKEN_BYTES)).rstrip(b"=").decode()
        refresh_expires_at = (now + self._ttl).replace(microsecond=0)
        record = RefreshRecord(chain_id, user_id, refresh_expires_at, retired=False)
        ttl = self._ttl_seconds(refresh_expires_at - now)
        await self._store.add_refresh_token(token_hash(refresh_token), record, ttl)
        access_token, expires_at = self._signer.issue(user_id, chain_id, now)
        return Tokens(chain_id, access_token, expires_at, refresh_token, refresh_expires_at)

    def _revoked_ttl(self) -> int:
        return self._ttl_seconds(self._ttl + REVOKED_MARGIN)

    @staticmethod
    def _ttl_seconds(span: timedelta) -> int:
        return max(1, math.ceil(span.total_seconds()))


# Tries of a refresh token's insert whose outcome is unknown (`CqlSessionStore.add_refresh_token`).
TOKEN_INSERT_TRIES = 3

STATEMENTS = {
    "write_chain": "INSERT INTO session_chains (user_id, chain_id, created_at) VALUES (?, ?, ?) USING TTL ?",
    "chain": "SELECT created_at, revoked FROM session_chains WHERE user_id = ? AND chain_id = ?",
    "chain_ids": "SELECT chain_id FROM session_chains WHERE user_id = ?",
    "revoke_chains": "UPDATE session_chains USING TTL ? SET revoked = true WHERE user_id = ? AND chain_id IN ?",
    # A lightweight transaction, as the retire is: a plain insert carries the issuing host's
    # clock and the retire the coordinator's Paxos ballot, so from a host whose clock is
    # ahead, a retire soon after the issue fell below the insert's `retired = false` and
    # was lost, and the token could be replayed. (The hash is random: it never exists.)
    "add_token": "INSERT INTO refresh_tokens (token_hash, chain_id, user_id, expires_at, retired) "
    "VALUES (?, ?, ?, ?, false) IF NOT EXISTS USING TTL ?",
    "token": "SELECT chain_id, user_id, expires_at, retired FROM refresh_tokens WHERE token_hash = ?",
    # TTL again: an update without one would keep the row forever.
    "retire": "UPDATE refresh_tokens USING TTL ? SET retired = true WHERE token_hash = ? IF retired = false",
}


class PasswordHashes(Protocol):
    """The `users` table's password column (graph_svc/store.py GraphStore)."""

    async def password_hash(self, user_id: int) -> str | None: ...

    async def set_password_hash(self, user_id: int, password_hash: str) -> None: ...


class CqlSessionStore:
    """All CQL of sessions. A retire whose outcome is unknown (a timeout) is not retried
    (common/cql.py): the caller gets a 503, and presenting the token again ends the session."""

    def __init__(self, cql: CqlSession, passwords: PasswordHashes) -> None:
        self._cql = cql
        self._passwords = passwords
        self._q: dict[str, PreparedStatement] = {}

    async def prepare(self) -> None:
        self._q = await prepare_all(self._cql, STATEMENTS)

    async def write_chain(self, user_id: int, chain_id: int, created_at: datetime, ttl_seconds: int) -> None:
        await self._cql.execute(self._q["write_chain"], (user_id, chain_id, created_at, ttl_seconds))

    async def chain(self, user_id: int, chain_id: int) -> Chain | None:
        rows = await self._cql.execute(self._q["chain"], (user_id, chain_id))
        if not rows:
            return None
        created = rows[0].created_at
        return Chain(_utc(created) if created is not None else None, bool(rows[0].revoked))

    async def chain_ids(self, user_id: int) -> list[int]:
        return [row.chain_id for row in await self._cql.execute(self._q["chain_ids"], (user_id,))]

    async def revoke_chains(self, user_id: int, chain_ids: Sequence[int], ttl_seconds: int) -> None:
        if chain_ids:
            await self._cql.execute(self._q["revoke_chains"], (ttl_seconds, user_id, list(chain_ids)))

    async def add_refresh_token(self, token_hash: bytes, record: RefreshRecord, ttl_seconds: int) -> None:
        """A lightweight transaction, so the driver does not retry it: one whose outcome
        is unknown (a timeout, its connection closed) is asked again here, up to
        TOKEN_INSERT_TRIES in all; Paxos finishes a proposal still in flight before a new
        one reads the row. The hash is random, so a row already under it is this call's
        own, applied by an earlier try. A failure would fail a refresh after it retired
        the presented token, and the client's retry with that token would revoke the
        session."""
        params = (token_hash, record.chain_id, record.user_id, record.expires_at, ttl_seconds)
        for tries_left in range(TOKEN_INSERT_TRIES - 1, -1, -1):
            try:
                rows = await self._cql.execute(self._q["add_token"], params)
                break
            except (WriteTimeout, OperationTimedOut, ConnectionShutdown):
                if not tries_left:
                    raise
        if not rows[0][0] and getattr(rows[0], "chain_id", None) != record.chain_id:
            raise RuntimeError("a refresh token hash is already taken by another session")

    async def refresh_token(self, token_hash: bytes) -> RefreshRecord | None:
        rows = await self._cql.execute(self._q["token"], (token_hash,))
        if not rows or rows[0].expires_at is None:
            return None
        row = rows[0]
        return RefreshRecord(row.chain_id, row.user_id, _utc(row.expires_at), bool(row.retired))

    async def retire(self, token_hash: bytes, ttl_seconds: int) -> bool:
        rows = await self._cql.execute(self._q["retire"], (ttl_seconds, token_hash))
        return bool(rows and rows[0][0])

    async def password_hash(self, user_id: int) -> str | None:
        return await self._passwords.password_hash(user_id)

    async def set_password_hash(self, user_id: int, password_hash: str) -> None:
        await self._passwords.set_password_hash(user_id, password_hash)


class MemorySessionStore:
    """The same rules in one process's memory (`Sessions.unshared`, unit tests); rows do not expire
    (Sessions checks expiry itself). Knows only password hashes set through it."""

    def __init__(self) -> None:
        self.chains: dict[tuple[int, int], Chain] = {}
        self.tokens: dict[bytes, RefreshRecord] = {}
        self.passwords: dict[int, str] = {}

    async def write_chain(self, user_id: int, chain_id: int, created_at: datetime, ttl_seconds: int) -> None:
        chain = self.chains.get((user_id, chain_id))
        self.chains[(user_id, chain_id)] = Chain(created_at, chain.revoked if chain else False)

    async def chain(self, user_id: int, chain_id: int) -> Chain | None:
        return self.chains.get((user_id, chain_id))

    async def chain_ids(self, user_id: int) -> list[int]:
        return sorted(chain_id for user, chain_id in self.chains if user == user_id)

    async def revoke_chains(self, user_id: int, chain_ids: Sequence[int], ttl_seconds: int) -> None:
        for chain_id in chain_ids:
            chain = self.chains.get((user_id, chain_id))
            self.chains[(user_id, chain_id)] = Chain(chain.created_at if chain else None, revoked=True)

    async def add_refresh_token(self, token_hash: bytes, record: RefreshRecord, ttl_seconds: int) -> None:
        self.tokens[token_hash] = record

    async def refresh_token(self, token_hash: bytes) -> RefreshRecord | None:
        return self.tokens.get(token_hash)

    async def retire(self, token_hash: bytes, ttl_seconds: int) -> bool:
        record = self.tokens.get(token_hash)
        if record is None or record.retired:
            return False
        self.tokens[token_hash] = replace(record, retired=True)
        return True

    async def password_hash(self, user_id: int) -> str | None:
        return self.passwords.get(user_id)

    async def set_password_hash(self, user_id: int, password_hash: str) -> None:
        self.passwords[user_id] = password_hash


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value
