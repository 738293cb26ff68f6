"""infra/migrate.py: on a cluster just started, a keyspace just created can be missing
on the node a statement reaches; USE is asked again until the schema reaches it. And
a node can see too few peers up for a quorum; its statements are asked again."""

from __future__ import annotations

from typing import Any, cast

import pytest
from cassandra import InvalidRequest, Unavailable
from cassandra.cluster import NoHostAvailable, Session
from cassandra.connection import ConnectionException

from infra.migrate import POOL_KEYSPACE_FAILED, execute_at_quorum, use_keyspace


class Agreement:
    def __init__(self) -> None:
        self.waits = 0

    def wait_for_schema_agreement(self, wait_time: float) -> bool:
        self.waits += 1
        return True


class LaggingSession:
    """A session whose first `missing` USEs reach a node without the keyspace."""

    def __init__(self, missing: int, error: str = "Keyspace 'chirp' does not exist", on_a_pool: bool = False) -> None:
        self.missing = missing
        self.error = error
        self.on_a_pool = on_a_pool
        self.uses = 0
        self.cluster: Any = type("C", (), {})()
        self.cluster.control_connection = Agreement()

    def set_keyspace(self, keyspace: str) -> None:
        self.uses += 1
        if self.uses <= self.missing:
            refused = InvalidRequest(f'Error from server: code=2200 [Invalid query] message="{self.error}"')
            if self.on_a_pool:  # the coordinator had it; the driver's USE on another node's pool did not
                raise ConnectionException(f"{POOL_KEYSPACE_FAILED}: {{'127.0.0.2:9042': {refused!r}}}")
            raise refused


def test_use_is_asked_again_until_the_keyspace_reaches_the_node() -> None:
    session = LaggingSession(missing=2)
    use_keyspace(cast(Session, session), "chirp", sleep=lambda s: None)
    assert session.uses == 3
    assert session.cluster.control_connection.waits == 2


def test_a_node_behind_the_coordinator_is_waited_for_too() -> None:
    """The driver sets the keyspace on every node's pool after the coordinator's USE: a
    node without it fails that step, reported as a ConnectionException."""
    session = LaggingSession(missing=2, on_a_pool=True)
    use_keyspace(cast(Session, session), "chirp", sleep=lambda s: None)
    assert session.uses == 3


def test_another_connection_failure_is_not_retried() -> None:
    session = LaggingSession(missing=1, error="Keyspace 'chirp' is unreadable", on_a_pool=True)
    with pytest.raises(ConnectionException):
        use_keyspace(cast(Session, session), "chirp", sleep=lambda s: None)
    assert session.uses == 1


def test_it_gives_up_after_its_time_and_raises() -> None:
    session = LaggingSession(missing=10**6)
    with pytest.raises(InvalidRequest):
        use_keyspace(cast(Session, session), "chirp", seconds=0.0, sleep=lambda s: None)


def test_another_invalid_request_is_not_retried() -> None:
    session = LaggingSession(missing=1, error="line 1: syntax error")
    with pytest.raises(InvalidRequest):
        use_keyspace(cast(Session, session), "chirp", sleep=lambda s: None)
    assert session.uses == 1


class StartingCluster:
    """A session whose first `unavailable` statements reach a node that sees too few peers up."""

    def __init__(self, unavailable: int) -> None:
        self.unavailable = unavailable
        self.calls = 0

    def execute(self, query: str, params: object = ()) -> list[str]:
        self.calls += 1
        if self.calls <= self.unavailable:
            refused = Unavailable(
                "Cannot achieve consistency level LOCAL_QUORUM", required_replicas=2, alive_replicas=1
            )
            if self.calls % 2:  # what the driver raises once its one retry ran out of hosts
                raise NoHostAvailable("Unable to complete the operation against any hosts", {"127.0.0.1": refused})
            raise refused
        return ["row"]


def test_a_quorum_statement_waits_for_the_replicas_to_be_up() -> None:
    session = StartingCluster(unavailable=2)
    waits: list[float] = []
    rows = execute_at_quorum(cast(Session, session), "SELECT name FROM data_migrations", sleep=waits.append)
    assert rows == ["row"]
    assert session.calls == 3
    assert waits == [1.0, 1.0]


def test_a_quorum_statement_does_not_wait_out_other_errors() -> None:
    class Down(StartingCluster):
        def execute(self, query: str, params: object = ()) -> list[str]:
            self.calls += 1
            raise NoHostAvailable(
                "Unable to complete the operation against any hosts", {"127.0.0.1": OSError("refused")}
            )

    session = Down(unavailable=0)
    with pytest.raises(NoHostAvailable):
        execute_at_quorum(cast(Session, session), "SELECT name FROM data_migrations", sleep=lambda s: None)
    assert session.calls == 1


def test_a_quorum_statement_gives_up_after_its_time() -> None:
    session = StartingCluster(unavailable=10**6)
    with pytest.raises((Unavailable, NoHostAvailable)):
        execute_at_quorum(
            cast(Session, session), "SELECT name FROM data_migrations", seconds=-1.0, sleep=lambda s: None
        )
    assert session.calls == 1
