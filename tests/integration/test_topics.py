"""infra/topics.py against the stack's Kafka: a topic made before a change of its
wanted configuration gets the change when the topics step runs again, but never a
min.insync.replicas above its replicas."""

from __future__ import annotations

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
    assert retention_ms(admin) == older

    assert topics.main() == 0
    assert retention_ms(admin) == wanted
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
