"""The e2e tests' start condition (tests/e2e/conftest.py, tests/worker_groups.py, infra/groups.py): every worker group consumes every partition."""

from __future__ import annotations

import uuid

from confluent_kafka.admin import AdminClient

from common.kafka import TOPIC_LIKES
from infra.groups import unassigned
from tests.conftest import KAFKA


def test_the_stack_s_worker_groups_consume_every_partition() -> None:
    assert unassigned(AdminClient({"bootstrap.servers": KAFKA})) == {}


def test_a_group_without_members_is_reported() -> None:
    problems = unassigned(AdminClient({"bootstrap.servers": KAFKA}), {"chirp-test-no-members": (TOPIC_LIKES,)})
    assert list(problems) == ["chirp-test-no-members"]


def test_the_fault_report_counts_what_a_group_has_not_applied() -> None:
    """infra/chaos.py reads this after its check, to tell lag from loss."""
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import NewTopic

    from infra.chaos import groups_lag

    admin = AdminClient({"bootstrap.servers": KAFKA})
    topic = f"chirp-test-lag-{uuid.uuid4().hex[:8]}"
    admin.create_topics([NewTopic(topic, 1, 1, config={"min.insync.replicas": "1"})])[topic].result(timeout=30)
    try:
        producer = Producer({"bootstrap.servers": KAFKA})
        for n in range(3):
            producer.produce(topic, str(n).encode())
        assert producer.flush(10) == 0
        consumer = Consumer({"bootstrap.servers": KAFKA, "group.id": "chirp-test-lag-one-applied"})
        consumer.commit(offsets=[TopicPartition(topic, 0, 1)], asynchronous=False)
        consumer.close()
        lag = groups_lag({"chirp-test-lag-none-applied": (topic,), "chirp-test-lag-one-applied": (topic,)})
        assert lag == {"chirp-test-lag-none-applied": 3, "chirp-test-lag-one-applied": 2}
    finally:
        admin.delete_topics([topic])[topic].result(timeout=30)
