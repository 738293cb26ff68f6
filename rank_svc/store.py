"""All of rank_svc's Redis: the hourly like tallies the rank worker folds like
events into, one fold marker per likes-topic partition, the recompute lease
and the computed list; and, read only, viewers' like flags in tweet_svc's cache
(TweetCacheReader).

Every key is built by `TrendingKeys`. The tallies are split by tweet into
`CHIRP_RANK_TALLY_SHARDS` shards, each under its own hash tag (`{rk:<shards>:<n>:<s>}`),
so on a Redis Cluster each shard is one hash slot and the shards spread over the
primaries: the fold script and the ZUNIONSTORE over the window's hours touch many
keys in one command, which a cluster allows only within a slot, and every key
one tweet's likes touch is in its shard. One slot for all of trending put every
fold's work and every liker on one primary, which no number of Redis shards
could lift. A batch is folded into every shard (each keeps its own marker per
partition, so each finds its own loss), in one pipeline. The recompute lease, the
epochs and the computed list are under `{rk}`: requests never read the tallies;
each rank_svc instance reads the list about once a second into a process-local
copy and serves every request from that.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from chirp.rank.v1 import rank_pb2
from chirp.tweet.v1 import tweet_pb2
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import OutOfMemoryError

from common.cache import REDIS_FULL, REDIS_UNAVAILABLE_ERRORS, RedisClient, Tolerant, tolerant
from common.replica_waits import REPLICA_ACK_MS, ReplicaWaits
from common.tweet_cache import CachedTweets, parse_reads, queue_reads
from rank_svc.score import hour_weight

# Kept beyond the API cap of 100 (rank_svc/service.py MAX_LIMIT) so a viewer who
# hides some authors still gets a full list.
MAX_TRENDING = 200
HOUR_MS = 3_600_000
# Shard n's tag is chosen to hash into the n-th of `shards` equal ranges of slots, so the
# shards spread over primaries that split the slots evenly (as the local and Kubernetes
# clusters do) as evenly as their counts allow: 12 evenly over 1, 2, 3, 4, 6 or 12.
DEFAULT_TALLY_SHARDS = 12
MAX_TALLY_SHARDS = 1024  # 16 slots a shard; finding each tag costs about `shards` hashes
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


def _tag_in_range(base: str, n: int, shards: int) -> str:
    """`base`, with the first suffix that puts it in the n-th of `shards` equal ranges of
    the cluster's slots (tags that differ only at the end hash close together: twelve
    plain ones fell into four narrow bands). The same in every process."""
    low, high = n * REDIS_CLUSTER_HASH_SLOTS // shards, (n + 1) * REDIS_CLUSTER_HASH_SLOTS // shards
    for suffix in range(100_000):
        tag = f"{base}:{suffix}"
        if low <= key_slot(tag.encode()) < high:
            return tag
    raise ValueError(f"no tag for shard {n} of {shards}: use fewer shards")


class TrendingKeys:
    """Every trending key (see the module docstring): per shard of tweets the tallies,
    likers, markers and scratch; under the namespace's own tag the lease and the list.
    The shard count is in the shards' tags, so a new count starts from no marker: every
    partition is then refolded into the new shards, as after any loss."""

    def __init__(self, namespace: str = "rk", shards: int = DEFAULT_TALLY_SHARDS) -> None:
        if not 1 <= shards <= MAX_TALLY_SHARDS:
            raise ValueError(f"trending needs 1 to {MAX_TALLY_SHARDS} tally shards, not {shards}")
        self.namespace = namespace
        self.shards = shards
        self.slot = "{" + namespace + "}"
        # Each shard's hash tag, itself a key in its slot (to find its primary).
        self.shard_slots = tuple(
            "{" + _tag_in_range(f"{namespace}:{shards}:{n}", n, shards) + "}" for n in range(shards)
        )

    @property
    def pattern(self) -> str:
        """A SCAN pattern of every key of the namespace."""
        return "[{]" + self.namespace + "[}:]*"

    def shard_of(self, tweet_id: int) -> int:
        # A hash, not the id modulo: the low bits of Snowflake ids made at low rates are
        # mostly the same (a sequence number at 0).
        return zlib.crc32(str(tweet_id).encode()) % self.shards

    def likes(self, shard: int, hour: int) -> str:
        """Net likes per tweet of the shard for likes made in that hour (a sorted set)."""
        return f"{self.shard_slots[shard]}:likes:{hour}"

    def likers(self, tweet_id: int, bucket: int) -> str:
        """user id -> "liked:version:hour" of the newest event folded, for events of the
        bucket's hours (hour // LIKERS_BUCKET_HOURS == bucket; a hash)."""
        return f"{self.shard_slots[self.shard_of(tweet_id)]}:likers:{tweet_id}:{bucket}"

    def folded(self, shard: int, topic: str, partition: int) -> str:
        """The partition's next offset to fold into the shard: every like before it is in its tallies."""
        return f"{self.shard_slots[shard]}:folded:{topic}:{partition}"

    def decayed(self, shard: int) -> str:
        return f"{self.shard_slots[shard]}:decayed"

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
# last hour, an hour after the window's start has passed that hour. The bucket
# after the window's last is read too: an entry another rank worker put there,
# its clock up to 12 hours ahead, still outranks a replay of an older event.
# One call per shard, with that shard's keys and likes.
# KEYS: the window's hourly tallies (oldest first), one marker per partition,
# then per tweet the likers hashes of the window's buckets and the one after
# (oldest first). ARGV: first_hour, hours, partitions, tweets, window,
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
    local base = hours + nparts + (t - 1) * nbuckets
    local user, version, liked, hour = ARGV[at + 2], ARGV[at + 3], ARGV[at + 4], tonumber(ARGV[at + 5])
    local holders = {}
    local was_liked, was_version, was_hour = nil, nil, nil
    for k = base + 1, base + nbuckets do
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
        tallies were lost in any shard (their likes were not folded there: rebuild them).

        Every shard gets every part, with or without likes of its tweets, so each
        shard's markers keep up. When a shard's primary has replicas, returns only
        once one of them has the fold (WAIT), so a failover right after cannot lose
        what the caller commits next; raises NotReplicated otherwise."""
        if not parts:
            return set()
        hours = self._window + 1
        for like in likes:
            if not first_hour <= like.hour < first_hour + hours:
                raise ValueError(f"like of hour {like.hour} is outside {first_hour}..{first_hour + hours - 1}")
        by_shard: list[list[Like]] = [[] for _ in range(self.keys.shards)]
        for like in likes:
            by_shard[self.keys.shard_of(like.tweet_id)].append(like)
        calls = [self._fold_call(shard, parts, shard_likes, first_hour) for shard, shard_likes in enumerate(by_shard)]
        lost = await self._eval_durably(calls)
        return {int(p) - 1 for shard_lost in lost for p in shard_lost}

    def _fold_call(
        self, shard: int, parts: Sequence[PartitionFold], likes: Sequence[Like], first_hour: int
    ) -> tuple[list[str], list[str | int]]:
        """One shard's FOLD_SCRIPT keys and arguments."""
        hours = self._window + 1
        first_bucket = first_hour // LIKERS_BUCKET_HOURS
        buckets = range(first_bucket, (first_hour + hours - 1) // LIKERS_BUCKET_HOURS + 2)
        tweets = sorted({like.tweet_id for like in likes})
        tweet_no = {tweet_id: n for n, tweet_id in enumerate(tweets, 1)}
        keys = [
            *(self.keys.likes(shard, first_hour + h) for h in range(hours)),
            *(self.keys.folded(shard, p.topic, p.partition) for p in parts),
        ]
        for t in tweets:
            keys += [self.keys.likers(t, b) for b in buckets]
        args: list[str | int] = [first_hour, hours, len(parts), len(tweets), self._window]
        args += [first_bucket, len(buckets), LIKERS_BUCKET_HOURS]
        for p in parts:
            args += [p.first, p.next, p.mode]
        args += tweets
        for like in likes:
            args += [like.part + 1, tweet_no[like.tweet_id], like.user_id, like.version, int(like.liked), like.hour]
        return keys, args

    async def _eval_durably(self, calls: Sequence[tuple[list[str], list[str | int]]]) -> list[list[Any]]:
        # Every shard's script and the WAIT for each primary's replica go out in one
        # pipeline (common/replica_waits.py): WAIT counts only its own connection's writes.
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for keys, args in calls:
                    pipe.eval(FOLD_SCRIPT, len(keys), *keys, *args)
                replies = await self._waits.execute(pipe, self.keys.shard_slots)
        except OutOfMemoryError:
            # The state Redis is full (it never evicts): the batch fails and is applied
            # again; counted for the alert ChirpRedisFull.
            REDIS_FULL.inc()
            raise
        return [list(lost) for lost in replies]

    async def replicas(self) -> int:
        """Replicas of the primaries holding the tally shards, of the one with fewest
        (0 on a standalone Redis)."""
        return min([await self._waits.replicas(slot) for slot in self.keys.shard_slots])

    async def tallies(self, first_hour: int) -> dict[int, dict[int, int]]:
        """hour -> tweet -> net likes, over the window from `first_hour` (for checks and tests)."""
        found: dict[int, dict[int, int]] = {}
        for hour in range(first_hour, first_hour + self._window + 1):
            for shard in range(self.keys.shards):
                rows = await self._redis.zrange(self.keys.likes(shard, hour), 0, -1, withscores=True)
                found.setdefault(hour, {}).update({int(row[0]): int(row[1]) for row in rows})
        return {hour: tweets for hour, tweets in found.items() if tweets}

    async def decayed_top(self, limit: int, now_ms: int | None = None) -> list[tuple[int, float]]:
        """Top tweets by time-decayed likes, summed by Redis over the window's hours in
        each shard; a tweet's likes are all in its shard, so the shards' tops merged are
        the top of all."""
        now_hour = hour_of(now_ms if now_ms is not None else int(time.time() * 1000))
        tops = await asyncio.gather(*(self._decayed_top(shard, limit, now_hour) for shard in range(self.keys.shards)))
        merged = sorted((row for top in tops for row in top), key=lambda row: (row[1], row[0]), reverse=True)
        return merged[:limit]

    async def _decayed_top(self, shard: int, limit: int, now_hour: int) -> list[tuple[int, float]]:
        weights = {
            self.keys.likes(shard, now_hour - age): hour_weight(age, self._half_life) for age in range(self._window)
        }
        # Likes stamped by a clock a little ahead of this one count as current.
        weights[self.keys.likes(shard, now_hour + 1)] = 1.0
        await self._redis.zunionstore(self.keys.decayed(shard), weights)
        rows = await self._redis.zrevrange(self.keys.decayed(shard), 0, limit - 1, withscores=True)
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
