"""Tweet bodies and like counts cached in Redis.

A body never changes, so it is cached for minutes (cache-aside). A delete
leaves a short-lived marker, so no reader can be served a deleted tweet from
the cache. Should Redis be unreachable at the delete, the fan-out worker
writes the same marker (common/cache.py) from the tweet_deleted event, its
batch retried from Kafka until Redis takes it, so a body Redis still holds
when it comes back is not served for the rest of its lifetime.

Keys come from common/keys.py; work on many keys is a pipeline of single-key
commands (a Redis Cluster client splits it by node), never MGET across slots.

Like counts are written through by the like worker right after each CQL
write, and filled by readers only where absent (SET NX): a reader that read
the store just before a like was applied can never overwrite the newer count
the worker put there. A short TTL bounds staleness should the worker's write
to Redis fail while Redis keeps its data.

Each author's newest tweet ids (`ar:{author}`, a sorted set) serve the read
path's "recent tweets of these authors" without the CQL store: posts add to
the set and deletes remove from it before they are acknowledged; readers fill
a missing or short set from the store by merging (ZADD), never replacing, so
a fill that read the store just before a post cannot hide that post. A marker
member says how much the set covers: ALL (every tweet of the author) or TOP
(at least the newest RECENT_DEPTH at fill time). Sets expire after a TTL
counted from their creation, which bounds staleness should a post's write to
Redis fail while Redis keeps its data.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime

from prometheus_client import Counter

from common.cache import RedisClient, Tolerant, mark_tweet_deleted, tolerant
from common.ids import id_time_ms
from common.keys import TWEET_DELETED, tweet_key
from tweet_svc.store import TweetRecord

RECENT_DEPTH = 50  # ids a reader's fill loads per author
ALL, TOP = "all", "top"  # coverage markers, scored +inf so they sort first
LOOKUPS = Counter("chirp_tweet_cache_total", "Tweet body lookups by cache outcome.", ["result"])
RECENT_LOOKUPS = Counter(
    "chirp_author_recent_cache_total", "Authors' recent tweet id lookups by cache outcome.", ["result"]
)


def _encode(tweet: TweetRecord) -> bytes:
    created_ms = int(tweet.created_at.timestamp() * 1000)
    return json.dumps([tweet.author_id, tweet.author_username, tweet.text, created_ms], ensure_ascii=False).encode()


def _decode(tweet_id: int, raw: bytes) -> TweetRecord:
    author_id, username, text, created_ms = json.loads(raw)
    created = datetime.fromtimestamp(created_ms // 1000, UTC).replace(microsecond=created_ms % 1000 * 1000)
    return TweetRecord(tweet_id, author_id, username, text, created)


class TweetCache(Tolerant):
    def __init__(
        self,
        redis: RedisClient,
        ttl_seconds: float,
        count_ttl_seconds: float = 30.0,
        recent_ttl_seconds: float = 30.0,
    ) -> None:
        super().__init__()
        self._redis = redis
        self._ttl_ms = max(1, int(ttl_seconds * 1000))
        self._count_ttl_ms = max(1, int(count_ttl_seconds * 1000))
        self._recent_ttl_ms = max(1, int(recent_ttl_seconds * 1000))

    @tolerant(lambda: ({}, set()))
    async def get(self, tweet_ids: Sequence[int]) -> tuple[dict[int, TweetRecord], set[int]]:
        """(cached bodies, ids known to be deleted); other ids are misses."""
        if not tweet_ids:
            return {}, set()
        values = await self._get_each([tweet_key("body", t) for t in tweet_ids])
        found: dict[int, TweetRecord] = {}
        deleted: set[int] = set()
        for tweet_id, raw in zip(tweet_ids, values, strict=True):
            if raw == TWEET_DELETED:
                deleted.add(tweet_id)
            elif raw is not None:
                found[tweet_id] = _decode(tweet_id, raw if isinstance(raw, bytes) else raw.encode())
        LOOKUPS.labels("hit").inc(len(found) + len(deleted))
        LOOKUPS.labels("miss").inc(len(tweet_ids) - len(found) - len(deleted))
        return found, deleted

    @tolerant()
    async def put(self, tweets: Sequence[TweetRecord]) -> None:
        if not tweets:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for tweet in tweets:
                # NX: never overwrite a deletion marker with a body read just before the delete.
                pipe.set(tweet_key("body", tweet.tweet_id), _encode(tweet), px=self._ttl_ms, nx=True)
            await pipe.execute()

    @tolerant()
    async def mark_deleted(self, tweet_id: int) -> None:
        """Dropped while Redis is unreachable: the fan-out worker writes the same
        marker from the tweet_deleted event, retrying until Redis takes it."""
        await mark_tweet_deleted(self._redis, tweet_id)

    # ---- like counts ------------------------------------------------------------------

    @tolerant(dict)
    async def like_counts(self, tweet_ids: Sequence[int]) -> dict[int, int]:
        """Cached counts; absent ids are misses."""
        if not tweet_ids:
            return {}
        values = await self._get_each([tweet_key("like_count", t) for t in tweet_ids])
        return {t: int(v) for t, v in zip(tweet_ids, values, strict=True) if v is not None}

    @tolerant()
    async def fill_like_counts(self, counts: dict[int, int]) -> None:
        """A reader's fill: only where no count is cached (never over a newer one)."""
        await self._set_counts(counts, only_if_absent=True)

    @tolerant()
    async def set_like_counts(self, counts: dict[int, int]) -> None:
        """The like worker's write-through, right after the store has these counts."""
        await self._set_counts(counts, only_if_absent=False)

    async def _set_counts(self, counts: dict[int, int], only_if_absent: bool) -> None:
        if not counts:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for tweet_id, count in counts.items():
                pipe.set(tweet_key("like_count", tweet_id), count, px=self._count_ttl_ms, nx=only_if_absent)
            await pipe.execute()

    # ---- authors' recent tweet ids ---------------------------------------------------

    @tolerant(dict)
    async def recent(self, authors: Sequence[int], limit: int) -> dict[int, list[int]]:
        """Newest-first ids of the authors whose cached set answers `limit` (at most
        RECENT_DEPTH); the others are misses."""
        if not authors:
            return {}
        async with self._redis.pipeline(transaction=False) as pipe:
            for author in authors:
                pipe.zrevrange(tweet_key("author_recent", author), 0, limit + 1)  # both markers, then ids
            replies = await pipe.execute()
        found: dict[int, list[int]] = {}
        for author, members in zip(authors, replies, strict=True):
            names = [_text(m) for m in members]
            ids = [int(m) for m in names if m not in (ALL, TOP)][:limit]
            if ALL in names or (TOP in names and len(ids) >= limit):
                found[author] = ids
        RECENT_LOOKUPS.labels("hit").inc(len(found))
        RECENT_LOOKUPS.labels("miss").inc(len(authors) - len(found))
        return found

    @tolerant()
    async def fill_recent(self, recent: dict[int, list[int]]) -> None:
        """A reader's fill with the newest RECENT_DEPTH ids it read from the store (merged in)."""
        if not recent:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for author, ids in recent.items():
                entries: dict[str, float] = {str(t): id_time_ms(t) for t in ids}
                entries[ALL if len(ids) < RECENT_DEPTH else TOP] = float("inf")
                pipe.zadd(tweet_key("author_recent", author), entries)
                pipe.pexpire(tweet_key("author_recent", author), self._recent_ttl_ms, nx=True)
            await pipe.execute()

    @tolerant()
    async def add_recent(self, author_id: int, tweet_id: int) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zadd(tweet_key("author_recent", author_id), {str(tweet_id): id_time_ms(tweet_id)})
            pipe.pexpire(tweet_key("author_recent", author_id), self._recent_ttl_ms, nx=True)
            await pipe.execute()

    @tolerant()
    async def remove_recent(self, author_id: int, tweet_id: int) -> None:
        await self._redis.zrem(tweet_key("author_recent", author_id), str(tweet_id))

    async def _get_each(self, keys: list[str]) -> list[bytes | None]:
        """GET of each key in one pipeline: the keys hash to different cluster slots,
        so no MGET; a cluster client sends each node its share at once."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.get(key)
            values: list[bytes | None] = await pipe.execute()
        return values


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
