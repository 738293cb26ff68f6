"""What every end-to-end test may assume of the stack before it starts."""

from __future__ import annotations

import time

import pytest
from confluent_kafka.admin import AdminClient

from tests.conftest import KAFKA
from tests.worker_groups import unassigned

ASSIGNED_WITHIN_SECONDS = 120.0


@pytest.fixture(scope="session", autouse=True)
def worker_groups_assigned() -> None:
    """Right after `make up` a worker group can still be joining (its members
    start together and rebalance), and an event waits until it is done: the
    tests' delivery deadlines start only once every partition has a member."""
    admin = AdminClient({"bootstrap.servers": KAFKA})
    deadline = time.monotonic() + ASSIGNED_WITHIN_SECONDS
    while problems := unassigned(admin):
        if time.monotonic() > deadline:
            pytest.fail(
                f"worker groups not consuming every partition {ASSIGNED_WITHIN_SECONDS:.0f} s after start: {problems}"
            )
        time.sleep(0.5)
