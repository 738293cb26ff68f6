"""asyncio wrapper around the (thread-based) ScyllaDB/Cassandra driver, and
the policies every Chirp process uses against the CQL store.

- Requests go token-aware to replicas in the local DC (a setting), at a
  consistency level that is a setting (LOCAL_QUORUM by default: with RF 3 one
  replica down changes nothing for clients, and a quorum read sees every
  acknowledged quorum write).
- A prepared statement is marked idempotent when running it twice is
  harmless: reads, and plain upserts and deletes with bound values. Counter
  updates, collection appends, lightweight transactions (IF ...) and
  statements calling now()/uuid() are not: running one twice may apply it
  twice (`is_idempotent`; pass `idempotent=` to `prepare` to decide by hand).
  A `Batch` is idempotent when every statement in it is.
- `RetryPolicy` retries idempotent statements on another replica after a
  timeout or a lost connection, and anything the coordinator refused before
  running it (unavailable, overloaded, bootstrapping). A non-idempotent
  statement whose fate is unknown (a timeout, a lost connection) is never
  sent again: the caller sees the error and decides (an LWT can be re-read).
  An idempotent logged batch whose batchlog copy timed out (none of its writes
  was sent) goes again to the same coordinator, with a longer request timeout.
- Reads that are slow on one replica are sent to the next one as well
  (speculative execution); the driver only does this for idempotent
  statements, and we keep it to point and slice reads: writes are never
  doubled, nor are aggregates and scans (COUNT, DISTINCT, no WHERE), which
  are slow because they are big, not because a replica stalls.
- A connection the server closes (a node killed or stopped) tells its pool at
  once (`pool_notifying`), so the node is marked down and skipped before the
  next statement for it: the driver only learned of it when a request on the
  connection failed, and the first statement to borrow the closed connection
  otherwise blocked the calling thread, the service's event loop, for 2 s.
- `CQL_UNAVAILABLE_ERRORS` lists the errors that mean "the store is
  unreachable or overloaded" (503, retried by the edge). Every other driver
  error, a bad query above all, is a bug and maps to INTERNAL.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import time
import weakref
from collections import namedtuple
from collections.abc import Callable, Container, Mapping, Sequence
from typing import Any, TypeVar

from cassandra import (
    AuthenticationFailed,
    ConsistencyLevel,
    OperationTimedOut,
    RateLimitReached,
    ReadTimeout,
    Unavailable,
    UnresolvableContactPoints,
    WriteTimeout,
    WriteType,
)
from cassandra import policies as driver_policies
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, NoHostAvailable, ResponseFuture, Session
from cassandra.connection import Connection, ConnectionBusy, ConnectionException
from cassandra.policies import ConstantSpeculativeExecutionPolicy, DCAwareRoundRobinPolicy, TokenAwarePolicy
from cassandra.pool import NoConnectionsAvailable
from cassandra.protocol import IsBootstrappingErrorMessage, OverloadedErrorMessage
from cassandra.query import BatchStatement, BatchType, PreparedStatement

from common import deadlines
from common.config import CommonConfig

log = logging.getLogger(__name__)

# The store is unreachable or overloaded: the same request may succeed shortly.
CQL_UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    NoHostAvailable,
    OperationTimedOut,
    Unavailable,
    ReadTimeout,
    WriteTimeout,
    ConnectionException,
    ConnectionBusy,
    NoConnectionsAvailable,
    OverloadedErrorMessage,
    IsBootstrappingErrorMessage,
    RateLimitReached,
)

LOCAL_DC = "datacenter1"  # default of CHIRP_CQL_LOCAL_DC (common/config.py), the DC the k8s manifests name
DEFAULT_CONSISTENCY = "LOCAL_QUORUM"
# One page of a statement's rows and the paging state of the next (None after the last).
_Page = tuple[list[Any], bytes | None]
READ_PROFILE = "reads"
# At RF 3 a statement can be tried on each of the other two replicas.
MAX_RETRIES = 2
# A logged batch whose batchlog copy went to a node killed but not yet convicted (about
# 12 s, docs/RELIABILITY.md) times out at the coordinator after the cluster's write timeout
# (1 s, infra/jvm.py) and is sent again; each try picks that node with even odds. Its
# request timeout leaves room for a third pick after two such timeouts, still inside the
# edge's 2.5 s per try of a write (envoy/render.py); a fourth could not finish in it.
LOGGED_BATCH_TIMEOUT_SECONDS = 2.3
BATCH_LOG_RETRIES = 3
# A read still unanswered after this long is also sent to the next replica,
# at most twice: well above a healthy read (a few ms) so a loaded cluster is
# not doubled, well below the 2 s request timeout so a stalled replica costs
# a fraction of it.
SPECULATIVE_DELAY_SECONDS = 0.15
SPECULATIVE_ATTEMPTS = 2

_LWT = re.compile(r"\bIF\b", re.IGNORECASE)
# `c = c + ?`, `c = c - ?` (counters, collection appends), `l = ? + l` (prepends).
_SELF_UPDATE = re.compile(r"\b(\w+)\s*=\s*(\1\s*[-+]|[^,=]*[-+]\s*\1\b)", re.IGNORECASE)
_NON_DETERMINISTIC = re.compile(r"\b(now|uuid|currenttimestamp|currenttimeuuid|currentdate|currenttime)\s*\(", re.I)
# Never sent to replicas, so never applied: safe to send anywhere again.
_REFUSED_BEFORE_RUNNING = (OverloadedErrorMessage, IsBootstrappingErrorMessage)
# A statement answered this recently already says the store is reachable: the health
# probe (every 15 s while it passes, common/server.py) then sends none of its own. On an
# idle stack each request wakes a Cassandra worker thread that spins a while before it
# parks again. Kept short of the probe interval: an answer older than one interval
# would let a probe pass on what the store said before an outage.
PING_FRESH_SECONDS = 5.0
# The probe's own statement reads a virtual table where the server has them
# (Cassandra 4+): the node that gets it answers from memory, so it asks whether
# the store answers, not how busy its reads are, and costs an idle node about 60
# thread runs where a read of system.local costs about 130 (a second request
# pool, ReadStage, spins after it too; docs/BENCHMARKS.md, stop 38). ScyllaDB,
# the production store, has no system_views: there it reads the node's own row.
PING_QUERY = "SELECT value FROM system_views.settings WHERE name = 'cluster_name'"
LOCAL_PING_QUERY = "SELECT release_version FROM system.local"


def ping_query(keyspaces: Container[str]) -> str:
    """The probe's statement on a server whose keyspaces (the driver's metadata) are these."""
    return PING_QUERY if "system_views" in keyspaces else LOCAL_PING_QUERY


# A statement whose prepare times out (10 s, a node starting or overloaded) is tried again.
PREPARE_ATTEMPTS = 6
PREPARE_BACKOFF_SECONDS = 1.0
RECONNECT_MAX_SECONDS = 10.0
# How often a process starting while its store does not answer tries again (from_config).
CONNECT_RETRY_SECONDS = 2.0


class UnknownDataCenter(Exception):
    """The store answered, and none of its nodes is in the data center named as local:
    a setting to correct (CHIRP_CQL_LOCAL_DC), not an outage to wait out."""


def _refused_credentials(exc: NoHostAvailable) -> bool:
    # The driver gives the errors per host as a dict when no node answered, and as a
    # list of the hosts' addresses when nodes answered and no pool came up (the keyspace
    # does not exist yet, or no node is in the local data center).
    errors = exc.errors.values() if isinstance(exc.errors, dict) else ()
    return any(isinstance(e, AuthenticationFailed) for e in errors)


# The driver's libev I/O thread arms one repeating timer for its earliest request
# timer and never stops it once none is left, so an idle process went on waking
# at the last interval armed: every 150 ms (SPECULATIVE_DELAY_SECONDS) in the
# processes whose last statement was a read, for as long as they stayed idle.
# With one timer always pending the thread is re-armed for that one instead and
# sleeps (the select backend's own cap is about a minute).
STANDING_TIMER_SECONDS = 600.0
_standing_timers: set[tuple[type, int]] = set()  # (reactor class, pid): a forked child has a new reactor


# A pool learns that its connection closed only when a request on it fails, or from the
# heartbeat (every 30 s). Until then the host stays up, and the next statement routed to it
# borrows the closed connection: HostConnection.borrow_connection waits on it for 2 s, in the
# thread that sent the statement (the event loop), before it gives up and the host is marked
# down (scylladb/python-driver#345). A node's death then froze each process for 2 s.
_notifying_classes: dict[type, type] = {}


class _TellsPoolOnClose:
    """Mixed into the driver's connection class: a connection closed while its pool still
    holds it (the server closed it, or its socket failed) is handed back to the pool at
    once, as the heartbeat does for a closed connection it finds. The pool then marks the
    host down and starts reconnecting. A close the pool makes itself (shutdown,
    replacement, excess) is of a connection the pool no longer holds, and is left alone."""

    sessions: weakref.WeakSet[Session]
    lock: Any
    features: Any
    _pool_told = False

    def close(self) -> None:
        super().close()  # type: ignore[misc]
        with self.lock:  # the I/O thread and the heartbeat's defunct() may both close it
            if self._pool_told:
                return
            self._pool_told = True
        try:
            for session in list(self.sessions):
                hand_back_if_held(session, self)
        except Exception:  # close() must finish: the driver fails its in-flight requests after it
            log.exception("could not hand a closed CQL connection back to its pool")


def hand_back_if_held(session: Session, connection: Any) -> bool:
    """Hand `connection`, closed, back to the pool of `session` that holds it (from the
    driver's executor: the pool may mark its host down, which takes locks); whether one did."""
    shard = getattr(getattr(connection, "features", None), "shard_id", None)
    for pool in list(getattr(session, "_pools", {}).values()):
        if not _holds(pool, shard, connection):
            continue
        try:
            session.submit(_hand_back, pool, shard, connection)
        except RuntimeError:  # the cluster is shutting down: its executor takes nothing
            return False
        return True
    return False


def _holds(pool: Any, shard: int | None, connection: Any) -> bool:
    return not pool.is_shutdown and pool._connections.get(shard) is connection


def _hand_back(pool: Any, shard: int | None, connection: Any) -> None:
    # Checked again where it runs: had the host been marked down by another path and come
    # back meanwhile, its new pool holds new connections, and this one must not shut it.
    if _holds(pool, shard, connection):
        # orphaned: no stream was borrowed for this, so the pool's count of them stays
        pool.return_connection(connection, stream_was_orphaned=True)


def pool_notifying(base: type[Connection]) -> type[Connection]:
    """`base` (the driver's reactor connection class) whose closes tell their pool."""
    if base not in _notifying_classes:
        _notifying_classes[base] = type(
            f"PoolNotifying{base.__name__}", (_TellsPoolOnClose, base), {"sessions": weakref.WeakSet()}
        )
    return _notifying_classes[base]


def is_read(query: str) -> bool:
    return query.lstrip().upper().startswith("SELECT")


_BIG_READ = re.compile(r"\b(COUNT|SUM|AVG|MIN|MAX)\s*\(|\bDISTINCT\b", re.IGNORECASE)


# Keys in one `IN ?` list: a query with more is split (`in_lists`). ScyllaDB refuses more
# than 100 key restrictions in one query by default (max_partition_key_restrictions_per_query,
# max_clustering_key_restrictions_per_query).
IN_LIST_SIZE = 100

Key = TypeVar("Key")


def in_lists(keys: Sequence[Key], size: int = IN_LIST_SIZE) -> list[list[Key]]:
    """`keys` in order, cut into lists of at most `size` for `IN ?` queries run at once."""
    return [list(keys[i : i + size]) for i in range(0, len(keys), size)]


@functools.lru_cache(maxsize=4096)
def profile_for(query: str) -> object:
    """The execution profile of a statement: READ_PROFILE (speculative) for point and slice reads."""
    if is_read(query) and not _BIG_READ.search(query) and re.search(r"\bWHERE\b", query, re.IGNORECASE):
        return READ_PROFILE
    return EXEC_PROFILE_DEFAULT


_SERIAL_LEVELS = (ConsistencyLevel.SERIAL, ConsistencyLevel.LOCAL_SERIAL)


def _profile_of(statement: Any) -> object:
    """`profile_for` its text, but never speculative for a read at a serial consistency:
    each copy would be a Paxos round of its own, competing with the first on the partition."""
    if getattr(statement, "consistency_level", None) in _SERIAL_LEVELS:
        return EXEC_PROFILE_DEFAULT
    return profile_for(_query_text(statement))


def is_idempotent(query: str) -> bool:
    """Whether running `query` twice leaves the same state as running it once."""
    if is_read(query):
        return True
    return not (_LWT.search(query) or _SELF_UPDATE.search(query) or _NON_DETERMINISTIC.search(query))


class Batch(BatchStatement):
    """A batch that is idempotent exactly when every statement added to it is,
    so retries and the callers' batches (the outbox's included) agree."""

    def __init__(self, batch_type: Any = BatchType.LOGGED) -> None:
        super().__init__(batch_type=batch_type)
        self.is_idempotent = batch_type != BatchType.COUNTER

    def add(self, statement: Any, parameters: Any = None) -> Any:
        if not getattr(statement, "is_idempotent", False):
            self.is_idempotent = False
        return super().add(statement, parameters)


class RetryPolicy(driver_policies.RetryPolicy):
    """Retry on the next replica what is safe to repeat, never more than MAX_RETRIES times."""

    def on_read_timeout(
        self,
        query: Any,
        consistency: Any,
        required_responses: int,
        received_responses: int,
        data_retrieved: bool,
        retry_num: int,
    ) -> tuple[int, Any]:
        # A read changes nothing, so another replica may simply be asked.
        return (self.RETRY_NEXT_HOST, None) if retry_num < MAX_RETRIES else (self.RETHROW, None)

    def on_write_timeout(
        self,
        query: Any,
        consistency: Any,
        write_type: Any,
        required_responses: int,
        received_responses: int,
        retry_num: int,
    ) -> tuple[int, Any]:
        if write_type == WriteType.BATCH_LOG and _idempotent(query):
            # The coordinator's copy to another node's batchlog timed out; it sends a logged
            # batch's writes only after that copy is made, so none was sent. The copy may
            # still have landed (a slow node, not a dead one) and be replayed later, so only
            # a batch that may run twice goes again. To the same coordinator, which picks
            # that node again at random among those it believes up (a killed node until it
            # is convicted); the next host instead would run out of a plan of two live
            # nodes. At the batch's own consistency (None): the error names the copy's (ONE).
            return (self.RETRY, None) if retry_num < BATCH_LOG_RETRIES else (self.RETHROW, None)
        # The write may or may not have been applied: only repeat one whose repetition is harmless.
        # CAS and COUNTER are never idempotent, whatever the statement claims.
        if retry_num >= MAX_RETRIES or write_type in (WriteType.CAS, WriteType.COUNTER) or not _idempotent(query):
            return self.RETHROW, None
        return self.RETRY_NEXT_HOST, None

    def on_unavailable(
        self, query: Any, consistency: Any, required_replicas: int, alive_replicas: int, retry_num: int
    ) -> tuple[int, Any]:
        # Refused before any replica ran it; another coordinator may see the replicas alive
        # (one just came back, or this one has not yet seen them).
        return (self.RETRY_NEXT_HOST, None) if retry_num == 0 else (self.RETHROW, None)

    def on_request_error(self, query: Any, consistency: Any, error: Exception, retry_num: int) -> tuple[int, Any]:
        if retry_num >= MAX_RETRIES:
            return self.RETHROW, None
        if isinstance(error, _REFUSED_BEFORE_RUNNING) or _idempotent(query):
            return self.RETRY_NEXT_HOST, None
        # A lost connection or a server error: the statement may have run.
        return self.RETHROW, None


def _idempotent(query: Any) -> bool:
    return bool(getattr(query, "is_idempotent", False))


def consistency_level(name: str) -> int:
    try:
        return int(ConsistencyLevel.name_to_value[name.upper()])
    except KeyError:
        raise ValueError(f"unknown CQL consistency level {name!r}") from None


def execution_profiles(local_dc: str, consistency: str, default_timeout: float) -> dict[object, ExecutionProfile]:
    """The default profile (writes and anything not a read) and the read profile (speculative)."""

    def profile(**extra: Any) -> ExecutionProfile:
        return ExecutionProfile(
            # One policy object per profile: the driver tells each profile's policy about every host.
            load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=local_dc)),
            retry_policy=RetryPolicy(),
            request_timeout=default_timeout,
            consistency_level=consistency_level(consistency),
            serial_consistency_level=ConsistencyLevel.LOCAL_SERIAL,
            row_factory=named_rows,
            **extra,
        )

    return {
        EXEC_PROFILE_DEFAULT: profile(),
        READ_PROFILE: profile(
            speculative_execution_policy=ConstantSpeculativeExecutionPolicy(
                SPECULATIVE_DELAY_SECONDS, SPECULATIVE_ATTEMPTS
            )
        ),
    }


@functools.lru_cache(maxsize=1024)
def _row_type(columns: tuple[str, ...]) -> type:
    # "[applied]" (lightweight transactions) becomes "applied", as in the driver.
    return namedtuple("Row", [re.sub(r"\W", "_", c.strip("[]")) for c in columns], rename=True)


def named_rows(columns: list[str], rows: list[tuple[Any, ...]]) -> list[Any]:
    """Rows as named tuples, like the driver's default factory, but with one
    class per column list instead of a new class (an exec) for every result."""
    row = _row_type(tuple(columns))
    return [row(*r) for r in rows]


def _query_text(statement: Any) -> str:
    if isinstance(statement, str):
        return statement
    prepared = getattr(statement, "prepared_statement", statement)
    return str(getattr(prepared, "query_string", "") or "")


class CqlSession:
    """One driver session per process; statements are prepared once at start."""

    def __init__(
        self,
        cluster: Cluster,
        session: Session,
        default_timeout: float,
        clock: Callable[[], float] = time.monotonic,
        ping_query: str = LOCAL_PING_QUERY,
    ) -> None:
        self._cluster = cluster
        self._session = session
        self._default_timeout = default_timeout
        self._clock = clock
        self._answered_at = float("-inf")  # when a statement last succeeded
        self.ping_query = ping_query

    @classmethod
    async def from_config(cls, common: CommonConfig) -> CqlSession:
        """The session every service and worker opens, from its settings. A store that
        does not answer yet (down, starting, its keyspace not made yet, or its names not
        resolving yet) is waited for, up to `common.cql_connect_wait_seconds`: a pod
        started during a store outage then serves once the store is back, instead of
        exiting into a crash loop whose back-off grows to 5 minutes."""
        deadline = time.monotonic() + common.cql_connect_wait_seconds
        while True:
            try:
                return await cls.connect(
                    common.cql_hosts,
                    common.cql_port,
                    common.cql_keyspace,
                    common.cql_timeout_seconds,
                    local_dc=common.cql_local_dc,
                    consistency=common.cql_consistency,
                )
            # A contact point's name may not resolve yet either: a headless Service's names
            # appear with its first ready pod (a fresh install).
            except (NoHostAvailable, UnresolvableContactPoints) as exc:
                refused = isinstance(exc, NoHostAvailable) and _refused_credentials(exc)
                if refused or time.monotonic() + CONNECT_RETRY_SECONDS >= deadline:
                    raise  # bad credentials do not get better with waiting
                log.warning(
                    "the CQL store does not answer yet; trying again",
                    extra={"hosts": ",".join(common.cql_hosts), "error": str(exc)},
                )
                await asyncio.sleep(CONNECT_RETRY_SECONDS)

    @classmethod
    async def connect(
        cls,
        hosts: Sequence[str],
        port: int,
        keyspace: str,
        default_timeout: float,
        local_dc: str = LOCAL_DC,
        consistency: str = DEFAULT_CONSISTENCY,
    ) -> CqlSession:
        cluster = Cluster(
            contact_points=list(hosts),
            port=port,
            protocol_version=4,
            execution_profiles=execution_profiles(local_dc, consistency, default_timeout),
            connect_timeout=5,
            # The driver's default backs off to 600 s: a node back from a restart would carry
            # none of this process's load for minutes. Gossip's UP event also reconnects at once.
            reconnection_policy=driver_policies.ExponentialReconnectionPolicy(0.5, RECONNECT_MAX_SECONDS),
            connection_class=pool_notifying(Cluster.connection_class),
        )
        loop = asyncio.get_running_loop()
        try:
            session = await loop.run_in_executor(None, cluster.connect, keyspace)
        except BaseException as exc:
            # The nodes the store told of (their data centers come from its own tables).
            known = {h.datacenter for h in cluster.metadata.all_hosts() if h.datacenter}
            cluster.shutdown()  # its threads and connections, or the process never exits
            if isinstance(exc, NoHostAvailable) and known and local_dc not in known:
                raise UnknownDataCenter(
                    f"no node of the CQL store is in the local data center {local_dc!r} (CHIRP_CQL_LOCAL_DC); "
                    f"its nodes are in {', '.join(sorted(known))}"
                ) from exc
            raise
        cluster.connection_class.sessions.add(session)
        keep_a_timer_pending(cluster.connection_class)
        return cls(cluster, session, default_timeout, ping_query=ping_query(cluster.metadata.keyspaces))

    async def prepare(self, query: str, idempotent: bool | None = None) -> PreparedStatement:
        """Prepare `query`, marked idempotent as `is_idempotent` judges it unless told."""
        loop = asyncio.get_running_loop()
        for attempt in range(PREPARE_ATTEMPTS):
            try:
                prepared = await loop.run_in_executor(None, self._session.prepare, query)
                break
            except (OperationTimedOut, NoHostAvailable) as exc:
                # A node busy starting or compacting must not make a restarting service exit.
                if attempt == PREPARE_ATTEMPTS - 1:
                    raise
                log.warning("preparing a statement timed out; trying again", extra={"error": str(exc)})
                await asyncio.sleep(PREPARE_BACKOFF_SECONDS)
        prepared.is_idempotent = is_idempotent(query) if idempotent is None else idempotent
        return prepared

    async def execute(self, statement: Any, params: Sequence[Any] | None = None) -> list[Any]:
        """Run one statement; returns all its rows (callers bound results with LIMIT).

        The driver hands rows over in pages of `fetch_size` (5000); every page is
        fetched, so a LIMIT above that is honoured rather than silently cut short.
        Each page is a request of its own, with its own timeout, whose first answer
        is taken: with speculative execution a slow read is sent to a second replica
        as well, and when both answer the driver passes each answer on (taken as
        they came, a read by primary key returned its one row twice right after a
        node came back).
        """
        rows, paging_state = await self._page(statement, params, None)
        while paging_state is not None:
            more, paging_state = await self._page(statement, params, paging_state)
            rows += more
        self._answered_at = self._clock()
        return rows

    def _timeout_of(self, statement: Any) -> float:
        if isinstance(statement, BatchStatement) and statement.batch_type == BatchType.LOGGED:
            return max(self._default_timeout, LOGGED_BATCH_TIMEOUT_SECONDS)
        return self._default_timeout

    async def _page(self, statement: Any, params: Sequence[Any] | None, paging_state: bytes | None) -> _Page:
        """One page of rows and the paging state of the next (None after the last)."""
        future: ResponseFuture = self._session.execute_async(
            statement,
            params,
            timeout=deadlines.timeout(self._timeout_of(statement)),
            execution_profile=_profile_of(statement),
            paging_state=paging_state,
        )
        loop = asyncio.get_running_loop()
        result: asyncio.Future[_Page] = loop.create_future()

        def on_rows(rows: list[Any]) -> None:
            # A copy, made as the answer comes: a second answer settles nothing. The
            # paging state is the one ResultSet.paging_state reads, set with these rows.
            page = (list(rows or []), future._paging_state if future.has_more_pages else None)
            loop.call_soon_threadsafe(_settle, result, page, None)

        def on_error(exc: BaseException) -> None:
            loop.call_soon_threadsafe(_settle, result, None, exc)

        future.add_callbacks(on_rows, on_error)
        return await result

    async def ping(self) -> bool:
        """Whether the store answers: at once when a statement succeeded within
        PING_FRESH_SECONDS, else by asking it."""
        if self._clock() - self._answered_at < PING_FRESH_SECONDS:
            return True
        try:
            await self.execute(self.ping_query)
        except Exception:  # noqa: BLE001 - any failure means "not reachable"
            return False
        return True

    def close(self) -> None:
        self._cluster.shutdown()


def keep_a_timer_pending(connection_class: type) -> None:
    """Keep one timer of the driver's reactor pending from now on (once per process:
    the reactor is shared), so its I/O thread sleeps while no request is under way."""
    key = (connection_class, os.getpid())
    if key in _standing_timers:
        return
    _standing_timers.add(key)

    def renew() -> None:
        connection_class.create_timer(STANDING_TIMER_SECONDS, renew)  # type: ignore[attr-defined]

    renew()


def _settle(result: asyncio.Future[_Page], page: _Page | None, exc: BaseException | None) -> None:
    if result.done():  # a second answer to the same request
        return
    if exc is not None:
        result.set_exception(exc)
    else:
        assert page is not None
        result.set_result(page)


async def prepare_all(cql: CqlSession, statements: Mapping[str, str]) -> dict[str, PreparedStatement]:
    """A store's statements by name, prepared one after the other with `cql.prepare`."""
    return {name: await cql.prepare(query) for name, query in statements.items()}
