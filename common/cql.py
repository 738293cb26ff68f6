"""asyncio wrapper around the (thread-based) ScyllaDB/Cassandra driver."""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections import namedtuple
from collections.abc import Sequence
from typing import Any

from cassandra import ConsistencyLevel, DriverException, OperationTimedOut, ReadTimeout, Unavailable, WriteTimeout
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, NoHostAvailable, ResponseFuture, Session
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
from cassandra.query import PreparedStatement

from common import deadlines

log = logging.getLogger(__name__)

# Errors meaning the store is unreachable or overloaded, not that the query is wrong.
CQL_UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    NoHostAvailable,
    OperationTimedOut,
    Unavailable,
    ReadTimeout,
    WriteTimeout,
    DriverException,
)

LOCAL_DC = "datacenter1"


@functools.lru_cache(maxsize=1024)
def _row_type(columns: tuple[str, ...]) -> type:
    # "[applied]" (lightweight transactions) becomes "applied", as in the driver.
    return namedtuple("Row", [re.sub(r"\W", "_", c.strip("[]")) for c in columns], rename=True)


def named_rows(columns: list[str], rows: list[tuple[Any, ...]]) -> list[Any]:
    """Rows as named tuples, like the driver's default factory, but with one
    class per column list instead of a new class (an exec) for every result."""
    row = _row_type(tuple(columns))
    return [row(*r) for r in rows]


class CqlSession:
    """One driver session per process; statements are prepared once at start."""

    def __init__(self, cluster: Cluster, session: Session, default_timeout: float) -> None:
        self._cluster = cluster
        self._session = session
        self._default_timeout = default_timeout

    @classmethod
    async def connect(cls, hosts: Sequence[str], port: int, keyspace: str, default_timeout: float) -> CqlSession:
        profile = ExecutionProfile(
            load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=LOCAL_DC)),
            request_timeout=default_timeout,
            # Quorum reads and writes in the local DC: with RF 3 a read sees
            # every acknowledged write even with one replica down.
            consistency_level=ConsistencyLevel.LOCAL_QUORUM,
            serial_consistency_level=ConsistencyLevel.LOCAL_SERIAL,
            row_factory=named_rows,
        )
        cluster = Cluster(
            contact_points=list(hosts),
            port=port,
            protocol_version=4,
            execution_profiles={EXEC_PROFILE_DEFAULT: profile},
            connect_timeout=5,
        )
        loop = asyncio.get_running_loop()
        session = await loop.run_in_executor(None, cluster.connect, keyspace)
        return cls(cluster, session, default_timeout)

    async def prepare(self, query: str) -> PreparedStatement:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self._session.prepare, query)

    async def execute(self, statement: Any, params: Sequence[Any] | None = None) -> list[Any]:
        """Run one statement; returns all its rows (callers bound results with LIMIT).

        The driver hands rows over in pages of `fetch_size` (5000); every page is
        fetched, so a LIMIT above that is honoured rather than silently cut short.
        """
        future: ResponseFuture = self._session.execute_async(
            statement, params, timeout=deadlines.timeout(self._default_timeout)
        )
        loop = asyncio.get_running_loop()
        result: asyncio.Future[list[Any]] = loop.create_future()
        collected: list[Any] = []

        def on_rows(rows: list[Any]) -> None:
            collected.extend(rows or [])
            if future.has_more_pages:
                future.start_fetching_next_page()  # calls on_rows again with the next page
            else:
                loop.call_soon_threadsafe(_settle, result, collected, None)

        def on_error(exc: BaseException) -> None:
            loop.call_soon_threadsafe(_settle, result, None, exc)

        future.add_callbacks(on_rows, on_error)
        return await result

    async def ping(self) -> bool:
        try:
            await self.execute("SELECT release_version FROM system.local")
        except Exception:  # noqa: BLE001 - any failure means "not reachable"
            return False
        return True

    def close(self) -> None:
        self._cluster.shutdown()


def _settle(result: asyncio.Future[list[Any]], rows: list[Any] | None, exc: BaseException | None) -> None:
    if result.done():
        return
    if exc is not None:
        result.set_exception(exc)
    else:
        result.set_result(list(rows or []))
