"""CqlSession.from_config's wait for a store that does not answer yet, with the connect
attempts replaced: bad credentials are not waited for (tests/integration/test_cql_policies.py
has the wait against the real store)."""

from __future__ import annotations

from typing import Any

import pytest
from cassandra import AuthenticationFailed, UnresolvableContactPoints
from cassandra.cluster import NoHostAvailable

from common import cql
from common.config import load_common
from common.cql import CqlSession


async def test_bad_credentials_are_not_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    attempts: list[int] = []

    async def refused(*_args: Any, **_kwargs: Any) -> CqlSession:
        attempts.append(1)
        raise NoHostAvailable("Unable to connect", {"127.0.0.1:9042": AuthenticationFailed("bad credentials")})

    monkeypatch.setattr(CqlSession, "connect", refused)
    with pytest.raises(NoHostAvailable):
        await CqlSession.from_config(load_common({"CHIRP_CQL_CONNECT_WAIT_SECONDS": "60"}, "test", 0))
    assert len(attempts) == 1


@pytest.mark.parametrize(
    "error",
    [
        NoHostAvailable("Unable to connect", {"127.0.0.1:9042": ConnectionRefusedError(111, "refused")}),
        # Nodes answered and no pool came up (the keyspace not made yet): the driver lists the hosts.
        NoHostAvailable("Unable to connect to any servers using keyspace 'chirp'", ["127.0.0.1"]),
        UnresolvableContactPoints({"scylla-client.chirp.svc.cluster.local": []}),  # no pod ready yet
    ],
)
async def test_a_store_that_does_not_answer_is_asked_again(monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    attempts: list[int] = []

    async def down(*_args: Any, **_kwargs: Any) -> CqlSession:
        attempts.append(1)
        raise error

    monkeypatch.setattr(cql, "CONNECT_RETRY_SECONDS", 0.01)
    monkeypatch.setattr(CqlSession, "connect", down)
    with pytest.raises(type(error)):
        await CqlSession.from_config(load_common({"CHIRP_CQL_CONNECT_WAIT_SECONDS": "0.2"}, "test", 0))
    assert len(attempts) > 2
