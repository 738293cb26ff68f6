"""All of rank_svc's Redis: the hourly like tallies the rank worker folds like
events into, one fold marker per likes-topic partition, the recompute lease
and the computed list; and, read only, viewers' like flags in tweet_svc's cache
(TweetCacheReader).

Every key is built by `TrendingKeys`, under one hash tag (`{rk}`), so on a
Redis Cluster they all live in one hash slot: the fold script and the
ZUNIONSTORE over the window's hours touch many keys in one command, which a
cluster allows only within a slot. One slot (one shard) for all of trending is
acceptable: only the rank workers write it, a batch at a time, and requests
never read the tallies: each rank_svc instance reads the computed list about
once a second into a process-local copy and serves every request from that.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from chirp.rank.v1 import rank_pb2
from chirp.tweet.v1 import tweet_pb2
from redis.exceptions import OutOfMemoryError

from common.cache import REDIS_FULL, REDIS_UNAVAILABLE_ERRORS, RedisClient, Tolerant, tolerant
from common.replica_waits import REPLICA_ACK_MS, ReplicaWaits
from common.tweet_cache import CachedTweets, parse_reads, queue_reads
from rank_svc.score import hour_weight

# Kept beyond the API cap of 100 (rank_svc/service.py MAX_LIMIT) so a viewer who
# hides some authors still gets a full list.
MAX_TRENDING = 200
HOUR_MS = 3_600_000
# Likers are kept per tweet and per 12 hours of their events' time, each such hash expiring a
# window after its last hour: a tweet liked without pause keeps only its recent likers.
LIKERS_BUCKET_HOURS = 12


def hour_of(unix_ms: int) -> int:
    return unix_ms // HOUR_MS


# KEYS: the list, its epoch, the epoch counter. ARGV: the new list, its epoch. Saves unless a later
# epoch did.
# A saved epoch above the epoch counter (KEYS[3]) is from before Redis lost the counter
# (a flush, a failover to a replica behind): it holds back no one, else every recompute
# would be refused until the counter caught up with it, and the list would stand still.
SAVE_SCRIPT = """
local saved = tonumber(redis.call('GET', KEYS[2]) or '0')
local counter = tonumber(redis.call('GET', KEYS[3]) or '0')
if saved > tonumber(ARGV[2]) and saved <= counter then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[2])
return 1
"""


class TrendingKeys:
    """Every trending key, all under one hash tag (see the module docstring)."""

    def __init__(self, namespace: str = "rk") -> None:
        self.slot = "{" + namespace + "}"

    def likes(self, hour: int) -> str:
        """Net likes per tweet for likes made in that hour (a sorted set)."""
        return f"{self.slot}:likes:{hour}"

    def likers(self, tweet_id: int, bucket: int) -> str:
        """user id -> "liked:version:hour" of the newest event folded, for events of the
        bucket's hours (hour // LIKERS_BUCKET_HOURS == bucket; a hash)."""
        return f"{self.slot}:likers:{tweet_id}:{bucket}"

    def unbucketed_likers(self, tweet_id: int) -> str:
        """The one likers hash per tweet folds wrote before the buckets: read and emptied by
        folds until it expires (its TTL was the window and 2 hours from its last write)."""
        return f"{self.slot}:likers:{tweet_id}"

    def folded(self, topic: str, partition: int) -> str:
        """The partition's next offset to fold: every like before it is in the tallies."""
        return f"{self.slot}:folded:{topic}:{partition}"

    @property
    def decayed(self) -> str:
        return f"{self.slot}:decayed"

    @property
    def lock(self) -> str:
        return f"{self.slot}:lock"

    @property
    def trending(self) -> str:
        return f"{self.slot}:trending"

    @property
    def epoch(self) -> str:
        """A counter taken at the start of each recompute: the newer one's list wins."""
        return f"{self.slot}:epoch"

    @property
    def trending_epoch(self) -> str:
        """The epoch of the recompute that saved the current list."""
        return f"{self.slot}:trending:epoch"


Mode = Literal["check", "start"]


@dataclass(frozen=True)
class PartitionFold:
    """One partition's part of a fold: its offsets first..next-1, and its marker.

    check: the marker must hold an offset >= first, else the partition's
    tallies were lost (nothing of it is folded); it then moves up to next.
    start: the first batch after a rewind to the window's start: folded
    without looking at the marker, which then moves up to next.
    """

    topic: str
    partition: int
    first: int
    next: int
    mode: Mode = "check"


@dataclass(frozen=True)
class Like:
    """A like event ready to fold: `part` indexes the fold's partitions; `hour` is the version's."""

    part: int
    tweet_id: int
    user_id: int
    version: int
    liked: bool
    hour: int


# One batch in one atomic step. Each (tweet, user) keeps the newest event
# folded; an older or equal version (a replay, a stale delivery) changes
# nothing. An hour's tally holds the users whose newest event is a like made in
# that hour, so the tallies depend only on the newest event per (tweet, user):
# any delivery order and any number of replays give the same tallies.
# Versions are compared as decimal strings: Lua numbers are doubles and
# Snowflake ids need 63 bits; so each likers entry also keeps its hour.
# A (tweet, user)'s entry is in the likers hash of its event's bucket
# (LIKERS_BUCKET_HOURS), moved when a newer event is folded. An entry older
# than the window's first hour may go: every event no newer than it is older
# than the window too (an event's hour is its version's), so it is never
# folded again. So each bucket's hash expires with the tally of the bucket's
# last hour, an hour after the window's start has passed that hour.
# KEYS: the window's hourly tallies (oldest first), one marker per partition,
# then per tweet the likers hashes of the window's buckets (oldest first) and
# its unbucketed one. ARGV: first_hour, hours, partitions, tweets, window,
# first_bucket, buckets, bucket_hours; (first, next, mode) per partition; the
# tweet ids; then (partition no, tweet no, user, version, liked, hour) per like.
# Returns the numbers of the partitions found lost (their likes not folded).
FOLD_SCRIPT = """
local first_hour = tonumber(ARGV[1])
local hours = tonumber(ARGV[2])
local nparts = tonumber(ARGV[3])
local ntweets = tonumber(ARGV[4])
local window = tonumber(ARGV[5])
local first_bucket = tonumber(ARGV[6])
local nbuckets = tonumber(ARGV[7])
local bucket_hours = tonumber(ARGV[8])
local per_tweet = nbuckets + 1

local function newer(a, b)
  if #a ~= #b then return #a > #b end
  return a > b
end

local function tally(hour, tweet, delta)
  local key = KEYS[hour - first_hour + 1]
  if tonumber(redis.call('ZINCRBY', key, delta, tweet)) <= 0 then
    redis.call('ZREM', key, tweet)
  end
  if delta > 0 then
    redis.call('EXPIREAT', key, (hour + window + 1) * 3600)
  end
end

local open = {}
local lost = {}
local at = 9
for p = 1, nparts do
  local key = KEYS[hours + p]
  local first, nxt, mode = tonumber(ARGV[at]), tonumber(ARGV[at + 1]), ARGV[at + 2]
  at = at + 3
  local marker = redis.call('GET', key)
  local offset = nil
  if marker then offset = tonumber(marker) end
  if mode == 'start' or (offset ~= nil and offset >= first) then
    open[p] = true
    if offset == nil or offset < nxt then
      redis.call('SET', key, nxt)
    end
  else
    lost[#lost + 1] = p
  end
end

local tweets = {}
for t = 1, ntweets do
  tweets[t] = ARGV[at]
  at = at + 1
end

local last_hour = first_hour + hours - 1
while at <= #ARGV do
  if open[tonumber(ARGV[at])] then
    local t = tonumber(ARGV[at + 1])
    local base = hours + nparts + (t - 1) * per_tweet
    local user, version, liked, hour = ARGV[at + 2], ARGV[at + 3], ARGV[at + 4], tonumber(ARGV[at + 5])
    local holders = {}
    local was_liked, was_version, was_hour = nil, nil, nil
    for k = base + 1, base + per_tweet do
      local entry = redis.call('HGET', KEYS[k], user)
      if entry then
        holders[#holders + 1] = k
        local l, v, h = string.match(entry, '^(%d):(%d+):(%d+)$')
        if was_version == nil or newer(v, was_version) then
          was_liked, was_version, was_hour = l, v, tonumber(h)
        end
      end
    end
    if was_version == nil or newer(version, was_version) then
      if was_liked == '1' and was_hour >= first_hour and was_hour <= last_hour then
        tally(was_hour, tweets[t], -1)
      end
      if liked == '1' then
        tally(hour, tweets[t], 1)
      end
      local bucket = math.floor(hour / bucket_hours)
      local target = base + bucket - first_bucket + 1
      for _, k in ipairs(holders) do
        if k ~= target then redis.call('HDEL', KEYS[k], user) end
      end
      redis.call('HSET', KEYS[target], user, liked .. ':' .. version .. ':' .. hour)
      redis.call('EXPIREAT', KEYS[target], ((bucket + 1) * bucket_hours + window) * 3600)
    end
  end
  at = at + 6
end
return lost
"""


class TrendingStore:
    def __init__(
        self,
        redis: RedisClient,
        window_hours: int,
        half_life_hours: float,
        keys: TrendingKeys | None = None,
        replica_ack_ms: int = REPLICA_ACK_MS,
    ) -> None:
        self._redis = redis
        self._window = window_hours
        self._half_life = half_life_hours
        self.keys = keys or TrendingKeys()
        self._waits = ReplicaWaits(redis, replica_ack_ms)

    async def fold(self, parts: Sequence[PartitionFold], likes: Sequence[Like], first_hour: int) -> set[int]:
        """Fold `likes` into the tallies of hours first_hour..first_hour+window (each
        like's hour must be among them); returns the indexes of `parts` whose
        tallies were lost (their likes were not folded: rebuild them).

        When the slot's primary has replicas, returns only once one of them has
        the fold (WAIT), so a failover right after cannot lose what the caller
        commits next; raises NotReplicated otherwise."""
        if not parts:
            return set()
        hours = self._window + 1
        first_bucket = first_hour // LIKERS_BUCKET_HOURS
        buckets = range(first_bucket, (first_hour + hours - 1) // LIKERS_BUCKET_HOURS + 1)
        tweets = sorted({like.tweet_id for like in likes})
        tweet_no = {tweet_id: n for n, tweet_id in enumerate(tweets, 1)}
        keys = [
            *(self.keys.likes(first_hour + h) for h in range(hours)),
            *(self.keys.folded(p.topic, p.partition) for p in parts),
        ]
        for t in tweets:
            keys += [*(self.keys.likers(t, b) for b in buckets), self.keys.unbucketed_likers(t)]
        args: list[str | int] = [first_hour, hours, len(parts), len(tweets), self._window]
        args += [first_bucket, len(buckets), LIKERS_BUCKET_HOURS]
        for p in parts:
            args += [p.first, p.next, p.mode]
        args += tweets
        for like in likes:
            if not first_hour <= like.hour < first_hour + hours:
                raise ValueError(f"like of hour {like.hour} is outside {first_hour}..{first_hour + hours - 1}")
            args += [like.part + 1, tweet_no[like.tweet_id], like.user_id, like.version, int(like.liked), like.hour]
        lost = await self._eval_durably(keys, args)
        return {int(p) - 1 for p in lost}

    async def _eval_durably(self, keys: list[str], args: list[str | int]) -> list[Any]:
        # The fold's script and the WAIT for its primary's replica go out in one pipeline
        # (common/replica_waits.py): WAIT counts only its own connection's writes.
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.eval(FOLD_SCRIPT, len(keys), *keys, *args)
                (lost,) = await self._waits.execute(pipe, [self.keys.slot])
        except OutOfMemoryError:
            # The state Redis is full (it never evicts): the batch fails and is applied
            # again; counted for the alert ChirpRedisFull.
            REDIS_FULL.inc()
            raise
        return list(lost)

    async def replicas(self) -> int:
        """Replicas of the primary holding the trending slot (0 on a standalone Redis)."""
        return await self._waits.replicas(self.keys.slot)

    async def tallies(self, first_hour: int) -> dict[int, dict[int, int]]:
        """hour -> tweet -> net likes, over the window from `first_hour` (for checks and tests)."""
        found: dict[int, dict[int, int]] = {}
        for hour in range(first_hour, first_hour + self._window + 1):
            rows = await self._redis.zrange(self.keys.likes(hour), 0, -1, withscores=True)
            if rows:
                found[hour] = {int(row[0]): int(row[1]) for row in rows}
        return found

    async def decayed_top(self, limit: int, now_ms: int | None = None) -> list[tuple[int, float]]:
        """Top tweets by time-decayed likes, summed by Redis over the window's hours."""
        now_hour = hour_of(now_ms if now_ms is not None else int(time.time() * 1000))
        weights = {self.keys.likes(now_hour - age): hour_weight(age, self._half_life) for age in range(self._window)}
        # Likes stamped by a clock a little ahead of this one count as current.
        weights[self.keys.likes(now_hour + 1)] = 1.0
        await self._redis.zunionstore(self.keys.decayed, weights)
        rows = await self._redis.zrevrange(self.keys.decayed, 0, limit - 1, withscores=True)
        return [(int(row[0]), float(row[1])) for row in rows]

    async def acquire_turn(self, holder: str, seconds: float) -> bool:
        """One recompute per interval across all instances."""
        return bool(await self._redis.set(self.keys.lock, holder, nx=True, px=max(1, int(seconds * 1000))))

    async def begin_recompute(self) -> int:
        """The epoch of a recompute about to read the tallies."""
        return int(await self._redis.incr(self.keys.epoch))

    async def save(self, tweets: Sequence[tweet_pb2.Tweet], epoch: int) -> bool:
        """Save the list computed in `epoch`, unless a recompute that started later saved
        first: the turn lease keeps recomputes an interval apart, but one that ran long
        (a slow batch read under load) must not put back a list from before a delete."""
        reply = rank_pb2.ListTrendingResponse(tweets=list(tweets)[:MAX_TRENDING])
        keys = [self.keys.trending, self.keys.trending_epoch, self.keys.epoch]
        return bool(await self._redis.eval(SAVE_SCRIPT, len(keys), *keys, reply.SerializeToString(), epoch))

    async def load(self) -> list[tweet_pb2.Tweet]:
        raw = await self._redis.get(self.keys.trending)
        if raw is None:
            return []
        return list(rank_pb2.ListTrendingResponse.FromString(raw if isinstance(raw, bytes) else raw.encode()).tweets)


class TweetCacheReader(Tolerant):
    """tweet_svc's cache, read as common/tweet_cache.py writes it down (its keys are
    tweet_svc's, not under `{rk}`: every command is on one key)."""

    def __init__(self, redis: RedisClient) -> None:
        super().__init__(redis)
        self._redis = redis

    @tolerant(CachedTweets, "asking tweet_svc for every like flag")
    async def tweets(self, viewer_id: int, tweet_ids: Sequence[int]) -> CachedTweets:
        """What the cache holds of the tweets, the viewer's like flags included, in one
        pipeline; a failed command is a miss, and an unreachable Redis all of it."""
        if not tweet_ids:
            return CachedTweets()
        async with self._redis.pipeline(transaction=False) as pipe:
            queue_reads(pipe, tweet_ids, viewer_id)
            replies = await pipe.execute(raise_on_error=False)
        for reply in replies:
            if isinstance(reply, REDIS_UNAVAILABLE_ERRORS):
                raise reply  # tolerant: skip Redis for a while rather than wait on it per request
        return parse_reads(tweet_ids, replies)
