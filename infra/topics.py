"""Create the project's Kafka topics (idempotent).

Partitions, replication factor and min.insync.replicas come from the topology
(infra/topology.py: CHIRP_KAFKA_PARTITIONS, CHIRP_KAFKA_REPLICATION,
CHIRP_KAFKA_MIN_ISR). A topic that exists with fewer partitions is grown (never
shrunk: keys would move); its replication is left as it is.
"""

from __future__ import annotations

import sys

from confluent_kafka.admin import AdminClient, NewPartitions, NewTopic

from common.kafka import TOPIC_LIKES, TOPICS
from infra import topology

# The rank worker rebuilds trending tallies by replaying the likes of its
# window (48 h by default) from Kafka, so likes are kept a week.
RETENTION_MS = {TOPIC_LIKES: 7 * 24 * 3_600_000}


def main() -> int:
    admin = AdminClient({"bootstrap.servers": topology.kafka_bootstrap()})
    partitions = topology.kafka_partitions()
    replication, min_isr = topology.kafka_replication(), topology.kafka_min_insync()
    existing = admin.list_topics(timeout=10).topics
    wanted = []
    for name in TOPICS:
        config = {"min.insync.replicas": str(min_isr)}
        if name in RETENTION_MS:
            config["retention.ms"] = str(RETENTION_MS[name])
        if name not in existing:
            wanted.append(NewTopic(name, num_partitions=partitions, replication_factor=replication, config=config))
    for name, future in admin.create_topics(wanted, operation_timeout=30).items() if wanted else []:
        future.result()
        print(
            f"created topic {name}: {partitions} partitions, replication {replication}, min.insync.replicas {min_isr}"
        )
    grow = [
        NewPartitions(name, partitions)
        for name in TOPICS
        if name in existing and len(existing[name].partitions) < partitions
    ]
    for name, future in admin.create_partitions(grow).items() if grow else []:
        future.result()
        print(f"grew topic {name} to {partitions} partitions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
