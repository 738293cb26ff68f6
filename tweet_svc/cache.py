"""Tweet bodies and like counts cached in Redis.

A body never changes, so it is cached for minutes (cache-aside), and a body
being read is renewed rather than refilled: each like-count refresh a read asks
for (`refresh_due` below) gives its tweet's body a whole lifetime again
(`renew_bodies`) if the store still has the tweet, so bodies filled together do
not expire together, and a body whose deletion marker was lost still leaves
within a lifetime. A change to what a body holds needs a new key prefix (as
`tw:` became `tw2:`): a body read all along is never refilled. A delete
leaves a short-lived marker, so no reader can be served a deleted tweet from
the cache. Should Redis be unreachable at the delete, the fan-out worker
writes the same marker (common/cache.py) from the tweet_deleted event, its
batch retried from Kafka until Redis takes it, so a body Redis still holds
when it comes back is not served for the rest of its lifetime.

Keys come from common/keys.py; work on many keys is a pipeline of single-key
commands (a Redis Cluster client splits it by node), never MGET across slots.
What feed_svc reads of this cache without asking tweet_svc (encoded bodies,
the counts' `n`, the recent-ids sets, users' like states) is the contract of
common/tweet_cache.py, which this module writes through.

A tweet's like state (`lc:{tweet}`, a hash) answers "how many likes, counting
every like acknowledged so far": a like is acknowledged once it is on Kafka,
and the like worker folds it into the store a moment later, so the stored
count alone lags behind the likes already answered. The hash holds
- `c`, the stored count as of the newest fold the worker reported;
- per user seen in its lifetime, `<newest version>:<liked>:<folded version>:<liked>`:
  the newest event acknowledged or folded, and the newest one folded into `c`;
- `p`, the sum over users of (newest liked - folded liked), the likes
  acknowledged but not folded yet; and `n` = max(0, c + p), what readers get.
A like or unlike is one script on the one key (LIKE_SCRIPT, mode `ack`), run
after the event is acknowledged; the worker's write-through is the same
script (mode `fold`), which moves `c` and the folded half of each user it
folded, so what it folded stops counting as pending. Versions decide, as in
the store (tweet_svc/likes.py), so a repeated like counts once and a
re-delivered fold changes nothing. A user the hash has not seen starts from
their stored row, read before the event was sent.
Readers fill a missing hash from the store (FILL_SCRIPT, never over an
existing one). The hash is due to be rebuilt from the store
CHIRP_LIKE_COUNT_CACHE_SECONDS after its creation (its `t`), not after its
last write: that bounds how long a restored older copy can skew the count, and it caps the hash
to the users who acted in that time. A read past `t` still serves the hash,
and asks for a rebuild without waiting for it (`refresh_due`, REFRESH_SCRIPT),
so counts filled together do not all become misses together; the rebuild
replaces the hash only where no like script ran since a read made before its
store read (`m`, moved by every run) and no user's acknowledged like or unlike
waits for its fold (`u`, the users whose newest state is not their folded
one, is 0). A hash no rebuild could replace (a fold whose write-through was
lost leaves its user pending) expires at twice that age: that, 2 x
CHIRP_LIKE_COUNT_CACHE_SECONDS, is how long a lost write-through can skew a
count that is read all along. When the hash is gone, counts fall back to the
store's plus what is acknowledged after.

Each author's newest tweet ids (`ar:{author}`, a sorted set) serve the read
path's "recent tweets of these authors" without the CQL store: posts add to
the set and deletes remove from it before they are acknowledged; readers fill
a missing or short set from the store by merging (ZADD), never replacing, so
a fill that read the store just before a post cannot hide that post. A marker
member says how much the set covers: ALL (every tweet of the author) or TOP
(at least the newest RECENT_DEPTH at fill time). A set is due for a refresh
from the store a TTL after its creation or its last refresh, which bounds
staleness should a post's write or a delete's removal fail while Redis keeps
its data; it lives RECENT_GRACE_SECONDS more. A read that finds it due (feed_svc's,
or `recent` here) serves it and asks for its refresh (`refresh_recent`,
REFRESH_RECENT_SCRIPT): the set becomes the store's newest ids and the posts
added since the store read, its lifetime renewed; a set gone by then is left to
the next reader's fill.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter
from redis.commands.core import AsyncScript

from common.cache import (
    RedisClient,
    Tolerant,
    mark_tweet_deleted,
    partial_replies,
    raise_if_all_unanswered,
    run_reads,
    tolerant,
    unanswered,
)
from common.ids import id_time_ms
from common.keys import TWEET_DELETED, tweet_key
from common.tweet_cache import (
    ALL,
    COUNT_FIELDS,
    RECENT_DEPTH,
    RECENT_GRACE_SECONDS,
    TOP,
    LikedStates,
    count_due,
    decode_body,
    encode_body,
    parse_counts,
    recent_due,
)
from tweet_svc.likes import LikeState
from tweet_svc.store import TweetRecord

LOOKUPS = Counter("chirp_tweet_cache_total", "Tweet body lookups by cache outcome.", ["result"])
RECENT_LOOKUPS = Counter(
    "chirp_author_recent_cache_total", "Authors' recent tweet id lookups by cache outcome.", ["result"]
)


# Versions are Snowflake ids, compared as decimal strings (Lua numbers are doubles,
# too narrow for 63 bits); "0" is "no event". A key of another type is a count
# written before the hash (a string): it is replaced.
# KEYS: the tweet's like state. ARGV: mode, ttl_ms, stored count, then for `ack`
# (user, version, liked, stored row's version, stored row's liked) and for `fold`
# (user, version, liked) per user folded. Returns n.
LIKE_SCRIPT = """
local key, mode, count = KEYS[1], ARGV[1], ARGV[3]
if redis.call('TYPE', key).ok ~= 'hash' then
  local now = redis.call('TIME')
  redis.call('DEL', key)
  redis.call('HSET', key, 'c', count, 'p', 0, 't', now[1] * 1000 + math.floor(now[2] / 1000) + ARGV[2])
  redis.call('PEXPIRE', key, 2 * ARGV[2])
end
redis.call('HINCRBY', key, 'm', 1)
local p = tonumber(redis.call('HGET', key, 'p') or 0)
local u = tonumber(redis.call('HGET', key, 'u') or 0)

local function newer(a, b)
  if #a ~= #b then return #a > #b end
  return a > b
end

local function update(user, unseen, change)
  local raw = redis.call('HGET', key, user)
  local old = unseen
  if raw then
    local av, al, fv, fl = string.match(raw, '^(%d+):(%d):(%d+):(%d)$')
    old = {av, tonumber(al), fv, tonumber(fl)}
  end
  local new = {old[1], old[2], old[3], old[4]}
  change(new)
  if newer(new[3], new[1]) then new[1], new[2] = new[3], new[4] end
  p = p + (new[2] - new[4]) - (old[2] - old[4])
  u = u + (new[2] ~= new[4] and 1 or 0) - (old[2] ~= old[4] and 1 or 0)
  redis.call('HSET', key, user, table.concat(new, ':'))
end

if mode == 'ack' then
  local version, liked = ARGV[5], tonumber(ARGV[6])
  local sv, sl = ARGV[7], tonumber(ARGV[8])
  update(ARGV[4], {sv, sl, sv, sl}, function(e)
    if newer(version, e[1]) then e[1], e[2] = version, liked end
  end)
else
  for i = 4, #ARGV, 3 do
    local version, liked = ARGV[i + 1], tonumber(ARGV[i + 2])
    update(ARGV[i], {'0', 0, '0', 0}, function(e)
      if newer(version, e[3]) then e[3], e[4] = version, liked end
    end)
  end
  redis.call('HSET', key, 'c', count)
end
local n = math.max(0, tonumber(redis.call('HGET', key, 'c')) + p)
redis.call('HSET', key, 'p', p, 'u', u, 'n', n)
return n
"""

# A reader's fill of a missing like state (KEYS: it; ARGV: stored count, ttl_ms).
FILL_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local now = redis.call('TIME')
redis.call('HSET', KEYS[1], 'c', ARGV[1], 'p', 0, 'n', ARGV[1], 't', now[1] * 1000 + math.floor(now[2] / 1000) + ARGV[2])
redis.call('PEXPIRE', KEYS[1], 2 * ARGV[2])
return 1
"""

# A rebuild of a like state past its refresh time `t` from the store (KEYS: it; ARGV:
# stored count, ttl_ms, the hash's `m` read before the store was). Only where no like
# script ran since that read (`m`, which every run moves) and no user's acknowledged
# like or unlike waits for its fold (`u`, the users whose newest state is not their
# folded one, is 0): the store's count then holds all the hash counted. A hash
# refreshed meanwhile (`t` in the future) is left; a missing one is filled.
REFRESH_SCRIPT = """
local now = redis.call('TIME')
local now_ms = now[1] * 1000 + math.floor(now[2] / 1000)
if redis.call('TYPE', KEYS[1]).ok == 'hash' then
  local state = redis.call('HMGET', KEYS[1], 't', 'm', 'p', 'u')
  if (state[2] or '0') ~= ARGV[3] then return 0 end
  if tonumber(state[3] or 0) ~= 0 or tonumber(state[4] or 0) ~= 0 then return 0 end
  if state[1] and tonumber(state[1]) > now_ms then return 0 end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'c', ARGV[1], 'p', 0, 'n', ARGV[1], 't', now_ms + ARGV[2])
redis.call('PEXPIRE', KEYS[1], 2 * ARGV[2])
return 1
"""


# A post's id is made before its store write: a refresh keeps ids this much older than
# its store read even when the read did not find them.
RECENT_SETTLE_SECONDS = 10.0

# A refresh of an author's recent-ids set past its refresh time (KEYS: it; ARGV: its
# lifetime in ms, the grace in ms (PTTL at or below it: due), the markers ALL and TOP,
# 1 when the store read found RECENT_DEPTH ids (TOP) or 0 (ALL: every tweet), how many
# ids were read, then score and id of each, then the ids to drop).
# The ids read are merged in, as a fill merges them, so a post added meanwhile stays;
# the ids to drop (`refresh_recent` picks them from the set as it was before the store
# read) go; after a full read, ids older than its oldest go too. A set renewed
# meanwhile (not due) or gone (a reader's fill makes it) is left alone.
REFRESH_RECENT_SCRIPT = """
local key = KEYS[1]
local pttl = redis.call('PTTL', key)
if pttl == -2 or pttl > tonumber(ARGV[2]) then return 0 end
local all, top, full = ARGV[3], ARGV[4], ARGV[5] == '1'
local last = 6 + 2 * tonumber(ARGV[6])
local oldest = nil
for i = 7, last, 2 do
  redis.call('ZADD', key, ARGV[i], ARGV[i + 1])
  if not oldest or tonumber(ARGV[i]) < tonumber(oldest) then oldest = ARGV[i] end
end
redis.call('ZREM', key, all, top)
for i = last + 1, #ARGV do redis.call('ZREM', key, ARGV[i]) end
if full and oldest then redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. oldest) end
if full then redis.call('ZADD', key, 'inf', top) else redis.call('ZADD', key, 'inf', all) end
redis.call('PEXPIRE', key, ARGV[1])
return 1
"""


def _encode(tweet: TweetRecord) -> bytes:
    created_ms = int(tweet.created_at.timestamp() * 1000)
    return encode_body(tweet.tweet_id, tweet.author_id, tweet.author_username, tweet.text, created_ms)


def _decode(tweet_id: int, raw: bytes) -> TweetRecord | None:
    body = decode_body(raw)
    if body is None or body.tweet_id != tweet_id:
        return None
    created_ms = body.created_at.seconds * 1000 + body.created_at.nanos // 1_000_000
    created = datetime.fromtimestamp(created_ms // 1000, UTC).replace(microsecond=created_ms % 1000 * 1000)
    return TweetRecord(tweet_id, body.author_id, body.author_username, body.text, created)


class TweetCache(Tolerant):
    def __init__(
        self,
        redis: RedisClient,
        ttl_seconds: float,
        count_ttl_seconds: float = 30.0,
        recent_ttl_seconds: float = 30.0,
        prune_recent: bool = True,
    ) -> None:
        super().__init__(redis)
        self._redis = redis
        self._ttl_ms = max(1, int(ttl_seconds * 1000))
        self._count_ttl_ms = max(1, int(count_ttl_seconds * 1000))
        # A set is due for a refresh after recent_ttl_seconds, and lives RECENT_GRACE_SECONDS more.
        self._recent_life_ms = max(1, int((recent_ttl_seconds + RECENT_GRACE_SECONDS) * 1000))
        # Whether a refresh may drop ids its store read did not find (reads at a quorum).
        self._prune_recent = prune_recent
        self._like_script: AsyncScript | None = None
        # Told the authors whose recent-ids sets `recent` served past their refresh time.
        self.on_recent_due: Callable[[Iterable[int]], None] | None = None
        self._liked = LikedStates(redis)

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
                # A value of another layout is a miss: the fill (SET NX) leaves it, the store answers.
                record = _decode(tweet_id, raw if isinstance(raw, bytes) else raw.encode())
                if record is not None:
                    found[tweet_id] = record
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
    async def renew_bodies(self, tweet_ids: Sequence[int]) -> None:
        """Gives the cached bodies of these tweets, being read and still in the store, a whole
        lifetime again. A body never changes (a delete overwrites it with its marker, which
        this only lengthens), so it is not read again; an id with nothing cached stays a miss."""
        if not tweet_ids:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for tweet_id in tweet_ids:
                pipe.pexpire(tweet_key("body", tweet_id), self._ttl_ms, gt=True)
            await pipe.execute(raise_on_error=False)

    @tolerant()
    async def mark_deleted(self, tweet_id: int) -> None:
        """Dropped while Redis is unreachable: the fan-out worker writes the same
        marker from the tweet_deleted event, retrying until Redis takes it."""
        await mark_tweet_deleted(self._redis, tweet_id)

    # ---- like counts ------------------------------------------------------------------

    async def like_counts(self, tweet_ids: Sequence[int]) -> dict[int, int]:
        """Counts with the likes acknowledged so far; absent ids are misses."""
        return (await self.like_counts_due(tweet_ids))[0]

    @tolerant(lambda: ({}, set()))
    async def like_counts_due(self, tweet_ids: Sequence[int]) -> tuple[dict[int, int], set[int]]:
        """`like_counts`, and the ids among them past their refresh time."""
        if not tweet_ids:
            return {}, set()

        def queue(pipe: Any) -> None:
            for tweet_id in tweet_ids:
                pipe.hmget(tweet_key("like_count", tweet_id), COUNT_FIELDS)

        # A count stored before the hash answers WRONGTYPE: a miss, replaced by the next write;
        # so is a count on a cluster node that did not answer.
        values = raise_if_all_unanswered(await run_reads(self._redis, queue))
        return parse_counts(tweet_ids, values)

    @tolerant(dict)
    async def refresh_due(self, tweet_ids: Sequence[int]) -> dict[int, str]:
        """Of these like states, the ones a rebuild may replace: past their refresh time
        (or gone), with no user's acknowledged like or unlike waiting for its fold. Each
        with its `m`, read now, before the caller reads the store."""
        if not tweet_ids:
            return {}

        def queue(pipe: Any) -> None:
            for tweet_id in tweet_ids:
                pipe.hmget(tweet_key("like_count", tweet_id), ["t", "m", "p", "u"])

        values = raise_if_all_unanswered(await run_reads(self._redis, queue))
        now_ms = time.time() * 1000
        due: dict[int, str] = {}
        for tweet_id, value in zip(tweet_ids, values, strict=True):
            if unanswered(value):  # its cluster node did not answer: left alone
                continue
            # WRONGTYPE (a count stored before the hash) is replaced whatever its `m`.
            refresh_at, version, pending, users = (None,) * 4 if isinstance(value, Exception) else value
            if count_due(refresh_at, now_ms) and int(pending or 0) == 0 and int(users or 0) == 0:
                due[tweet_id] = _text(version) if version is not None else "0"
        return due

    @tolerant(set)
    async def refresh_like_counts(self, counts: dict[int, tuple[int, str]]) -> set[int]:
        """Rebuilds from the store's counts, each where its `m` is still the one given
        (REFRESH_SCRIPT); returns the ids rebuilt."""
        if not counts:
            return set()
        async with self._redis.pipeline(transaction=False) as pipe:
            for tweet_id, (count, version) in counts.items():
                pipe.eval(REFRESH_SCRIPT, 1, tweet_key("like_count", tweet_id), count, self._count_ttl_ms, version)
            replies = await pipe.execute()
        return {t for t, done in zip(counts, replies, strict=True) if done == 1}

    @tolerant()
    async def fill_like_counts(self, counts: dict[int, int]) -> None:
        """A reader's fill: only where no like state is cached (never over a newer one)."""
        if not counts:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for tweet_id, count in counts.items():
                pipe.eval(FILL_SCRIPT, 1, tweet_key("like_count", tweet_id), count, self._count_ttl_ms)
            await pipe.execute()

    @tolerant()
    async def set_like_counts(self, counts: dict[int, int]) -> None:
        """The worker's write-through of stored counts alone (no user's state)."""
        for tweet_id, count in counts.items():
            await self.folded_likes(tweet_id, count, {})

    @tolerant()
    async def folded_likes(self, tweet_id: int, count: int, states: dict[int, LikeState]) -> None:
        """The like worker's write-through: the stored count and the stored rows of the users
        it just folded (each of them, changed or not, so a re-delivered batch repairs a
        write-through that was lost). Dropped while Redis is unreachable: the like state's
        lifetime bounds how long that skews the count."""
        args: list[int | str] = ["fold", self._count_ttl_ms, count]
        for user_id, state in states.items():
            args += [user_id, _version(state.version), int(state.liked)]
        await self._run_like_script(tweet_id, args)

    @tolerant(lambda: None)
    async def acknowledged_like(
        self, tweet_id: int, user_id: int, version: int, liked: bool, stored_count: int, stored: LikeState
    ) -> int | None:
        """Records a like or unlike just acknowledged on Kafka; returns the count with every
        like acknowledged so far, or None while Redis is unreachable. `stored_count` and
        `stored` (the user's row) were read from the store before the event was sent."""
        args: list[int | str] = ["ack", self._count_ttl_ms, stored_count, user_id, _version(version), int(liked)]
        args += [_version(stored.version), int(stored.liked)]
        return await self._run_like_script(tweet_id, args)

    # ---- users' like states (liked_by_me), common/tweet_cache.py's `ul:` -----------------

    @tolerant()
    async def record_liked(self, user_id: int, tweet_id: int, version: int, liked: bool) -> None:
        """Dropped while Redis is unreachable: the hash's lifetime bounds how long that skews the flag."""
        await self._liked.record(user_id, tweet_id, version, liked)

    @tolerant()
    async def liked_fill_token(self, user_id: int) -> str | None:
        return await self._liked.fill_token(user_id)

    @tolerant()
    async def fill_liked(self, user_id: int, token: str, tweet_ids: Sequence[int], liked: set[int]) -> None:
        await self._liked.fill(user_id, token, tweet_ids, liked)

    async def _run_like_script(self, tweet_id: int, args: list[int | str]) -> int:
        if self._like_script is None:  # EVALSHA: the script text goes to Redis once, not per like
            self._like_script = self._redis.register_script(LIKE_SCRIPT)
        return int(await self._like_script(keys=[tweet_key("like_count", tweet_id)], args=args))

    # ---- authors' recent tweet ids ---------------------------------------------------

    @tolerant(dict)
    async def recent(self, authors: Sequence[int], limit: int) -> dict[int, list[int]]:
        """Newest-first ids of the authors whose cached set answers `limit` (at most
        RECENT_DEPTH); the others are misses."""
        if not authors:
            return {}

        def queue(pipe: Any) -> None:
            for author in authors:
                pipe.zrevrange(tweet_key("author_recent", author), 0, limit + 1)  # both markers, then ids
                pipe.pttl(tweet_key("author_recent", author))

        replies = partial_replies(await run_reads(self._redis, queue))
        found: dict[int, list[int]] = {}
        due: list[int] = []
        for author, members, pttl in zip(authors, replies[::2], replies[1::2], strict=True):
            if unanswered(members):  # its cluster node did not answer: a miss
                continue
            names = [_text(m) for m in members]
            ids = [int(m) for m in names if m not in (ALL, TOP)][:limit]
            if ALL in names or (TOP in names and len(ids) >= limit):
                found[author] = ids
                if isinstance(pttl, int) and recent_due(pttl):
                    due.append(author)
        RECENT_LOOKUPS.labels("hit").inc(len(found))
        RECENT_LOOKUPS.labels("miss").inc(len(authors) - len(found))
        if due and self.on_recent_due is not None:
            self.on_recent_due(due)
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
                pipe.pexpire(tweet_key("author_recent", author), self._recent_life_ms, nx=True)
            await pipe.execute()

    @tolerant(dict)
    async def recent_due(self, authors: Sequence[int]) -> dict[int, set[int]]:
        """The authors whose recent-ids set is past its refresh time, each with the ids
        the set holds now (before the caller reads the store); sets gone, not due, or on a
        node that did not answer are left out."""
        if not authors:
            return {}

        def queue(pipe: Any) -> None:
            for author in authors:
                pipe.pttl(tweet_key("author_recent", author))
                pipe.zrevrange(tweet_key("author_recent", author), 0, -1)

        replies = raise_if_all_unanswered(await run_reads(self._redis, queue))
        due: dict[int, set[int]] = {}
        for author, pttl, members in zip(authors, replies[::2], replies[1::2], strict=True):
            if isinstance(pttl, Exception) or isinstance(members, Exception) or pttl == -2 or not recent_due(pttl):
                continue
            due[author] = {int(m) for m in (_text(m) for m in members) if m not in (ALL, TOP)}
        return due

    @tolerant(set)
    async def refresh_recent(
        self, recent: dict[int, list[int]], held: dict[int, set[int]], read_at_ms: float
    ) -> set[int]:
        """Makes each author's set still past its refresh time the newest RECENT_DEPTH ids
        read from the store at `read_at_ms` (`recent`) and the posts added since, and renews
        its lifetime (REFRESH_RECENT_SCRIPT); returns the authors renewed. `held`: what
        each set held before the store read (`recent_due`). Of those, ids the read should
        have found and did not are dropped (a delete whose removal from Redis was lost):
        older than the read's start less RECENT_SETTLE_SECONDS (a post's id is made before
        its store write) and, after a full read, not older than its oldest id. Ids added
        after `held` was read are never dropped, nor any when the store's reads may miss
        acknowledged writes (`prune_recent` off: consistency ONE)."""
        if not recent:
            return set()
        cutoff = read_at_ms - RECENT_SETTLE_SECONDS * 1000
        async with self._redis.pipeline(transaction=False) as pipe:
            for author, ids in recent.items():
                full = len(ids) >= RECENT_DEPTH
                oldest = min(ids, default=0)
                read = set(ids)
                stale = [
                    t
                    for t in held.get(author, set())
                    if self._prune_recent and t not in read and id_time_ms(t) < cutoff and (not full or t >= oldest)
                ]
                args: list[int | str] = [self._recent_life_ms, int(RECENT_GRACE_SECONDS * 1000), ALL, TOP]
                args += [int(full), len(ids)]
                for tweet_id in ids:
                    args += [id_time_ms(tweet_id), str(tweet_id)]
                args += [str(t) for t in stale]
                pipe.eval(REFRESH_RECENT_SCRIPT, 1, tweet_key("author_recent", author), *args)
            replies = await pipe.execute()
        return {a for a, done in zip(recent, replies, strict=True) if done == 1}

    @tolerant()
    async def add_recent(self, author_id: int, tweet_id: int) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zadd(tweet_key("author_recent", author_id), {str(tweet_id): id_time_ms(tweet_id)})
            pipe.pexpire(tweet_key("author_recent", author_id), self._recent_life_ms, nx=True)
            await pipe.execute()

    @tolerant()
    async def remove_recent(self, author_id: int, tweet_id: int) -> None:
        await self._redis.zrem(tweet_key("author_recent", author_id), str(tweet_id))

    async def _get_each(self, keys: list[str]) -> list[bytes | None]:
        """GET of each key in one round trip: the keys hash to different cluster slots,
        so no MGET; on a cluster each node gets its share at once, and the keys of a
        node that did not answer are misses (None)."""

        def queue(pipe: Any) -> None:
            for key in keys:
                pipe.get(key)

        values = partial_replies(await run_reads(self._redis, queue))
        return [None if unanswered(v) else v for v in values]


def _version(version: int) -> str:
    """A version as LIKE_SCRIPT compares them: decimal, "0" for none (a stored row's -1)."""
    return str(max(0, version))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
