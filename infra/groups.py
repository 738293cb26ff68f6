"""The stack's Kafka consumer groups and the topics each consumes: what the e2e
tests wait on before they start and what `make chaos` reads the lag of."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from confluent_kafka import ConsumerGroupState, KafkaException
from confluent_kafka.admin import AdminClient

from common.kafka import TOPIC_FOLLOWS, TOPIC_LIKES, TOPIC_TWEETS
from feed_svc.fanout_worker import GROUP as FANOUT_GROUP
from graph_svc.main import COUNTS_GROUP
from rank_svc.rank_worker import GROUP as RANK_GROUP
from tweet_svc.like_worker import GROUP as LIKE_GROUP

CONSUMER_GROUPS: dict[str, tuple[str, ...]] = {
    FANOUT_GROUP: (TOPIC_TWEETS, TOPIC_FOLLOWS),
    LIKE_GROUP: (TOPIC_LIKES,),
    RANK_GROUP: (TOPIC_LIKES,),
    COUNTS_GROUP: (TOPIC_FOLLOWS,),
}

# The groups that apply what the fault suite's check reads back (like counts, follow
# counts, timelines): a count still off while its group has events left is lag, not loss.
CHECKED_GROUPS = {group: CONSUMER_GROUPS[group] for group in (LIKE_GROUP, COUNTS_GROUP, FANOUT_GROUP)}

# The processes (infra/topology.py names, without the instance number) whose members
# each group has: where to look when a group falls behind.
GROUP_PROCESSES = {
    FANOUT_GROUP: "fanout_worker",
    LIKE_GROUP: "like_worker",
    RANK_GROUP: "rank_worker",
    COUNTS_GROUP: "graph_svc",
}


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
