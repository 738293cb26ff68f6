"""Whether the stack's Kafka worker groups consume every partition of their topics."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from confluent_kafka import ConsumerGroupState, KafkaException
from confluent_kafka.admin import AdminClient

from infra.groups import CONSUMER_GROUPS

ASSIGNED_WITHIN_SECONDS = 120.0


def unassigned(admin: AdminClient, groups: Mapping[str, Sequence[str]] = CONSUMER_GROUPS) -> dict[str, str]:
    """Per group, what keeps it from consuming every partition of its topics
    (empty when all of them have a member)."""
    partitions = {
        name: {(name, p) for p in topic.partitions}
        for name, topic in admin.list_topics(timeout=10).topics.items()
        if name in {t for topics in groups.values() for t in topics}
    }
    problems = {}
    for group, future in admin.describe_consumer_groups(list(groups), request_timeout=10).items():
        try:
            described = future.result()
        except KafkaException as exc:
            problems[group] = str(exc)
            continue
        wanted = set().union(*(partitions.get(t, set()) for t in groups[group]))
        assigned = {
            (tp.topic, tp.partition) for member in described.members for tp in member.assignment.topic_partitions
        }
        if described.state != ConsumerGroupState.STABLE:
            problems[group] = f"state {described.state.name}"
        elif not wanted or wanted - assigned:
            problems[group] = f"{len(wanted - assigned)} of {len(wanted)} partitions unassigned"
    return problems


def wait_assigned(bootstrap: str, within: float = ASSIGNED_WITHIN_SECONDS) -> None:
    """Until every worker group consumes every partition of its topics: right after
    `make up`, or after a fault, a group can still be joining (its members rejoin and
    rebalance), and an event waits until it is done. Raises AssertionError after `within`."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + within
    while problems := unassigned(admin):
        if time.monotonic() > deadline:
            raise AssertionError(f"worker groups not consuming every partition after {within:.0f} s: {problems}")
        time.sleep(0.5)
