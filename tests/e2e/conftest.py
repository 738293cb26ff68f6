"""What every end-to-end test may assume of the stack before it starts."""

from __future__ import annotations

import pytest

from tests.conftest import KAFKA
from tests.worker_groups import wait_assigned


@pytest.fixture(scope="session", autouse=True)
def worker_groups_assigned() -> None:
    """Right after `make up` a worker group can still be joining (its members
    start together and rebalance), and an event waits until it is done: the
    tests' delivery deadlines start only once every partition has a member."""
    try:
        wait_assigned(KAFKA)
    except AssertionError as exc:
        pytest.fail(str(exc))
