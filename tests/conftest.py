"""Shared fixtures. Tests that need a server connect to the one `make up`
started and fail (never skip) when it is not there."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from common.cql import CqlSession
from infra import topology

EDGE_URL = f"http://{topology.HOST}:{topology.EDGE_PORT}"


def unique_name(prefix: str = "u") -> str:
    """A fresh username (at most 15 characters) so tests never collide."""
    return f"{prefix}{secrets.token_hex(6)}"[:15]


@pytest.fixture(scope="session")
def edge() -> Iterator[httpx.Client]:
    with httpx.Client(base_url=EDGE_URL, timeout=10.0) as client:
        client.get("/v1/users/1")  # raises (fails the test) when Envoy is down
        yield client


@pytest.fixture(scope="session")
async def cql() -> AsyncIterator[CqlSession]:
    session = await CqlSession.connect([topology.HOST], topology.CQL_PORT, "chirp", 5.0)
    yield session
    session.close()
