"""graph_svc's lightweight transactions whose outcome the call did not learn (a
timeout, or the connection closed under it) are settled by a serial read of the
row (GraphStore._claim), over a stand-in session that fails the claim."""

from __future__ import annotations

from collections import namedtuple
from typing import Any, cast

import pytest
from cassandra import OperationTimedOut, WriteTimeout
from cassandra.connection import ConnectionShutdown

from common.cql import CqlSession
from graph_svc.store import GraphStore

Owner = namedtuple("Owner", ["user_id"])


class Session:
    """Fails every claim with `error`; the serial read answers `owner` (None: no row)."""

    def __init__(self, error: Exception, owner: int | None) -> None:
        self.error = error
        self.owner = owner
        self.ran: list[str] = []

    async def execute(self, statement: str, params: Any = None) -> list[Any]:
        self.ran.append(statement)
        if statement == "claim_name":
            raise self.error
        return [] if self.owner is None else [Owner(self.owner)]


def store(session: Session) -> GraphStore:
    graph = GraphStore(cast(CqlSession, session), cast(Any, None))
    graph._q = cast(Any, {name: name for name in ("claim_name", "name_owner")})
    return graph


UNSURE = [
    WriteTimeout("timed out", write_type=5),
    OperationTimedOut("client timeout"),
    ConnectionShutdown("the connection closed with the claim in flight"),
]


@pytest.mark.parametrize("error", UNSURE, ids=lambda e: type(e).__name__)
async def test_an_unsure_claim_is_ours_when_the_serial_read_finds_us(error: Exception) -> None:
    session = Session(error, owner=7)
    assert await store(session).claim_username("name", 7) is True
    assert session.ran == ["claim_name", "name_owner"]
    assert await store(Session(error, owner=8)).claim_username("name", 7) is False  # a racing claim won


@pytest.mark.parametrize("error", UNSURE, ids=lambda e: type(e).__name__)
async def test_an_unsure_claim_with_no_row_found_fails_as_it_did(error: Exception) -> None:
    with pytest.raises(type(error)):
        await store(Session(error, owner=None)).claim_username("name", 7)
