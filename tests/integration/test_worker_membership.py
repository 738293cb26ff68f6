"""A worker group keeps every partition owned when a member is killed and comes back
(common/kafka.py BatchConsumer, on the real Kafka): members in processes of their
own, one SIGKILLed and started again under the same name, as a crashed worker is.
And a member rewound after a failed batch reads it again from its last commit, and a
group whose committed offset the broker no longer keeps counts what it never read."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from prometheus_client import REGISTRY

from common.kafka import BatchConsumer
from common.worker import ConsumerLoop
from infra.groups import unassigned
from tests.conftest import KAFKA

ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 6
SESSION_TIMEOUT_S = 10.0  # BatchConsumer's session.timeout.ms
MEMBER = """
import asyncio, sys
from common.kafka import BatchConsumer

async def main() -> None:
    consumer = BatchConsumer(sys.argv[1], sys.argv[2], [sys.argv[3]], sys.argv[4])
    while True:
        for msg in await consumer.poll_batch(100, 0.2):
            await consumer.commit([msg])

asyncio.run(main())
"""


@pytest.fixture
def topic() -> Iterator[str]:
    admin = AdminClient({"bootstrap.servers": KAFKA})
    name = f"chirp-test-members-{uuid.uuid4().hex[:8]}"
    admin.create_topics([NewTopic(name, PARTITIONS, 1, config={"min.insync.replicas": "1"})])[name].result(timeout=30)
    yield name
    admin.delete_topics([name])[name].result(timeout=30)


def start_member(group: str, topic: str, name: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", MEMBER, KAFKA, group, topic, name], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )


def wait_owned(admin: AdminClient, group: str, topic: str, within: float) -> dict[str, str]:
    """Until every partition has a member; what was still wrong when `within` ran out."""
    deadline = time.monotonic() + within
    while (problems := unassigned(admin, {group: (topic,)})) and time.monotonic() < deadline:
        time.sleep(0.5)
    return problems


def test_every_partition_is_owned_again_after_a_member_is_killed_and_restarted(topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": KAFKA})
    group = f"chirp-test-members-{uuid.uuid4().hex[:8]}"
    members = {name: start_member(group, topic, name) for name in ("worker-a", "worker-b")}
    try:
        assert wait_owned(admin, group, topic, 60) == {}
        # A crash: no goodbye to the group. Down past the session timeout, as a worker
        # whose restart is slow is, then back under its old name.
        members["worker-b"].send_signal(signal.SIGKILL)
        members["worker-b"].wait()
        time.sleep(SESSION_TIMEOUT_S + 2)
        members["worker-b"] = start_member(group, topic, "worker-b")
        time.sleep(SESSION_TIMEOUT_S)  # the rejoin and any rebalances it starts
        assert wait_owned(admin, group, topic, 60) == {}
        # And a restart with a goodbye (SIGTERM ends the process; the client is not
        # closed, as in a worker killed during its shutdown), quicker than the timeout.
        members["worker-a"].send_signal(signal.SIGTERM)
        members["worker-a"].wait()
        members["worker-a"] = start_member(group, topic, "worker-a")
        time.sleep(SESSION_TIMEOUT_S)
        assert wait_owned(admin, group, topic, 60) == {}
    finally:
        for process in members.values():
            process.kill()
            process.wait()


async def test_a_rewound_member_reads_again_from_its_last_commit(topic: str) -> None:
    """A failed batch is read again by the same client (common/worker.py), not by a new
    one whose leaving and rejoining would rebalance the group."""
    producer = Producer({"bootstrap.servers": KAFKA})
    for n in range(5):
        producer.produce(topic, str(n).encode(), partition=0)
    assert producer.flush(10) == 0
    consumer = BatchConsumer(KAFKA, f"chirp-test-rewind-{uuid.uuid4().hex[:8]}", [topic], "rewinder")
    try:
        got: list[bytes] = []
        deadline = time.monotonic() + 60
        while len(got) < 5 and time.monotonic() < deadline:
            got += [m.value() or b"" for m in await consumer.poll_batch(10, 0.5)]
        assert got == [b"0", b"1", b"2", b"3", b"4"]
        await consumer.commit(_read(topic, [0, 1]))  # the batch of the first two went through
        await asyncio.get_running_loop().run_in_executor(None, consumer.rewind)
        again: list[bytes] = []
        deadline = time.monotonic() + 30
        while len(again) < 3 and time.monotonic() < deadline:
            again += [m.value() or b"" for m in await consumer.poll_batch(10, 0.5)]
        assert again == [b"2", b"3", b"4"]  # from the commit on, once each
    finally:
        consumer.close()


async def test_events_removed_before_the_group_read_them_are_counted_as_skipped(topic: str) -> None:
    """Retention (here: records deleted below offset 8) removed events past the group's
    committed offset 3: the group goes on from 8, and the 5 events it never read are
    logged and counted (ChirpConsumerSkippingEvents), where librdkafka only logs a line."""
    producer = Producer({"bootstrap.servers": KAFKA})
    for n in range(10):
        producer.produce(topic, str(n).encode(), partition=0)
    assert producer.flush(10) == 0
    group = f"chirp-test-retention-{uuid.uuid4().hex[:8]}"
    first = BatchConsumer(KAFKA, group, [topic], "before")
    try:
        deadline = time.monotonic() + 60
        while not first.assignment_ready() and time.monotonic() < deadline:
            await first.poll_batch(1, 0.5)
        await first.commit(_read(topic, [2]))  # read up to offset 3, then the group stopped
    finally:
        first.close()
    admin = AdminClient({"bootstrap.servers": KAFKA})
    (deleted,) = admin.delete_records([TopicPartition(topic, 0, 8)]).values()
    assert deleted.result(timeout=30).low_watermark == 8

    applied: list[bytes] = []
    failed: list[bytes] = []

    async def apply(messages: Any) -> None:
        values = [m.value() for m in messages if m.partition() == 0]
        if values and not failed:  # the first batch fails: read again from the commit, and reset again
            failed.extend(values)
            raise RuntimeError("store away")
        applied.extend(values)

    loop = ConsumerLoop(group, lambda: BatchConsumer(KAFKA, group, [topic], "after"), apply, 100, 0.2, 0.5)
    running = asyncio.create_task(loop.run_forever())
    try:
        deadline = time.monotonic() + 60
        while len(applied) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert failed == [b"8", b"9"] and applied == [b"8", b"9"]
        # Counted once, though the partition was reset from the commit twice.
        assert REGISTRY.get_sample_value("chirp_consumer_skipped_total", {"group": group, "reason": "retention"}) == 5
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        loop.close()


def _read(topic: str, offsets: list[int]) -> list[Any]:
    """Stand-ins for messages of partition 0 at `offsets` (a commit reads topic, partition, offset)."""

    class Read:
        def __init__(self, offset: int) -> None:
            self._offset = offset

        def topic(self) -> str:
            return topic

        def partition(self) -> int:
            return 0

        def offset(self) -> int:
            return self._offset

    return [Read(o) for o in offsets]
