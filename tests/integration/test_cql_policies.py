"""The CQL policies against the real store: the local DC and consistency the
sessions use, which statements are idempotent and speculative, how real driver
errors are classified, the migration's replication handling, and (on the
cluster topology, `pytest -m cluster`) that one node down at RF 3 changes
nothing for clients.

Nothing here changes the shared schema; the cluster tests kill and restart
cassandra-2 through infra.stack."""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from cassandra import InvalidRequest, ReadTimeout, WriteTimeout
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, NoHostAvailable, OperationTimedOut
from cassandra.protocol import SyntaxException

from common import cql as cql_policies
from common.config import load_common
from common.cql import CONNECT_RETRY_SECONDS, CQL_UNAVAILABLE_ERRORS, LOCAL_DC, Batch, CqlSession, UnknownDataCenter
from common.errors import INTERNAL_MESSAGE, classify
from common.outbox import Outbox
from graph_svc.store import GraphStore
from infra import migrate, stack, topology
from tests.conftest import unique_name
from tests.faults import Proxy

KEYSPACE = "chirp"


async def _connect(**kwargs: Any) -> CqlSession:
    return await CqlSession.connect(topology.cql_hosts(), topology.CQL_PORT, KEYSPACE, 5.0, **kwargs)


# ---- local DC and consistency -----------------------------------------------------------


async def test_every_node_is_in_the_default_local_dc(cql: CqlSession) -> None:
    """A DC name that matched no node would leave the driver no host to use."""
    hosts = cql._cluster.metadata.all_hosts()
    assert hosts and {h.datacenter for h in hosts} == {LOCAL_DC}
    assert await cql.ping()


async def test_the_probe_reads_a_virtual_table_of_the_store(cql: CqlSession) -> None:
    """Cassandra has system_views: the probe reads it (no storage read), and the store answers it."""
    assert cql.ping_query == cql_policies.PING_QUERY
    (row,) = await cql.execute(cql.ping_query)
    assert row.value


async def test_a_local_dc_no_node_is_in_is_refused_at_once_not_waited_for(caplog: pytest.LogCaptureFixture) -> None:
    """A wrong CHIRP_CQL_LOCAL_DC leaves the driver no host to use: a setting to correct,
    so the process stops at its first attempt and says what the store's DCs are (it
    crashed on the driver's list of hosts before, and was meant to wait 80 s)."""
    settings = {"CHIRP_CQL_LOCAL_DC": "no-such-dc", "CHIRP_CQL_CONNECT_WAIT_SECONDS": "60"}
    with caplog.at_level(logging.WARNING, logger="common.cql"), pytest.raises(UnknownDataCenter) as caught:
        await CqlSession.from_config(load_common(settings, "test", 0))
    assert "'no-such-dc'" in str(caught.value) and f"its nodes are in {LOCAL_DC}" in str(caught.value)
    assert not [r for r in caplog.records if "does not answer yet" in r.getMessage()]


async def test_a_process_started_before_its_keyspace_is_made_waits_for_it(cql: CqlSession) -> None:
    """A fresh install: the store answers before the migration made the keyspace. The
    driver then names the hosts in a list, not a dict of errors."""
    keyspace = f"wait_{secrets.token_hex(4)}"
    settings = {"CHIRP_CQL_KEYSPACE": keyspace, "CHIRP_CQL_CONNECT_WAIT_SECONDS": "60"}
    opening = asyncio.create_task(CqlSession.from_config(load_common(settings, "test", 0)))
    try:
        await asyncio.sleep(2.5 * CONNECT_RETRY_SECONDS)
        assert not opening.done(), (
            f"gave up on a keyspace not made yet: {opening.exception() if opening.done() else ''}"
        )
        await cql.execute(
            f"CREATE KEYSPACE {keyspace} WITH replication = {{'class': 'NetworkTopologyStrategy', '{LOCAL_DC}': 1}}"
        )
        session = await asyncio.wait_for(opening, 30)
        try:
            assert session._session.keyspace == keyspace
            assert await session.ping()
        finally:
            session.close()
    finally:
        opening.cancel()
        await cql.execute(f"DROP KEYSPACE IF EXISTS {keyspace}")


async def _closed_proxy() -> Proxy:
    """A proxy to the store's first node, on a port where nothing listens until its start()."""
    proxy = Proxy(topology.cql_hosts()[0], topology.CQL_PORT)
    await proxy.start()
    await proxy.cut()
    return proxy


def _settings(port: int, wait_seconds: float) -> dict[str, str]:
    return {"CHIRP_CQL_PORT": str(port), "CHIRP_CQL_CONNECT_WAIT_SECONDS": str(wait_seconds)}


async def test_a_process_started_before_its_store_waits_for_it() -> None:
    proxy = await _closed_proxy()
    opening = asyncio.create_task(CqlSession.from_config(load_common(_settings(proxy.port, 60), "test", 0)))
    await asyncio.sleep(2.5 * CONNECT_RETRY_SECONDS)
    assert not opening.done(), "gave up on a store that does not answer yet"
    await proxy.start()
    try:
        session = await asyncio.wait_for(opening, 30)
        try:
            assert await session.ping()
            await session.execute("SELECT user_id FROM users LIMIT 1")  # in the service's keyspace
        finally:
            session.close()
    finally:
        await proxy.cut()


async def test_a_process_gives_up_on_its_store_after_its_wait(caplog: pytest.LogCaptureFixture) -> None:
    proxy = await _closed_proxy()
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="common.cql"), pytest.raises(NoHostAvailable):
        await CqlSession.from_config(load_common(_settings(proxy.port, 3 * CONNECT_RETRY_SECONDS), "test", 0))
    assert time.monotonic() - started >= 2 * CONNECT_RETRY_SECONDS
    assert sum("does not answer yet" in r.getMessage() for r in caplog.records) >= 2


async def test_the_consistency_setting_reaches_every_statement(monkeypatch: pytest.MonkeyPatch) -> None:
    session = await _connect(consistency="LOCAL_ONE")
    try:
        profiles = session._cluster.profile_manager.profiles
        ours = (EXEC_PROFILE_DEFAULT, cql_policies.READ_PROFILE)
        levels = [profiles[name].consistency_level for name in ours]
        assert levels == [cql_policies.ConsistencyLevel.LOCAL_ONE] * 2

        sent: list[Any] = []  # the driver's ResponseFuture of each statement
        real = session._session.execute_async

        def spy(*args: Any, **kwargs: Any) -> Any:
            sent.append(real(*args, **kwargs))
            return sent[-1]

        monkeypatch.setattr(session._session, "execute_async", spy)
        user_id = secrets.randbits(62)  # no such user: the delete only leaves a tombstone
        assert await session.execute(await session.prepare(READ), (user_id,)) == []
        await session.execute("DELETE FROM users WHERE user_id = %s", (user_id,))
        # The level on the wire, one read (speculative profile) and one write (default profile).
        assert [f.message.consistency_level for f in sent] == [cql_policies.ConsistencyLevel.LOCAL_ONE] * 2
    finally:
        session.close()


# ---- idempotence and speculation on real prepared statements -------------------------------

READ = "SELECT user_id, username FROM users WHERE user_id = ?"
UPSERT = "INSERT INTO users (user_id, username, password_hash, created_at) VALUES (?, ?, ?, ?)"
CLAIM = "INSERT INTO users_by_name (username_key, user_id) VALUES (?, ?) IF NOT EXISTS"
COUNT = "UPDATE tweet_likes SET like_count = ? WHERE tweet_id = ? IF like_count = ?"


async def test_prepared_statements_are_marked_idempotent_by_meaning(cql: CqlSession) -> None:
    read, upsert, claim, conditional = [await cql.prepare(q) for q in (READ, UPSERT, CLAIM, COUNT)]
    assert (read.is_idempotent, upsert.is_idempotent) == (True, True)
    assert (claim.is_idempotent, conditional.is_idempotent) == (False, False)
    assert (await cql.prepare(CLAIM, idempotent=True)).is_idempotent  # the caller may decide
    batch = Batch()
    batch.add(upsert, (1, "x", "", datetime.now(UTC)))
    assert batch.is_idempotent
    batch.add(claim, ("x", 1))
    assert not batch.is_idempotent


async def test_reads_run_in_the_speculative_profile_and_writes_do_not(
    cql: CqlSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    driver_session = cql._session
    used: list[tuple[str, object]] = []
    real = driver_session.execute_async

    def spy(statement: Any, params: Any = None, **kwargs: Any) -> Any:
        used.append((getattr(statement, "query_string", str(statement)), kwargs["execution_profile"]))
        return real(statement, params, **kwargs)

    monkeypatch.setattr(driver_session, "execute_async", spy)
    user_id = secrets.randbits(62)
    name = unique_name("cq")
    upsert, read = await cql.prepare(UPSERT), await cql.prepare(READ)
    await cql.execute(upsert, (user_id, name, "", datetime.now(UTC)))
    rows = await cql.execute(read, (user_id,))
    assert [(r.user_id, r.username) for r in rows] == [(user_id, name)]
    assert used == [(UPSERT, EXEC_PROFILE_DEFAULT), (READ, cql_policies.READ_PROFILE)]
    await cql.execute("DELETE FROM users WHERE user_id = %s", (user_id,))


def _thread_wakes(name: str) -> int:
    """How often this process's thread `name` has gone to sleep and been woken (its
    voluntary context switches)."""
    (native_id,) = [t.native_id for t in threading.enumerate() if t.name == name]
    status = Path(f"/proc/self/task/{native_id}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("voluntary_ctxt_switches")).split()[1])


async def test_the_drivers_io_thread_sleeps_once_no_request_is_under_way(cql: CqlSession) -> None:
    """The driver's libev thread used to keep waking at the last timer interval it
    armed: every 150 ms (the speculative delay) after a read, for as long as the
    process stayed idle. A standing timer (common/cql.py) lets it sleep."""
    read = await cql.prepare(READ)
    for _ in range(3):
        await cql.execute(read, (secrets.randbits(62),))
    await asyncio.sleep(0.5)  # the reads' own timers are cancelled by now
    counts = []
    for _ in range(2):
        before = _thread_wakes("event_loop")
        await asyncio.sleep(1.5)
        counts.append(_thread_wakes("event_loop") - before)
    # About 10 a window with the repeating 150 ms timer. The driver's idle heartbeat
    # (every 30 s) can land in one window, never in both.
    assert min(counts) <= 3, counts


# ---- real driver errors by meaning ------------------------------------------------------------


async def test_a_bad_query_from_the_real_store_is_internal(cql: CqlSession) -> None:
    for query, error_type in (
        ("SELECT no_such_column FROM users WHERE user_id = 1", InvalidRequest),
        ("SELECT user_id FROM no_such_table WHERE user_id = 1", InvalidRequest),
        ("SELEKT user_id FROM users", SyntaxException),
    ):
        with pytest.raises(error_type) as caught:
            await cql.execute(query)
        status = classify(caught.value, CQL_UNAVAILABLE_ERRORS)
        assert (status.code, status.message) == (grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE), query


async def test_an_unreachable_store_is_unavailable() -> None:
    with pytest.raises(NoHostAvailable) as caught:
        await CqlSession.connect(["127.0.0.1"], 1, KEYSPACE, 1.0)  # nothing listens on port 1
    assert classify(caught.value, CQL_UNAVAILABLE_ERRORS).code == grpc.StatusCode.UNAVAILABLE


# ---- the migration's replication -----------------------------------------------------------


def test_migration_replication_maps() -> None:
    nts = migrate.parse_replication("{'class': 'NetworkTopologyStrategy', 'datacenter1': 3}")
    assert nts == {"class": "NetworkTopologyStrategy", "datacenter1": "3"}
    stored = {"class": "org.apache.cassandra.locator.NetworkTopologyStrategy", "datacenter1": "3"}
    assert migrate.same_replication(stored, nts)
    assert not migrate.same_replication({**stored, "datacenter1": "1"}, nts)
    assert not migrate.same_replication(
        {"class": "org.apache.cassandra.locator.SimpleStrategy", "replication_factor": "3"}, nts
    )
    assert migrate.cql_map(nts) == "{'class': 'NetworkTopologyStrategy', 'datacenter1': 3}"
    for bad in ("SimpleStrategy", "{'replication_factor': 1}", "{'class': "):
        with pytest.raises(ValueError, match="replication"):
            migrate.parse_replication(bad)


class _RecordingSession:
    def __init__(self, replication: dict[str, str] | None) -> None:
        self.replication = replication
        self.executed: list[str] = []

    def execute(self, query: str, params: Any = None) -> list[Any]:
        if query.startswith("SELECT replication"):
            return [] if self.replication is None else [type("Row", (), {"replication": self.replication})()]
        self.executed.append(query)
        return []


def test_migration_creates_alters_or_leaves_the_keyspace() -> None:
    rf3 = migrate.parse_replication("{'class': 'NetworkTopologyStrategy', 'datacenter1': 3}")
    fresh = _RecordingSession(None)
    assert "created" in migrate.ensure_keyspace(fresh, "chirp", rf3)
    assert fresh.executed == [
        "CREATE KEYSPACE IF NOT EXISTS chirp WITH replication = {'class': 'NetworkTopologyStrategy', 'datacenter1': 3}"
    ]
    single = _RecordingSession({"class": "org.apache.cassandra.locator.SimpleStrategy", "replication_factor": "1"})
    said = migrate.ensure_keyspace(single, "chirp", rf3)
    assert single.executed == [
        "ALTER KEYSPACE chirp WITH replication = {'class': 'NetworkTopologyStrategy', 'datacenter1': 3}"
    ]
    assert "nodetool repair -full chirp" in said
    same = _RecordingSession({"class": "org.apache.cassandra.locator.NetworkTopologyStrategy", "datacenter1": "3"})
    assert migrate.ensure_keyspace(same, "chirp", rf3) == ""
    assert same.executed == []


def test_migration_leaves_the_running_keyspace_as_it_is() -> None:
    """Asked for the replication the store already has, it changes nothing (read-only here)."""
    cluster = Cluster(topology.cql_hosts(), port=topology.CQL_PORT, protocol_version=4)
    try:
        session = cluster.connect()
        rows = list(
            session.execute("SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = %s", (KEYSPACE,))
        )
        current = {str(k): str(v) for k, v in dict(rows[0].replication).items()}
        assert migrate.ensure_keyspace(session, KEYSPACE, current) == ""
    finally:
        cluster.shutdown()


# ---- the cluster topology: one node down at RF 3 --------------------------------------------

DOWN_NODE = "cassandra-2"


# The heartbeat, the driver's other way to find a closed connection, runs every 30 s.
HOST_DOWN_WITHIN_SECONDS = 3.0


def _node_host(name: str) -> str:
    return next(node.host for node in topology.cassandra_nodes() if node.name == name)


async def _eventually(check: Callable[[], bool], within: float) -> bool:
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


@pytest.fixture(scope="module")
async def cluster_cql() -> AsyncIterator[CqlSession]:
    session = await _connect()
    yield session
    session.close()


@pytest.mark.cluster
async def test_keyspace_is_rf3_across_three_nodes(cluster_cql: CqlSession) -> None:
    rows = await cluster_cql.execute(
        "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = %s", (KEYSPACE,)
    )
    replication = {str(k): str(v) for k, v in dict(rows[0].replication).items()}
    assert replication == {"class": "org.apache.cassandra.locator.NetworkTopologyStrategy", LOCAL_DC: "3"}
    assert len(cluster_cql._cluster.metadata.all_hosts()) == 3


async def _claim_retrying_unknown_outcomes(store: GraphStore, key: str, user_id: int, attempts: int = 3) -> bool:
    """graph_svc's claim of `key`, made again (as a client would) while its outcome stays
    unknown; a claim an earlier try applied answers True to the same user id."""
    for _ in range(attempts - 1):
        try:
            return await store.claim_username(key, user_id)
        except (WriteTimeout, ReadTimeout, OperationTimedOut):
            continue
    return await store.claim_username(key, user_id)


@pytest.mark.cluster
async def test_rf3_reads_and_writes_succeed_with_one_node_down(cluster_cql: CqlSession) -> None:
    upsert, read = await cluster_cql.prepare(UPSERT), await cluster_cql.prepare(READ)
    before = {secrets.randbits(62): unique_name("rf") for _ in range(30)}
    for user_id, name in before.items():
        await cluster_cql.execute(upsert, (user_id, name, "", datetime.now(UTC)))

    down = next(h for h in cluster_cql._cluster.metadata.all_hosts() if h.address == _node_host(DOWN_NODE))
    assert down.is_up
    stack.kill(DOWN_NODE)
    try:
        # No statement was in flight: the driver learns of the death from the connection the
        # node's kernel closed (common/cql.py, pool_notifying), not from the next statement
        # routed there, which would otherwise block the event loop for 2 s first.
        assert await _eventually(lambda: not down.is_up, HOST_DOWN_WITHIN_SECONDS), "host still up"
        # Every key has a replica on the dead node; LOCAL_QUORUM needs the other two.
        for user_id, name in before.items():
            rows = await cluster_cql.execute(read, (user_id,))
            assert [r.username for r in rows] == [name]
        during = {secrets.randbits(62): unique_name("rf") for _ in range(30)}
        for user_id, name in during.items():
            await cluster_cql.execute(upsert, (user_id, name, "", datetime.now(UTC)))
        for user_id, name in during.items():
            rows = await cluster_cql.execute(read, (user_id,))
            assert [r.username for r in rows] == [name]
        # Lightweight transactions need a quorum of the Paxos replicas: two of three. On a
        # starved machine a claim can time out with its outcome unknown (CI once saw no
        # proposal reply in time from either live replica); graph_svc's claim then asks a
        # serial read (Paxos as well) whose claim it is, and when that fails too the claim
        # is made again, as a client would, at most three times in all.
        store = GraphStore(cluster_cql, Outbox(cluster_cql, None))
        await store.prepare()
        key, owner = unique_name("lwt"), secrets.randbits(62)
        assert await _claim_retrying_unknown_outcomes(store, key, owner)
        assert not await _claim_retrying_unknown_outcomes(store, key, owner + 1)
        assert await store.user_id_by_name(key) == owner
    finally:
        stack.start(DOWN_NODE)

    # Back with all three: what was written while it was down reads the same.
    for user_id, name in {**before, **during}.items():
        rows = await cluster_cql.execute(read, (user_id,))
        assert [r.username for r in rows] == [name]
    delete = await cluster_cql.prepare("DELETE FROM users WHERE user_id = ?")
    for user_id in {**before, **during}:
        await cluster_cql.execute(delete, (user_id,))
