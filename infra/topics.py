"""Create the project's Kafka topics (idempotent)."""

from __future__ import annotations

import sys

from confluent_kafka.admin import AdminClient, NewTopic

from common.kafka import TOPICS
from infra import topology


def main() -> int:
    admin = AdminClient({"bootstrap.servers": f"{topology.HOST}:{topology.KAFKA_PORT}"})
    existing = set(admin.list_topics(timeout=10).topics)
    wanted = [
        NewTopic(name, num_partitions=parts, replication_factor=1, config={"min.insync.replicas": "1"})
        for name, parts in TOPICS.items()
        if name not in existing
    ]
    if not wanted:
        return 0
    for name, future in admin.create_topics(wanted, operation_timeout=30).items():
        future.result()
        print(f"created topic {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
