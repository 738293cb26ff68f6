"""All CQL of graph_svc.

Counts
------
Follower and following counts are derived from the follow lists, never
accumulated: `follower_bucket_counts` holds how many rows each (user, month)
partition of `followers_by_time` has, `follow_counts` the sum of a user's
buckets and the size of their `following_by_time` partition. A recount reads
the rows and writes the result `USING TIMESTAMP` of when it started reading,
so of two racing recounts the one that saw more recent rows wins, and a
recount that starts after the last change to the rows writes the right
number whatever happened before (a crash, a lost write, a timeout). That is
what makes the counts self-healing: graph_svc/domain.py recounts after every
change and again when the change's durable event comes back. Reads are
unchanged: one row per user in `follow_counts`, one query per 100 users.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cassandra import ConsistencyLevel, OperationTimedOut, WriteTimeout
from cassandra.connection import ConnectionShutdown
from cassandra.query import BatchType, PreparedStatement

from common.buckets import bucket_of, walk_newest_first
from common.cql import CQL_UNAVAILABLE_ERRORS, Batch, CqlSession, in_lists, prepare_all
from common.outbox import Event, Outbox
from graph_svc.accounts import Account


@dataclass(frozen=True)
class FollowEdge:
    """One row of a follow list: the other user and when the follow happened."""

    user_id: int
    followed_at_ms: int


STATEMENTS = {
    "insert_user": "INSERT INTO users (user_id, username, password_hash, created_at) VALUES (?, ?, ?, ?)",
    "delete_user": "DELETE FROM users WHERE user_id = ?",
    "claim_name": "INSERT INTO users_by_name (username_key, user_id) VALUES (?, ?) IF NOT EXISTS",
    "get_user": "SELECT user_id, username, password_hash, created_at FROM users WHERE user_id = ?",
    "password_hash": "SELECT password_hash FROM users WHERE user_id = ?",
    "set_password_hash": "UPDATE users SET password_hash = ? WHERE user_id = ?",
    "get_counts": "SELECT follower_count, following_count FROM follow_counts WHERE user_id = ?",
    "users_in": "SELECT user_id, username, password_hash, created_at FROM users WHERE user_id IN ?",
    "counts_in": "SELECT user_id, follower_count, following_count FROM follow_counts WHERE user_id IN ?",
    "get_by_name": "SELECT user_id FROM users_by_name WHERE username_key = ?",
    "name_owner": "SELECT user_id FROM users_by_name WHERE username_key = ?",  # read at LOCAL_SERIAL
    "follow_edge": "INSERT INTO follows (follower_id, followee_id, followed_at) VALUES (?, ?, ?) IF NOT EXISTS",
    "get_edge": "SELECT followed_at FROM follows WHERE follower_id = ? AND followee_id = ?",
    "edge_now": "SELECT followed_at FROM follows WHERE follower_id = ? AND followee_id = ?",  # read at LOCAL_SERIAL
    "following_row": "SELECT followee_id FROM following_by_time WHERE user_id = ? AND followed_at = ? AND followee_id = ?",
    "unfollow_edge": "DELETE FROM follows WHERE follower_id = ? AND followee_id = ? IF followed_at = ?",
    # List rows are written at the follow's own time and deleted above it (`write_follow_lists`).
    "add_following": "INSERT INTO following_by_time (user_id, followed_at, followee_id) VALUES (?, ?, ?) "
    "USING TIMESTAMP ?",
    "del_following": "DELETE FROM following_by_time USING TIMESTAMP ? "
    "WHERE user_id = ? AND followed_at = ? AND followee_id = ?",
    "add_follower": "INSERT INTO followers_by_time (user_id, bucket, followed_at, follower_id) VALUES (?, ?, ?, ?) "
    "USING TIMESTAMP ?",
    "del_follower": "DELETE FROM followers_by_time USING TIMESTAMP ? "
    "WHERE user_id = ? AND bucket = ? AND followed_at = ? AND follower_id = ?",
    "add_bucket": "INSERT INTO follower_buckets (user_id, bucket) VALUES (?, ?)",
    "count_bucket": "SELECT COUNT(*) FROM followers_by_time WHERE user_id = ? AND bucket = ?",
    "set_bucket_count": "UPDATE follower_bucket_counts USING TIMESTAMP ? SET followers = ? "
    "WHERE user_id = ? AND bucket = ?",
    "bucket_counts": "SELECT followers FROM follower_bucket_counts WHERE user_id = ?",
    "set_follower_count": "UPDATE follow_counts USING TIMESTAMP ? SET follower_count = ? WHERE user_id = ?",
    "count_following": "SELECT COUNT(*) FROM following_by_time WHERE user_id = ?",
    "set_following_count": "UPDATE follow_counts USING TIMESTAMP ? SET following_count = ? WHERE user_id = ?",
    "all_follower_buckets": "SELECT DISTINCT user_id, bucket FROM followers_by_time",
    "all_following": "SELECT DISTINCT user_id FROM following_by_time",
    "buckets_from": "SELECT bucket FROM follower_buckets WHERE user_id = ? AND bucket <= ? LIMIT ?",
    "followers_first": "SELECT followed_at, follower_id FROM followers_by_time WHERE user_id = ? AND bucket = ? LIMIT ?",
    "followers_after": "SELECT followed_at, follower_id FROM followers_by_time WHERE user_id = ? AND bucket = ? "
    "AND (followed_at, follower_id) < (?, ?) LIMIT ?",
    "following_first": "SELECT followed_at, followee_id FROM following_by_time WHERE user_id = ? LIMIT ?",
    "following_after": "SELECT followed_at, followee_id FROM following_by_time WHERE user_id = ? "
    "AND (followed_at, followee_id) < (?, ?) LIMIT ?",
    "following_ids": "SELECT followee_id FROM follows WHERE follower_id = ? LIMIT ?",
    "follows_among": "SELECT followee_id FROM follows WHERE follower_id = ? AND followee_id IN ?",
}


class GraphStore:
    def __init__(self, cql: CqlSession, outbox: Outbox) -> None:
        self._cql = cql
        self._outbox = outbox
        self._q: dict[str, PreparedStatement] = {}

    async def prepare(self) -> None:
        self._q = await prepare_all(self._cql, STATEMENTS)
        # A serial read finishes any claim still in flight before answering.
        self._q["name_owner"].consistency_level = ConsistencyLevel.LOCAL_SERIAL
        self._q["edge_now"].consistency_level = ConsistencyLevel.LOCAL_SERIAL

    # ---- accounts -------------------------------------------------------------

    async def insert_user(self, account: Account) -> None:
        await self._cql.execute(
            self._q["insert_user"],
            (account.user_id, account.username, account.password_hash, account.created_at),
        )

    async def delete_user(self, user_id: int) -> None:
        await self._cql.execute(self._q["delete_user"], (user_id,))

    async def claim_username(self, key: str, user_id: int) -> bool:
        """Lightweight transaction: True when `key` is ours, claimed now or by an
        earlier try of this claim (same `user_id`) whose outcome its caller did not learn.

        A claim that timed out may still have been applied (or lost to a racing
        claim): a serial read of the name says which, rather than failing a
        sign-up whose name is in fact ours, or calling a lost race an outage.
        """
        answered, rows = await self._claim("claim_name", (key, user_id), "name_owner", (key,))
        if not answered:
            return bool(rows[0].user_id == user_id)
        # Not applied: the row that exists comes back, with its owner.
        return bool(rows) and (bool(rows[0][0]) or getattr(rows[0], "user_id", None) == user_id)

    async def _claim(
        self, claim: str, params: Sequence[Any], settle: str, settle_params: Sequence[Any]
    ) -> tuple[bool, list[Any]]:
        """Run the lightweight transaction `claim`: (True, its rows); or, when it timed out
        or its connection closed under it (it may still be applied after the call failed),
        (False, the rows of `settle`, a serial read, which settles a claim in flight).
        Raises that error when the read fails or finds nothing."""
        try:
            return True, await self._cql.execute(self._q[claim], params)
        except (WriteTimeout, OperationTimedOut, ConnectionShutdown) as unsure:
            try:
                found = await self._cql.execute(self._q[settle], settle_params)
            except CQL_UNAVAILABLE_ERRORS:
                raise unsure from None
            if not found:
                raise
            return False, found

    async def password_hash(self, user_id: int) -> str | None:
        rows = await self._cql.execute(self._q["password_hash"], (user_id,))
        return rows[0].password_hash if rows else None

    async def set_password_hash(self, user_id: int, password_hash: str) -> None:
        await self._cql.execute(self._q["set_password_hash"], (password_hash, user_id))

    async def get_user(self, user_id: int) -> Account | None:
        user_rows, stat_rows = await asyncio.gather(
            self._cql.execute(self._q["get_user"], (user_id,)),
            self._cql.execute(self._q["get_counts"], (user_id,)),
        )
        if not user_rows:
            return None
        return _account(user_rows[0], stat_rows[0] if stat_rows else None)

    async def get_users(self, user_ids: Sequence[int]) -> list[Account]:
        """Users in the order asked; unknown ids are left out. Two queries per IN_LIST_SIZE ids
        rather than two per user: the rank worker asks for hundreds every interval, and a
        statement costs the driver and the server far more than a row does."""
        ids = list(dict.fromkeys(user_ids))
        chunks = in_lists(ids)
        replies = await asyncio.gather(
            *(self._cql.execute(self._q["users_in"], (chunk,)) for chunk in chunks),
            *(self._cql.execute(self._q["counts_in"], (chunk,)) for chunk in chunks),
        )
        users = {r.user_id: r for rows in replies[: len(chunks)] for r in rows}
        stats = {r.user_id: r for rows in replies[len(chunks) :] for r in rows}
        return [_account(users[uid], stats.get(uid)) for uid in ids if uid in users]

    async def user_id_by_name(self, key: str) -> int | None:
        rows = await self._cql.execute(self._q["get_by_name"], (key,))
        return rows[0].user_id if rows else None

    # ---- follows --------------------------------------------------------------

    async def add_edge(self, follower: int, followee: int, at: datetime) -> tuple[bool, datetime]:
        """Claim the edge; returns (created now, when the follow happened).

        A claim that timed out may still be applied after the call failed: an edge with
        no list rows, no event and no recount, which only a retry would complete. A
        serial read (which settles a claim in flight) says whether it was, as for names.
        """
        answered, rows = await self._claim("follow_edge", (follower, followee, at), "edge_now", (follower, followee))
        if not answered:
            found = _utc(rows[0].followed_at)
            return found == at, found
        applied = bool(rows[0][0])
        return applied, at if applied else _utc(rows[0].followed_at)

    async def edge_time(self, follower: int, followee: int) -> datetime | None:
        """When the follow happened, or None (a quorum read)."""
        rows = await self._cql.execute(self._q["get_edge"], (follower, followee))
        return _utc(rows[0].followed_at) if rows else None

    async def follow_listed(self, follower: int, followee: int, at: datetime) -> bool:
        """Whether the follow made at `at` has its list rows (written together, in one batch)."""
        return bool(await self._cql.execute(self._q["following_row"], (follower, at, followee)))

    async def remove_edge(self, follower: int, followee: int, at: datetime) -> bool:
        """Remove the edge of the follow made at `at`, and only that one: a follow of the
        pair made again since (a repeated follow that finished a cut-short unfollow, say)
        stays. True when it was removed now."""
        rows = await self._cql.execute(self._q["unfollow_edge"], (follower, followee, at))
        return bool(rows[0][0])

    async def write_follow_lists(self, follower: int, followee: int, at: datetime, event: Event) -> None:
        """Both list rows and the event, atomically (logged batch); idempotent.

        The rows are written at the follow's time (`at`, which the edge's claim stored)
        and deleted above it (`delete_follow_lists`), never at the clock of whichever
        instance runs the call: an unfollow right after a follow made by an instance whose
        clock is ahead would otherwise delete below the rows' time, and delete nothing,
        leaving a follower counted and listed with no edge for any unfollow to find. A
        repeated follow writes the same rows at the same time, so it never brings back
        rows an unfollow deleted."""
        bucket = follow_bucket(at)
        written = _ms(at) * 1000
        batch = Batch(BatchType.LOGGED)
        batch.add(self._q["add_following"], (follower, at, followee, written))
        batch.add(self._q["add_follower"], (followee, bucket, at, follower, written))
        batch.add(self._q["add_bucket"], (followee, bucket))
        self._outbox.add_to(batch, event)
        await self._cql.execute(batch)

    async def delete_follow_lists(self, follower: int, followee: int, at: datetime, event: Event) -> None:
        """The rows of the follow made at `at`, deleted above their write time, and the event."""
        deleted = max(_now_us(), _ms(at) * 1000 + 1)
        batch = Batch(BatchType.LOGGED)
        batch.add(self._q["del_following"], (deleted, follower, at, followee))
        batch.add(self._q["del_follower"], (deleted, followee, follow_bucket(at), at, follower))
        self._outbox.add_to(batch, event)
        await self._cql.execute(batch)

    # ---- counts (see the module docstring) --------------------------------------

    async def recount_followers(self, user_id: int, buckets: Sequence[int]) -> int:
        """Recount these follower buckets of `user_id`, then their follower count; returns it."""
        for bucket in buckets:
            started = _now_us()
            rows = await self._cql.execute(self._q["count_bucket"], (user_id, bucket))
            await self._cql.execute(self._q["set_bucket_count"], (started, int(rows[0][0]), user_id, bucket))
        started = _now_us()
        counted = await self._cql.execute(self._q["bucket_counts"], (user_id,))
        total = sum(r.followers or 0 for r in counted)
        await self._cql.execute(self._q["set_follower_count"], (started, total, user_id))
        return total

    async def recount_following(self, user_id: int) -> int:
        """Recount whom `user_id` follows; returns the count."""
        started = _now_us()
        rows = await self._cql.execute(self._q["count_following"], (user_id,))
        count = int(rows[0][0])
        await self._cql.execute(self._q["set_following_count"], (started, count, user_id))
        return count

    async def recount_everyone(self, concurrency: int = 32) -> tuple[int, int]:
        """Recount every follower bucket and following list: a one-off full scan of both
        tables (infra/migrate.py, when the counts moved off counters). Returns how many
        users have followers and how many follow someone."""
        limit = asyncio.Semaphore(concurrency)

        async def bounded(job: Awaitable[int]) -> int:
            async with limit:
                return await job

        by_user: dict[int, list[int]] = {}
        for row in await self._cql.execute(self._q["all_follower_buckets"]):
            by_user.setdefault(row.user_id, []).append(row.bucket)
        await asyncio.gather(*(bounded(self.recount_followers(u, b)) for u, b in by_user.items()))
        following = await self._cql.execute(self._q["all_following"])
        await asyncio.gather(*(bounded(self.recount_following(r.user_id)) for r in following))
        return len(by_user), len(following)

    async def followers(self, user_id: int, limit: int, after: FollowEdge | None) -> list[FollowEdge]:
        """Followers newest first, strictly after the `after` cursor, walking month buckets."""

        async def buckets_from(start: int, most: int) -> list[int]:
            return [r.bucket for r in await self._cql.execute(self._q["buckets_from"], (user_id, start, most))]

        async def read(bucket: int, from_cursor: bool, want: int) -> list[FollowEdge]:
            if from_cursor and after is not None:
                rows = await self._cql.execute(
                    self._q["followers_after"], (user_id, bucket, _dt(after.followed_at_ms), after.user_id, want)
                )
            else:
                rows = await self._cql.execute(self._q["followers_first"], (user_id, bucket, want))
            return [FollowEdge(r.follower_id, _ms(r.followed_at)) for r in rows]

        return await walk_newest_first(buckets_from, read, limit, bucket_of(after.followed_at_ms) if after else None)

    async def following(self, user_id: int, limit: int, after: FollowEdge | None) -> list[FollowEdge]:
        if after is None:
            rows = await self._cql.execute(self._q["following_first"], (user_id, limit))
        else:
            rows = await self._cql.execute(
                self._q["following_after"], (user_id, _dt(after.followed_at_ms), after.user_id, limit)
            )
        return [FollowEdge(r.followee_id, _ms(r.followed_at)) for r in rows]

    async def following_ids(self, user_id: int, limit: int) -> list[int]:
        rows = await self._cql.execute(self._q["following_ids"], (user_id, limit))
        return [r.followee_id for r in rows]

    async def follows_among(self, user_id: int, candidates: Sequence[int]) -> list[int]:
        """Which of `candidates` the user follows: point reads in their one partition, 100 ids per query."""
        chunks = await asyncio.gather(
            *(self._cql.execute(self._q["follows_among"], (user_id, ids)) for ids in in_lists(sorted(set(candidates))))
        )
        return [r.followee_id for rows in chunks for r in rows]

    async def follower_counts(self, user_ids: Sequence[int]) -> dict[int, int]:
        """Follower counts in one query per 100 ids (the read path needs nothing else)."""
        chunks = await asyncio.gather(
            *(self._cql.execute(self._q["counts_in"], (ids,)) for ids in in_lists(list(user_ids)))
        )
        return {r.user_id: r.follower_count or 0 for rows in chunks for r in rows}


def _account(row: Any, stats: Any | None) -> Account:
    return Account(
        user_id=row.user_id,
        username=row.username,
        password_hash=row.password_hash,
        created_at=_utc(row.created_at),
        follower_count=(stats.follower_count or 0) if stats else 0,
        following_count=(stats.following_count or 0) if stats else 0,
    )


def follow_bucket(at: datetime) -> int:
    """The followers_by_time partition (month) a follow made at `at` is listed in."""
    return bucket_of(_ms(at))


def _now_us() -> int:
    # Microseconds since the epoch: the unit of CQL write timestamps.
    return time.time_ns() // 1000


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _ms(value: datetime) -> int:
    return int(_utc(value).timestamp() * 1000)


def _dt(unix_ms: int) -> datetime:
    return datetime.fromtimestamp(unix_ms // 1000, UTC).replace(microsecond=unix_ms % 1000 * 1000)
