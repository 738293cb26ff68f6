"""Shared fixtures. Tests that need a server connect to the one `make up`
started and fail (never skip) when it is not there."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from redis import Redis

from common.cache import RedisClient, connect_redis
from common.cql import CqlSession
from common.ids import IdGenerator
from common.kafka import AsyncProducer
from common.outbox import Outbox
from graph_svc.accounts import Passwords
from graph_svc.domain import Graph
from graph_svc.sessions import CqlSessionStore, Sessions
from graph_svc.store import GraphStore
from graph_svc.tokens import TokenSigner
from infra import keys, topology

ROOT = Path(__file__).resolve().parent.parent
# The stores of the topology the stack runs (single node unless CHIRP_TOPOLOGY=cluster).
KAFKA = topology.kafka_bootstrap()

EDGE_URL = f"http://{topology.HOST}:{topology.EDGE_PORT}"
REDIS_URL = topology.redis_url()
STATE_REDIS_URL = topology.state_redis_url()  # counters and tallies: never evicted
# `make test` starts the stack with these (see TEST_ENV in the Makefile).
CELEBRITY_THRESHOLD = int(os.environ.get("CHIRP_CELEBRITY_THRESHOLD", "10000"))
CELEBRITY_DEMOTE_BELOW = int(os.environ.get("CHIRP_CELEBRITY_DEMOTE_BELOW", "9000"))
RANK_INTERVAL_SECONDS = int(os.environ.get("CHIRP_RANK_INTERVAL_SECONDS", "60"))
FOLLOWING_LIST_LIMIT = int(os.environ.get("CHIRP_FOLLOWING_LIST_LIMIT", "10000"))


def unique_name(prefix: str = "u") -> str:
    """A fresh username (at most 15 characters) so tests never collide."""
    return f"{prefix}{secrets.token_hex(6)}"[:15]


@pytest.fixture(scope="session")
def edge() -> Iterator[httpx.Client]:
    with httpx.Client(base_url=EDGE_URL, timeout=10.0) as client:
        client.get("/v1/users/1")  # raises (fails the test) when Envoy is down
        yield client


@pytest.fixture
async def redis() -> AsyncIterator[RedisClient]:
    """A client of the stack's Redis (a cluster client on the cluster topology)."""
    client = connect_redis(REDIS_URL)
    yield client
    await client.aclose()


@pytest.fixture
async def state_redis() -> AsyncIterator[RedisClient]:
    """The same, of the stack's state Redis (rate-limit counters, trending tallies)."""
    client = connect_redis(STATE_REDIS_URL)
    yield client
    await client.aclose()


def _sync_client(url: str) -> Iterator[Redis]:
    client = Redis.from_url(url, decode_responses=True)
    client.ping()  # raises (fails the test) when Redis is down
    yield client
    client.close()


@pytest.fixture(scope="module")
def rds() -> Iterator[Redis]:
    """A synchronous client of the stack's standalone Redis, for tests that look at keys directly."""
    yield from _sync_client(REDIS_URL)


@pytest.fixture(scope="module")
def state_rds() -> Iterator[Redis]:
    """The same, of the stack's standalone state Redis (rate-limit counters, trending tallies)."""
    yield from _sync_client(STATE_REDIS_URL)


@pytest.fixture(scope="session")
async def cql() -> AsyncIterator[CqlSession]:
    session = await CqlSession.connect(topology.cql_hosts(), topology.CQL_PORT, "chirp", 5.0)
    yield session
    session.close()


async def build_graph(cql: CqlSession, ids: IdGenerator, following_ids_limit: int = 10_000) -> Graph:
    """graph_svc's domain wired to the real stores, as its main.py does."""
    private_key, _ = keys.ensure_keys(ROOT / ".state" / "keys")
    outbox = Outbox(cql, AsyncProducer(KAFKA, "tests", on_fatal=None))
    await outbox.prepare()
    store = GraphStore(cql, outbox)
    await store.prepare()
    signer = TokenSigner.from_file(private_key, timedelta(hours=1))
    session_store = CqlSessionStore(cql, store)
    await session_store.prepare()
    sessions = Sessions(session_store, signer, ids)
    return Graph(
        store, outbox, Passwords(19456, 2, 1), signer, ids, following_ids_limit=following_ids_limit, sessions=sessions
    )
