"""graph_svc's lightweight transactions whose outcome the call did not learn (a
timeout, or the connection closed under it): a claim is settled by a serial read of
the row (GraphStore._claim), a refresh token's insert is asked again; over stand-in
sessions that fail the first try."""

from __future__ import annotations

from collections import namedtuple
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from cassandra import OperationTimedOut, WriteTimeout
from cassandra.connection import ConnectionShutdown

from common.cql import CqlSession
from graph_svc.sessions import CqlSessionStore, RefreshRecord
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


Applied = namedtuple("Applied", ["applied", "chain_id"])


class TokenSession:
    """The refresh token's insert: the first `failing` tries fail with `error` (the first
    after being applied), the next finds the row, with `chain_id`."""

    def __init__(self, error: Exception, chain_id: int, failing: int = 1) -> None:
        self.error, self.chain_id, self.failing, self.tries = error, chain_id, failing, 0

    async def execute(self, statement: str, params: Any = None) -> list[Any]:
        self.tries += 1
        if self.tries <= self.failing:
            raise self.error
        return [Applied(False, self.chain_id)]


def token_store(session: TokenSession) -> CqlSessionStore:
    store = CqlSessionStore(cast(CqlSession, session), cast(Any, None))
    store._q = cast(Any, {"add_token": "add_token"})
    return store


RECORD = RefreshRecord(chain_id=5, user_id=9, expires_at=datetime(2026, 12, 31, tzinfo=UTC), retired=False)


@pytest.mark.parametrize("error", UNSURE, ids=lambda e: type(e).__name__)
async def test_a_refresh_token_insert_of_unknown_outcome_is_asked_again_and_found_applied(error: Exception) -> None:
    session = TokenSession(error, chain_id=RECORD.chain_id)
    await token_store(session).add_refresh_token(b"h" * 32, RECORD, 60)
    assert session.tries == 2
    with pytest.raises(RuntimeError):  # a row under the hash that is not this session's
        await token_store(TokenSession(error, chain_id=6)).add_refresh_token(b"h" * 32, RECORD, 60)


@pytest.mark.parametrize("error", UNSURE, ids=lambda e: type(e).__name__)
async def test_a_refresh_token_insert_is_tried_three_times_in_all(error: Exception) -> None:
    session = TokenSession(error, chain_id=RECORD.chain_id, failing=2)
    await token_store(session).add_refresh_token(b"h" * 32, RECORD, 60)
    assert session.tries == 3
    with pytest.raises(type(error)):
        await token_store(TokenSession(error, chain_id=RECORD.chain_id, failing=3)).add_refresh_token(
            b"h" * 32, RECORD, 60
        )
