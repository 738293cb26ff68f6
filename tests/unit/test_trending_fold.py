"""Trending tallies: folding like events once under replay and in any order,
rebuilding them from the likes topic after Redis lost them, waiting for a
replica, and serving the list from a process-local copy.

The fold is a Lua script, so these tests run it on a private redis-server
(started here on a free port in 6480-6499, stopped at the end); the likes
topic and the consumer are in-memory fakes."""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
import redis.asyncio as aioredis
from chirp.graph.v1 import graph_pb2
from chirp.tweet.v1 import tweet_pb2
from prometheus_client import REGISTRY
from redis.crc import key_slot

from common.errors import Unavailable
from common.events import LikeEvent
from common.ids import id_time_ms, min_id_at_ms
from common.keys import TWEET_DELETED, tweet_key
from common.replica_waits import NotReplicated
from rank_svc.domain import Ranker
from rank_svc.reads import TrendingCopy, with_current_state
from rank_svc.store import (
    HOUR_MS,
    LIKERS_BUCKET_HOURS,
    Like,
    PartitionFold,
    TrendingKeys,
    TrendingStore,
    TweetCacheReader,
    hour_of,
)
from rank_svc.tallies import REPLAY_SLACK_MS, REWINDS, LikeFolder, Partition
from tests.unit.test_redis_cluster_safety import FakeRedis, client

TOPIC = "likes"
WINDOW = 48
# Half past the current hour: tallies expire by the wall clock (EXPIREAT).
NOW_MS = time.time_ns() // 1_000_000 // HOUR_MS * HOUR_MS + 30 * 60_000
NOW_HOUR = hour_of(NOW_MS)
FIRST_HOUR = NOW_HOUR - WINDOW + 1
PORTS = range(6480, 6500)


# ---- a private redis-server -------------------------------------------------------------------


def _free_port(taken: set[int]) -> int:
    for port in PORTS:
        if port in taken:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port in {PORTS.start}-{PORTS.stop - 1} for a private redis-server")


@dataclass
class RedisServer:
    port: int
    process: subprocess.Popen[bytes]
    directory: str

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
            self.process.terminate()
            self.process.wait(10)
        shutil.rmtree(self.directory, ignore_errors=True)


def start_redis(taken: set[int], *extra: str) -> RedisServer:
    for _ in range(5):  # another test run may take the port between the probe and the start
        port = _free_port(taken)
        taken.add(port)
        directory = tempfile.mkdtemp(prefix=f"rank-test-redis-{port}-")
        process = subprocess.Popen(
            [
                *("redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
                *("--shutdown-timeout", "0", "--dir", directory, "--logfile", os.path.join(directory, "redis.log")),
                *extra,
            ],
        )
        server = RedisServer(port, process, directory)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and process.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", port), 0.2):
                    return server
            except OSError:
                time.sleep(0.05)
        server.stop()
    raise RuntimeError("could not start a private redis-server")


async def replica_streaming(client: Any, timeout: float = 10) -> None:
    """Until a replica of `client`'s server is synced and streaming (after a full sync,
    which waits for the replica's first ack, up to a second)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with client.pipeline(transaction=False) as pipe:
            pipe.set("warm-up", 1)
            pipe.execute_command("WAIT", 1, 100)
            if (await pipe.execute())[1] == 1:
                return
    raise AssertionError("the replica never acknowledged")


@pytest.fixture(scope="module")
def ports() -> set[int]:
    return set()


@pytest.fixture(scope="module")
def primary(ports: set[int]) -> Iterator[RedisServer]:
    server = start_redis(ports)
    yield server
    server.stop()


@pytest.fixture
async def redis(primary: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis(host="127.0.0.1", port=primary.port)
    yield client
    await client.aclose()


@pytest.fixture
def store(redis: aioredis.Redis) -> TrendingStore:
    # A namespace per test: every test starts from empty tallies.
    return TrendingStore(redis, WINDOW, 6.0, TrendingKeys(f"t{random.getrandbits(40):x}"))


async def lose_everything(redis: aioredis.Redis, store: TrendingStore) -> None:
    """What Redis restarting without its data does to the tallies (only this test's keys)."""
    keys = [key async for key in redis.scan_iter(match=store.keys.pattern)]
    assert keys
    await redis.delete(*keys)


# ---- likes, a likes topic and a consumer, in memory ------------------------------------------


def version(at_ms: int, seq: int) -> int:
    return min_id_at_ms(at_ms) + seq


def event(tweet_id: int, user_id: int, liked: bool, hours_ago: float, seq: int = 0) -> LikeEvent:
    return LikeEvent(tweet_id, user_id, liked, version(NOW_MS - int(hours_ago * HOUR_MS), seq))


@dataclass(frozen=True)
class Message:
    _topic: str
    _partition: int
    _offset: int
    _value: bytes
    timestamp_ms: int

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes:
        return self._value


class Topic:
    """A likes topic: each partition a list of messages, offsets from 0; Kafka's
    timestamp is the event's version time plus a little."""

    def __init__(self, partitions: int) -> None:
        self.logs: list[list[Message]] = [[] for _ in range(partitions)]

    def produce(self, events: Sequence[LikeEvent]) -> None:
        for e in events:
            log = self.logs[e.tweet_id % len(self.logs)]
            stamp = id_time_ms(e.version) + 3
            log.append(Message(TOPIC, e.tweet_id % len(self.logs), len(log), e.encode(), stamp))

    @property
    def events(self) -> list[LikeEvent]:
        return [LikeEvent.decode(m.value()) for log in self.logs for m in log]


@dataclass
class Consumer:
    """A group member holding some partitions: positions, commits, seeks and
    offsets by time, as LikesConsumer gives them."""

    topic: Topic
    partitions: list[int]
    committed: dict[int, int] = field(default_factory=dict)
    position: dict[int, int] = field(default_factory=dict)
    seeks: list[tuple[int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        for p in self.partitions:
            self.position.setdefault(p, self.committed.get(p, 0))

    def poll(self, limit: int) -> list[Message]:
        batch: list[Message] = []
        for p in self.partitions:
            got = self.topic.logs[p][self.position[p] : self.position[p] + limit - len(batch)]
            batch += got
            self.position[p] += len(got)
        return batch

    def commit(self, batch: Sequence[Message]) -> None:
        for m in batch:
            self.committed[m.partition()] = m.offset() + 1

    async def offset_at(self, topic: str, partition: int, at_ms: int) -> int:
        return next((m.offset() for m in self.topic.logs[partition] if m.timestamp_ms >= at_ms), -1)

    def seek(self, topic: str, partition: int, offset: int) -> None:
        self.seeks.append((partition, offset))
        self.position[partition] = offset

    async def positions(self) -> dict[Partition, int]:
        return {(TOPIC, p): self.position[p] for p in self.partitions}


async def consume(folder: LikeFolder, consumer: Consumer, batch_size: int = 7, check: bool = True) -> None:
    """Poll, fold, commit until caught up and no rebuild runs (as FoldingLoop does)."""
    for _ in range(10_000):
        batch = consumer.poll(batch_size)
        if batch:
            await folder.fold(batch, consumer)
            consumer.commit(batch)
        elif check:
            await folder.check(consumer)
        if (
            not batch
            and not folder.rebuilding
            and all(consumer.position[p] == len(consumer.topic.logs[p]) for p in consumer.partitions)
        ):
            return
    raise AssertionError("the consumer never caught up")


def expected_tallies(events: Sequence[LikeEvent]) -> dict[int, dict[int, int]]:
    """The specification: per hour, the users whose newest event on a tweet is a
    like made in that hour of the window."""
    newest: dict[tuple[int, int], LikeEvent] = {}
    for e in events:
        if (e.tweet_id, e.user_id) not in newest or e.version > newest[(e.tweet_id, e.user_id)].version:
            newest[(e.tweet_id, e.user_id)] = e
    tallies: dict[int, dict[int, int]] = {}
    for e in newest.values():
        hour = hour_of(id_time_ms(e.version))
        if e.liked and FIRST_HOUR <= hour <= NOW_HOUR + 1:
            tallies.setdefault(hour, {}).setdefault(e.tweet_id, 0)
            tallies[hour][e.tweet_id] += 1
    return tallies


def folder_for(store: TrendingStore) -> LikeFolder:
    return LikeFolder(store, WINDOW, clock_ms=lambda: NOW_MS)


async def fold_directly(store: TrendingStore, events: Sequence[LikeEvent]) -> None:
    """One fold call with these events (those of the window, as the folder sends), ignoring the marker."""
    hours = [hour_of(id_time_ms(e.version)) for e in events]
    likes = [
        Like(0, e.tweet_id, e.user_id, e.version, e.liked, hour)
        for e, hour in zip(events, hours, strict=True)
        if FIRST_HOUR <= hour <= NOW_HOUR + 1
    ]
    lost = await store.fold([PartitionFold(TOPIC, 0, 0, 1, "start")], likes, FIRST_HOUR)
    assert lost == set()


# ---- folding: once, in any order ------------------------------------------------------------


async def test_a_redelivered_batch_counts_each_like_once(store: TrendingStore) -> None:
    topic = Topic(1)
    topic.produce([event(1, u, True, 0.1, u) for u in (10, 11, 12)] + [event(2, 10, True, 3.2)])
    consumer = Consumer(topic, [0])
    folder = folder_for(store)
    await consume(folder, consumer)
    once = await store.tallies(FIRST_HOUR)
    assert once == {NOW_HOUR: {1: 3}, NOW_HOUR - 3: {2: 1}}

    # The same batch again (a crash before the commit), then part of it inside a later batch.
    await folder.fold(topic.logs[0], consumer)
    await folder.fold(topic.logs[0][2:], consumer)
    assert await store.tallies(FIRST_HOUR) == once
    assert not folder.rebuilding  # a redelivery is not mistaken for a loss


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
async def test_like_then_unlike_nets_zero_and_a_replayed_like_adds_nothing_in_any_order(
    store: TrendingStore, order: tuple[int, ...]
) -> None:
    history = [
        event(1, 10, True, 5.5),  # liked five hours ago,
        event(1, 10, False, 2.5),  # unliked,
        event(1, 11, True, 2.2),  # another user likes it and
        event(1, 11, False, 0.2),  # takes it back at once
    ]
    for n in order:  # one delivery per event, in this order
        await fold_directly(store, [history[n]])
    assert await store.tallies(FIRST_HOUR) == {}

    await fold_directly(store, [event(1, 10, True, 0.5)])  # liked again: counts in its hour
    assert await store.tallies(FIRST_HOUR) == {NOW_HOUR: {1: 1}}
    for replay in (history[0], history[2], event(1, 10, True, 0.5)):
        await fold_directly(store, [replay])
    assert await store.tallies(FIRST_HOUR) == {NOW_HOUR: {1: 1}}


async def test_a_fold_of_many_shuffled_batches_matches_the_specification(store: TrendingStore) -> None:
    rng = random.Random(7)
    events = [
        event(rng.randrange(1, 6), rng.randrange(100, 108), rng.random() < 0.7, rng.uniform(0, 60), seq)
        for seq in range(400)
    ]
    shuffled = events + rng.sample(events, 150)  # with re-deliveries
    rng.shuffle(shuffled)
    for start in range(0, len(shuffled), 37):
        await fold_directly(store, shuffled[start : start + 37])
    want = expected_tallies(events)
    assert want and len(want) > 10  # likes spread over many hours, some older than the window
    assert await store.tallies(FIRST_HOUR) == want


async def test_likes_older_than_the_window_are_not_counted(store: TrendingStore) -> None:
    topic = Topic(1)
    topic.produce([event(1, 10, True, WINDOW - 0.4), event(1, 11, True, WINDOW - 0.8)])
    await consume(folder_for(store), Consumer(topic, [0]))
    assert await store.tallies(FIRST_HOUR) == {FIRST_HOUR: {1: 1}}


# ---- likers: kept per bucket of hours, so bounded by the window ------------------------------


async def likers_of(redis: aioredis.Redis, store: TrendingStore, tweet_id: int) -> dict[str, dict[bytes, bytes]]:
    """Every likers hash the tweet has: key -> user -> entry."""
    pattern = store.keys.likers(tweet_id, 0).removesuffix(":0").replace("{", "[{]") + ":*"
    keys = [k.decode() async for k in redis.scan_iter(match=pattern)]
    found: dict[str, dict[bytes, bytes]] = {}
    for key in keys:
        if entries := await redis.hgetall(key):
            found[key] = cast(dict[bytes, bytes], entries)
    return found


async def test_a_liker_moves_to_its_newest_events_bucket_which_expires_with_its_hours(
    redis: aioredis.Redis, store: TrendingStore
) -> None:
    """A bucket's hash is not kept alive by later likes of the tweet: it expires with the
    tally of its last hour. One hash per tweet, renewed at every like, kept every liker of
    a tweet liked without pause (and filled the state Redis, which never evicts)."""
    earlier = hour_of(NOW_MS - 30 * HOUR_MS)
    old_bucket, now_bucket = earlier // LIKERS_BUCKET_HOURS, NOW_HOUR // LIKERS_BUCKET_HOURS
    old_key, now_key = store.keys.likers(1, old_bucket), store.keys.likers(1, now_bucket)
    ends_at = ((old_bucket + 1) * LIKERS_BUCKET_HOURS + WINDOW) * 3600

    await fold_directly(store, [event(1, 10, True, 30)])
    assert list(await likers_of(redis, store, 1)) == [old_key]
    assert await redis.expiretime(old_key) == ends_at

    await fold_directly(store, [event(1, 11, True, 0.5)])  # another liker, now
    assert await redis.expiretime(old_key) == ends_at
    assert await redis.expiretime(now_key) == ((now_bucket + 1) * LIKERS_BUCKET_HOURS + WINDOW) * 3600
    assert await store.tallies(FIRST_HOUR) == {earlier: {1: 1}, NOW_HOUR: {1: 1}}

    await fold_directly(store, [event(1, 10, False, 0.2)])  # the first liker takes it back
    assert await store.tallies(FIRST_HOUR) == {NOW_HOUR: {1: 1}}
    held = await likers_of(redis, store, 1)
    assert list(held) == [now_key] and sorted(held[now_key]) == [b"10", b"11"]
    assert held[now_key][b"10"].startswith(b"0:")
    await fold_directly(store, [event(1, 10, True, 30)])  # the first like delivered again
    assert await store.tallies(FIRST_HOUR) == {NOW_HOUR: {1: 1}}


async def test_an_entry_a_worker_ahead_put_in_the_next_bucket_outranks_a_replay(store: TrendingStore) -> None:
    """A rank worker whose clock is ahead folds a newer event into a bucket past this
    worker's window: this worker still reads it, so a replay of an older like adds nothing."""
    ahead_hour = ((NOW_HOUR + 1) // LIKERS_BUCKET_HOURS + 1) * LIKERS_BUCKET_HOURS
    unliked = LikeEvent(1, 10, False, version(ahead_hour * HOUR_MS + 60_000, 0))
    await store.fold(
        [PartitionFold(TOPIC, 0, 0, 1, "start")],
        [Like(0, 1, 10, unliked.version, False, ahead_hour)],
        ahead_hour - WINDOW,
    )
    await fold_directly(store, [event(1, 10, True, 0.5)])  # an older like, delivered again
    assert await store.tallies(FIRST_HOUR) == {}


# ---- rebuilding from the topic ---------------------------------------------------------------


def busy_topic(partitions: int, seed: int, count: int = 300) -> Topic:
    rng = random.Random(seed)
    topic = Topic(partitions)
    history = sorted(
        (
            event(rng.randrange(1, 30), rng.randrange(100, 120), rng.random() < 0.75, rng.uniform(0, WINDOW + 10), s)
            for s in range(count)
        ),
        key=lambda e: e.version,
    )
    topic.produce(history)
    return topic


async def test_rebuild_after_loss_equals_the_tally_before(redis: aioredis.Redis, store: TrendingStore) -> None:
    topic = busy_topic(3, seed=1)
    # Two rank workers in one group, no coordination between them.
    first, second = Consumer(topic, [0, 1]), Consumer(topic, [2])
    folders = folder_for(store), folder_for(store)
    for folder, consumer in zip(folders, (first, second), strict=True):
        await consume(folder, consumer)
    before = await store.tallies(FIRST_HOUR)
    assert before == expected_tallies(topic.events)

    await lose_everything(redis, store)
    assert await store.tallies(FIRST_HOUR) == {}
    rewinds = REWINDS._value.get()
    seeks_before = len(first.seeks), len(second.seeks)
    # Likes keep coming on partition 0; partitions 1 and 2 stay quiet.
    topic.produce([event(3, 200, True, 0.1), event(3, 201, True, 0.1)])
    topic.produce([event(30, 200, True, 0.1)])  # partition 0 as well (30 % 3)
    for folder, consumer in zip(folders, (first, second), strict=True):
        await consume(folder, consumer)

    after = await store.tallies(FIRST_HOUR)
    assert after == expected_tallies(topic.events)
    assert after[NOW_HOUR][3] == before.get(NOW_HOUR, {}).get(3, 0) + 2
    assert REWINDS._value.get() - rewinds == 3  # each partition by its owner
    window_start = FIRST_HOUR * HOUR_MS - REPLAY_SLACK_MS
    for consumer, earlier in zip((first, second), seeks_before, strict=True):
        for p, offset in consumer.seeks[earlier:]:
            # Rewound to the window's first like, not to the start of the topic.
            assert offset == await consumer.offset_at(TOPIC, p, window_start) > 0
    for shard in range(store.keys.shards):
        markers = [await redis.get(store.keys.folded(shard, TOPIC, p)) for p in range(3)]
        assert markers == [str(len(log)).encode() for log in topic.logs]


async def test_a_restored_older_snapshot_is_found_and_rebuilt(redis: aioredis.Redis, store: TrendingStore) -> None:
    topic = busy_topic(1, seed=2, count=120)
    consumer = Consumer(topic, [0])
    folder = folder_for(store)
    await consume(folder, consumer)
    keys = [key async for key in redis.scan_iter(match=store.keys.pattern)]
    snapshot = {key: await redis.dump(key) for key in keys}

    topic.produce([event(7, 300 + n, True, 0.2, n) for n in range(5)])
    await consume(folder, consumer)
    # Redis comes back with the older snapshot: its marker is behind the group's commit.
    await lose_everything(redis, store)
    for key, dumped in snapshot.items():
        assert dumped is not None
        await redis.restore(key, 0, dumped, replace=True)
    assert (await store.tallies(FIRST_HOUR)).get(NOW_HOUR, {}).get(7, 0) < 5

    topic.produce([event(8, 400, True, 0.1)])
    await consume(folder, consumer)
    assert await store.tallies(FIRST_HOUR) == expected_tallies(topic.events)


@pytest.mark.parametrize("committed_batches", [0, 3])
async def test_a_worker_dying_mid_rebuild_leaves_nothing_missing(
    redis: aioredis.Redis, store: TrendingStore, committed_batches: int
) -> None:
    topic = busy_topic(1, seed=3, count=200)
    dying = Consumer(topic, [0])
    dying_folder = folder_for(store)
    await consume(dying_folder, dying)
    await lose_everything(redis, store)
    topic.produce([event(9, 500, True, 0.1)])

    batch = dying.poll(5)
    await dying_folder.fold(batch, dying)  # finds the loss and seeks back
    dying.commit(batch)
    assert dying_folder.rebuilding == {(TOPIC, 0)}
    for _ in range(committed_batches):
        batch = dying.poll(5)
        await dying_folder.fold(batch, dying)
        dying.commit(batch)
    await dying_folder.fold(dying.poll(5), dying)  # folded, then the worker dies before committing
    assert await store.tallies(FIRST_HOUR) != expected_tallies(topic.events)

    heir = Consumer(topic, [0], committed=dict(dying.committed))
    await consume(folder_for(store), heir)
    assert await store.tallies(FIRST_HOUR) == expected_tallies(topic.events)
    # Its commit still pointed past the rebuild: the next owner must have rebuilt again.
    assert bool(heir.seeks) == (committed_batches == 0)

    # The dead worker's leftover batch, folded late by a zombie, changes nothing.
    await dying_folder.fold(dying.poll(5), dying)
    assert await store.tallies(FIRST_HOUR) == expected_tallies(topic.events)


async def test_a_revoked_partition_is_forgotten_and_checked_afresh(redis: aioredis.Redis, store: TrendingStore) -> None:
    topic = busy_topic(1, seed=4, count=60)
    consumer = Consumer(topic, [0])
    folder = folder_for(store)
    await consume(folder, consumer)
    await lose_everything(redis, store)
    await folder.check(consumer)
    assert folder.rebuilding == {(TOPIC, 0)}
    folder.forget([(TOPIC, 0)])  # the group moved it elsewhere
    assert folder.rebuilding == frozenset()
    await consume(folder, consumer)  # given back later: checked, rebuilt
    assert await store.tallies(FIRST_HOUR) == expected_tallies(topic.events)


async def test_a_quiet_partition_with_nothing_in_the_window_is_marked_without_a_rewind(store: TrendingStore) -> None:
    topic = Topic(1)
    topic.produce([event(1, 10, True, WINDOW + 5)])  # only likes older than the window
    consumer = Consumer(topic, [0], committed={0: 1})
    folder = folder_for(store)
    await folder.check(consumer)
    assert consumer.seeks == [] and folder.rebuilding == frozenset()
    topic.produce([event(1, 11, True, 0.1)])
    await consume(folder, consumer)
    assert consumer.seeks == []  # the marker set by the check was trusted
    assert await store.tallies(FIRST_HOUR) == {NOW_HOUR: {1: 1}}


# ---- shards of tweets ------------------------------------------------------------------------


def slot_of_shard(store: TrendingStore, shard: int) -> int:
    return key_slot(store.keys.shard_slots[shard].encode())


async def test_a_tweets_keys_are_all_in_its_shards_slot_and_the_shards_spread(
    redis: aioredis.Redis, store: TrendingStore
) -> None:
    """The fold is one script per shard, so every key it touches must be in the shard's
    slot; one slot for all of trending put all of it on one Redis primary."""
    topic = busy_topic(2, seed=5)
    await consume(folder_for(store), Consumer(topic, [0, 1]))
    assert await store.tallies(FIRST_HOUR) == expected_tallies(topic.events)
    used = set()
    for shard in range(store.keys.shards):
        for hour in range(FIRST_HOUR, NOW_HOUR + 2):
            for member in await redis.zrange(store.keys.likes(shard, hour), 0, -1):
                assert isinstance(member, bytes) and store.keys.shard_of(int(member)) == shard
                used.add(shard)
    assert len(used) >= store.keys.shards // 2
    assert len({slot_of_shard(store, n) for n in range(store.keys.shards)}) == store.keys.shards
    async for key in redis.scan_iter(match=store.keys.pattern):
        name = key.decode()
        if ":likers:" in name:
            tweet_id = int(name.split(":likers:")[1].split(":")[0])
            assert key_slot(key) == slot_of_shard(store, store.keys.shard_of(tweet_id))


@pytest.mark.parametrize("shards", [1, 2, 3, 5, 8, 12, 16, 24, 64])
def test_the_shards_spread_evenly_over_primaries_that_split_the_slots_evenly(shards: int) -> None:
    """Each shard's tag hashes into its own equal range of slots: P primaries splitting the
    slots evenly (as `redis-cli --cluster create` does) hold shards/P each when P divides
    the count. Plain tags differing only at the end hashed into a few narrow bands (12 of
    them put none on two of six primaries)."""
    keys = TrendingKeys("rk", shards)
    slots = [key_slot(slot.encode()) for slot in keys.shard_slots]
    assert slots == sorted(slots)
    for primaries in range(1, shards + 1):
        if shards % primaries == 0:
            ranges = [(p * 16384 // primaries, (p + 1) * 16384 // primaries) for p in range(primaries)]
            held = [sum(low <= slot < high for slot in slots) for low, high in ranges]
            assert held == [shards // primaries] * primaries
    assert keys.shard_slots[0] == TrendingKeys("rk", shards).shard_slots[0]  # the same in every process


async def test_one_shard_lost_alone_is_found_and_rebuilt(redis: aioredis.Redis, store: TrendingStore) -> None:
    """A failover that dropped one primary's writes loses the shards on it only: their
    markers are gone, so each partition is refolded (the other shards take the replay
    as the replay it is)."""
    topic = busy_topic(2, seed=6)
    consumer = Consumer(topic, [0, 1])
    folder = folder_for(store)
    await consume(folder, consumer)
    want = expected_tallies(topic.events)
    lost = store.keys.shard_of(next(iter(want[max(want)])))
    pattern = store.keys.shard_slots[lost].replace("{", "[{]") + ":*"
    await redis.delete(*[key async for key in redis.scan_iter(match=pattern)])
    assert await store.tallies(FIRST_HOUR) != want
    rewinds = REWINDS._value.get()
    await consume(folder, consumer)  # quiet partitions: the check finds the loss
    assert REWINDS._value.get() - rewinds == 2
    assert await store.tallies(FIRST_HOUR) == want


async def test_the_top_is_merged_from_every_shards_top(store: TrendingStore) -> None:
    """The four most liked tweets are the top four, wherever they are: two of them in one
    shard (its own top must not be cut to one), the others in other shards, and fewer
    likes on tweets spread over every shard."""
    shard_of = store.keys.shard_of
    first = 1
    second = next(t for t in range(2, 1000) if shard_of(t) == shard_of(first))
    others = [t for t in range(2, 1000) if shard_of(t) != shard_of(first)][:2]
    likes = {first: 20, others[0]: 19, others[1]: 18, second: 17}
    likes |= {t: 1 + t % 10 for t in range(1000, 1000 + 4 * store.keys.shards)}
    await fold_directly(store, [event(t, u, True, 0.2, u) for t, n in likes.items() for u in range(n)])
    top = await store.decayed_top(4, NOW_MS)
    assert top == [(first, 20.0), (others[0], 19.0), (others[1], 18.0), (second, 17.0)]


# ---- durable before commit: WAIT for a replica ----------------------------------------------


async def test_standalone_redis_without_replicas_folds_without_waiting(store: TrendingStore) -> None:
    assert await store.replicas() == 0
    started = time.monotonic()
    await fold_directly(store, [event(1, 10, True, 0.1)])
    assert time.monotonic() - started < 0.5
    assert await store.tallies(FIRST_HOUR) == {NOW_HOUR: {1: 1}}


async def test_a_fold_waits_for_the_replica_and_fails_when_none_acknowledges(ports: set[int]) -> None:
    leader = start_redis(ports, "--repl-diskless-sync-delay", "0")
    follower = start_redis(ports, "--replicaof", "127.0.0.1", str(leader.port))
    client = aioredis.Redis(host="127.0.0.1", port=leader.port)
    try:
        await replica_streaming(client)
        store = TrendingStore(client, WINDOW, 6.0, replica_ack_ms=300)
        assert await store.replicas() == 1
        await fold_directly(store, [event(1, 10, True, 0.1)])
        replica = aioredis.Redis(host="127.0.0.1", port=follower.port)
        assert (
            await replica.zscore(store.keys.likes(store.keys.shard_of(1), NOW_HOUR), "1") == 1.0
        )  # on the replica once fold returned
        await replica.aclose()

        os.kill(follower.process.pid, signal.SIGSTOP)  # connected, but acknowledges nothing
        with pytest.raises(NotReplicated):
            await fold_directly(store, [event(1, 11, True, 0.1)])
    finally:
        await client.aclose()
        follower.stop()
        leader.stop()


# ---- recomputing the list --------------------------------------------------------------------


async def test_recompute_ranks_decayed_likes_lifted_by_followers_and_drops_deleted_tweets(
    store: TrendingStore,
) -> None:
    await fold_directly(
        store,
        [event(1, u, True, 0.2, u) for u in range(3)]  # 3 likes now
        + [event(2, u, True, 12.2, u) for u in range(3)]  # 3 likes two half-lives ago
        + [event(3, 7, True, 0.2)]  # 1 like now, on a famous author's tweet
        + [event(4, u, True, 0.2, u) for u in range(5)],  # liked most, but deleted since
    )
    authors = {1: 10, 2: 11, 3: 12}

    async def batch_tweets(ids: Sequence[int]) -> list[tweet_pb2.Tweet]:
        return [tweet_pb2.Tweet(tweet_id=i, author_id=authors[i]) for i in ids if i in authors]

    async def users(ids: Sequence[int]) -> list[graph_pb2.User]:
        return [graph_pb2.User(user_id=i, follower_count=1_000_000 if i == 12 else 0) for i in ids]

    assert len({store.keys.shard_of(t) for t in (1, 2, 3, 4)}) == 4  # merged across shards
    assert await Ranker(store, batch_tweets, users, 0.25).recompute() == 3
    assert [t.tweet_id for t in await store.load()] == [1, 3, 2]


async def test_only_a_finished_recompute_is_counted(store: TrendingStore) -> None:
    # ChirpTrendingStale fires when no recompute was counted for 15 minutes.
    def counted() -> float:
        return REGISTRY.get_sample_value("chirp_rank_recompute_seconds_count") or 0.0

    async def failing(ids: Sequence[int]) -> list[tweet_pb2.Tweet]:
        raise RuntimeError("tweet_svc is unavailable")

    async def no_users(ids: Sequence[int]) -> list[graph_pb2.User]:
        return []

    await fold_directly(store, [event(1, 1, True, 0.2)])
    before = counted()
    with pytest.raises(RuntimeError):
        await Ranker(store, failing, no_users, 0.25).recompute()
    assert counted() == before

    async def no_tweets(ids: Sequence[int]) -> list[tweet_pb2.Tweet]:
        return []

    await Ranker(store, no_tweets, no_users, 0.25).recompute()
    assert counted() == before + 1


async def test_a_recompute_that_started_earlier_never_overwrites_a_later_ones_list(store: TrendingStore) -> None:
    slow, fast = await store.begin_recompute(), await store.begin_recompute()
    after_delete = [tweet_pb2.Tweet(tweet_id=2)]
    assert await store.save(after_delete, fast)
    # The slow one read the tallies and tweets before a delete and saves last.
    assert not await store.save([tweet_pb2.Tweet(tweet_id=1), tweet_pb2.Tweet(tweet_id=2)], slow)
    assert [t.tweet_id for t in await store.load()] == [2]
    assert await store.save([], await store.begin_recompute())  # the next one saves again
    assert await store.load() == []


async def test_a_list_saved_before_redis_lost_the_epoch_counter_does_not_freeze_trending(
    store: TrendingStore, redis: aioredis.Redis
) -> None:
    # A recompute that began before a flush (or a failover to a replica behind) saves
    # after it: its epoch is above the counter that starts again from nothing.
    before = await store.begin_recompute()
    await redis.delete(store.keys.epoch, store.keys.trending, store.keys.trending_epoch)
    for _ in range(3):
        await store.begin_recompute()
    assert await store.save([tweet_pb2.Tweet(tweet_id=1)], before + 100)
    # The recomputes after it save again at once, not once the counter passes its epoch.
    assert await store.save([tweet_pb2.Tweet(tweet_id=2)], await store.begin_recompute())
    assert [t.tweet_id for t in await store.load()] == [2]
    slow, fast = await store.begin_recompute(), await store.begin_recompute()
    assert await store.save([], fast)
    assert not await store.save([tweet_pb2.Tweet(tweet_id=3)], slow)  # and the order still holds


# ---- reads: a process-local copy -------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def tweets(*ids: int) -> list[tweet_pb2.Tweet]:
    return [tweet_pb2.Tweet(tweet_id=i) for i in ids]


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_reads_share_one_load_per_refresh_and_pick_up_a_new_list() -> None:
    stored = tweets(1, 2)
    loads = 0

    async def load() -> list[tweet_pb2.Tweet]:
        nonlocal loads
        loads += 1
        return list(stored)

    clock = Clock()
    copy = TrendingCopy(load, 1.0, clock)
    replies = await asyncio.gather(*(copy.tweets() for _ in range(200)))
    assert loads == 1 and all(r == tweets(1, 2) for r in replies)

    stored = tweets(3)
    clock.now += 0.5
    assert await copy.tweets() == tweets(1, 2) and loads == 1  # fresh enough
    clock.now += 0.6
    assert await copy.tweets() == tweets(1, 2)  # served at once; refreshed behind it
    await settle()
    assert await copy.tweets() == tweets(3) and loads == 2


async def test_an_idle_instance_answers_with_a_fresh_list_not_its_old_copy() -> None:
    stored = tweets(1, 2)

    async def load() -> list[tweet_pb2.Tweet]:
        return list(stored)

    clock = Clock()
    copy = TrendingCopy(load, 1.0, clock)
    assert await copy.tweets() == tweets(1, 2)
    stored = tweets(2)  # tweet 1 deleted meanwhile
    clock.now += 60  # nobody asked this instance for a minute
    assert await copy.tweets() == tweets(2)


async def test_a_copy_leaves_out_tweets_deleted_since_the_list_was_computed_and_takes_current_counts() -> None:
    """The list is computed every CHIRP_RANK_INTERVAL_SECONDS (60 by default); a tweet deleted
    meanwhile is gone from the next copy (its text no longer served), and counts are current."""
    redis = FakeRedis()
    stored = [tweet_pb2.Tweet(tweet_id=i, like_count=5) for i in (1, 2, 3)]

    async def load() -> list[tweet_pb2.Tweet]:  # TrendingStore.load: the list's key, in the same Redis
        if redis.down:
            raise redis.down
        return [tweet_pb2.Tweet(tweet_id=t.tweet_id, like_count=t.like_count) for t in stored]

    clock = Clock()
    copy = TrendingCopy(with_current_state(load, TweetCacheReader(client(redis)).tweets), 1.0, clock)
    assert [(t.tweet_id, t.like_count) for t in await copy.tweets()] == [(1, 5), (2, 5), (3, 5)]

    redis.data[tweet_key("body", 2)] = TWEET_DELETED
    redis.data[tweet_key("like_count", 3)] = {b"n": b"9", b"t": b"0"}
    clock.now += 5
    assert [(t.tweet_id, t.like_count) for t in await copy.tweets()] == [(1, 5), (3, 9)]
    assert stored[2].like_count == 5

    redis.down = ConnectionError("redis is down")
    clock.now += 5
    assert [t.tweet_id for t in await copy.tweets()] == [1, 3]  # the last copy, while the list cannot be read


async def test_a_redis_outage_keeps_serving_the_last_copy() -> None:
    down = False

    async def load() -> list[tweet_pb2.Tweet]:
        if down:
            raise ConnectionError("redis is down")
        return tweets(5, 6)

    clock = Clock()
    copy = TrendingCopy(load, 1.0, clock)
    assert await copy.tweets() == tweets(5, 6)
    down = True
    for _ in range(5):
        clock.now += 2
        assert await copy.tweets() == tweets(5, 6)
        await settle()
    assert copy.has_copy()


async def test_without_a_copy_an_outage_fails_fast_and_recovers() -> None:
    calls = 0
    down = True

    async def load() -> list[tweet_pb2.Tweet]:
        nonlocal calls
        calls += 1
        if down:
            raise ConnectionError("redis is down")
        return tweets(7)

    clock = Clock()
    copy = TrendingCopy(load, 1.0, clock)
    with pytest.raises(ConnectionError):
        await copy.tweets()
    with pytest.raises(Unavailable):  # within the refresh period: no new attempt
        await copy.tweets()
    assert calls == 1 and not copy.has_copy()
    down = False
    clock.now += 1.5
    assert await copy.tweets() == tweets(7)
