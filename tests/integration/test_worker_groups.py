"""The e2e tests' start condition (tests/e2e/conftest.py, tests/worker_groups.py): every worker group consumes every partition."""

from __future__ import annotations

from confluent_kafka.admin import AdminClient

from common.kafka import TOPIC_LIKES
from tests.conftest import KAFKA
from tests.worker_groups import unassigned


def test_the_stack_s_worker_groups_consume_every_partition() -> None:
    assert unassigned(AdminClient({"bootstrap.servers": KAFKA})) == {}


def test_a_group_without_members_is_reported() -> None:
    problems = unassigned(AdminClient({"bootstrap.servers": KAFKA}), {"chirp-test-no-members": (TOPIC_LIKES,)})
    assert list(problems) == ["chirp-test-no-members"]
