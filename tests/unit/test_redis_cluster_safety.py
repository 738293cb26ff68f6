"""Redis access that is correct on a Redis Cluster and through Redis outages,
with an in-memory Redis as strict as a cluster about hash slots: no cache
command spans slots, cluster errors read as misses, a miss is a fresh value
each call, the celebrity registry is not read on every feed read, and the
fan-out worker's deletion marker is durable."""

from __future__ import annotations

import builtins
import collections
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from cassandra.cluster import NoHostAvailable
from chirp.tweet.v1 import tweet_pb2
from confluent_kafka import Message
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import (
    ClusterCrossSlotError,
    ClusterDownError,
    ClusterError,
    MasterDownError,
    RedisClusterException,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

import common.cache as cache_module
import common.hidden as hidden_module
from common.cache import (
    REDIS_UNAVAILABLE_ERRORS,
    RELEASE_CLAIM_SCRIPT,
    RedisClient,
    Tolerant,
    cluster_nodes,
    connect_redis,
    tolerant,
)
from common.cql import CqlSession
from common.hidden import HiddenAuthorsCache, RedisHiddenStore, hidden_key
from common.ids import IdGenerator
from common.keys import CELEBRITIES_KEY, TWEET_DELETED, TWEET_DELETED_SECONDS, feed_key, reload_claim_key, tweet_key
from feed_svc.cache import (
    CLAIM_FOLLOWING_SCRIPT,
    FILL_FOLLOWING_SCRIPT,
    FOLLOWING_FINGERPRINT_SCRIPT,
    PENDING,
    REFRESH_FOLLOWING_SCRIPT,
    FeedCache,
)
from feed_svc.fanout import Fanout
from feed_svc.home_feed import CelebrityRegistry, HomeFeed
from feed_svc.store import CELEBRITY_SHARDS, CelebrityStore, celebrity_shard
from tweet_svc.cache import FILL_SCRIPT, LIKE_SCRIPT, TweetCache
from tweet_svc.store import TweetRecord

# ---- an in-memory Redis, strict about slots ---------------------------------------------


def _b(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).encode()


def _within(score: float, low: Any, high: Any) -> bool:
    """Redis score bounds: inclusive, or exclusive when written "(n"."""

    def bound(value: Any) -> tuple[float, bool]:
        text = str(value)
        return (float(text[1:]), True) if text.startswith("(") else (float(text), False)

    (lo, lo_open), (hi, hi_open) = bound(low), bound(high)
    return (lo < score if lo_open else lo <= score) and (score < hi if hi_open else score <= hi)


class FakeRedis:
    """The commands the caches use. Like a Redis Cluster, a command whose keys hash
    to different slots fails (ClusterCrossSlotError, which no cache hides as a miss).
    `down` makes every command raise it, as an unreachable Redis does."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.ttl_ms: dict[str, int] = {}
        self.down: BaseException | None = None
        self.calls: list[tuple[str, tuple[str, ...]]] = []
        self.attempts = 0

    def _use(self, command: str, *keys: str) -> None:
        self.attempts += 1
        if self.down is not None:
            raise self.down
        if len({key_slot(k.encode()) for k in keys}) > 1:
            raise ClusterCrossSlotError("CROSSSLOT Keys in request don't hash to the same slot")
        self.calls.append((command, keys))

    def slots_touched(self) -> set[int]:
        return {key_slot(k.encode()) for _, keys in self.calls for k in keys}

    def pipeline(self, transaction: bool = True) -> FakePipeline:
        return FakePipeline(self)

    # strings
    async def get(self, key: str) -> bytes | None:
        self._use("get", key)
        value = self.data.get(key)
        return value if value is None else bytes(value)

    async def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        self._use("mget", *keys)
        return [self.data.get(k) for k in keys]

    async def set(self, key: str, value: Any, px: int | None = None, nx: bool = False) -> bool | None:
        self._use("set", key)
        if nx and key in self.data:
            return None
        self.data[key] = _b(value)
        self.ttl_ms.pop(key, None)
        if px is not None:
            self.ttl_ms[key] = px
        return True

    async def delete(self, *keys: str) -> int:
        self._use("delete", *keys)
        return sum(self.data.pop(k, None) is not None for k in keys)

    async def pttl(self, key: str) -> int:
        self._use("pttl", key)
        return self.ttl_ms.get(key, -1) if key in self.data else -2

    async def pexpire(self, key: str, ms: int, nx: bool = False) -> bool:
        self._use("pexpire", key)
        return self._expire(key, ms, nx)

    async def expire(self, key: str, seconds: int, nx: bool = False) -> bool:
        self._use("expire", key)
        return self._expire(key, seconds * 1000, nx)

    def _expire(self, key: str, ms: int, nx: bool) -> bool:
        if key not in self.data or (nx and key in self.ttl_ms):
            return False
        self.ttl_ms[key] = ms
        return True

    # sorted sets
    def _zset(self, key: str) -> dict[bytes, float]:
        return cast(dict[bytes, float], self.data.setdefault(key, {}))

    def _ordered(self, key: str) -> list[tuple[bytes, float]]:
        return sorted(cast(dict[bytes, float], self.data.get(key, {})).items(), key=lambda p: (p[1], p[0]))

    async def zadd(self, key: str, mapping: dict[str, float]) -> int:
        self._use("zadd", key)
        zset = self._zset(key)
        added = sum(_b(m) not in zset for m in mapping)
        zset.update({_b(m): float(s) for m, s in mapping.items()})
        return added

    async def zrem(self, key: str, *members: str) -> int:
        self._use("zrem", key)
        zset = self.data.get(key, {})
        return sum(zset.pop(_b(m), None) is not None for m in members)

    async def zscore(self, key: str, member: str) -> float | None:
        self._use("zscore", key)
        return cast(dict[bytes, float], self.data.get(key, {})).get(_b(member))

    async def zrevrange(self, key: str, start: int, end: int) -> list[bytes]:
        self._use("zrevrange", key)
        members = [m for m, _ in reversed(self._ordered(key))]
        return members[start : len(members) if end == -1 else end + 1]

    async def zrevrangebyscore(self, key: str, top: Any, bottom: Any, start: int, num: int) -> list[bytes]:
        self._use("zrevrangebyscore", key)
        members = [m for m, s in reversed(self._ordered(key)) if _within(s, bottom, top)]
        return members[start : start + num]

    async def zrangebyscore(self, key: str, bottom: Any, top: Any) -> list[bytes]:
        self._use("zrangebyscore", key)
        return [m for m, s in self._ordered(key) if _within(s, bottom, top)]

    async def zremrangebyrank(self, key: str, start: int, end: int) -> int:
        self._use("zremrangebyrank", key)
        ordered = self._ordered(key)
        end = len(ordered) + end if end < 0 else end
        doomed = [m for m, _ in ordered[start : end + 1]]
        for member in doomed:
            del self._zset(key)[member]
        return len(doomed)

    # sets
    async def smembers(self, key: str) -> builtins.set[bytes]:
        self._use("smembers", key)
        return set(cast(set[bytes], self.data.get(key, set())))

    async def sadd(self, key: str, *members: Any) -> int:
        self._use("sadd", key)
        members_set = cast(set[bytes], self.data.setdefault(key, set()))
        added = {_b(m) for m in members} - members_set
        members_set |= added
        return len(added)

    async def srem(self, key: str, *members: Any) -> int:
        self._use("srem", key)
        members_set = cast(set[bytes], self.data.get(key, set()))
        gone = {_b(m) for m in members} & members_set
        members_set -= gone
        return len(gone)

    # hashes, and the like state's scripts (tweet_svc/cache.py), each on its one key. Only
    # what these tests use is modelled: the scripts run on a real Redis in
    # tests/integration/test_like_state.py.
    async def hget(self, key: str, field: str) -> bytes | None:
        self._use("hget", key)
        value = self.data.get(key)
        return cast(dict[bytes, bytes], value).get(_b(field)) if isinstance(value, dict) else None

    async def hmget(self, key: str, fields: Sequence[str]) -> list[bytes | None]:
        self._use("hmget", key)
        value = self.data.get(key)
        return [cast(dict[bytes, bytes], value).get(_b(f)) if isinstance(value, dict) else None for f in fields]

    async def eval(self, script: str, numkeys: int, *keys_and_args: Any) -> Any:
        keys, args = keys_and_args[:numkeys], keys_and_args[numkeys:]
        self._use("eval", *keys)
        key = keys[0]
        if script == CLAIM_FOLLOWING_SCRIPT:
            value = cast(bytes | None, self.data.get(key))
            if value is not None and not value.startswith(PENDING.encode()):
                return [1, value]
            if value is not None:
                return [0, value[len(PENDING) :]]
            self.data[key] = _b(PENDING + args[0])
            self.ttl_ms[key] = int(args[1])
            return [0, _b(args[0])]
        if script == FILL_FOLLOWING_SCRIPT:
            if self.data.get(key) != _b(PENDING + args[0]):
                return 0
            self.data[key] = _b(args[1])
            self.ttl_ms[key] = int(args[2])
            return 1
        # The fake's TTLs never run down, so a key's TTL stands in for its PEXPIRETIME.
        if script == FOLLOWING_FINGERPRINT_SCRIPT:
            value = cast(bytes | None, self.data.get(key))
            if value is None or value.startswith(PENDING.encode()) or keys[1] in self.data:
                return None
            if self.ttl_ms.get(key, -1) > int(args[2]):  # reloaded since: not due
                return None
            self.data[keys[1]], self.ttl_ms[keys[1]] = _b(args[0]), int(args[1])  # the claim
            return [hashlib.sha1(value).hexdigest().encode(), self.ttl_ms.get(key, -1)]
        if script == REFRESH_FOLLOWING_SCRIPT:
            value = cast(bytes | None, self.data.get(key))
            if value is None or hashlib.sha1(value).hexdigest() != args[0] or self.ttl_ms.get(key, -1) != int(args[3]):
                return 0
            self.data[key] = _b(args[1])
            self.ttl_ms[key] = int(args[2])
            return 1
        if script == FILL_SCRIPT:
            if key in self.data:
                return 0
            due = _b(int(time.time() * 1000) + int(args[1]))
            self.data[key] = {b"c": _b(args[0]), b"p": b"0", b"n": _b(args[0]), b"t": due}
            self.ttl_ms[key] = 2 * int(args[1])
            return 1
        if script == LIKE_SCRIPT and args[0] == "fold" and len(args) == 3:  # a stored count, no user
            if not isinstance(self.data.get(key), dict):
                self.data[key] = {b"p": b"0", b"t": _b(int(time.time() * 1000) + int(args[1]))}
                self.ttl_ms[key] = 2 * int(args[1])
            state = cast(dict[bytes, bytes], self.data[key])
            count = max(0, int(args[2]) + int(state[b"p"]))
            state.update({b"c": _b(args[2]), b"n": _b(count)})
            return count
        if script == RELEASE_CLAIM_SCRIPT:
            if self.data.get(key) != _b(args[0]):
                return 0
            self.data.pop(key)
            return 1
        hidden = self._hidden_script(script, keys, args)
        if hidden is not NotImplemented:
            return hidden
        raise NotImplementedError(
            "the fake models the follow list's claim, fill, fingerprint and reload, the like state's fill and a fold"
            " without users, a claim's release and the hidden-author set's scripts only"
        )

    def _hidden_script(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """common/hidden.py's scripts (KEYS: the set, its token[, the reload's claim]); they
        run on a real Redis in tests/integration/test_hidden_cache.py."""
        if script == hidden_module.READ_SCRIPT:
            if keys[0] in self.data:
                return [self.data[keys[0]], None, self.ttl_ms.get(keys[0], -1)]
            if keys[1] not in self.data:
                self.data[keys[1]], self.ttl_ms[keys[1]] = _b(args[0]), int(args[1])
            return [None, self.data[keys[1]]]
        if script == hidden_module.FILL_SCRIPT:
            if self.data.get(keys[1]) != _b(args[0]):
                return 0
            self.data[keys[0]], self.ttl_ms[keys[0]] = _b(args[1]), int(args[2])
            return 1
        if script == hidden_module.INVALIDATE_SCRIPT:
            self.data.pop(keys[0], None)
            self.data[keys[1]], self.ttl_ms[keys[1]] = _b(args[0]), int(args[1])
            return 1
        if script == hidden_module.RELOAD_TOKEN_SCRIPT:
            if keys[0] not in self.data or self.ttl_ms.get(keys[0], -1) > int(args[3]) or keys[1] not in self.data:
                return None
            if keys[2] in self.data and self.data[keys[2]] != _b(args[0]):
                return None
            self.data[keys[2]], self.ttl_ms[keys[2]] = _b(args[0]), int(args[1])
            self.ttl_ms[keys[1]] = int(args[2])
            return self.data[keys[1]]
        return NotImplemented

    def register_script(self, script: str) -> Callable[..., Awaitable[Any]]:
        async def run(keys: Sequence[str], args: Sequence[Any] = ()) -> Any:
            return await self.eval(script, len(keys), *keys, *args)

        return run


class FakePipeline:
    """Queues commands and runs them in order on execute(), each checked on its own
    (a cluster pipeline is split by node, not sent as one multi-key command)."""

    def __init__(self, redis: FakeRedis) -> None:
        self._redis = redis
        self._queue: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    async def __aenter__(self) -> FakePipeline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._queue.clear()

    def __getattr__(self, name: str) -> Any:
        getattr(self._redis, name)  # only commands the fake knows

        def queue(*args: Any, **kwargs: Any) -> FakePipeline:
            self._queue.append((name, args, kwargs))
            return self

        return queue

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        return [await getattr(self._redis, name)(*args, **kwargs) for name, args, kwargs in self._queue]


def client(fake: FakeRedis) -> RedisClient:
    return cast(RedisClient, fake)


def spread_ids(count: int, instance: int = 901) -> list[int]:
    """Snowflake ids one millisecond apart, as tweets and users get them."""
    clock = iter(range(1_750_000_000_000, 1_750_000_000_000 + count * 2))
    ids = IdGenerator(instance, lambda: next(clock))
    return [ids.next_id() for _ in range(count)]


def record(tweet_id: int, author_id: int = 7) -> TweetRecord:
    return TweetRecord(tweet_id, author_id, "ada", f"tweet {tweet_id}", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))


# ---- the fake itself must catch a cross-slot command ------------------------------------


async def test_the_fake_rejects_a_command_spanning_slots_as_a_cluster_does() -> None:
    fake = FakeRedis()
    keys = [tweet_key("body", t) for t in spread_ids(20)]
    assert len({key_slot(k.encode()) for k in keys}) > 1
    with pytest.raises(ClusterCrossSlotError):
        await fake.mget(keys)  # what TweetCache.get used to send
    assert await fake.mget(keys[:1]) == [None]


# ---- no command spans slots ----------------------------------------------------------------


async def test_tweet_cache_round_trips_many_keys_without_spanning_slots() -> None:
    fake = FakeRedis()
    cache = TweetCache(client(fake), ttl_seconds=60, count_ttl_seconds=30, recent_ttl_seconds=30)
    tweet_ids = spread_ids(120)
    await cache.put([record(t) for t in tweet_ids])
    await cache.mark_deleted(tweet_ids[0])
    found, deleted = await cache.get(tweet_ids)
    assert deleted == {tweet_ids[0]}
    assert found == {t: record(t) for t in tweet_ids[1:]}

    await cache.set_like_counts({t: 3 for t in tweet_ids[:60]})
    await cache.fill_like_counts({t: 1 for t in tweet_ids})  # only where absent
    counts = await cache.like_counts(tweet_ids)
    assert counts == {t: 3 if i < 60 else 1 for i, t in enumerate(tweet_ids)}

    authors = spread_ids(40, instance=902)
    await cache.fill_recent({a: [tweet_ids[i]] for i, a in enumerate(authors)})
    await cache.add_recent(authors[0], tweet_ids[100])
    assert await cache.recent(authors, 5) == {
        a: ([tweet_ids[100]] if i == 0 else []) + [tweet_ids[i]] for i, a in enumerate(authors)
    }
    assert len(fake.slots_touched()) > 100  # the keys really were spread over slots
    assert "mget" not in {command for command, _ in fake.calls}


async def test_feed_cache_round_trips_many_keys_without_spanning_slots() -> None:
    fake = FakeRedis()
    cache = FeedCache(client(fake), timeline_size=20, following_ttl=30, celebrity_ttl=5)
    users = spread_ids(100)
    tweets = spread_ids(3, instance=903)
    for user in users[:50]:
        await cache.rebuild(user, [])
    await cache.push(users, tweets)
    await cache.remove(users, tweets[:1])
    assert await cache.timeline(users[0], None, 10) == sorted(tweets[1:], reverse=True)
    assert await cache.timeline(users[99], None, 10) is None  # pushed to, never built

    token = await cache.claim_following(users[5])  # a miss: its marker, then the fill on that one key
    assert isinstance(token, str) and await cache.claim_following(users[5]) == token  # a second reader shares it
    await cache.set_following(users[5], [(users[6], 1)], False, token)
    assert await cache.claim_following(users[5]) == ([(users[6], 1)], False)
    assert await cache.following_fingerprint(users[5], "c0") is None  # a whole lifetime left: not due
    await fake.pexpire(feed_key("following", users[5]), 1_000)
    fingerprint = await cache.following_fingerprint(users[5], "c1")  # a reload after a read: that key's slot
    assert fingerprint is not None
    assert await cache.following_fingerprint(users[5], "c2") is None  # claimed: no second process reloads it
    assert await cache.refresh_following(users[5], fingerprint, [(users[7], 2)], True)
    assert await cache.claim_following(users[5]) == ([(users[7], 2)], True)
    assert (await cache.home_reads(users[5], None, 20, 0)).following == ([(users[7], 2)], True)
    claim = reload_claim_key(feed_key("following", users[5]))
    assert fake.data[claim] == b"c1"
    await cache.end_following_reload(users[5], "c2")  # not its claim: left alone
    await cache.end_following_reload(users[5], "c1")
    assert claim not in fake.data

    await cache.load_celebrities({users[3]})
    await cache.mark_celebrity(users[4], True)
    assert await cache.celebrities() == {users[3], users[4]}
    assert len(fake.slots_touched()) > 80
    assert "mget" not in {command for command, _ in fake.calls}


async def test_hidden_author_sets_read_fill_reload_and_invalidate_without_spanning_slots() -> None:
    """The set, its token and its reload's claim share the user's slot in every script."""
    fake = FakeRedis()
    store = RedisHiddenStore(client(fake))
    users = spread_ids(100)
    tokens = {}
    for user in users:
        missed = await store.read(user)
        assert missed.hidden is None and missed.version
        assert await store.fill(user, missed.version, frozenset({user + 1}), 60)
        assert (await store.read(user)).hidden == frozenset({user + 1})
        tokens[user] = missed.version
    user = users[0]
    assert await store.reload_token(user, "c1", 5_000) is None  # a whole lifetime left: not due
    await fake.pexpire(hidden_key(user), 1_000)
    assert (await store.read(user)).pttl_ms == 1_000  # a hit gives its time left (rank_svc's reloads)
    token = await store.reload_token(user, "c1", 5_000)
    assert token == tokens[user]  # the reload fills under the set's token
    assert await store.reload_token(user, "c2", 5_000) is None  # claimed: no second process reloads it
    assert await store.reload_token(user, "c1", 5_000) == token  # its own claim, taken again
    await store.end_reload(user, "c1")
    assert reload_claim_key(hidden_key(user)) not in fake.data
    await store.invalidate(user)
    assert (await store.read(user)).hidden is None
    assert len(fake.slots_touched()) > 80


# ---- Redis unavailable: a miss, never an error, and a fresh one each call ----------------


async def test_a_miss_while_redis_is_down_is_a_fresh_value_for_every_caller() -> None:
    """tweet_svc adds what it loads from the store to the miss value; a shared
    object carried that into the next call (deleted tweets served, counts frozen)."""
    fake = FakeRedis()
    fake.down = RedisConnectionError("Connection refused")
    cache = TweetCache(client(fake), ttl_seconds=60)
    tweet_id = spread_ids(1)[0]

    found, deleted = await cache.get([tweet_id])
    found[tweet_id] = record(tweet_id)  # what hydrate() does with the store's bodies
    deleted.add(tweet_id + 1)
    counts = await cache.like_counts([tweet_id])
    counts[tweet_id] = 5  # what hydrate() does with the store's counts

    assert await cache.get([tweet_id]) == ({}, set())
    assert await cache.like_counts([tweet_id]) == {}
    assert time.monotonic() < cache.down_until  # later calls skipped Redis, and still got fresh values


class _FailsOnce(Tolerant):
    calls = 0

    @tolerant(dict)
    async def read(self) -> dict[str, int]:
        self.calls += 1
        if self.calls == 1:
            raise RedisConnectionError("Error 111 connecting to 127.0.0.1:6380.")
        return {"k": self.calls}


async def _nobody_hidden(user_id: int) -> frozenset[int]:
    return frozenset()


async def test_on_a_cluster_a_failure_misses_that_call_alone() -> None:
    """A cluster node that fails costs its own keys (the transport skips it alone): the
    next call still goes to Redis. A standalone Redis that fails is skipped by every call."""
    cluster = connect_redis("redis://127.0.0.1:7001,redis://127.0.0.1:7002")  # connects on first use only
    on_cluster = _FailsOnce(cluster)
    assert await on_cluster.read() == {}
    assert await on_cluster.read() == {"k": 2}
    assert on_cluster.down_until == 0.0
    # The hidden-authors cache is given its store's client, as the services build it.
    assert HiddenAuthorsCache(RedisHiddenStore(cluster), _nobody_hidden, redis=cluster).node_scoped

    standalone = _FailsOnce(connect_redis("redis://127.0.0.1:7001"))
    assert await standalone.read() == {}
    assert await standalone.read() == {}  # skipped: Redis was not asked
    assert standalone.calls == 1


async def test_the_topology_is_read_again_at_most_once_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    """redis-py re-reads the topology after every connection error, and each re-read has
    every connection reconnect: with a node lost, every command did."""
    cluster = connect_redis("redis://127.0.0.1:7001,redis://127.0.0.1:7002")
    assert isinstance(cluster, RedisCluster)
    reads: list[float] = []

    async def read(self: RedisCluster, *args: object, **kwargs: object) -> RedisCluster:
        reads.append(time.monotonic())
        self._initialize = False
        self.nodes_manager.default_node = next(iter(self.nodes_manager.startup_nodes.values()))
        return self

    monkeypatch.setattr(RedisCluster, "initialize", read)
    await cluster.initialize()  # the first: at once
    for _ in range(5):  # as after connection errors to a lost node
        cluster._initialize = True
        await cluster.initialize()
    assert len(reads) == 1 and not cluster._initialize
    monkeypatch.setattr(cache_module, "RETRY_AFTER_SECONDS", 0.0)
    cluster._initialize = True
    await cluster.initialize()
    assert len(reads) == 2


def test_tolerant_takes_a_factory_not_a_shared_object() -> None:
    with pytest.raises(TypeError, match="factory"):
        tolerant({})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "error",
    [
        ClusterDownError("CLUSTERDOWN The cluster is down"),
        TryAgainError("TRYAGAIN"),
        MasterDownError("MASTERDOWN Link with MASTER is down"),
        SlotNotCoveredError("Slot 1234 is not covered by the cluster."),
        RedisClusterException("Redis Cluster cannot be connected."),
        ClusterError("TTL exhausted."),
        RedisConnectionError("Error 111 connecting to 127.0.0.1:6380."),
        RedisTimeoutError("Timeout reading from 127.0.0.1:6380"),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_cluster_and_connection_errors_read_as_misses(error: Exception) -> None:
    assert isinstance(error, REDIS_UNAVAILABLE_ERRORS)
    fake = FakeRedis()
    fake.down = error
    ids = spread_ids(3)

    def tweets() -> TweetCache:  # a fresh one per call: no call is skipped as "Redis known down"
        return TweetCache(client(fake), ttl_seconds=60)

    def feed() -> FeedCache:
        return FeedCache(client(fake), timeline_size=20, following_ttl=30, celebrity_ttl=5)

    assert await tweets().get(ids) == ({}, set())
    assert await tweets().like_counts(ids) == {}
    assert await tweets().recent(ids, 5) == {}
    await tweets().mark_deleted(ids[0])  # dropped, not raised: the fan-out worker writes it too
    assert await feed().timeline(ids[0], None, 10) is None
    assert await feed().recent_ids(ids, 5) == {}
    assert await feed().claim_following(ids[0]) is None
    assert await feed().celebrities() is None
    assert fake.attempts == 8  # every one of them tried Redis


async def test_a_cross_slot_error_is_a_bug_and_is_not_hidden_as_a_miss() -> None:
    fake = FakeRedis()
    fake.down = ClusterCrossSlotError("CROSSSLOT Keys in request don't hash to the same slot")
    with pytest.raises(ClusterCrossSlotError):
        await TweetCache(client(fake), ttl_seconds=60).get(spread_ids(2))


# ---- the client: one URL is a standalone Redis, a list is a cluster ---------------------


async def test_a_list_of_nodes_makes_a_cluster_client_and_one_url_a_standalone_one() -> None:
    standalone = connect_redis("redis://127.0.0.1:6379/0")
    assert not isinstance(standalone, RedisCluster)
    assert standalone.connection_pool.connection_kwargs["socket_timeout"] == 0.5

    cluster = connect_redis("redis://127.0.0.1:6400, redis://127.0.0.1:6401,redis://127.0.0.1:6402")
    assert isinstance(cluster, RedisCluster)
    assert set(cluster.nodes_manager.startup_nodes) == {"127.0.0.1:6400", "127.0.0.1:6401", "127.0.0.1:6402"}
    assert cluster.connection_kwargs["socket_timeout"] == 0.5
    assert cluster.connection_kwargs["socket_connect_timeout"] == 0.5
    assert cluster.retry.get_retries() == 1
    await standalone.aclose()
    await cluster.aclose()


def test_a_malformed_cluster_node_is_refused() -> None:
    assert cluster_nodes("redis://a:7000,redis://b") == [("a", 7000), ("b", 6379)]
    with pytest.raises(ValueError, match="redis://host:port"):
        cluster_nodes("redis://a:7000,b:7001")
    with pytest.raises(ValueError, match="redis://host:port"):
        cluster_nodes("redis://a:7000,redis://b:7001/3")  # a cluster has only database 0


# ---- the fan-out worker's deletion marker ------------------------------------------------


class FakeCelebrityStore:
    def __init__(self, celebrities: set[int] | None = None) -> None:
        self.registry = set(celebrities or ())
        self.registry_loads = 0
        self.failing: BaseException | None = None

    async def celebrities(self) -> set[int]:
        self.registry_loads += 1
        if self.failing is not None:
            raise self.failing
        return set(self.registry)


class FakeMessage:
    def __init__(self, event: dict[str, Any]) -> None:
        self._value = json.dumps(event).encode()
        self._key = str(event["author_id"]).encode()

    def value(self) -> bytes:
        return self._value

    def key(self) -> bytes:
        return self._key

    def topic(self) -> str:
        return "tweets"

    def offset(self) -> int:
        return 0


def fanout_with(fake: FakeRedis, store: FakeCelebrityStore, followers: list[int]) -> Fanout:
    async def follower_count(user_id: int) -> int:
        return len(followers)

    async def follower_page(user_id: int, token: str) -> tuple[list[int], str, int | None]:
        return followers, "", len(followers)

    async def recent_ids(authors: Sequence[int], before: int, limit: int) -> list[tuple[int, int]]:
        return []

    cache = FeedCache(client(fake), timeline_size=20, following_ttl=30, celebrity_ttl=5)
    return Fanout(cache, cast(CelebrityStore, store), follower_count, follower_page, recent_ids, 10)


async def test_a_delete_missed_while_redis_was_down_is_applied_by_the_fanout_worker() -> None:
    fake = FakeRedis()
    tweets = TweetCache(client(fake), ttl_seconds=600)
    tweet_id, author = spread_ids(2)
    await tweets.put([record(tweet_id, author)])  # cached before the delete

    fake.down = RedisConnectionError("Connection refused")
    await tweets.mark_deleted(tweet_id)  # tweet_svc's delete: swallowed while Redis is down
    fanout = fanout_with(fake, FakeCelebrityStore(), followers=[11, 12])
    batch = [cast(Message, FakeMessage({"type": "tweet_deleted", "tweet_id": tweet_id, "author_id": author}))]
    with pytest.raises(RedisConnectionError):
        await fanout(batch)  # the batch fails, so Kafka hands it over again

    fake.down = None  # Redis is back, with the body it held
    reader = TweetCache(client(fake), ttl_seconds=600)
    assert await reader.get([tweet_id]) == ({tweet_id: record(tweet_id, author)}, set())
    await fanout(batch)  # the batch re-applied from the last commit
    assert await reader.get([tweet_id]) == ({}, {tweet_id})
    assert fake.data[tweet_key("body", tweet_id)] == TWEET_DELETED
    assert fake.ttl_ms[tweet_key("body", tweet_id)] == TWEET_DELETED_SECONDS * 1000


async def test_the_fanout_worker_marks_the_tweet_deleted_and_sweeps_timelines() -> None:
    fake = FakeRedis()
    tweet_id, kept, author = spread_ids(3)
    await FeedCache(client(fake), timeline_size=20, following_ttl=30, celebrity_ttl=5).push([11, 12], [tweet_id, kept])
    await fanout_with(fake, FakeCelebrityStore(), followers=[11, 12]).handle(
        "tweet_deleted", {"tweet_id": tweet_id, "author_id": author}
    )
    assert await TweetCache(client(fake), ttl_seconds=60).get([tweet_id]) == ({}, {tweet_id})
    for follower in (11, 12):
        assert await fake.zrevrange(feed_key("timeline", follower), 0, -1) == [str(kept).encode()]


# ---- the celebrity registry: in memory, not one Redis key per feed read -------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def home_feed(
    fake: FakeRedis,
    store: FakeCelebrityStore,
    clock: Clock,
    follows: list[tuple[int, int]],
    tweets_by_author: dict[int, list[int]],
) -> HomeFeed:

    async def following_ids(user_id: int, among: Sequence[int]) -> tuple[list[tuple[int, int]], bool]:
        return follows, False

    async def recent_ids(authors: Sequence[int], before: int, limit: int) -> list[tuple[int, int]]:
        return [(t, a) for a in authors for t in tweets_by_author[a] if not before or t < before][:limit]

    async def batch_tweets(ids: Sequence[int], viewer_id: int = 0) -> list[tweet_pb2.Tweet]:
        author_of = {t: a for a, ts in tweets_by_author.items() for t in ts}
        return [tweet_pb2.Tweet(tweet_id=t, author_id=author_of[t]) for t in ids]

    cache = FeedCache(client(fake), timeline_size=20, following_ttl=30, celebrity_ttl=5)
    registry = CelebrityRegistry(cache, cast(CelebrityStore, store), refresh_seconds=5, clock=clock)
    return HomeFeed(cache, cast(CelebrityStore, store), following_ids, recent_ids, batch_tweets, 10, 20, registry)


async def test_feed_reads_consult_the_registry_in_memory_and_reload_it_once_per_interval() -> None:
    fake = FakeRedis()
    star, quiet, reader = spread_ids(3, instance=904)
    store = FakeCelebrityStore(celebrities={star})
    clock = Clock()
    # The reader's follow list says the star has few followers (cached counts lag);
    # only the registry says it is pulled.
    star_tweet = spread_ids(1, instance=905)[0]
    tweets_by_author = {star: [star_tweet], quiet: [], reader: []}
    feed = home_feed(fake, store, clock, [(star, 2), (quiet, 2)], tweets_by_author)

    for _ in range(30):
        tweets, _ = await feed.page(reader, 10, "")
        assert [t.tweet_id for t in tweets] == [star_tweet]
    celebrity_reads = [c for c in fake.calls if CELEBRITIES_KEY in c[1]]
    assert [c[0] for c in celebrity_reads] == ["smembers", "sadd", "expire"]  # one load, from CQL, copied to Redis
    assert store.registry_loads == 1

    # A crossing reaches readers within the refresh interval, from Redis's copy.
    await FeedCache(client(fake), 20, 30, 5).mark_celebrity(quiet, True)
    quiet_tweet = spread_ids(1, instance=906)[0]
    tweets_by_author[quiet] = [quiet_tweet]
    assert [t.tweet_id for t in (await feed.page(reader, 10, ""))[0]] == [star_tweet]
    clock.now += 5
    assert [t.tweet_id for t in (await feed.page(reader, 10, ""))[0]] == [quiet_tweet, star_tweet]
    assert sum(1 for c in fake.calls if c == ("smembers", (CELEBRITIES_KEY,))) == 2
    assert store.registry_loads == 1


async def test_the_registry_loads_from_the_store_while_redis_is_down() -> None:
    fake = FakeRedis()
    fake.down = ClusterDownError("CLUSTERDOWN The cluster is down")
    star = spread_ids(1)[0]
    store = FakeCelebrityStore(celebrities={star})
    cache = FeedCache(client(fake), 20, 30, 5)
    registry = CelebrityRegistry(cache, cast(CelebrityStore, store), refresh_seconds=5, clock=Clock())
    assert await registry.members() == {star}
    assert await registry.members() == {star}
    assert store.registry_loads == 1


async def test_the_registry_keeps_the_last_members_while_it_cannot_reload_them() -> None:
    fake = FakeRedis()
    fake.down = RedisConnectionError("Connection refused")  # no copy in Redis: every load goes to CQL
    star, newcomer = spread_ids(2)
    store = FakeCelebrityStore(celebrities={star})
    clock = Clock()
    registry = CelebrityRegistry(FeedCache(client(fake), 20, 30, 5), cast(CelebrityStore, store), 5, clock)
    assert await registry.members() == {star}

    store.failing = NoHostAvailable("Unable to connect to any servers", {})
    store.registry.add(newcomer)
    clock.now += 5
    assert await registry.members() == {star}  # the feed read goes on
    assert store.registry_loads == 2
    assert await registry.members() == {star}
    assert store.registry_loads == 2  # not retried on every read
    store.failing = None
    clock.now += 1
    assert await registry.members() == {star, newcomer}

    with pytest.raises(NoHostAvailable):  # nothing to fall back on: the read fails (503)
        store.failing = NoHostAvailable("Unable to connect to any servers", {})
        await CelebrityRegistry(FeedCache(client(fake), 20, 30, 5), cast(CelebrityStore, store), 5, clock).members()


# ---- the registry in CQL: spread over partitions ----------------------------------------


def test_celebrity_shards_spread_snowflake_ids_evenly() -> None:
    ids = spread_ids(1600)
    assert {i % CELEBRITY_SHARDS for i in ids} == {0}  # why not `author_id % 16`: low bits are the sequence
    per_shard = collections.Counter(celebrity_shard(i) for i in ids)
    assert set(per_shard) == set(range(CELEBRITY_SHARDS))
    assert max(per_shard.values()) < 2 * min(per_shard.values())
    assert all(celebrity_shard(i) == celebrity_shard(i) for i in ids[:10])


class FakeCql:
    """Executes the registry's statements over two in-memory tables."""

    def __init__(self, new: set[int], old: set[int]) -> None:
        self.tables = {"celebrities_by_shard": new, "celebrities": old}
        self.statements: list[str] = []

    async def prepare(self, query: str) -> str:
        return query

    async def execute(self, query: str, params: Sequence[Any] = ()) -> list[Any]:
        self.statements.append(query)
        table = self.tables["celebrities_by_shard" if "celebrities_by_shard" in query else "celebrities"]
        author = params[-1] if "author_id = ?" in query or query.startswith("INSERT") else None
        if "celebrities_by_shard" in query and query.startswith("SELECT") and author is None:
            return [Row(a) for a in table if celebrity_shard(a) == params[0]]
        if query.startswith("SELECT"):
            return [Row(a) for a in table if author is None or a == author]
        if query.startswith("INSERT"):
            assert params[0] == celebrity_shard(params[1])
            table.add(params[1])
        if query.startswith("DELETE"):
            table.discard(cast(int, author))
        return []


class Row:
    def __init__(self, author_id: int) -> None:
        self.author_id = author_id


async def test_the_store_unions_both_tables_and_moves_an_author_when_it_marks_it_again() -> None:
    a, b, c = spread_ids(3)
    cql = FakeCql(new={a}, old={b, c})
    store = CelebrityStore(cast(CqlSession, cql))
    await store.prepare()
    assert await store.celebrities() == {a, b, c}
    reads = [s for s in cql.statements if s.startswith("SELECT")]
    assert len(reads) == CELEBRITY_SHARDS + 1  # every shard, and the old table once
    assert await store.is_celebrity(b)

    await store.set_celebrity(b, True)  # marked again: now only in the new table
    assert cql.tables == {"celebrities_by_shard": {a, b}, "celebrities": {c}}
    deletes = sum(s.startswith("DELETE") for s in cql.statements)
    await store.set_celebrity(b, True)  # nothing left to move: no tombstone written
    assert sum(s.startswith("DELETE") for s in cql.statements) == deletes

    await store.set_celebrity(c, False)
    assert cql.tables == {"celebrities_by_shard": {a, b}, "celebrities": set()}
    assert not await store.is_celebrity(c)
    assert await store.celebrities() == {a, b}


def test_a_reload_claim_lives_in_the_slot_of_the_key_it_claims() -> None:
    for user in spread_ids(200):
        for key in (feed_key("following", user), hidden_key(user)):
            claim = reload_claim_key(key)
            assert claim != key
            assert key_slot(claim.encode()) == key_slot(key.encode()), (key, claim)


@pytest.mark.parametrize("key", ["a}b", "{}x", "x{}y", "x{y"])
def test_no_claim_key_is_made_for_a_key_with_a_brace_but_no_hash_tag(key: str) -> None:
    with pytest.raises(ValueError):
        reload_claim_key(key)


def test_a_node_skipped_once_is_forgotten_when_another_fails_after_its_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    from common import cache

    now = [100.0]
    monkeypatch.setattr(cache.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(cache, "_unreachable", {})
    cache._node_failed("10.0.0.1", 6379)  # a pod since rescheduled under another address
    assert cache._node_skipped("10.0.0.1", "6379")
    now[0] += cache.RETRY_AFTER_SECONDS + 0.1
    cache._node_failed("10.0.0.2", 6379)
    assert list(cache._unreachable) == [("10.0.0.2", 6379)]
