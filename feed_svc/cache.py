"""Redis side of feed_svc: pushed timelines, and short-lived caches of follow
lists and the celebrity registry. Everything here can be rebuilt from the CQL
store or the other services.

Keys come from common/keys.py; work on many keys is a pipeline of single-key
commands (a Redis Cluster client splits it by node), never MGET across slots.
Calls the fan-out worker makes (push, remove, marks) raise when Redis is
unavailable, so its batch fails and is re-applied from Kafka; read-path calls
act as misses instead.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from common.cache import (
    RELOAD_CLAIM_MS,
    RedisClient,
    ReloadClaims,
    Tolerant,
    deletion_marker,
    partial_replies,
    raise_if_all_unanswered,
    run_reads,
    tolerant,
    unanswered,
)
from common.hidden import hidden_key
from common.ids import id_time_ms
from common.keys import CELEBRITIES_KEY, feed_key, legacy_following_key, reload_claim_key, tweet_key
from common.replica_waits import ReplicaWaits
from common.singleflight import due_by_pttl, due_point_ms
from common.tweet_cache import CachedTweets, parse_reads, parse_recent, queue_reads, recent_due, recent_range
from feed_svc.activity import RECORD_TTL_SECONDS, ReadMarks, read_record_key

# A member with score +inf marks a timeline as complete (rebuilt from CQL);
# trimming removes the lowest scores, so it always survives. Fan-out may add
# to a timeline that is not built yet; readers rebuild (merge) when it is missing.
# The celebrity set carries the same member once loaded from CQL.
BUILT = "built"

# Suffix of a cached follow list that graph_svc cut at its listing limit.
TRUNCATED = "more"
# A follow list's key holds PENDING + a random token while a reader loads the list:
# the fill lands only if that marker is still there. The fan-out worker deletes the
# key on every follow and unfollow, so a list read from graph_svc before one of them
# either lands before the delete (and is deleted) or finds its marker gone (and is
# dropped): a cached list is never older than the last follow or unfollow applied,
# whatever its TTL. Tokens are random, so a marker that expired and was made again
# is never taken for the one a reader holds. A reload after a read (HomeFeed) lands
# the same way: only over the write it fingerprinted before its load.
PENDING = "pending:"
PENDING_SECONDS = 10.0  # one load from graph_svc; a slower load's fill is dropped
# KEYS: the list. ARGV: a fresh token, the marker's ttl_ms. Returns {1, list} on a hit,
# else {0, token}: the marker's token, made here when there was none.
CLAIM_FOLLOWING_SCRIPT = """
local value = redis.call('GET', KEYS[1])
if value and string.sub(value, 1, 8) ~= 'pending:' then return {1, value} end
if value then return {0, string.sub(value, 9)} end
redis.call('SET', KEYS[1], 'pending:' .. ARGV[1], 'PX', ARGV[2])
return {0, ARGV[1]}
"""
# KEYS: the list. ARGV: the token, the list, its ttl_ms. Returns 1 when it was stored.
FILL_FOLLOWING_SCRIPT = """
if redis.call('GET', KEYS[1]) ~= 'pending:' .. ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""
# A cached list's fingerprint for a reload (`following_fingerprint`): the SHA-1 of its
# value and its PEXPIRETIME, which every fill and reload sets anew, so the pair names
# the write that put the list there, not only what it holds (a follow and its unfollow
# leave the same bytes behind), taking this process's claim on the reload (for
# RELOAD_CLAIM_MS, common/cache.py; taken again by the same token, as when a command is
# sent again after its reply was lost); nil, claiming nothing, for a miss, a reader's
# PENDING marker, a list no longer due (another process reloaded it), or one another
# process claimed the reload of.
# KEYS: the list, its claim (common/keys.py, in the list's slot). ARGV: the claim's
# token, claim ms, the list's due point (ms left).
FOLLOWING_FINGERPRINT_SCRIPT = """
local value = redis.call('GET', KEYS[1])
if not value or string.sub(value, 1, 8) == 'pending:' then return false end
if redis.call('PTTL', KEYS[1]) > tonumber(ARGV[3]) then return false end
local held = redis.call('GET', KEYS[2])
if held and held ~= ARGV[1] then return false end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return {redis.sha1hex(value), redis.call('PEXPIRETIME', KEYS[1])}
"""
# KEYS: the list. ARGV: the fingerprint's SHA-1, the list loaded after it was taken, its
# ttl_ms, the fingerprint's PEXPIRETIME. Returns 1 when it was stored: only over the write
# the fingerprint names, so a follow or unfollow applied since (the key deleted, maybe
# filled again) keeps the reload out.
REFRESH_FOLLOWING_SCRIPT = """
local value = redis.call('GET', KEYS[1])
if not value or redis.sha1hex(value) ~= ARGV[1] then return 0 end
if redis.call('PEXPIRETIME', KEYS[1]) ~= tonumber(ARGV[4]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""
# A follow list served near the end of its lifetime is loaded again after the read
# (HomeFeed), so lists filled together (a warm-up, a cold start) are not all missed, and
# loaded by the readers waiting on them, when they expire together. Where it falls due
# is spread by the reader's id, from a fifth of the lifetime before its end to a
# twentieth: lists filled together are then loaded again over that span, not in one
# burst. Unlike a spread lifetime, this costs no read anything: a reload is one call
# per list either way, made after the read.
FOLLOWING_REFRESH_FRACTION = 0.2
FOLLOWING_REFRESH_SPREAD = 0.75  # the part of that fifth the readers' due times spread over
# The registry's copy in Redis is reloaded from the CQL store this often, so a
# mark lost with a failed-over primary, or an unmark that raced a load, lasts
# at most this long.
CELEBRITIES_RELOAD_SECONDS = 60


def _timeline(user_id: int) -> str:
    return feed_key("timeline", user_id)


TRIM_EVERY = 4


def trims(user_id: int, tweets: Sequence[int]) -> bool:
    """Whether a push of `tweets` to this user's timeline trims it: always for several
    tweets at once (a backfill), else for about one (user, tweet) pair in TRIM_EVERY,
    spread by a hash so that every timeline is trimmed about as often."""
    return len(tweets) != 1 or hash((user_id, tweets[0])) % TRIM_EVERY == 0


@dataclass
class HomeReads:
    """`FeedCache.home_reads`: None is a miss."""

    following: tuple[list[tuple[int, int]], bool] | None = None
    timeline: list[int] | None = None
    own_recent: tuple[list[int], bool] | None = None
    own_read: bool = False  # whether own_recent was asked for (a None then is a miss)
    # The reply to a GET of the reader's hidden-author set (common/hidden.py), for
    # HiddenAuthorsCache.hidden; None when asked for and missed, or not asked for.
    hidden: bytes | None = None
    hidden_pttl: object = None  # the PTTL of that key, read with it
    answered: bool = False  # whether Redis answered (False: every field is a miss)


class FeedCache(Tolerant):
    def __init__(
        self,
        redis: RedisClient,
        timeline_size: int,
        following_ttl: float,
        celebrity_ttl: float,
        replica_waits: ReplicaWaits | None = None,
        timeline_ttl: float | None = None,
    ) -> None:
        super().__init__(redis)
        self._redis = redis
        # A timeline lives this long after its reader's last recorded read (`mark_read`
        # renews it), so the timeline of a reader gone for good is not kept forever:
        # the fan-out worker drops an inactive reader's timeline only when it has a
        # tweet for them. None: no lifetime (tests).
        self._timeline_ttl_ms = None if timeline_ttl is None else max(1, int(timeline_ttl * 1000))
        # The fan-out worker's: its pushes and drops wait for a replica before the
        # batch is committed (common/replica_waits.py). Reads never wait.
        self._replica_waits = replica_waits
        self._size = timeline_size
        self._following_ttl = max(1, int(following_ttl * 1000))
        self._claim_following = redis.register_script(CLAIM_FOLLOWING_SCRIPT)
        self._fill_following = redis.register_script(FILL_FOLLOWING_SCRIPT)
        self._refresh_following = redis.register_script(REFRESH_FOLLOWING_SCRIPT)
        self._following_fingerprint = redis.register_script(FOLLOWING_FINGERPRINT_SCRIPT)
        self._claims = ReloadClaims(redis)
        # CHIRP_CELEBRITY_CACHE_SECONDS paces feed_svc's in-memory celebrity registry.
        self.celebrity_ttl_seconds = celebrity_ttl
        # Told the authors whose recent-ids sets a read served past their refresh time
        # (common/tweet_cache.py), for their renewal after the read (HomeFeed sets it).
        self.on_recent_due: Callable[[Iterable[int]], None] | None = None
        # Told the readers whose follow list a read served past its refresh time
        # (`following_due`), for its reload after the read (HomeFeed sets it).
        self.on_following_due: Callable[[Iterable[int]], None] | None = None

    # ---- pushed timelines ---------------------------------------------------------

    async def push(self, user_ids: Sequence[int], tweets: Sequence[int]) -> None:
        """Add tweets to many timelines in one pipeline, keeping about the newest `size`.

        A timeline is trimmed back to `size` on about one push of a tweet in
        TRIM_EVERY (`trims`), not on every one: the trim was half the commands of a
        push, and a timeline is at most a few entries over its size in between.
        """
        if not tweets or not user_ids:
            return
        entries: dict[str, float] = {str(t): id_time_ms(t) for t in tweets}
        keys = [_timeline(user_id) for user_id in user_ids]
        async with self._redis.pipeline(transaction=False) as pipe:
            for user_id, key in zip(user_ids, keys, strict=True):
                pipe.zadd(key, entries)
                if trims(user_id, tweets):
                    pipe.zremrangebyrank(key, 0, -(self._size + 2))
                    if self._timeline_ttl_ms is not None:
                        # A timeline made by pushes alone (its reader never read since)
                        # gets its lifetime here; one read since keeps renewing it.
                        pipe.pexpire(key, self._timeline_ttl_ms, nx=True)
            await self._execute_replicated(pipe, keys)

    async def remove(self, user_ids: Sequence[int], tweets: Sequence[int]) -> None:
        if not tweets:
            return
        members = [str(t) for t in tweets]
        async with self._redis.pipeline(transaction=False) as pipe:
            for user_id in user_ids:
                pipe.zrem(_timeline(user_id), *members)
            await pipe.execute()

    @tolerant()
    async def timeline(self, user_id: int, before: int | None, limit: int) -> list[int] | None:
        """Pushed tweet ids below `before`, newest first; None if the timeline is not built.

        Scores are milliseconds: the cursor's own millisecond is read whole and
        filtered apart from the older ones, so however many tweets share it, the
        entries at or above the cursor never take the places of older ones.
        """
        replies = await run_reads(self._redis, lambda pipe: _queue_timeline(pipe, user_id, before, limit))
        return _parse_timeline(_raised(replies), before, limit)

    @tolerant()
    async def rebuild(self, user_id: int, tweets: Sequence[int]) -> list[int] | None:
        """Add `tweets` to the timeline and mark it built; the timeline that makes,
        newest first: the tweets and whatever the fan-out worker pushed into the key
        meanwhile (a push does not wait for the timeline to be built). None if Redis
        does not answer."""
        entries: dict[str, float] = {str(t): id_time_ms(t) for t in tweets}
        entries[BUILT] = float("inf")
        key = _timeline(user_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zadd(key, entries)
            pipe.zremrangebyrank(key, 0, -(self._size + 2))
            if self._timeline_ttl_ms is not None:
                pipe.pexpire(key, self._timeline_ttl_ms)
            pipe.zrevrange(key, 0, self._size)
            *_, members = await pipe.execute()
        return [int(m) for m in members if _text(m) != BUILT]

    # ---- the celebrity registry (authors pulled at read time) -------------------

    @tolerant()
    async def celebrities(self) -> set[int] | None:
        """Every marked celebrity; None if the set is not loaded. Read once per
        refresh of each process's in-memory copy, not once per feed read."""
        members = {_text(m) for m in await self._redis.smembers(CELEBRITIES_KEY)}
        if BUILT not in members:
            return None
        return {int(m) for m in members if m != BUILT}

    @tolerant()
    async def load_celebrities(self, author_ids: set[int]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.sadd(CELEBRITIES_KEY, BUILT, *[str(a) for a in author_ids])
            pipe.expire(CELEBRITIES_KEY, CELEBRITIES_RELOAD_SECONDS, nx=True)
            await pipe.execute()

    async def mark_celebrity(self, author_id: int, celebrity: bool) -> None:
        if celebrity:
            await self._redis.sadd(CELEBRITIES_KEY, str(author_id))
        else:
            await self._redis.srem(CELEBRITIES_KEY, str(author_id))

    # ---- follow lists ----------------------------------------------------------------

    @tolerant()
    async def claim_following(self, user_id: int) -> tuple[list[tuple[int, int]], bool] | str | None:
        """On a miss of the follow list: the list if it is there after all, else the
        token to fill it with (`set_following`); None while Redis does not answer (load
        it, fill nothing)."""
        hit, value = await self._claim_following(
            keys=[feed_key("following", user_id)], args=[secrets.token_hex(8), int(PENDING_SECONDS * 1000)]
        )
        return _parse_following(value) if hit else _text(value)

    @tolerant(HomeReads)
    async def home_reads(
        self, user_id: int, before: int | None, limit: int, own_limit: int, hidden: bool = False
    ) -> HomeReads:
        """What a feed read needs first, in one pipeline (single-key reads, so one round
        trip and one pipeline's overhead instead of one each): the cached follow list,
        the pushed timeline as `timeline` reads it, with `own_limit` the reader's own
        newest ids as `recent_ids` reads them and, with `hidden`, the reader's cached
        hidden-author set and its PTTL (common/hidden.py; its key carries the user's hash tag, and
        like every other command here it goes to its own slot's node on a cluster).
        Misses are None; all are misses while Redis does not answer."""

        def queue(pipe: Any) -> None:
            pipe.get(feed_key("following", user_id))
            pipe.pttl(feed_key("following", user_id))
            if hidden:
                pipe.get(hidden_key(user_id))
                pipe.pttl(hidden_key(user_id))
            _queue_timeline(pipe, user_id, before, limit)
            if own_limit:
                pipe.zrevrange(tweet_key("author_recent", user_id), *recent_range(own_limit))
                pipe.pttl(tweet_key("author_recent", user_id))

        raw, following_pttl, *replies = partial_replies(await run_reads(self._redis, queue))
        reads = HomeReads(following=None if unanswered(raw) else _parse_following(raw), answered=True)
        if (
            reads.following is not None
            and self.on_following_due is not None
            and self.following_due(user_id, following_pttl)
        ):
            self.on_following_due((user_id,))
        if hidden:
            reply, reads.hidden_pttl = replies.pop(0), replies.pop(0)
            reads.answered = not unanswered(reply)  # a cluster node's keys: it alone missed
            reads.hidden = None if unanswered(reply) else reply
        if own_limit:
            pttl = replies.pop()
            reply = replies.pop()
            reads.own_recent = None if unanswered(reply) else parse_recent(reply, own_limit)
            reads.own_read = True
            if reads.own_recent is not None:
                self._recent_served({user_id: pttl})
        reads.timeline = None if any(unanswered(r) for r in replies) else _parse_timeline(replies, before, limit)
        return reads

    @tolerant()
    async def set_following(
        self, user_id: int, accounts: Sequence[tuple[int, int]], complete: bool, token: str
    ) -> None:
        """Fill the follow list if the marker of `token` (`claim_following`) is still there."""
        value = _following_value(accounts, complete)
        await self._fill_following(keys=[feed_key("following", user_id)], args=[token, value, self._following_ttl])

    def following_due(self, user_id: int, pttl_ms: Any) -> bool:
        """Whether this reader's follow list, whose PTTL is `pttl_ms`, is past its refresh
        time (one with no expiry, -1, is: a fill always sets one)."""
        return due_by_pttl(user_id, pttl_ms, self._following_ttl, FOLLOWING_REFRESH_FRACTION, FOLLOWING_REFRESH_SPREAD)

    # Not `tolerant`, unlike the read path's calls: these run after the read, and a
    # failure is the reload's alone (counted, the list left as it is), never a reason
    # to serve reads without Redis.
    async def following_fingerprint(self, user_id: int, claim: str) -> tuple[str, int] | None:
        """The cached follow list's fingerprint for `refresh_following`, this process
        claiming the reload with `claim` (`end_following_reload` releases it); None for
        a miss, a reader's PENDING marker, or a list no longer due or another process is
        reloading."""
        key = feed_key("following", user_id)
        due_ms = due_point_ms(user_id, self._following_ttl, FOLLOWING_REFRESH_FRACTION, FOLLOWING_REFRESH_SPREAD)
        found = await self._following_fingerprint(
            keys=[key, reload_claim_key(key)], args=[claim, RELOAD_CLAIM_MS, due_ms]
        )
        return None if found is None else (_text(found[0]), int(found[1]))

    async def end_following_reload(self, user_id: int, claim: str) -> None:
        """Releases the claim `following_fingerprint` took, whatever became of the reload."""
        await self._claims.release(feed_key("following", user_id), claim)

    async def refresh_following(
        self, user_id: int, fingerprint: tuple[str, int], accounts: Sequence[tuple[int, int]], complete: bool
    ) -> bool:
        """Replace the follow list `fingerprint` names with `accounts`, loaded after it was
        taken, for a whole lifetime; False (nothing stored) if the key was written since."""
        digest, expires_at = fingerprint
        stored = await self._refresh_following(
            keys=[feed_key("following", user_id)],
            args=[digest, _following_value(accounts, complete), self._following_ttl, expires_at],
        )
        return bool(stored)

    async def drop_following(self, user_id: int) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.delete(feed_key("following", user_id))
            pipe.delete(legacy_following_key(user_id))  # for feed_svc instances still reading it
            await pipe.execute()

    # ---- tweet_svc's cache, read as common/tweet_cache.py writes it down ------------------

    @tolerant(dict)
    async def recent_ids(self, authors: Sequence[int], limit: int) -> dict[int, tuple[list[int], bool]]:
        """Each author's newest ids (at most `limit`, at most RECENT_DEPTH) from tweet_svc's
        recent-ids sets in one pipeline, and whether the author has no older ones; authors
        whose set does not answer are left out (misses)."""
        if not authors:
            return {}

        def queue(pipe: Any) -> None:
            for author in authors:
                pipe.zrevrange(tweet_key("author_recent", author), *recent_range(limit))
                pipe.pttl(tweet_key("author_recent", author))

        replies = partial_replies(await run_reads(self._redis, queue))
        parsed = {
            a: parse_recent(members, limit)
            for a, members in zip(authors, replies[::2], strict=True)
            if not unanswered(members)
        }
        found = {a: ids for a, ids in parsed.items() if ids is not None}
        self._recent_served({a: pttl for a, pttl in zip(authors, replies[1::2], strict=True) if a in found})
        return found

    def _recent_served(self, pttls: dict[int, Any]) -> None:
        """Tells `on_recent_due` the authors among these (served from their sets) whose set
        is past its refresh time, by the PTTL read with it."""
        if self.on_recent_due is None:
            return
        due = [a for a, pttl in pttls.items() if isinstance(pttl, int) and recent_due(pttl)]
        if due:
            self.on_recent_due(due)

    @tolerant(CachedTweets)
    async def tweets(self, tweet_ids: Sequence[int], viewer_id: int = 0) -> CachedTweets:
        """Bodies, deletion markers, like counts and the viewer's like flags, in one pipeline."""
        if not tweet_ids:
            return CachedTweets()
        replies = raise_if_all_unanswered(
            await run_reads(self._redis, lambda pipe: queue_reads(pipe, tweet_ids, viewer_id))
        )
        # A cluster node that did not answer: its keys alone are misses (parse_reads skips errors).
        return parse_reads(tweet_ids, replies)

    # ---- readers' last reads (feed_svc/activity.py) ---------------------------------------

    # This process's memory of readers it recorded lately, and the writes in flight.
    _read_marks: ReadMarks | None = None
    _recording: set[asyncio.Task[bool | None]] | None = None

    def note_read(self, user_id: int) -> None:
        """The reader read: their record is written in the background, at most once
        per RECORD_EVERY_SECONDS per reader and process, so a read waits for nothing."""
        if self._read_marks is None or self._recording is None:
            self._read_marks, self._recording = ReadMarks(), set()
        if not self._read_marks.due(user_id):
            return
        task = asyncio.get_running_loop().create_task(self.mark_read(user_id))
        self._recording.add(task)
        task.add_done_callback(self._recording.discard)

    @tolerant()
    async def mark_read(self, user_id: int) -> bool:
        """Writes the reader's record now (a rebuild awaits it: pushes resume before
        its pull). None while Redis is unreachable, and the record is written again."""
        if self._read_marks is None:
            self._read_marks, self._recording = ReadMarks(), set()
        self._read_marks.forget(user_id)  # until written
        now_ms = int(time.time() * 1000)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(read_record_key(user_id), str(now_ms), px=int(RECORD_TTL_SECONDS * 1000))
            if self._timeline_ttl_ms is not None:
                pipe.pexpire(_timeline(user_id), self._timeline_ttl_ms)
            await pipe.execute()
        self._read_marks.written(user_id)
        return True

    async def last_reads(self, user_ids: Sequence[int]) -> list[int | None]:
        """Each reader's last read (ms), None without a record; one pipeline (the fan-out worker)."""
        if not user_ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for user_id in user_ids:
                pipe.get(read_record_key(user_id))
            values = await pipe.execute()
        return [None if v is None else int(v) for v in values]

    async def start_read_clocks(self, user_ids: Sequence[int], now_ms: int, ttl_ms: int) -> None:
        """Records for readers who have none, as if they read now (never overwrites a read)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for user_id in user_ids:
                pipe.set(read_record_key(user_id), str(now_ms), px=ttl_ms, nx=True)
            await pipe.execute()

    async def drop_timelines(self, user_ids: Sequence[int]) -> None:
        """Timelines no longer pushed to: their memory back, and a rebuild at the next read."""
        if not user_ids:
            return
        keys = [_timeline(user_id) for user_id in user_ids]
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.delete(key)
            # Replicated too: a drop lost in a failover would leave a timeline marked
            # built that the pushes skipped since (no rebuild at the next read).
            await self._execute_replicated(pipe, keys)

    async def _execute_replicated(self, pipe: Any, keys: Sequence[str]) -> None:
        if self._replica_waits is None:
            await pipe.execute()
        else:
            await self._replica_waits.execute(pipe, keys)

    # ---- tweet_svc's deletion marker ---------------------------------------------------

    async def mark_tweet_deleted(self, tweet_id: int) -> None:
        """The fan-out worker's copy of tweet_svc's deletion marker (the durable path:
        it raises while Redis is unavailable, so the event is applied again; and waits
        for a replica, as pushes do, so a failover cannot bring the body back)."""
        key, value, ttl_ms = deletion_marker(tweet_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(key, value, px=ttl_ms)
            await self._execute_replicated(pipe, [key])


def _queue_timeline(pipe: Any, user_id: int, before: int | None, limit: int) -> None:
    key = _timeline(user_id)
    pipe.zscore(key, BUILT)
    if before is None:
        pipe.zrevrangebyscore(key, "+inf", "-inf", start=0, num=limit + 1)
    else:
        ms = id_time_ms(before)
        pipe.zrangebyscore(key, ms, ms)
        pipe.zrevrangebyscore(key, f"({ms}", "-inf", start=0, num=limit)


def _parse_timeline(replies: Sequence[Any], before: int | None, limit: int) -> list[int] | None:
    """The replies of `_queue_timeline`, as `FeedCache.timeline` returns them."""
    built, *ranges = replies
    if built is None:
        return None
    if before is None:
        return [int(m) for m in ranges[0] if _text(m) != BUILT][:limit]
    same_ms = sorted((int(m) for m in ranges[0] if int(m) < before), reverse=True)
    older = [int(m) for m in ranges[1]]
    return (same_ms + older)[:limit]


def _raised(replies: list[Any]) -> list[Any]:
    """The replies of `run_reads`, raising the first error among them (as a pipeline run
    with raise_on_error does)."""
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


def _following_value(accounts: Sequence[tuple[int, int]], complete: bool) -> str:
    """A follow list as the cache holds it (`_parse_following` reads it)."""
    return ",".join(f"{a}:{c}" for a, c in accounts) + ("" if complete else f";{TRUNCATED}")


def _parse_following(raw: bytes | str | None) -> tuple[list[tuple[int, int]], bool] | None:
    """A cached follow list; None for a miss or a reader's PENDING marker."""
    if raw is None:
        return None
    text, _, more = _text(raw).partition(";")
    if text.startswith(PENDING):
        return None
    accounts = [(int(a), int(c)) for a, c in (p.split(":") for p in text.split(",") if p)]
    return accounts, more != TRUNCATED


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
