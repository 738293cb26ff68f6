"""Create the project's Kafka topics (idempotent).

Partitions, replication factor and min.insync.replicas come from the topology
(infra/topology.py: CHIRP_KAFKA_PARTITIONS, CHIRP_KAFKA_REPLICATION,
CHIRP_KAFKA_MIN_ISR). A topic that exists with fewer partitions is grown (never
shrunk: keys would move); its replication is left as it is. Its configuration
(min.insync.replicas, retention.ms) is set to what this file wants wherever it
differs, so a changed retention reaches topics made before it, as the Strimzi
topic operator does for k8s/stores/kafka.yaml.
"""

from __future__ import annotations

import sys

from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
    ResourceType,
    TopicMetadata,
)

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
    configs = {name: _config(name, min_isr) for name in TOPICS}
    wanted = [
        NewTopic(name, num_partitions=partitions, replication_factor=replication, config=configs[name])
        for name in TOPICS
        if name not in existing
    ]
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
    _reconcile(
        admin,
        {name: _config(name, capped_min_isr(name, min_isr, existing[name])) for name in TOPICS if name in existing},
    )
    return 0


def capped_min_isr(name: str, min_isr: int, topic: TopicMetadata) -> int:
    """`min_isr`, but never above the replicas the existing topic has (its replication is
    left as it is): above them, every acks=all write to it would be refused."""
    replicas = min((len(p.replicas) for p in topic.partitions.values()), default=min_isr)
    if replicas < min_isr:
        print(
            f"topic {name} has {replicas} replicas, fewer than min.insync.replicas {min_isr}: "
            f"keeping it at {replicas}; reassign its partitions to raise it"
        )
        return replicas
    return min_isr


def _config(name: str, min_isr: int) -> dict[str, str]:
    config = {"min.insync.replicas": str(min_isr)}
    if name in RETENTION_MS:
        config["retention.ms"] = str(RETENTION_MS[name])
    return config


def _reconcile(admin: AdminClient, configs: dict[str, dict[str, str]]) -> None:
    """Set each existing topic's entries of `configs` that differ from what it has."""
    if not configs:
        return
    described = admin.describe_configs([ConfigResource(ResourceType.TOPIC, name) for name in configs])
    changes = []
    for resource, future in described.items():
        have = {key: entry.value for key, entry in future.result().items()}
        differ = {key: value for key, value in configs[resource.name].items() if have.get(key) != value}
        if differ:
            entries = [ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in differ.items()]
            changes.append((ConfigResource(ResourceType.TOPIC, resource.name, incremental_configs=entries), differ))
    if not changes:
        return
    altered = admin.incremental_alter_configs([resource for resource, _ in changes])
    for resource, differ in changes:
        altered[resource].result()
        print(f"set topic {resource.name}: " + ", ".join(f"{k}={v}" for k, v in sorted(differ.items())))


if __name__ == "__main__":
    sys.exit(main())
