"""A CQL connection the server closes tells its pool at once (common/cql.py,
`pool_notifying`): the pool that still holds it gets it back, closed, from the
driver's executor, and marks the host down; a connection the pool let go of
itself is left alone. The real driver against a killed node is in
tests/integration/test_cql_policies.py (cluster topology)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from common.cql import hand_back_if_held, pool_notifying


@dataclass
class Features:
    shard_id: int | None = None


class FakeConnection:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.is_closed = False
        self.features = Features()
        self.closes = 0

    def close(self) -> None:
        self.closes += 1
        self.is_closed = True


@dataclass
class FakePool:
    connections: dict[int | None, Any] = field(default_factory=dict)
    is_shutdown: bool = False
    returned: list[tuple[Any, bool]] = field(default_factory=list)

    @property
    def _connections(self) -> dict[int | None, Any]:
        return self.connections

    def return_connection(self, connection: Any, stream_was_orphaned: bool = False) -> None:
        self.returned.append((connection, stream_was_orphaned))


class FakeSession:
    """Runs what is submitted when told (`run`), as the driver's executor would, later."""

    def __init__(self, *pools: FakePool, executor_open: bool = True) -> None:
        self._pools = {f"host{i}": pool for i, pool in enumerate(pools)}
        self.executor_open = executor_open
        self.submitted: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        if not self.executor_open:
            raise RuntimeError("cannot schedule new futures after shutdown")
        self.submitted.append((fn, args))

    def run(self) -> None:
        for fn, args in self.submitted:
            fn(*args)


def test_a_held_connection_goes_back_to_its_own_pool_as_an_orphaned_stream() -> None:
    conn = FakeConnection()
    mine, other = FakePool({None: conn}), FakePool({None: FakeConnection()})
    session = FakeSession(other, mine)
    assert hand_back_if_held(session, conn)
    assert mine.returned == []  # not in the closing thread (the reactor's)
    session.run()
    # orphaned: the pool must not count a request finishing on it
    assert mine.returned == [(conn, True)]
    assert other.returned == []


def test_a_connection_the_pool_let_go_of_is_left_alone() -> None:
    conn = FakeConnection()
    replaced = FakePool({None: FakeConnection()})  # the pool holds another one now
    shut = FakePool({None: conn}, is_shutdown=True)
    session = FakeSession(replaced, shut)
    assert not hand_back_if_held(session, conn)
    assert replaced.returned == [] and shut.returned == []


def test_a_shard_aware_pool_is_matched_on_the_connection_s_shard() -> None:
    conn = FakeConnection()
    conn.features.shard_id = 1
    pool = FakePool({0: FakeConnection(), 1: conn})
    session = FakeSession(pool)
    assert hand_back_if_held(session, conn)
    session.run()
    assert pool.returned == [(conn, True)]


def test_a_pool_that_let_go_of_it_before_the_executor_ran_is_left_alone() -> None:
    """Marked down by another path and back meanwhile: the host's new pool must not be shut."""
    conn = FakeConnection()
    pool = FakePool({None: conn})
    session = FakeSession(pool)
    assert hand_back_if_held(session, conn)
    pool.is_shutdown = True
    session.run()
    assert pool.returned == []


def test_a_cluster_shutting_down_takes_nothing_and_raises_nothing() -> None:
    conn = FakeConnection()
    pool = FakePool({None: conn})
    assert not hand_back_if_held(FakeSession(pool, executor_open=False), conn)
    assert pool.returned == []


def test_the_connection_class_hands_back_on_its_first_close_only() -> None:
    notifying = pool_notifying(FakeConnection)
    assert pool_notifying(FakeConnection) is notifying  # one class per reactor
    conn: Any = notifying()
    pool = FakePool({None: conn})
    session = FakeSession(pool)
    notifying.sessions.add(session)
    try:
        conn.close()
        conn.close()  # the pool's own close of what it got back
        session.run()
        assert conn.closes == 2 and conn.is_closed
        assert pool.returned == [(conn, True)]
        assert len(session.submitted) == 1
    finally:
        notifying.sessions.discard(session)


class BrokenSession:
    @property
    def _pools(self) -> dict[str, Any]:
        raise AttributeError("a driver whose pools moved")


def test_a_failing_hand_back_does_not_break_the_close() -> None:
    notifying = pool_notifying(FakeConnection)
    conn: Any = notifying()
    broken = BrokenSession()
    notifying.sessions.add(broken)
    try:
        conn.close()  # logged, not raised: the driver fails the in-flight requests after it
        assert conn.is_closed
    finally:
        notifying.sessions.discard(broken)
