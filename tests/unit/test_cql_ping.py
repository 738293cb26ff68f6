"""The CQL health probe sends no statement of its own while the process's own statements
show the store answering, and asks the store once they stop doing so."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from common.cql import LOCAL_PING_QUERY, PING_FRESH_SECONDS, PING_QUERY, CqlSession, ping_query


class FakeFuture:
    """A ResponseFuture that settles at once, with one page or an error."""

    has_more_pages = False

    def __init__(self, error: BaseException | None) -> None:
        self._error = error

    def add_callbacks(self, on_rows: Callable[[list[Any]], None], on_error: Callable[[BaseException], None]) -> None:
        if self._error is None:
            on_rows([("5.0",)])
        else:
            on_error(self._error)


class FakeSession:
    def __init__(self) -> None:
        self.sent: list[str] = []
        self.failing = False

    def execute_async(
        self, statement: Any, params: Any, timeout: float, execution_profile: object, paging_state: Any = None
    ) -> FakeFuture:
        self.sent.append(str(statement))
        return FakeFuture(ConnectionError("down") if self.failing else None)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _session() -> tuple[CqlSession, FakeSession, Clock]:
    driver, clock = FakeSession(), Clock()
    return CqlSession(None, driver, 1.0, clock=clock), driver, clock


async def test_the_first_probe_asks_the_store() -> None:
    cql, driver, _ = _session()
    assert await cql.ping() is True
    assert driver.sent == [LOCAL_PING_QUERY]


async def test_a_recent_answer_stands_in_for_the_probe_until_it_is_stale() -> None:
    cql, driver, clock = _session()
    await cql.execute("SELECT x FROM t WHERE k = 1")
    clock.now += PING_FRESH_SECONDS - 0.1
    assert await cql.ping() is True
    assert driver.sent == ["SELECT x FROM t WHERE k = 1"]  # no probe statement sent
    clock.now += 0.2
    assert await cql.ping() is True
    assert driver.sent[-1] == LOCAL_PING_QUERY


async def test_failed_statements_do_not_count_as_answers() -> None:
    cql, driver, clock = _session()
    await cql.execute("SELECT x FROM t WHERE k = 1")
    driver.failing = True
    clock.now += PING_FRESH_SECONDS
    with pytest.raises(ConnectionError):
        await cql.execute("SELECT x FROM t WHERE k = 2")
    assert await cql.ping() is False  # the failure did not refresh the answer time: the probe asked
    assert driver.sent[-1] == LOCAL_PING_QUERY


def test_the_probe_reads_a_virtual_table_where_the_server_has_them() -> None:
    # Cassandra 4+ answers a virtual table from memory (half the idle cost of a
    # system.local read); ScyllaDB has no system_views and reads the node's own row.
    assert ping_query({"system", "system_schema", "system_views", "chirp"}) == PING_QUERY
    assert ping_query({"system", "system_schema", "chirp"}) == LOCAL_PING_QUERY


async def test_a_session_probes_with_the_statement_it_was_given() -> None:
    driver, clock = FakeSession(), Clock()
    cql = CqlSession(None, driver, 1.0, clock=clock, ping_query=PING_QUERY)
    assert await cql.ping() is True
    assert driver.sent == [PING_QUERY]
