"""A statement whose prepare times out is tried again, so a service restarting while a
Cassandra node is busy comes up instead of exiting; a store that keeps timing out
still fails the start after PREPARE_ATTEMPTS."""

from __future__ import annotations

from typing import Any

import pytest
from cassandra import OperationTimedOut

from common import cql
from common.cql import PREPARE_ATTEMPTS, CqlSession


class Prepared:
    is_idempotent = False


class SlowThenReady:
    """A driver session whose first `failures` prepares time out."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def prepare(self, query: str) -> Prepared:
        self.calls += 1
        if self.calls <= self.failures:
            raise OperationTimedOut(errors={"127.0.0.3:9042": "Client request timeout"})
        return Prepared()


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cql, "PREPARE_BACKOFF_SECONDS", 0.0)


async def test_a_timed_out_prepare_is_tried_again() -> None:
    driver = SlowThenReady(failures=2)
    session = CqlSession(None, driver, 1.0)
    prepared: Any = await session.prepare("SELECT x FROM t WHERE k = ?")
    assert isinstance(prepared, Prepared)
    assert prepared.is_idempotent is True
    assert driver.calls == 3


async def test_a_store_that_keeps_timing_out_fails_the_start() -> None:
    driver = SlowThenReady(failures=PREPARE_ATTEMPTS)
    session = CqlSession(None, driver, 1.0)
    with pytest.raises(OperationTimedOut):
        await session.prepare("SELECT x FROM t WHERE k = ?")
    assert driver.calls == PREPARE_ATTEMPTS
