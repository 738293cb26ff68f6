"""infra/topics.py against the stack's Kafka: a topic made before a change of its
wanted configuration gets the change when the topics step runs again, but never a
min.insync.replicas above its replicas."""

from __future__ import annotations

import pytest
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    PartitionMetadata,
    ResourceType,
    TopicMetadata,
)

from common.kafka import TOPIC_LIKES
from infra import topics
from tests.conftest import KAFKA
from tests.faults import wait_for


def retention_ms(admin: AdminClient) -> str:
    resource = ConfigResource(ResourceType.TOPIC, TOPIC_LIKES)
    return str(admin.describe_configs([resource])[resource].result(timeout=10)["retention.ms"].value)


def test_an_existing_topic_gets_the_retention_wanted_now() -> None:
    admin = AdminClient({"bootstrap.servers": KAFKA})
    wanted = str(topics.RETENTION_MS[TOPIC_LIKES])
    # Longer than wanted, so nothing is deleted meanwhile: a topic made under an older setting.
    older = str(2 * int(wanted))
    entry = ConfigEntry("retention.ms", older, incremental_operation=AlterConfigOpType.SET)
    resource = ConfigResource(ResourceType.TOPIC, TOPIC_LIKES, incremental_configs=[entry])
    admin.incremental_alter_configs([resource])[resource].result(timeout=10)
    # The controller acknowledges a change before the broker applies it (KRaft): a
    # describe right after may still read the value before (seen once in a local run).
    wait_for(lambda: retention_ms(admin) == older, 10, "the broker to apply the older retention")

    assert topics.main() == 0
    wait_for(lambda: retention_ms(admin) == wanted, 10, "the broker to apply the retention wanted")
    assert topics.main() == 0  # nothing left to change: no error either
    assert retention_ms(admin) == wanted


def test_min_insync_replicas_is_never_raised_above_an_existing_topics_replicas() -> None:
    topic = TopicMetadata()
    for number, replicas in enumerate([[1, 2, 3], [2, 3]]):
        partition = PartitionMetadata()
        partition.id, partition.replicas = number, replicas
        topic.partitions[number] = partition
    assert topics.capped_min_isr("t", 2, topic) == 2
    assert topics.capped_min_isr("t", 3, topic) == 2  # one partition has two replicas


def min_insync_replicas(admin: AdminClient, name: str) -> int:
    resource = ConfigResource(ResourceType.TOPIC, name)
    return int(admin.describe_configs([resource])[resource].result(timeout=10)["min.insync.replicas"].value)


def test_the_topics_step_keeps_min_insync_replicas_within_each_topics_replicas(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    admin = AdminClient({"bootstrap.servers": KAFKA})
    partitions = admin.list_topics(TOPIC_LIKES, timeout=10).topics[TOPIC_LIKES].partitions.values()
    replicas = min(len(p.replicas) for p in partitions)
    before = min_insync_replicas(admin, TOPIC_LIKES)
    # One more than the topic can have in sync: every acks=all write to it would be refused.
    monkeypatch.setenv("CHIRP_KAFKA_MIN_ISR", str(replicas + 1))
    monkeypatch.setenv("CHIRP_KAFKA_REPLICATION", str(replicas))
    try:
        assert topics.main() == 0
        assert min_insync_replicas(admin, TOPIC_LIKES) == replicas
    finally:
        monkeypatch.undo()
        assert topics.main() == 0  # the topology's own setting again
    assert min_insync_replicas(admin, TOPIC_LIKES) == before
