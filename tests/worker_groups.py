"""Whether the stack's Kafka worker groups consume every partition of their topics."""

from __future__ import annotations

import time

from confluent_kafka.admin import AdminClient

from infra.groups import unassigned

ASSIGNED_WITHIN_SECONDS = 120.0


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
