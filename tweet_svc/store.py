"""All CQL of tweet_svc."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cassandra import ConsistencyLevel
from cassandra.query import BatchType, PreparedStatement

from common.buckets import bucket_of, walk_newest_first
from common.cql import IN_LIST_SIZE, Batch, CqlSession, in_lists, prepare_all
from common.ids import id_time_ms
from common.outbox import Event, Outbox
from common.singleflight import REFRESH_INTERVAL_SECONDS, BackgroundRefresh
from tweet_svc.likes import LikeState
from tweet_svc.viewer import decode_liked, decode_version, encode_state, write_time_us

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TweetRecord:
    tweet_id: int
    author_id: int
    author_username: str
    text: str
    created_at: datetime
    like_count: int = 0


# (author, bucket) pairs a store remembers having written to user_tweet_buckets.
KNOWN_BUCKETS = 100_000
# Keys (authors, tweets) in one `IN ?` list of this store's queries.
KEYS_PER_QUERY = IN_LIST_SIZE
# Pause before the months deletes may have emptied are checked, a batch at a time.
MONTH_CHECK_SECONDS = REFRESH_INTERVAL_SECONDS
# Buckets `newest_tweet_ids` lists per author; one still short of its tweets after them
# walks on alone from below them.
BUCKETS_LISTED = 4

STATEMENTS = {
    # Written at the tweet's own time (its id's), not the write's: see `insert_tweet`.
    "insert_tweet": "INSERT INTO tweets (tweet_id, author_id, author_username, text, created_at) "
    "VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?",
    "insert_user_tweet": "INSERT INTO user_tweets (author_id, bucket, tweet_id) VALUES (?, ?, ?) USING TIMESTAMP ?",
    "insert_bucket": "INSERT INTO user_tweet_buckets (author_id, bucket) VALUES (?, ?)",
    "delete_bucket": "DELETE FROM user_tweet_buckets WHERE author_id = ? AND bucket = ?",
    "month_has_tweets": "SELECT tweet_id FROM user_tweets WHERE author_id = ? AND bucket = ? LIMIT 1",
    # At least a microsecond after the tweet's own time: see `delete_tweet`.
    "delete_tweet": "DELETE FROM tweets USING TIMESTAMP ? WHERE tweet_id = ?",
    "delete_user_tweet": "DELETE FROM user_tweets USING TIMESTAMP ? WHERE author_id = ? AND bucket = ? AND tweet_id = ?",
    "delete_likes": "DELETE FROM tweet_likes WHERE tweet_id = ?",
    "mark_deleted": "INSERT INTO deleted_tweets (tweet_id) VALUES (?)",
    "was_deleted": "SELECT tweet_id FROM deleted_tweets WHERE tweet_id = ?",
    "get_tweets": "SELECT tweet_id, author_id, author_username, text, created_at FROM tweets WHERE tweet_id IN ?",
    "existing": "SELECT tweet_id FROM tweets WHERE tweet_id IN ?",
    "like_counts": "SELECT tweet_id, like_count FROM tweet_likes WHERE tweet_id IN ? PER PARTITION LIMIT 1",
    "like_count": "SELECT like_count FROM tweet_likes WHERE tweet_id = ? LIMIT 1",
    "like_rows": "SELECT user_id, liked, version FROM tweet_likes WHERE tweet_id = ? AND user_id IN ?",
    # The viewer's likes (tweet_svc/viewer.py): plain upserts at the version's write time.
    "set_user_like": "UPDATE user_likes USING TIMESTAMP ? SET state = ? WHERE user_id = ? AND tweet_id = ?",
    "user_likes_among": "SELECT tweet_id, state FROM user_likes WHERE user_id = ? AND tweet_id IN ?",
    "user_like": "SELECT state FROM user_likes WHERE user_id = ? AND tweet_id = ?",
    # A like's version before its event is sent (`claim_like_version`), the newest kept.
    "claim_like": "UPDATE like_claims USING TIMESTAMP ? SET version = ? WHERE user_id = ? AND tweet_id = ?",
    "like_claim": "SELECT version FROM like_claims WHERE user_id = ? AND tweet_id = ?",
    "set_count": "UPDATE tweet_likes SET like_count = ? WHERE tweet_id = ? IF like_count = ?",
    "set_like": "UPDATE tweet_likes SET liked = ?, version = ? WHERE tweet_id = ? AND user_id = ? IF version = ?",
    "claim_key": "INSERT INTO idempotency_keys (user_id, key, tweet_id) VALUES (?, ?, ?) IF NOT EXISTS",
    "buckets_from": "SELECT bucket FROM user_tweet_buckets WHERE author_id = ? AND bucket <= ? LIMIT ?",
    "newest_buckets": "SELECT author_id, bucket FROM user_tweet_buckets WHERE author_id IN ? PER PARTITION LIMIT ?",
    "tweets_in_bucket": (
        "SELECT author_id, tweet_id FROM user_tweets WHERE author_id IN ? AND bucket = ? PER PARTITION LIMIT ?"
    ),
    "tweets_first": "SELECT tweet_id FROM user_tweets WHERE author_id = ? AND bucket = ? LIMIT ?",
    "tweets_before": "SELECT tweet_id FROM user_tweets WHERE author_id = ? AND bucket = ? AND tweet_id < ? LIMIT ?",
}


class TweetStore:
    def __init__(self, cql: CqlSession, outbox: Outbox) -> None:
        self._cql = cql
        self._outbox = outbox
        self._q: dict[str, PreparedStatement] = {}
        self._known_buckets: OrderedDict[tuple[int, int], None] = OrderedDict()
        # Months deletes may have emptied, checked after the deletes' answers, in a
        # context of their own (common/singleflight.py); every delete asks, however soon
        # after another of the same month.
        self._month_checks: BackgroundRefresh[tuple[int, int]] = BackgroundRefresh(
            "emptied_month", self._forget_months_if_empty, interval_seconds=MONTH_CHECK_SECONDS, cooldown_seconds=0.0
        )

    async def prepare(self) -> None:
        self._q = await prepare_all(self._cql, STATEMENTS)
        self._q["month_has_tweets"].consistency_level = ConsistencyLevel.ALL

    async def claim_idempotency_key(self, user_id: int, key: str, tweet_id: int) -> int:
        """The tweet id this key stands for: ours if the key is new, else the first one."""
        rows = await self._cql.execute(self._q["claim_key"], (user_id, key, tweet_id))
        return tweet_id if rows[0][0] else int(rows[0].tweet_id)

    async def insert_tweet(self, tweet: TweetRecord, event: Event) -> None:
        """The tweet, its place in the author's list and its event, atomically.

        The tweet's rows carry its id's time as their write time: a delete, which comes
        after the tweet existed, is always newer, so no write of the tweet (a retried post
        still in flight, whatever its clock) can bring back a tweet deleted before it landed.
        """
        at_ms = id_time_ms(tweet.tweet_id)
        bucket = bucket_of(at_ms)
        batch = Batch(BatchType.LOGGED)
        batch.add(
            self._q["insert_tweet"],
            (tweet.tweet_id, tweet.author_id, tweet.author_username, tweet.text, tweet.created_at, at_ms * 1000),
        )
        batch.add(self._q["insert_user_tweet"], (tweet.author_id, bucket, tweet.tweet_id, at_ms * 1000))
        # A bucket row has no TTL and is deleted only once its month is two months
        # past (`_forget_bucket_if_empty`), when no post can land in it: once a batch
        # that wrote it is acknowledged, later posts of the month need not write it
        # again (one partition fewer per batch).
        known = (tweet.author_id, bucket)
        if known not in self._known_buckets:
            batch.add(self._q["insert_bucket"], known)
        self._outbox.add_to(batch, event)
        await self._cql.execute(batch)
        self._known_buckets[known] = None
        self._known_buckets.move_to_end(known)
        if len(self._known_buckets) > KNOWN_BUCKETS:
            self._known_buckets.popitem(last=False)

    async def delete_tweet(self, tweet: TweetRecord, event: Event) -> None:
        bucket = bucket_of(id_time_ms(tweet.tweet_id))
        batch = Batch(BatchType.LOGGED)
        # Newer than the rows however far the clock of the instance that made the id ran
        # ahead of this one's (they carry the id's time, `insert_tweet`).
        at_us = max(time.time_ns() // 1000, id_time_ms(tweet.tweet_id) * 1000 + 1)
        batch.add(self._q["delete_tweet"], (at_us, tweet.tweet_id))
        batch.add(self._q["delete_user_tweet"], (at_us, tweet.author_id, bucket, tweet.tweet_id))
        batch.add(self._q["delete_likes"], (tweet.tweet_id,))
        batch.add(self._q["mark_deleted"], (tweet.tweet_id,))
        self._outbox.add_to(batch, event)
        await self._cql.execute(batch)
        # After the answer: the check reads at ALL, and a replica not yet known to be
        # down would make it wait out its timeout.
        if bucket < bucket_of(int(time.time() * 1000)) - 1:
            self._month_checks.request([(tweet.author_id, bucket)])

    async def settled(self, seconds: float = 10.0) -> None:
        """Waits, up to `seconds`, until the months deletes asked about are checked (tests)."""
        for _ in range(int(seconds / 0.01)):
            if not self._month_checks.draining():
                return
            await asyncio.sleep(0.01)

    async def was_deleted(self, tweet_id: int) -> bool:
        """Whether the tweet was deleted within the last two days (`deleted_tweets`)."""
        return bool(await self._cql.execute(self._q["was_deleted"], (tweet_id,)))

    async def _forget_months_if_empty(self, months: list[tuple[int, int]]) -> None:
        """Drop the listings of past (author, month) pairs deletes left empty, so walks
        stop reading them. Only months no post can land in any more (`delete_tweet` asks
        for those alone): a post's id is of its own time, and a retried post reuses an id
        at most a day old (its idempotency key's lifetime), so the current month and the
        one before it are kept whatever they hold. A month is read from every replica
        (`month_has_tweets` at ALL): a replica that missed a tweet must not make a listing
        go for good. Best effort: a failure (a replica down) leaves the month listed."""

        async def one(author_id: int, bucket: int) -> None:
            try:
                if not await self._cql.execute(self._q["month_has_tweets"], (author_id, bucket)):
                    await self._cql.execute(self._q["delete_bucket"], (author_id, bucket))
            except Exception as exc:  # noqa: BLE001 - an optimisation; the month stays listed
                log.warning("an emptied month stays listed", extra={"author_id": author_id, "error": repr(exc)})

        await asyncio.gather(*(one(author_id, bucket) for author_id, bucket in months))

    async def bodies(self, tweet_ids: Sequence[int]) -> dict[int, TweetRecord]:
        """Tweets without their like counts; missing (deleted) ids are left out."""
        if not tweet_ids:
            return {}
        chunks = await self._in_chunks("get_tweets", tweet_ids, ())
        return {r.tweet_id: _record(r, 0) for rows in chunks for r in rows}

    async def existing(self, tweet_ids: Sequence[int]) -> set[int]:
        """Which of these tweets the store still has (not deleted)."""
        if not tweet_ids:
            return set()
        chunks = await self._in_chunks("existing", tweet_ids, ())
        return {r.tweet_id for rows in chunks for r in rows}

    async def like_counts(self, tweet_ids: Sequence[int]) -> dict[int, int]:
        if not tweet_ids:
            return {}
        chunks = await self._in_chunks("like_counts", tweet_ids, ())
        return {r.tweet_id: r.like_count or 0 for rows in chunks for r in rows}

    async def like_count(self, tweet_id: int) -> int:
        rows = await self._cql.execute(self._q["like_count"], (tweet_id,))
        return (rows[0].like_count or 0) if rows else 0

    async def like_states(self, tweet_id: int, user_ids: Sequence[int]) -> tuple[int | None, dict[int, LikeState]]:
        """The stored count (None when never set) and the rows of these users."""
        count_rows, *chunks = await asyncio.gather(
            self._cql.execute(self._q["like_count"], (tweet_id,)),
            *(self._cql.execute(self._q["like_rows"], (tweet_id, ids)) for ids in in_lists(list(user_ids))),
        )
        count = count_rows[0].like_count if count_rows else None
        return count, {
            r.user_id: LikeState(bool(r.liked), r.version if r.version is not None else -1)
            for rows in chunks
            for r in rows
        }

    async def write_likes(
        self,
        tweet_id: int,
        expected: int | None,
        count: int,
        changed: dict[int, LikeState],
        stored: dict[int, LikeState],
    ) -> bool:
        """Rows and count in one conditional single-partition batch; False if the
        count or any of these users' rows moved under us (another worker, or an
        earlier attempt of ours that timed out yet was applied), so the caller
        re-reads and retries.

        The rows are conditioned too, not only the count: rows and count are read
        by two queries, so the count can already include a like whose row the
        other read missed, and folding that like again would count it twice.
        """
        batch = Batch(BatchType.UNLOGGED)
        batch.add(self._q["set_count"], (count, tweet_id, expected))
        for user_id, state in changed.items():
            before = stored.get(user_id)
            was = before.version if before is not None and before.version >= 0 else None  # None: no row yet
            batch.add(self._q["set_like"], (state.liked, state.version, tweet_id, user_id, was))
        rows = await self._cql.execute(batch)
        return bool(rows[0][0])

    async def record_user_like(self, user_id: int, tweet_id: int, liked: bool, version: int) -> None:
        """The user's like state of this tweet as of `version`, in their `user_likes`
        partition; an older version written later changes nothing (tweet_svc/viewer.py)."""
        await self._cql.execute(
            self._q["set_user_like"], (write_time_us(version), encode_state(liked, version), user_id, tweet_id)
        )

    async def claim_like_version(self, user_id: int, tweet_id: int, version: int) -> None:
        """Records `version` as given to a change of this like before its event is sent:
        one that timed out may have been written all the same (infra/cql/015_like_claims.cql)."""
        await self._cql.execute(self._q["claim_like"], (write_time_us(version), version, user_id, tweet_id))

    async def user_like_version(self, user_id: int, tweet_id: int) -> int:
        """The version of the user's last like or unlike of this tweet that may have been
        sent: claimed before its event was sent, and written to `user_likes` before it was
        acknowledged (a like acknowledged before claims were written has only that); -1
        for none."""
        acknowledged, claimed = await asyncio.gather(
            self._cql.execute(self._q["user_like"], (user_id, tweet_id)),
            self._cql.execute(self._q["like_claim"], (user_id, tweet_id)),
        )
        return max(
            decode_version(acknowledged[0].state) if acknowledged else -1,
            int(claimed[0].version) if claimed else -1,
        )

    async def record_user_likes(self, tweet_id: int, states: dict[int, LikeState]) -> None:
        """`record_user_like` for several users (partitions differ: one write each, no batch)."""
        await asyncio.gather(
            *(self.record_user_like(u, tweet_id, s.liked, s.version) for u, s in states.items() if s.version > 0)
        )

    async def liked_among(self, user_id: int, tweet_ids: Sequence[int]) -> set[int]:
        """Which of `tweet_ids` the user likes: reads in their one partition, 100 ids per query."""
        ids = sorted(set(tweet_ids))
        chunks = await asyncio.gather(
            *(self._cql.execute(self._q["user_likes_among"], (user_id, c)) for c in in_lists(ids))
        )
        return {r.tweet_id for rows in chunks for r in rows if decode_liked(r.state)}

    async def author_tweet_ids(self, author_id: int, limit: int, before: int | None) -> list[int]:
        """A user's tweet ids, newest first, strictly older than `before`."""

        async def buckets_from(start: int, most: int) -> list[int]:
            return [r.bucket for r in await self._cql.execute(self._q["buckets_from"], (author_id, start, most))]

        async def read(bucket: int, from_cursor: bool, want: int) -> list[int]:
            if from_cursor:
                rows = await self._cql.execute(self._q["tweets_before"], (author_id, bucket, before, want))
                return [r.tweet_id for r in rows]
            return await self._bucket_tweets(author_id, bucket, want)

        return await walk_newest_first(buckets_from, read, limit, bucket_of(id_time_ms(before)) if before else None)

    async def newest_tweet_ids(self, author_ids: Sequence[int], limit: int) -> dict[int, list[int]]:
        """Each author's newest `limit` tweet ids, newest first, as `author_tweet_ids(a,
        limit, None)` gives them, in a few queries for all the authors instead of two or
        more each: their newest BUCKETS_LISTED buckets listed in one query per
        KEYS_PER_QUERY, then one query per bucket read next (authors grouped by it:
        most authors' newest bucket is the same month), newest buckets first, until each
        author has `limit` ids or no bucket left. An author still short after all its
        listed buckets, which may have older ones, walks on alone from below them."""
        authors = list(dict.fromkeys(author_ids))
        found: dict[int, list[int]] = {a: [] for a in authors}
        if limit <= 0:
            return found
        listed: dict[int, list[int]] = {a: [] for a in authors}
        for rows in await self._in_chunks("newest_buckets", authors, (BUCKETS_LISTED,)):
            for r in rows:
                listed[r.author_id].append(r.bucket)
        depth = 0
        short = [a for a in authors if listed[a]]
        while short:
            by_bucket: defaultdict[int, list[int]] = defaultdict(list)
            for a in short:
                by_bucket[listed[a][depth]].append(a)
            reads = [
                self._in_chunks("tweets_in_bucket", group, (bucket, max(limit - len(found[a]) for a in group)))
                for bucket, group in by_bucket.items()
            ]
            for chunks in await asyncio.gather(*reads):
                for rows in chunks:
                    for r in rows:  # a partition's rows newest first (its clustering order)
                        found[r.author_id].append(r.tweet_id)
            depth += 1
            short = [a for a in short if len(found[a]) < limit and depth < len(listed[a])]

        async def older(author_id: int) -> list[int]:
            """The rest of the author's walk, below the buckets listed and read already."""

            async def below_listed(start: int, most: int) -> list[int]:
                params = (author_id, min(start, listed[author_id][-1] - 1), most)
                return [r.bucket for r in await self._cql.execute(self._q["buckets_from"], params)]

            async def read(bucket: int, from_cursor: bool, want: int) -> list[int]:
                return await self._bucket_tweets(author_id, bucket, want)

            return await walk_newest_first(below_listed, read, limit - len(found[author_id]), None)

        alone = [a for a in authors if len(found[a]) < limit and len(listed[a]) == BUCKETS_LISTED]
        for author_id, more in zip(alone, await asyncio.gather(*(older(a) for a in alone)), strict=True):
            found[author_id] += more
        return {a: ids[:limit] for a, ids in found.items()}

    async def _bucket_tweets(self, author_id: int, bucket: int, want: int) -> list[int]:
        """The newest `want` tweet ids of one of the author's buckets."""
        return [r.tweet_id for r in await self._cql.execute(self._q["tweets_first"], (author_id, bucket, want))]

    async def _in_chunks(self, name: str, keys: Sequence[int], params: tuple[Any, ...]) -> list[list[Any]]:
        """Statement `name` (its `IN ?` first) run for KEYS_PER_QUERY keys at a time, at
        once; its rows per query."""
        queries = [self._cql.execute(self._q[name], (chunk, *params)) for chunk in in_lists(list(keys), KEYS_PER_QUERY)]
        if len(queries) == 1:  # most calls: no task for one query
            return [await queries[0]]
        return list(await asyncio.gather(*queries))


def _record(row: Any, like_count: int) -> TweetRecord:
    created = row.created_at
    return TweetRecord(
        tweet_id=row.tweet_id,
        author_id=row.author_id,
        author_username=row.author_username,
        text=row.text,
        created_at=created.replace(tzinfo=UTC) if created.tzinfo is None else created,
        like_count=like_count,
    )
