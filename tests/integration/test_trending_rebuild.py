"""The rank worker's fold and rebuild against the stack's real Kafka and Redis
(a Redis Cluster on the cluster topology): its own topic, consumer group and
key namespace, so no shared key or offset is touched.

Likes are folded once even when a second group replays the whole topic, and
after the tallies are deleted (Redis lost them) the consumer finds its
partitions' markers gone, seeks back with offsets_for_times and refolds the
same tallies."""

from __future__ import annotations

import random
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence

import pytest
from confluent_kafka import Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from redis.crc import key_slot

from common.cache import RedisClient
from common.events import LikeEvent
from common.ids import id_time_ms, min_id_at_ms
from infra import topology
from rank_svc.events import FoldingLoop, LikesConsumer
from rank_svc.store import HOUR_MS, Like, PartitionFold, TrendingKeys, TrendingStore, hour_of
from rank_svc.tallies import REWINDS, LikeFolder, Partition
from tests.conftest import KAFKA

WINDOW = 48
PARTITIONS = 2
NOW_MS = time.time_ns() // 1_000_000
FIRST_HOUR = hour_of(NOW_MS) - WINDOW + 1


@pytest.fixture
async def store(state_redis: RedisClient) -> AsyncIterator[TrendingStore]:
    """In the state Redis, as the rank worker's (a namespace of the test's own)."""
    store = TrendingStore(state_redis, WINDOW, 6.0, TrendingKeys(f"rank-test-{secrets.token_hex(4)}"))
    yield store
    await delete_namespace(state_redis, store)


@pytest.fixture
def topic() -> Iterator[str]:
    name = f"chirp.test.rank-rebuild.{secrets.token_hex(4)}"
    admin = AdminClient({"bootstrap.servers": KAFKA})
    new = NewTopic(name, num_partitions=PARTITIONS, replication_factor=topology.kafka_replication())
    admin.create_topics([new], operation_timeout=30)[name].result()
    yield name
    admin.delete_topics([name], operation_timeout=30)[name].result()


async def delete_namespace(redis: RedisClient, store: TrendingStore) -> int:
    keys = [key async for key in redis.scan_iter(match=store.keys.pattern, count=1000)]
    for key in keys:
        await redis.delete(key)
    return len(keys)


def likes(count: int) -> list[LikeEvent]:
    """Likes and unlikes over the window and a little before it, oldest first."""
    rng = random.Random(11)
    events = [
        LikeEvent(
            rng.randrange(1, 25),
            rng.randrange(100, 115),
            rng.random() < 0.75,
            min_id_at_ms(NOW_MS - rng.randrange(0, (WINDOW + 6) * HOUR_MS)) + seq,
        )
        for seq in range(count)
    ]
    return sorted(events, key=lambda e: e.version)


def produce(topic: str, events: Sequence[LikeEvent]) -> dict[int, int]:
    """Keyed by tweet, stamped with the like's time; returns each partition's end offset."""
    producer = Producer({"bootstrap.servers": KAFKA, "enable.idempotence": True, "acks": "all"})
    ends: dict[int, int] = {}

    def delivered(err: object, msg: Message) -> None:
        assert err is None, err
        partition, offset = int(msg.partition() or 0), int(msg.offset() or 0)
        ends[partition] = max(ends.get(partition, 0), offset + 1)

    for e in events:
        producer.produce(
            topic,
            key=str(e.tweet_id).encode(),
            value=e.encode(),
            timestamp=id_time_ms(e.version) + 3,
            on_delivery=delivered,
        )
    assert producer.flush(30) == 0
    return ends


def expected_tallies(events: Sequence[LikeEvent]) -> dict[int, dict[int, int]]:
    """Per hour of the window, the users whose newest event on a tweet is a like made in it."""
    newest: dict[tuple[int, int], LikeEvent] = {}
    for e in events:
        if (e.tweet_id, e.user_id) not in newest or e.version > newest[(e.tweet_id, e.user_id)].version:
            newest[(e.tweet_id, e.user_id)] = e
    tallies: dict[int, dict[int, int]] = {}
    for e in newest.values():
        hour = hour_of(id_time_ms(e.version))
        if e.liked and hour >= FIRST_HOUR:
            tallies.setdefault(hour, {}).setdefault(e.tweet_id, 0)
            tallies[hour][e.tweet_id] += 1
    return tallies


def folding_loop(topic: str, group: str, folder: LikeFolder) -> FoldingLoop:
    def consumer(on_revoke: Callable[[list[Partition]], None]) -> LikesConsumer:
        return LikesConsumer(KAFKA, group, [topic], f"{group}-1", on_revoke)

    return FoldingLoop(group, consumer, folder, 100, 0.2, check_seconds=0.5)


async def fold_until(
    loop: FoldingLoop, redis: RedisClient, store: TrendingStore, topic: str, ends: dict[int, int]
) -> None:
    """Run the loop until every partition's marker says it is folded to its end."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        await loop.run_once()
        markers = {
            (shard, p): await redis.get(store.keys.folded(shard, topic, p))
            for shard in range(store.keys.shards)
            for p in ends
        }
        if all(marker == str(ends[p]).encode() for (_, p), marker in markers.items()):
            return
    raise AssertionError(f"never folded to the ends {ends}: markers {markers}")


async def test_replay_counts_once_and_a_lost_tally_is_rebuilt_from_kafka(
    state_redis: RedisClient, store: TrendingStore, topic: str
) -> None:
    redis = state_redis
    events = likes(400)
    ends = produce(topic, events)
    assert sorted(ends) == list(range(PARTITIONS))
    want = expected_tallies(events)
    assert len(want) > 20  # spread over the window

    group = f"test-rank-{secrets.token_hex(4)}"
    folder = LikeFolder(store, WINDOW, clock_ms=lambda: NOW_MS)
    loop = folding_loop(topic, group, folder)
    try:
        await fold_until(loop, redis, store, topic, ends)
        assert await store.tallies(FIRST_HOUR) == want

        # Redis loses the tallies: no like arrives, the quiet-partition check finds it.
        rewinds = REWINDS._value.get()
        assert await delete_namespace(redis, store) > 20
        await fold_until(loop, redis, store, topic, ends)
        assert REWINDS._value.get() - rewinds == PARTITIONS
        assert await store.tallies(FIRST_HOUR) == want
        seeks_before_window = [
            p for p in range(PARTITIONS) if await loop.likes.offset_at(topic, p, FIRST_HOUR * HOUR_MS) > 0
        ]
        assert seeks_before_window  # some likes lie before the window: the rebuild started past them
    finally:
        loop.close()

    # Another group replays the whole topic into the same tallies: nothing counts twice.
    replay = folding_loop(topic, f"{group}-replay", LikeFolder(store, WINDOW, clock_ms=lambda: NOW_MS))
    try:
        deadline = time.monotonic() + 90
        consumed = 0
        while consumed < sum(ends.values()) and time.monotonic() < deadline:
            consumed += await replay.run_once()
        assert consumed == sum(ends.values())
    finally:
        replay.close()
    assert await store.tallies(FIRST_HOUR) == want


async def test_the_stack_redis_takes_the_fold_one_slot_per_shard(store: TrendingStore) -> None:
    """Each shard's keys share one slot, so its fold (a script over ~60 keys) and
    decayed union run on a Redis Cluster too; WAIT goes to each shard's primary."""
    shard = store.keys.shard_of(1)
    keys = [store.keys.likes(shard, FIRST_HOUR + h) for h in range(WINDOW + 1)]
    keys += [store.keys.folded(shard, "t", 0), store.keys.likers(1, 0), store.keys.decayed(shard)]
    assert len({key_slot(k.encode()) for k in keys}) == 1
    assert len({key_slot(slot.encode()) for slot in store.keys.shard_slots}) == store.keys.shards
    replicas = await store.replicas()
    assert replicas == (1 if len(topology.state_redis_nodes()) > 1 else 0)
    hour = hour_of(NOW_MS)
    lost = await store.fold(
        [PartitionFold("t", 0, 0, 1, "start")], [Like(0, 1, 10, min_id_at_ms(NOW_MS), True, hour)], FIRST_HOUR
    )
    assert lost == set()
    assert await store.decayed_top(10, NOW_MS) == [(1, 1.0)]
