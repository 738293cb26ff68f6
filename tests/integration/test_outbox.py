"""The outbox against the real Cassandra and Kafka, in a keyspace and a topic of
its own (the shared `chirp` keyspace and topics are left alone): the 008 tables
as migrated, events written in logged batches, leases taken with real
lightweight transactions and TTLs, and what the old tables hold published once.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cassandra.cluster import Cluster, NoHostAvailable, Session
from cassandra.query import BatchStatement, BatchType
from confluent_kafka import Consumer, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from common.cql import CqlSession
from common.ids import IdGenerator
from common.kafka import AsyncProducer
from common.outbox import LEGACY, LEGACY_DONE, SHARDS, Event, Outbox, RelaySettings
from common.outbox_store import OutboxStore, minute_of, shard_of
from infra import topology
from infra.migrate import statements
from tests.conftest import KAFKA

KEYSPACE = "chirp_outbox_test"
CQL_DIR = Path(__file__).resolve().parents[2] / "infra" / "cql"
T = TypeVar("T")
# Quick enough to watch: leases of 3 s renewed every second, the sweep every pass.
FAST = RelaySettings(
    interval_seconds=0.2,
    min_age_ms=1_000,
    settle_ms=2_000,
    sweep_seconds=0.0,
    lease_ttl_seconds=3,
    lease_renew_seconds=1.0,
    lease_margin_ms=1_000,
    legacy_quiet_ms=0,
    legacy_interval_seconds=0.0,
)


def retrying(connect: Callable[[], T], what: str, seconds: float = 30.0) -> T:
    """The shared stack may be restarting: retry briefly, then fail (never skip)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return connect()
        except (NoHostAvailable, KafkaException, OSError):
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} is not reachable") from None
            time.sleep(1.0)


@pytest.fixture(scope="module")
def schema() -> Iterator[Session]:
    """Keyspace `chirp_outbox_test` with the 008 tables and the old outbox tables; dropped afterwards."""
    cluster = Cluster([topology.HOST], port=topology.CQL_PORT, protocol_version=4)
    session = retrying(cluster.connect, "Cassandra")
    session.default_timeout = 60
    session.execute(f"DROP KEYSPACE IF EXISTS {KEYSPACE}")
    session.execute(
        f"CREATE KEYSPACE {KEYSPACE} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
    )
    session.set_keyspace(KEYSPACE)
    old_outbox = [s for s in statements((CQL_DIR / "002_follows.cql").read_text()) if "EXISTS outbox (" in s]
    for statement in [
        *old_outbox,
        *statements((CQL_DIR / "006_outbox_by_minute.cql").read_text()),
        *statements((CQL_DIR / "008_outbox_v3.cql").read_text()),
    ]:
        session.execute(statement)
    try:
        yield session
    finally:
        session.execute(f"DROP KEYSPACE IF EXISTS {KEYSPACE}")
        cluster.shutdown()


@pytest.fixture
def clean(schema: Session) -> Session:
    """Each test starts with empty outbox tables (TRUNCATE inside our own keyspace only)."""
    for table in ["outbox_v3", "outbox_v3_heads", "outbox_v3_shards", "outbox_v3_relays", "outbox", "outbox_events"]:
        schema.execute(f"TRUNCATE {KEYSPACE}.{table}")
    schema.execute(f"TRUNCATE {KEYSPACE}.outbox_minutes")
    return schema


@pytest.fixture(scope="module")
async def cql(schema: Session) -> AsyncIterator[CqlSession]:
    session = await CqlSession.connect([topology.HOST], topology.CQL_PORT, KEYSPACE, 10.0)
    yield session
    session.close()


@pytest.fixture(scope="module")
def topic() -> Iterator[str]:
    name = f"chirp.outbox-test.{secrets.token_hex(4)}"
    admin = AdminClient({"bootstrap.servers": KAFKA})
    brokers = len(retrying(lambda: admin.list_topics(timeout=5), "Kafka").brokers)
    replication = min(3, brokers)
    new = NewTopic(name, num_partitions=3, replication_factor=replication, config={"min.insync.replicas": "1"})
    admin.create_topics([new], operation_timeout=30)[name].result()
    try:
        yield name
    finally:
        admin.delete_topics([name], operation_timeout=30)[name].result()


@pytest.fixture
def producer() -> Iterator[AsyncProducer]:
    p = AsyncProducer(KAFKA, "tests-outbox", on_fatal=None)
    yield p
    p.close()


def consumed(topic: str, want: int, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Every record on `topic` from the start, once at least `want` have come (or the time is up)."""
    consumer = Consumer(
        {"bootstrap.servers": KAFKA, "group.id": f"test-{secrets.token_hex(4)}", "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topic])
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and len(found) < want:
            for msg in consumer.consume(500, 1.0):
                if msg.error() is None:
                    found.append(json.loads(msg.value() or b"{}"))
        # Anything more (a duplicate) arrives within a moment.
        for msg in consumer.consume(500, 2.0):
            if msg.error() is None:
                found.append(json.loads(msg.value() or b"{}"))
    finally:
        consumer.close()
    return found


async def write(cql: CqlSession, outbox: Outbox, events: list[Event]) -> None:
    for event in events:
        batch = BatchStatement(batch_type=BatchType.LOGGED)
        outbox.add_to(batch, event)
        await cql.execute(batch)


def make_events(topic: str, count: int, ago_ms: int = 0, run: str = "") -> list[Event]:
    made_at = int(time.time() * 1000) - ago_ms
    ids = IdGenerator(901, clock_ms=lambda: made_at)
    return [
        Event(event_id=i, topic=topic, key=i % 7, payload={"probe": i, "run": run})
        for i in (ids.next_id() for _ in range(count))
    ]


async def test_fast_path_and_relay_publish_every_event_once_without_deleting_a_row(
    clean: Session, cql: CqlSession, topic: str, producer: AsyncProducer
) -> None:
    run = secrets.token_hex(4)
    outbox = Outbox(cql, producer, settings=FAST, relay_id="relay-a")
    await outbox.prepare()
    fast = make_events(topic, 20, run=run)
    crashed = make_events(topic, 30, ago_ms=10_000, run=run)  # written, never sent: the process died
    await write(cql, outbox, fast + crashed)
    store = OutboxStore(cql)
    await store.prepare()
    now = int(time.time() * 1000)
    assert len(await store.unpublished(now - 60_000, now)) == len(fast + crashed)
    for event in fast:
        outbox.publish_soon(event)
    deadline = time.monotonic() + 15
    while len(await store.unpublished(now - 60_000, now)) > len(crashed) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)  # deliveries, then their marks
        await outbox.wait_marked()
    assert {e.event_id for e in await store.unpublished(now - 60_000, now)} == {e.event_id for e in crashed}

    published = 0
    for _ in range(5):
        published += await outbox.relay_once()
    assert published == len(crashed)
    assert await store.unpublished(now - 60_000, now) == []
    rows = clean.execute(f"SELECT event_id, published, TTL(topic) AS ttl FROM {KEYSPACE}.outbox_v3")
    by_id = {r.event_id: r for r in rows}
    assert set(by_id) == {e.event_id for e in fast + crashed}, "a row was deleted (or never written)"
    assert all(r.published for r in by_id.values())
    assert all(172_000 < r.ttl <= 172_800 for r in by_id.values()), "rows must expire by the table TTL"

    got = [e for e in consumed(topic, 50) if e.get("run") == run]
    assert sorted(e["probe"] for e in got) == sorted(e.event_id for e in fast + crashed)


async def test_heads_keep_the_highest_id_whatever_the_write_order(clean: Session, cql: CqlSession) -> None:
    store = OutboxStore(cql)
    await store.prepare()
    outbox = Outbox(store, None)
    made_at = int(time.time() * 1000)
    ids = IdGenerator(902, clock_ms=lambda: made_at)
    later_ids = IdGenerator(903, clock_ms=lambda: made_at + 5)

    def in_shard_11(gen: IdGenerator, count: int) -> list[int]:
        found: list[int] = []
        while len(found) < count:
            if shard_of(i := gen.next_id()) == 11:
                found.append(i)
        return found

    same_ms = in_shard_11(ids, 3)
    (later,) = in_shard_11(later_ids, 1)
    # Highest first, then lower ids of the same millisecond (equal write times:
    # the larger value must win), then a later millisecond, then a lower id again.
    for event_id in [same_ms[2], same_ms[0], same_ms[1]]:
        await write(cql, outbox, [Event(event_id, "t", 1, {})])
    assert await store.heads([11]) == {11: same_ms[2]}
    await write(cql, outbox, [Event(later, "t", 1, {})])
    await write(cql, outbox, [Event(same_ms[1], "t", 1, {})])
    assert await store.heads([11]) == {11: later}


async def test_two_relays_share_the_shards_and_one_takes_over_when_the_other_stops(
    clean: Session, cql: CqlSession, topic: str, producer: AsyncProducer
) -> None:
    a = Outbox(cql, producer, settings=FAST, relay_id="relay-a")
    b = Outbox(cql, producer, settings=FAST, relay_id="relay-b")
    await a.prepare()
    await b.prepare()
    clean.execute(f"INSERT INTO {KEYSPACE}.outbox_v3_shards (ring, shard, checkpoint) VALUES (0, -1, {LEGACY_DONE})")
    for n in range(4):  # a takes everything, then sees b and gives back half
        if n:
            await asyncio.sleep(1.1)
        await a.relay_once()
        await b.relay_once()
    held_a, held_b = set(a.relayed_shards()), set(b.relayed_shards())
    assert not held_a & held_b
    assert held_a | held_b == set(range(SHARDS))
    assert len(held_a) == len(held_b) == SHARDS // 2
    owners = {r.shard: r.owner for r in clean.execute(f"SELECT shard, owner FROM {KEYSPACE}.outbox_v3_shards")}
    assert {s for s, o in owners.items() if o == "relay-a"} == held_a

    # a stops (no release): its leases run out after their TTL, then b holds every shard.
    stopped = time.monotonic()
    while len(b.relayed_shards()) < SHARDS and time.monotonic() - stopped < 15:
        await b.relay_once()
        await asyncio.sleep(0.3)
    assert set(b.relayed_shards()) == set(range(SHARDS))
    assert FAST.lease_ttl_seconds - FAST.lease_renew_seconds - 1 <= time.monotonic() - stopped <= 10

    # b hands over on release: a gets every shard on its next lease cycle.
    await b.release_shards()
    assert b.relayed_shards() == []
    await asyncio.sleep(1.1)
    await a.relay_once()
    assert set(a.relayed_shards()) == set(range(SHARDS))


async def test_what_the_old_tables_hold_is_published_once_then_they_are_left_alone(
    clean: Session, cql: CqlSession, topic: str, producer: AsyncProducer
) -> None:
    run = secrets.token_hex(4)
    old = make_events(topic, 6, ago_ms=3_600_000, run=run)
    for n, e in enumerate(old):
        values = (e.event_id, e.topic, e.key_bytes(), e.value())
        if n < 3:  # pre-006
            clean.execute(
                f"INSERT INTO {KEYSPACE}.outbox (shard, event_id, topic, key, payload) VALUES ({n}, %s, %s, %s, %s)",
                values,
            )
        else:  # 006
            minute = minute_of(e.event_id)
            clean.execute(
                f"INSERT INTO {KEYSPACE}.outbox_events (shard, minute, event_id, topic, key, payload) "
                f"VALUES ({n}, {minute}, %s, %s, %s, %s)",
                values,
            )
            clean.execute(f"INSERT INTO {KEYSPACE}.outbox_minutes (shard, minute) VALUES ({n}, {minute})")
    outbox = Outbox(cql, producer, settings=FAST, relay_id="relay-a")
    await outbox.prepare()
    published = 0
    for _ in range(4):
        published += await outbox.relay_once()
        await asyncio.sleep(1.1)
    assert published == len(old)
    legacy = clean.execute(f"SELECT checkpoint FROM {KEYSPACE}.outbox_v3_shards WHERE ring = 0 AND shard = {LEGACY}")
    assert legacy.one().checkpoint == LEGACY_DONE
    assert LEGACY not in outbox.relayed_shards()
    assert not list(clean.execute(f"SELECT event_id FROM {KEYSPACE}.outbox"))
    assert not list(clean.execute(f"SELECT event_id FROM {KEYSPACE}.outbox_events"))

    got = [e for e in consumed(topic, len(old)) if e.get("run") == run]
    assert sorted(e["probe"] for e in got) == sorted(e.event_id for e in old)

    # Left alone from now on: a row put there now is not published by anyone.
    late = make_events(topic, 1, ago_ms=3_600_000, run=run)[0]
    clean.execute(
        f"INSERT INTO {KEYSPACE}.outbox (shard, event_id, topic, key, payload) VALUES (0, %s, %s, %s, %s)",
        (late.event_id, late.topic, late.key_bytes(), late.value()),
    )
    fresh = Outbox(cql, producer, settings=FAST, relay_id="relay-c")
    await fresh.prepare()
    await asyncio.sleep(FAST.lease_ttl_seconds + 0.5)  # relay-a's leases run out; relay-c takes them all
    assert await fresh.relay_once() == 0
    assert LEGACY not in fresh.relayed_shards() and len(fresh.relayed_shards()) == SHARDS
    assert list(clean.execute(f"SELECT event_id FROM {KEYSPACE}.outbox"))
