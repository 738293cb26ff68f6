"""Blocks and mutes: their CQL (`RelationStore`) and their rules (`Relations`).

Each kind is kept as the follow lists are (infra/cql/010_client_features.cql):
a membership row ("does A block B", `blocks`/`mutes`) claimed with a
lightweight transaction, so a repeated block keeps its first time and the
acting user's time-ordered list (`blocks_by_time`/`mutes_by_time`) never
shows anyone twice; for blocks also a row by the blocked user (`blocked_by`),
so "who blocks me" is one partition. The listing rows are written after the
claim and again on every repeat, so a retry repairs a block or mute a crash
cut short; a removal deletes the listing rows, then the membership row, so a
retry finds a removal a crash cut short and finishes it. The actor's rows are
written by lightweight transactions only, which Paxos ballots order whatever
the clocks of the hosts sending them; `blocked_by` by plain writes
(`RelationStore.write_listing` says why).

A block then removes the follows in both directions through graph_svc's own
unfollow (`Follows.remove_follow`), so counts, events and the fan-out's
timeline clean-up follow as for any unfollow. It removes them on a repeated
block too, which also finishes a block that died before its unfollows.
Graph.follow refuses a follow across a block (`refuse_follow_across_block`)
both before and after it writes the edge: a block landing in between ran its
unfollows before the edge existed, so the follow's second look undoes it.

feed_svc and rank_svc read each user's hidden authors from Redis
(common/hidden.py). Every change invalidates the cached set of each user whose
set it touches (the actor; for a block also the blocked user, whose
`blocked_by` changes) before its rows are written and again after, before the
call returns, so the next read sees the change. A repeat that changes no row
invalidates too: it may be the retry of a call whose second invalidation
failed (503).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, Protocol

from cassandra.query import PreparedStatement

from common.cql import CqlSession, in_lists, prepare_all
from common.errors import InvalidArgument, PermissionDenied
from common.limits import UserLimits
from common.pagination import PageTokens, scope, unshared_tokens
from graph_svc.accounts import Account
from graph_svc.store import _dt, _ms, _utc

Kind = Literal["block", "mute"]
# GetRelations answers for at most this many users a call.
RELATIONS_MAX = 500
# Blockers a user's hidden-author set lists (ListHiddenAuthorIds); past that the set
# says it is incomplete, and its reader asks GetRelations about the authors it would
# show. Read with every home feed and trending page, the set must not grow with what
# others do: a user blocked by a million accounts would read megabytes a page.
BLOCKERS_LISTED = 1000
# Ids a single IN query names (as graph_svc/store.py does for follows).

CANNOT_FOLLOW = "you cannot follow this user"
UNBLOCK_TO_FOLLOW = "you have blocked this user: unblock them to follow"

# (membership table, listing table, actor column, target column, time column)
_TABLES: dict[Kind, tuple[str, str, str, str, str]] = {
    "block": ("blocks", "blocks_by_time", "blocker_id", "blocked_id", "blocked_at"),
    "mute": ("mutes", "mutes_by_time", "muter_id", "muted_id", "muted_at"),
}


def _statements() -> dict[str, str]:
    statements = {
        # The actor's rows are written and deleted by lightweight transactions, the blocked
        # user's `blocked_by` row by plain writes (`write_listing`, `remove`).
        "blocked_by_add": "INSERT INTO blocked_by (blocked_id, blocker_id) VALUES (?, ?)",
        "blocked_by_del": "DELETE FROM blocked_by WHERE blocked_id = ? AND blocker_id = ?",
        "blocked_by_first": "SELECT blocker_id FROM blocked_by WHERE blocked_id = ? LIMIT ?",
        "blocked_by_among": "SELECT blocker_id FROM blocked_by WHERE blocked_id = ? AND blocker_id IN ?",
    }
    for kind, (table, by_time, actor, target, at) in _TABLES.items():
        statements |= {
            f"{kind}_claim": f"INSERT INTO {table} ({actor}, {target}, {at}) VALUES (?, ?, ?) IF NOT EXISTS",
            f"{kind}_since": f"SELECT {at} FROM {table} WHERE {actor} = ? AND {target} = ?",
            f"{kind}_del": f"DELETE FROM {table} WHERE {actor} = ? AND {target} = ? IF EXISTS",
            f"{kind}_all": f"SELECT {target} FROM {table} WHERE {actor} = ?",
            f"{kind}_among": f"SELECT {target} FROM {table} WHERE {actor} = ? AND {target} IN ?",
            f"{kind}_list_add": f"INSERT INTO {by_time} ({actor}, {at}, {target}) VALUES (?, ?, ?) IF NOT EXISTS",
            f"{kind}_list_del": f"DELETE FROM {by_time} WHERE {actor} = ? AND {at} = ? AND {target} = ? IF EXISTS",
            f"{kind}_first": f"SELECT {at}, {target} FROM {by_time} WHERE {actor} = ? LIMIT ?",
            f"{kind}_after": f"SELECT {at}, {target} FROM {by_time} WHERE {actor} = ? "
            f"AND ({at}, {target}) < (?, ?) LIMIT ?",
        }
    return statements


STATEMENTS = _statements()


@dataclass(frozen=True)
class Listed:
    """One row of a block or mute list: the other user and when (ms) it began."""

    user_id: int
    at_ms: int


class RelationStore:
    """All CQL of blocks and mutes."""

    def __init__(self, cql: CqlSession) -> None:
        self._cql = cql
        self._q: dict[str, PreparedStatement] = {}

    async def prepare(self) -> None:
        self._q = await prepare_all(self._cql, STATEMENTS)

    async def claim(self, kind: Kind, actor: int, target: int, at: datetime) -> datetime:
        """The relation's time: `at` when it is new, else the one it began with."""
        rows = await self._cql.execute(self._q[f"{kind}_claim"], (actor, target, at))
        return at if rows[0][0] else _utc(getattr(rows[0], _TABLES[kind][4]))

    async def write_listing(self, kind: Kind, actor: int, target: int, at: datetime) -> None:
        """The list row (and for a block the blocked-by row), idempotent.

        The list row is in the actor's partition, as the membership row: a lightweight
        transaction, as every write of those rows, takes a Paxos ballot above the last one
        of its partition, so a row written again after a removal (a block made again, or
        repeated after an unblock that died before its membership delete) is never left
        under that removal's tombstone, whatever the hosts' clocks say. The blocked-by row
        is in the blocked user's partition, which many may block at once (a pile-on):
        transactions there would contend and time out, so it is a plain write at this
        host's clock, written again at every repeat. A re-block within the clock skew of
        an unblock made by a host ahead can leave it deleted (docs/RELIABILITY.md)."""
        writes = [self._cql.execute(self._q[f"{kind}_list_add"], (actor, at, target))]
        if kind == "block":
            writes.append(self._cql.execute(self._q["blocked_by_add"], (target, actor)))
        await asyncio.gather(*writes)

    async def since(self, kind: Kind, actor: int, target: int) -> datetime | None:
        rows = await self._cql.execute(self._q[f"{kind}_since"], (actor, target))
        return _utc(rows[0][0]) if rows else None

    async def remove(self, kind: Kind, actor: int, target: int, at: datetime) -> None:
        """The listing rows, then the membership row, each as it was written
        (`write_listing`). The membership row goes last, so that a removal cut short is
        still found (`since`) and done again by a retry."""
        deletes = [self._cql.execute(self._q[f"{kind}_list_del"], (actor, at, target))]
        if kind == "block":
            deletes.append(self._cql.execute(self._q["blocked_by_del"], (target, actor)))
        await asyncio.gather(*deletes)
        await self._cql.execute(self._q[f"{kind}_del"], (actor, target))

    async def listing(self, kind: Kind, actor: int, limit: int, after: Listed | None) -> list[Listed]:
        """Newest first, strictly after the `after` cursor."""
        if after is None:
            rows = await self._cql.execute(self._q[f"{kind}_first"], (actor, limit))
        else:
            rows = await self._cql.execute(self._q[f"{kind}_after"], (actor, _dt(after.at_ms), after.user_id, limit))
        return [Listed(r[1], _ms(r[0])) for r in rows]

    async def targets(self, kind: Kind, actor: int) -> list[int]:
        """Everyone `actor` blocks (or mutes): one partition, read page by page by the driver."""
        return [r[0] for r in await self._cql.execute(self._q[f"{kind}_all"], (actor,))]

    async def blockers_of(self, user_id: int, limit: int) -> list[int]:
        """Up to `limit` of the users blocking `user_id`."""
        return [r[0] for r in await self._cql.execute(self._q["blocked_by_first"], (user_id, limit))]

    async def targets_among(self, kind: Kind, actor: int, candidates: Sequence[int]) -> set[int]:
        return await self._among(f"{kind}_among", actor, candidates)

    async def blockers_among(self, user_id: int, candidates: Sequence[int]) -> set[int]:
        return await self._among("blocked_by_among", user_id, candidates)

    async def _among(self, query: str, key: int, candidates: Sequence[int]) -> set[int]:
        ids = sorted(set(candidates))
        chunks = await asyncio.gather(*(self._cql.execute(self._q[query], (key, chunk)) for chunk in in_lists(ids)))
        return {r[0] for rows in chunks for r in rows}


class HiddenCache(Protocol):
    """The writer's side of common/hidden.py (HiddenInvalidator)."""

    async def invalidate(self, user_ids: Sequence[int]) -> None: ...


class _NoCache:
    async def invalidate(self, user_ids: Sequence[int]) -> None:
        return None


class Follows(Protocol):
    """What the rules need of graph_svc's accounts and follows (graph_svc.domain.Graph)."""

    async def get_user(self, user_id: int) -> Account: ...

    async def get_users(self, user_ids: list[int]) -> list[Account]: ...

    async def remove_follow(self, follower: int, followee: int) -> None: ...


@dataclass(frozen=True)
class UserPage:
    accounts: list[Account]
    next_page_token: str


@dataclass(frozen=True)
class HiddenAuthors:
    """Whose tweets a user must not see in their home feed or trending: all they mute
    or block, and up to BLOCKERS_LISTED of those blocking them (`blocked_by_incomplete`
    when there are more)."""

    muted: list[int]
    blocked: list[int]
    blocked_by: list[int]
    blocked_by_incomplete: bool = False


@dataclass(frozen=True)
class Relation:
    """How a viewer relates to one user."""

    user_id: int
    blocking: bool
    blocked_by: bool
    muting: bool


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Relations:
    def __init__(
        self,
        store: RelationStore,
        follows: Follows,
        page_tokens: PageTokens | None = None,
        clock: Callable[[], datetime] = _utcnow,
        hidden_cache: HiddenCache | None = None,
        limits: UserLimits | None = None,
        blockers_listed: int = BLOCKERS_LISTED,
    ) -> None:
        self._store = store
        self._blockers_listed = blockers_listed
        self._follows = follows
        self._page_tokens = page_tokens or unshared_tokens()
        self._clock = clock
        self._hidden_cache = hidden_cache or _NoCache()
        # Blocks, mutes and their undoing count with follows and unfollows: each is a
        # write of its own and invalidates cached sets, and a block also unfollows both ways.
        self._limits = limits or UserLimits.unlimited()

    async def block(self, blocker: int, blocked: int) -> None:
        touched = await self._add("block", blocker, blocked)
        # After the block row: a follow racing this block sees it on its second look (module docstring).
        await self._follows.remove_follow(blocker, blocked)
        await self._follows.remove_follow(blocked, blocker)
        # Last, after every write: a 503 from Redis here leaves nothing half done.
        await self._hidden_cache.invalidate(touched)

    async def unblock(self, blocker: int, blocked: int) -> None:
        await self._remove("block", blocker, blocked)

    async def mute(self, muter: int, muted: int) -> None:
        await self._hidden_cache.invalidate(await self._add("mute", muter, muted))

    async def unmute(self, muter: int, muted: int) -> None:
        await self._remove("mute", muter, muted)

    async def _add(self, kind: Kind, actor: int, target: int) -> list[int]:
        """Write the rows; the caller invalidates the returned users' sets again after
        its last write (a reader's fill from the rows before them lands before that or
        not at all)."""
        _check_target(kind, actor, target)
        await self._limits.take("follow", actor)
        await self._follows.get_user(target)
        touched = _touched(kind, actor, target)
        await self._hidden_cache.invalidate(touched)
        # Through milliseconds: what CQL keeps, so a repeat finds the same list row.
        at = await self._store.claim(kind, actor, target, _dt(_ms(self._clock())))
        await self._store.write_listing(kind, actor, target, at)
        return touched

    async def _remove(self, kind: Kind, actor: int, target: int) -> None:
        _check_target(kind, actor, target)
        await self._limits.take("follow", actor)
        await self._follows.get_user(target)
        touched = _touched(kind, actor, target)
        await self._hidden_cache.invalidate(touched)
        at = await self._store.since(kind, actor, target)
        if at is not None:
            await self._store.remove(kind, actor, target, at)
        await self._hidden_cache.invalidate(touched)

    async def blocks(self, user_id: int, page_size: int, page_token: str) -> UserPage:
        return await self._list("block", user_id, page_size, page_token)

    async def mutes(self, user_id: int, page_size: int, page_token: str) -> UserPage:
        return await self._list("mute", user_id, page_size, page_token)

    async def _list(self, kind: Kind, user_id: int, page_size: int, page_token: str) -> UserPage:
        # The lists are private: the scope is the caller's own, so a token works for nobody else.
        list_scope = scope(f"{kind}s", user_id)
        cursor = self._page_tokens.decode(page_token, list_scope, 2)
        after = Listed(cursor[1], cursor[0]) if cursor else None
        rows = await self._store.listing(kind, user_id, page_size + 1, after)
        accounts = await self._follows.get_users([r.user_id for r in rows[:page_size]])
        token = ""
        if len(rows) > page_size:
            last = rows[page_size - 1]
            token = self._page_tokens.encode(list_scope, (last.at_ms, last.user_id))
        return UserPage(accounts, token)

    async def hidden_authors(self, user_id: int) -> HiddenAuthors:
        _check_id(user_id)
        muted, blocked, blocked_by = await asyncio.gather(
            self._store.targets("mute", user_id),
            self._store.targets("block", user_id),
            self._store.blockers_of(user_id, self._blockers_listed + 1),
        )
        listed = blocked_by[: self._blockers_listed]
        return HiddenAuthors(muted, blocked, listed, blocked_by_incomplete=len(blocked_by) > len(listed))

    async def relations(self, viewer: int, user_ids: Sequence[int]) -> list[Relation]:
        """One per asked id, in the order asked."""
        _check_id(viewer, "viewer_id")
        if len(user_ids) > RELATIONS_MAX:
            raise InvalidArgument(f"at most {RELATIONS_MAX} user ids per call", field="user_ids")
        for user_id in user_ids:
            _check_id(user_id, "user_ids")
        others = [u for u in set(user_ids) if u != viewer]
        blocking, blocked_by, muting = await asyncio.gather(
            self._store.targets_among("block", viewer, others),
            self._store.blockers_among(viewer, others),
            self._store.targets_among("mute", viewer, others),
        )
        return [Relation(u, u in blocking, u in blocked_by, u in muting) for u in user_ids]


async def refuse_follow_across_block(store: RelationStore, follower: int, followee: int) -> None:
    """PermissionDenied when either of the two blocks the other."""
    follower_blocks, followee_blocks = await asyncio.gather(
        store.since("block", follower, followee), store.since("block", followee, follower)
    )
    if followee_blocks is not None:
        raise PermissionDenied(CANNOT_FOLLOW, reason="BLOCKED")
    if follower_blocks is not None:
        raise PermissionDenied(UNBLOCK_TO_FOLLOW, reason="BLOCKING")


def _touched(kind: Kind, actor: int, target: int) -> list[int]:
    """Whose hidden-author sets the relation is part of: for a block, the blocked user's `blocked_by` too."""
    return [actor, target] if kind == "block" else [actor]


def _check_target(kind: Kind, actor: int, target: int) -> None:
    _check_id(target)
    if actor == target:
        raise InvalidArgument(f"you cannot {kind} yourself", field="user_id")


def _check_id(user_id: int, field: str = "user_id") -> None:
    if user_id <= 0:
        raise InvalidArgument(f"{field} must be a positive integer", field=field)
