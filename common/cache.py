"""Redis client set-up; Redis holds only derived data that can be rebuilt.

CHIRP_REDIS_URL is one URL (a standalone Redis) or a comma-separated list of
`redis://host:port` nodes (a Redis Cluster, reached through redis-py's cluster
client, which follows MOVED/ASK redirections and re-discovers the topology
after a failover). Callers use one type, `RedisClient`, and only single-key
commands or pipelines of them (see common/keys.py), which both clients run.

Each process holds at most MAX_CONNECTIONS commands in flight (per node on a
cluster); a command beyond that waits up to POOL_WAIT_SECONDS for one to end.
Running out of connections is this process queueing, never Redis being down:
when the wait ends without a connection, `PoolExhausted` fails that one call,
and `tolerant` turns it into a miss without skipping Redis for the others.

On a cluster, a node that cannot be reached costs only its own keys. Its address
is skipped for RETRY_AFTER_SECONDS once connecting to it failed (`NodeUnreachable`,
raised at once instead of connecting again); the cluster read path (`run_reads`)
answers every other node's commands, and the failed node's as misses; a pipeline
that meets it fails without redis-py's retry, which closes every connection of
the client (those of the requests in flight on the nodes that answer included),
sleeps 0.25 s and re-sends commands still in flight; the topology is read again
in the background (at most once per RETRY_AFTER_SECONDS), which finds the replica
once it is promoted; and `tolerant` calls on a cluster miss that one call instead
of skipping Redis altogether. Measured in the
fault suite, which SIGKILLs a primary: before this, every read went to the CQL
store until the replica took over (about 5 s), and on a busy 2-core machine
8-20% of the requests of that window failed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from typing import Any, TypeAlias, TypeVar, cast
from urllib.parse import urlsplit

import hiredis
import redis.asyncio as aioredis
from prometheus_client import Counter
from redis._parsers.hiredis import NOT_ENOUGH_DATA, _AsyncHiredisParser
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, NodesManager, PipelineStrategy, RedisCluster
from redis.asyncio.connection import AbstractConnection, Connection, ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.crc import REDIS_CLUSTER_HASH_SLOTS
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ClusterError,
    MasterDownError,
    MaxConnectionsError,
    MovedError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.maint_notifications import MaintNotificationsConfig

from common.keys import TWEET_DELETED, TWEET_DELETED_SECONDS, reload_claim_key, tweet_key

log = logging.getLogger(__name__)

RedisClient: TypeAlias = aioredis.Redis | RedisCluster

# Errors meaning "Redis cannot answer now" (down, unreachable, failing over, a slot
# without a primary), as opposed to a bad command (e.g. a cross-slot one), which
# is a bug and must not be hidden as a cache miss.
REDIS_UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,  # also BusyLoadingError and MaxConnectionsError
    RedisTimeoutError,
    ClusterError,
    ClusterDownError,
    MasterDownError,
    TryAgainError,
    SlotNotCoveredError,
    RedisClusterException,
    ReadOnlyError,  # a demoted primary refusing writes
)

# A process's claim on a reload after a read (common/keys.py, `reload_claim_key`): taken
# in the reload's first script (a random token, set unless another token holds the
# claim; set again by its own), so the other processes that found the same key due
# skip it, and released when the reload ends, whatever its outcome
# (RELEASE_CLAIM_SCRIPT). It lapses by itself after RELOAD_CLAIM_MS, longer than
# a reload takes (a gRPC call's 2 s deadline and two scripts), should its process die.
RELOAD_CLAIM_MS = 5_000
# KEYS: the claim. ARGV: the token it was taken with. A claim that lapsed and was taken
# again by another process is that process's, and stays.
RELEASE_CLAIM_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class ReloadClaims:
    """Releases this process's claims on reloads (RELOAD_CLAIM_MS)."""

    def __init__(self, redis: Any) -> None:
        self._release = redis.register_script(RELEASE_CLAIM_SCRIPT)

    @staticmethod
    def new() -> str:
        """A claim's token: random, so no other claim can be taken for it."""
        return secrets.token_hex(8)

    async def release(self, key: str, claim: str) -> None:
        """Ends the claim taken with `claim` on reloading `key`, if it is still that claim;
        should Redis fail to, it is left to lapse: never an error of the reload."""
        try:
            await self._release(keys=[reload_claim_key(key)], args=[claim])
        except REDIS_UNAVAILABLE_ERRORS as exc:
            log.debug("the reload claim of %s lapses by itself: %r", key, exc)
        except RedisError as exc:  # not the reload's outcome; a bug (a cross-slot key) shows here
            log.warning("the reload claim of %s lapses by itself: %r", key, exc)


Found = TypeVar("Found")


async def run_claimed_reloads(
    keys: Sequence[int],
    claim: Callable[[int, str], Awaitable[Found | None]],
    reload: Callable[[int, Found], Awaitable[bool]],
    release: Callable[[int, str], Awaitable[None]],
    at_once: asyncio.Semaphore,
    outcomes: Counter,
    what: str,
) -> None:
    """Reloads after reads, each under this process's claim: `claim(key, token)` takes
    it with a fresh token (`ReloadClaims.new`) and returns what the reload needs, or
    None to skip the key (gone, no longer due, or claimed by another process);
    `reload(key, found)` loads and stores, False when the key was written since;
    `release(key, token)` ends the claim whatever the outcome, also when the claim's
    reply was lost, so a failed reload leaves the key due for any process. At most
    `at_once` run together; `outcomes` counts them stored, changed, skipped or failed."""

    async def one(key: int) -> bool | None:
        async with at_once:
            token, claimed = ReloadClaims.new(), True
            try:
                found = await claim(key, token)
                if found is None:
                    claimed = False
                    return None
                return await reload(key, found)
            finally:
                if claimed:
                    await release(key, token)

    done = await asyncio.gather(*(one(k) for k in keys), return_exceptions=True)
    failed = [r for r in done if isinstance(r, BaseException)]
    outcomes.labels("stored").inc(sum(r is True for r in done))
    outcomes.labels("changed").inc(sum(r is False for r in done))
    outcomes.labels("skipped").inc(sum(r is None for r in done))
    if failed:  # those keys stay due: a later read asks again
        outcomes.labels("failed").inc(len(failed))
        log.debug("%d of %d %s reloads failed: %r", len(failed), len(done), what, failed[0])


TIMEOUT_SECONDS = 0.5
# Commands in flight per process. Measured (one asyncio process, pipelines of 24 GETs
# against a local Redis): throughput stops growing at 4 connections, as redis-py's CPU
# per command, not Redis, bounds a process; 16 leaves room for a slower Redis (a
# round trip 4 times longer) before anything queues. More connections only cost fds.
MAX_CONNECTIONS = 16
# How long a command waits for a connection before it fails as PoolExhausted: as
# long as one command may take, so a queue that long means this process is
# saturated, which its callers see as a miss rather than a longer wait.
POOL_WAIT_SECONDS = TIMEOUT_SECONDS
# Per cluster node beyond MAX_CONNECTIONS: the topology refresh (one at a time per
# client) asks a node outside the in-flight bound and must never find it full.
CLUSTER_SPARE_CONNECTIONS = 2
# One retry: a single cluster command is sent again once, after a connection error and
# the topology read again (which finds a replica promoted in a failover); a standalone
# connection once, after a connection error. Never after a timeout: the command may have
# been applied (QueueingRedisCluster.ERRORS_ALLOW_RETRY). Pipelines on a cluster are not
# retried (_QueueingClusterPipeline).
# More would only hold a request while a node is away; the read path falls back to the
# CQL store instead, and workers re-apply their batch.
RETRIES = 1


def _retry(supported_errors: tuple[type[RedisError], ...] = (RedisConnectionError, RedisTimeoutError)) -> Retry:
    return Retry(ExponentialWithJitterBackoff(cap=0.1, base=0.01), RETRIES, supported_errors)


# A standalone connection sends a command again after a connection error only: one whose
# reply missed the socket timeout may have been applied, and sent again a rate-limit INCR
# counted twice (CI once saw a user's 300th post refused as the 301st). The caller sees
# the timeout: a read misses, a counter fails open, a worker re-applies its batch.
STANDALONE_RETRY_ON = (RedisConnectionError,)
# The read path's batches (`run_reads`) change nothing, and are sent again after either.
READ_RETRY = _retry()


# How long what failed is left alone before it is tried again: a standalone Redis
# (`tolerant` skips it), and a cluster node that could not be reached (its commands
# fail at once with NodeUnreachable), so a node that was SIGKILLed costs one refused
# connection a second per process, and one that stopped answering one connect timeout
# a second, not one per command. The cluster's topology is read again at most as often.
RETRY_AFTER_SECONDS = 1.0
# (host, port) -> until when (time.monotonic()) this process skips it.
_unreachable: dict[tuple[str, int], float] = {}


class NodeUnreachable(RedisConnectionError):
    """A cluster node failed to connect or answer less than RETRY_AFTER_SECONDS ago:
    its commands fail at once, as a connection error, without trying it again."""


def _node_skipped(host: str, port: int | str) -> bool:
    until = _unreachable.get((host, int(port)))
    if until is None:
        return False
    if time.monotonic() < until:
        return True
    _unreachable.pop((host, int(port)), None)
    return False


def _node_failed(host: str, port: int | str) -> None:
    """Connecting to the node failed: skip it for RETRY_AFTER_SECONDS. Lapsed entries go
    here too: a node replaced under a new address (a rescheduled pod) is never looked up
    again."""
    now = time.monotonic()
    for node in [node for node, until in _unreachable.items() if until <= now]:
        del _unreachable[node]
    _unreachable[(host, int(port))] = now + RETRY_AFTER_SECONDS


def _skipped_error(host: str, port: int | str) -> NodeUnreachable:
    return NodeUnreachable(f"Redis node {host}:{port} did not answer; skipped for up to {RETRY_AFTER_SECONDS} s")


class _NodeGuardedConnection(Connection):
    """A cluster node's connection: connecting to a node skipped now fails at once,
    and a failed connect (refused, timed out, no answer to the handshake) skips it.
    A timeout there is NodeUnreachable: nothing was sent yet, so the command may be
    retried (QueueingRedisCluster retries no timeout)."""

    async def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True) -> None:
        if self.is_connected:
            return
        if _node_skipped(self.host, self.port):
            raise _skipped_error(self.host, self.port)
        try:
            await super().connect_check_health(check_health, retry_socket_connect)
        except RedisConnectionError:
            _node_failed(self.host, self.port)
            raise
        except RedisTimeoutError as exc:
            _node_failed(self.host, self.port)
            raise _skipped_error(self.host, self.port) from exc


def cluster_nodes(url: str) -> list[tuple[str, int]]:
    """(host, port) of each `redis://host:port` in a comma-separated list."""
    nodes = []
    for part in url.split(","):
        parsed = urlsplit(part.strip())
        if parsed.scheme != "redis" or not parsed.hostname or parsed.path not in ("", "/", "/0"):
            raise ValueError(f"a Redis Cluster node must be redis://host:port, got {part.strip()!r}")
        nodes.append((parsed.hostname, parsed.port or 6379))
    return nodes


POOL_EXHAUSTED = Counter(
    "chirp_redis_pool_exhausted_total",
    "Redis commands that found no connection free within the pool wait (this process saturated, not Redis down).",
)


REDIS_FULL = Counter(
    "chirp_redis_full_total",
    "Redis commands refused because Redis reached its memory limit and may not evict (the state Redis is full).",
)


class PoolExhausted(MaxConnectionsError):
    """No connection came free within POOL_WAIT_SECONDS: this process has as many
    commands in flight as it may, while Redis itself may answer well."""


def _exhausted(wait_seconds: float | None) -> PoolExhausted:
    POOL_EXHAUSTED.inc()
    return PoolExhausted(f"no Redis connection free within {wait_seconds} s")


async def _take_slot(slots: asyncio.Semaphore, wait_seconds: float) -> None:
    """One of a bounded number of commands in flight: at once while one is free (no
    suspension), else after waiting up to `wait_seconds`, or PoolExhausted."""
    if not slots.locked():
        await slots.acquire()  # free: returns without suspending
        return
    try:
        # Not asyncio.wait_for: on Python 3.11 it can return the slot to a task cancelled
        # meanwhile and swallow the cancellation (a deadline, a shutdown).
        async with asyncio.timeout(wait_seconds):
            await slots.acquire()
    except TimeoutError:
        raise _exhausted(wait_seconds) from None


class QueueingConnectionPool(ConnectionPool):
    """redis-py's pool with at most `max_connections` connections lent at once; a
    caller waits up to `timeout` seconds for one, then gets PoolExhausted (redis-py's
    BlockingConnectionPool raises a bare ConnectionError there, which reads as Redis
    being down).

    Lending and taking back are this class's own, on the pool's lists and its
    connection check: redis-py's add a condition, a lock, a timeout, OpenTelemetry
    counters and an event dispatch (for re-authentication) to each, which Chirp does
    not use and which cost more than the command. Measured, one borrow and return
    under uvloop: 70-78 µs with BlockingConnectionPool, 35-40 with ConnectionPool's
    own methods and this wait, 8 with these; a feed read borrows two. The wait is a
    semaphore that returns without suspending while a connection is free. Between
    taking a connection off a list and putting it on the other nothing awaits, so
    the event loop needs no lock there."""

    def __init__(self, *args: Any, timeout: float = POOL_WAIT_SECONDS, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timeout = timeout
        self._slots = asyncio.Semaphore(self.max_connections)

    async def get_connection(self, *args: Any, **kwargs: Any) -> AbstractConnection:
        await _take_slot(self._slots, self.timeout)
        try:
            connection = self.get_available_connection()
        except BaseException:
            self._slots.release()
            raise
        try:
            # Connected, and nothing left unread by a command cut short: else reconnected.
            await self.ensure_connection(connection)
        except BaseException:
            await self.release(connection)
            raise
        return connection

    async def release(self, connection: AbstractConnection) -> None:
        self._in_use_connections.remove(connection)  # one this pool did not lend: no slot to give back
        try:
            if connection.should_reconnect():
                await connection.disconnect()
            self._available_connections.append(connection)
        finally:
            self._slots.release()


# Set while a task runs a command under QueueingRedisCluster's bound: the cluster
# pipeline re-sends a redirected command through the client, which must not wait
# for a second slot (with every slot so held, nothing would ever free one).
_IN_FLIGHT: ContextVar[bool] = ContextVar("chirp_redis_in_flight", default=False)

T = TypeVar("T")


class _NodesManager(NodesManager):
    """redis-py's, with a cluster whose slots are not all assigned yet (its membership
    Job still to run, on a fresh install) read as down: redis-py raises an IndexError
    when no slot is assigned, and a KeyError for a slot missing from its map, which
    callers would take for bugs."""

    __slots__ = ()  # NodesManager's own: QueueingRedisCluster swaps the class of the one made

    async def initialize(self, *args: Any, **kwargs: Any) -> None:
        try:
            await super().initialize(*args, **kwargs)
        except IndexError as exc:
            raise ClusterDownError("no slot of the Redis Cluster is assigned yet") from exc

    def get_node_from_slot(self, slot: int, *args: Any, **kwargs: Any) -> ClusterNode:
        try:
            return super().get_node_from_slot(slot, *args, **kwargs)
        except KeyError as exc:
            raise SlotNotCoveredError(f"slot {slot} is not assigned to a node of the Redis Cluster") from exc


class QueueingRedisCluster(RedisCluster):
    """The cluster client's nodes raise MaxConnectionsError at once when full, and
    redis-py 8.1 offers no blocking pool for them; so commands and pipelines wait
    here for one of MAX_CONNECTIONS slots. Each holds at most one connection per
    node, so no node's pool (MAX_CONNECTIONS + CLUSTER_SPARE_CONNECTIONS) runs out:
    inside a cluster pipeline a full node would read as a connection error.

    A command that meets a node skipped now (NodeUnreachable) is retried as one that
    met a refused connection is: once, after the topology is read again, which finds a
    replica promoted meanwhile (redis-py retries only errors of exactly its listed types).
    One whose reply did not come in time is not: redis-py sent it again, and the rank
    worker's lease (SET NX) was refused to the instance that took it, its epoch INCR
    counted twice; its caller sees the timeout, as on a standalone Redis
    (STANDALONE_RETRY_ON)."""

    ERRORS_ALLOW_RETRY = (RedisConnectionError, ClusterDownError, SlotNotCoveredError, NodeUnreachable)  # type: ignore[assignment]

    def __init__(self, *args: Any, in_flight: int, wait_seconds: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.nodes_manager.__class__ = _NodesManager  # made by RedisCluster.__init__, which takes no class
        self._slots = asyncio.Semaphore(in_flight)
        self._wait_seconds = wait_seconds
        self._refreshing: asyncio.Task[None] | None = None
        self._refreshed_at = -RETRY_AFTER_SECONDS
        # redis-py's cluster client takes no connection class (it sets its own); every
        # node, those it discovers later included, is made from these kwargs.
        self.nodes_manager.connection_kwargs["connection_class"] = _NodeGuardedConnection
        for node in self.nodes_manager.startup_nodes.values():
            node.connection_class = _NodeGuardedConnection

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        return await self.bounded(lambda: RedisCluster.execute_command(self, *args, **kwargs))

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> ClusterPipeline:
        if shard_hint:
            return super().pipeline(transaction, shard_hint)  # refused there
        # redis/typing.py declares an attribute ClusterPipeline never sets; redis-py's own
        # pipeline() builds its ClusterPipeline the same way.
        return _QueueingClusterPipeline(self, transaction)  # type: ignore[abstract]

    async def reads(self, commands: Sequence[tuple[str | int | float, ...]]) -> list[Any]:
        """Single-key reads (the key second in each command), sent to each node on one of
        its connections as the standalone path sends them (`_exchange`), the nodes at
        once. A node that fails gives each of its commands the error as its reply (a
        miss for the caller) and the others are answered; commands redirected (MOVED,
        ASK: a slot moved or a replica promoted) are sent once more after the topology
        is read again."""
        return await self.bounded(lambda: self._reads(commands))

    async def _reads(self, commands: Sequence[tuple[str | int | float, ...]]) -> list[Any]:
        if self._initialize:
            await self.initialize()
        replies: list[Any] = [None] * len(commands)
        todo = list(range(len(commands)))
        for attempt in range(2):
            nodes: dict[str, tuple[ClusterNode, list[int]]] = {}
            for i in todo:
                try:
                    node = self.nodes_manager.get_node_from_slot(self.keyslot(commands[i][1]))
                except SlotNotCoveredError as exc:
                    replies[i] = exc
                    continue
                nodes.setdefault(node.name, (node, []))[1].append(i)
            runs = [self._node_reads(node, [commands[i] for i in indexes]) for node, indexes in nodes.values()]
            # One node (a page whose keys share a slot, or a small read): no task.
            answers = [await runs[0]] if len(runs) == 1 else await asyncio.gather(*runs)
            for (_node, indexes), got in zip(nodes.values(), answers, strict=True):
                for i, reply in zip(indexes, got, strict=True):
                    replies[i] = reply
            todo = [i for i in todo if isinstance(replies[i], (MovedError, AskError))]
            if not todo:
                break
            if attempt or any(isinstance(replies[i], AskError) for i in todo):
                # A slot in migration (ASK), or moved again meanwhile: one at a time, following
                # the redirection; an error reply stays a reply, as on the first try.
                for i in todo:
                    try:
                        replies[i] = await RedisCluster.execute_command(self, *commands[i])
                    except RedisError as exc:
                        replies[i] = exc
                break
            await self.nodes_manager.initialize()
        return replies

    async def _node_reads(self, node: ClusterNode, commands: list[tuple[str | int | float, ...]]) -> list[Any]:
        """The replies of one node, or its error as the reply of each command. A node is
        skipped only once connecting to it failed (`_NodeGuardedConnection`): a reply that
        took too long (a busy machine) costs that call alone."""
        if _node_skipped(node.host, node.port):
            return [_skipped_error(node.host, node.port)] * len(commands)
        try:
            connection = node.acquire_connection()
        except MaxConnectionsError as exc:
            return [exc] * len(commands)
        try:
            await node.disconnect_if_needed(connection)
            return cast(
                list[Any],
                await connection.retry.call_with_retry(
                    lambda: _exchange(connection, commands), lambda _error: connection.disconnect()
                ),
            )
        except (RedisConnectionError, RedisTimeoutError) as exc:
            self.refresh_soon()  # a replica promoted meanwhile is found by the next read
            return [exc] * len(commands)
        finally:
            node.release(connection)

    def refresh_soon(self) -> None:
        """Read the topology again in the background, at most once per RETRY_AFTER_SECONDS:
        it finds a replica promoted in place of a lost primary. (redis-py then reconnects
        each connection when it is next taken, none in use: so not once per failed call.)"""
        if (self._refreshing is None or self._refreshing.done()) and self._refresh_due():
            self._refreshing = asyncio.get_running_loop().create_task(self._refresh())

    def _refresh_due(self, force: bool = False) -> bool:
        """True, and the time noted, when the topology may be read again now (or `force`)."""
        now = time.monotonic()
        if now < self._refreshed_at + RETRY_AFTER_SECONDS and not force:
            return False
        self._refreshed_at = now
        return True

    async def _refresh(self) -> None:
        try:
            await self.nodes_manager.initialize()
        except REDIS_UNAVAILABLE_ERRORS as exc:
            log.debug("Redis Cluster topology not read again: %r", exc)

    async def initialize(self, *args: Any, **kwargs: Any) -> QueueingRedisCluster:
        """redis-py re-reads the topology before the next command after every connection
        error, and each re-read marks every connection of every node for reconnecting: with
        a node lost, every command to its keys failed and so every command to the others
        connected again. Here a re-read comes at most once per RETRY_AFTER_SECONDS (the
        first one, and one after the client was closed, at once); meanwhile the known
        topology is used, and a command for the lost node fails at once (NodeUnreachable)."""
        if self._initialize and not self._refresh_due(force=self.nodes_manager.default_node is None):
            self._initialize = False
            return self
        await super().initialize(*args, **kwargs)
        return self

    async def bounded(self, call: Callable[[], Awaitable[T]]) -> T:
        if _IN_FLIGHT.get():
            return await call()
        await _take_slot(self._slots, self._wait_seconds)
        token = _IN_FLIGHT.set(True)
        try:
            return await call()
        finally:
            _IN_FLIGHT.reset(token)
            self._slots.release()


class _QueueingClusterPipeline(ClusterPipeline):
    __slots__ = ()

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> list[Any]:
        client = cast(QueueingRedisCluster, self.cluster_client)
        strategy: Any = self._execution_strategy
        if type(strategy) is not PipelineStrategy:  # a transaction: redis-py's own path
            return await client.bounded(lambda: ClusterPipeline.execute(self, raise_on_error, allow_redirections))
        return await client.bounded(lambda: self._run(strategy, raise_on_error, allow_redirections))

    async def _run(self, strategy: Any, raise_on_error: bool, allow_redirections: bool) -> list[Any]:
        """redis-py's pipeline run (redirections followed as it follows them), but not its
        retry on a connection error or a failover: that retry first closes every connection
        of the client, those of other requests in flight on the nodes that answer too, sleeps
        0.25 s, and re-sends the commands whose replies had not come yet, some of them
        still in flight on those nodes. Here the pipeline fails (its caller misses, or
        re-applies its batch), and the topology is read again in the background."""
        client = cast(QueueingRedisCluster, self.cluster_client)
        try:
            if not strategy._command_queue:
                return []
            if client._initialize:
                await client.initialize()
            return cast(
                list[Any],
                await strategy._execute(
                    client,
                    strategy._command_queue,
                    raise_on_error=raise_on_error,
                    allow_redirections=allow_redirections,
                ),
            )
        except RedisCluster.ERRORS_ALLOW_RETRY:
            client.refresh_soon()
            raise
        finally:
            await self.reset()


def connect_redis(
    url: str,
    timeout_seconds: float = TIMEOUT_SECONDS,
    max_connections: int = MAX_CONNECTIONS,
    pool_wait_seconds: float = POOL_WAIT_SECONDS,
) -> RedisClient:
    """A standalone client for one URL, a cluster client for a list of nodes, each
    keeping at most `max_connections` commands in flight (the others wait up to
    `pool_wait_seconds`). Neither connects before its first command, so a service
    starts while Redis is down."""
    if "," not in url:
        pool = QueueingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=pool_wait_seconds,
            socket_timeout=timeout_seconds,
            socket_connect_timeout=timeout_seconds,
            health_check_interval=10,
            retry=_retry(STANDALONE_RETRY_ON),
            # Maintenance notifications are Redis Enterprise's; while on ("auto", the
            # default), redis-py lends a connection with a reply left unread as it is.
            maint_notifications_config=MaintNotificationsConfig(enabled=False),
        )
        return aioredis.Redis.from_pool(pool)
    return QueueingRedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in cluster_nodes(url)],
        in_flight=max_connections,
        wait_seconds=pool_wait_seconds,
        socket_timeout=timeout_seconds,
        socket_connect_timeout=timeout_seconds,
        health_check_interval=10,
        max_connections=max_connections + CLUSTER_SPARE_CONNECTIONS,
        retry=_retry(),
        # The servers decide whether a shard without a primary stops the others
        # (cluster-require-full-coverage); the client keeps serving the slots it can.
        require_full_coverage=False,
        # A MOVED (a slot's new owner: every failover, CLUSTER FAILOVER at each rolling
        # restart) updates that slot's owner. redis-py's default also closes every
        # connection of the client at every fifth one, those of commands in flight on
        # every node included, which then failed or were sent again.
        reinitialize_steps=0,
        # Always ask the nodes named here for the slot map. redis-py otherwise replaces
        # them with the nodes the last map named: a map read before the cluster was
        # made (a client started before its membership Job) names none, and the
        # client could never connect again.
        dynamic_startup_nodes=False,
    )


def named_node(url: str) -> tuple[str, int]:
    """(host, port) of one `redis://` URL, whatever else it carries (credentials, db, TLS)."""
    part = urlsplit(url.strip())
    return (part.hostname or "").lower(), part.port or 6379


def _named_nodes(url: str) -> set[tuple[str, int]]:
    return {named_node(part) for part in url.split(",")}


def connect_state_redis(state_url: str, cache_url: str) -> RedisClient:
    """The state Redis's client (CHIRP_REDIS_STATE_URL: counters and trending tallies, in a
    Redis that never evicts). Naming the cache there brings its eviction back: said at start."""
    if _named_nodes(state_url) & _named_nodes(cache_url):
        log.warning(
            "CHIRP_REDIS_STATE_URL names a node of the cache's CHIRP_REDIS_URL: rate-limit counters and trending "
            "tallies can be evicted there; give them a Redis with maxmemory-policy noeviction"
        )
    return connect_redis(state_url)


class ReadBatch:
    """Records read commands queued as on a redis-py pipeline (the few the read path
    uses, same signatures), for `run_reads` to send without the pipeline's layers."""

    def __init__(self) -> None:
        self.commands: list[tuple[str | int | float, ...]] = []

    def get(self, name: str) -> None:
        self.commands.append(("GET", name))

    def hget(self, name: str, key: str) -> None:
        self.commands.append(("HGET", name, key))

    def hmget(self, name: str, keys: Sequence[str]) -> None:
        self.commands.append(("HMGET", name, *keys))

    def zscore(self, name: str, value: str) -> None:
        self.commands.append(("ZSCORE", name, value))

    def pttl(self, name: str) -> None:
        self.commands.append(("PTTL", name))

    def zrevrange(self, name: str, start: int, end: int) -> None:
        self.commands.append(("ZREVRANGE", name, start, end))

    def zrangebyscore(self, name: str, min: float | str, max: float | str) -> None:
        self.commands.append(("ZRANGEBYSCORE", name, min, max))

    def zrevrangebyscore(self, name: str, max: float | str, min: float | str, start: int, num: int) -> None:
        self.commands.append(("ZREVRANGEBYSCORE", name, max, min, "LIMIT", start, num))


async def run_reads(client: RedisClient, queue: Callable[[Any], None]) -> list[Any]:
    """The replies to the single-key reads `queue` puts on a pipeline, sent as one, an
    error reply as its exception (raise_on_error=False). A reply may come raw (bytes, a
    list, None; ZSCORE as bytes, not a float): callers only read commands for which that
    is all they need.

    On a standalone Redis the commands go through one pooled connection, packed by
    hiredis and read by redis-py's parser, with the pool's wait and socket timeout, as its
    pipeline does, but one timeout covers every reply: its pipeline arms one per reply,
    and with its other per-command layers that made about 13 µs of CPU per command, 0.6 ms
    for the 43 reads of a 20-tweet page (measured: this takes 0.24, see _exchange). A
    cluster (or any other client) runs a pipeline, which a cluster client splits by node."""
    if isinstance(client, QueueingRedisCluster):
        batch = ReadBatch()
        queue(batch)
        return await client.reads(batch.commands)
    if not isinstance(client, aioredis.Redis):
        async with client.pipeline(transaction=False) as pipe:
            queue(pipe)
            return await pipe.execute(raise_on_error=False)
    batch = ReadBatch()
    queue(batch)
    pool = client.connection_pool
    connection = await pool.get_connection()
    try:
        # Reads only: one that timed out is sent again, on a new connection (the pool's
        # retry sends nothing again after a timeout, as a write may have been applied).
        return await READ_RETRY.call_with_retry(
            lambda: _exchange(connection, batch.commands), lambda _error: connection.disconnect()
        )
    finally:
        await pool.release(connection)


def unanswered(reply: Any) -> bool:
    """A reply of `run_reads` that is its node's unavailability (a cluster node that did
    not answer): a miss of that key for the caller."""
    return isinstance(reply, REDIS_UNAVAILABLE_ERRORS)


def raise_if_all_unanswered(replies: list[Any]) -> list[Any]:
    """The replies of `run_reads`, unless none was answered: then the first is raised
    (for `tolerant`: Redis is down, and every key a miss)."""
    if replies and all(unanswered(reply) for reply in replies):
        raise replies[0]
    return replies


def partial_replies(replies: list[Any]) -> list[Any]:
    """The replies of `run_reads`, for callers that take a node's unanswered replies as
    misses: every reply unanswered raises the first (`raise_if_all_unanswered`), and an
    error that is not unavailability (a bug, as a cross-slot command) raises too."""
    for reply in raise_if_all_unanswered(replies):
        if isinstance(reply, Exception) and not unanswered(reply):
            raise reply
    return replies


def pack_reads(commands: Sequence[tuple[str | int | float, ...]]) -> bytes:
    """The commands in the Redis protocol, packed by hiredis as redis-py's own sync client
    does: the same bytes as the async connection's pack_commands, which packs them in
    Python (measured on the 48 reads of a 20-tweet page: 8 times the CPU)."""
    # hiredis's stub declares a one-element tuple; it takes any number of arguments.
    return b"".join([hiredis.pack_command(cast(Any, command)) for command in commands])


async def _exchange(connection: AbstractConnection, commands: Sequence[tuple[str | int | float, ...]]) -> list[Any]:
    """Send the commands and read their replies, all under one timeout.

    redis-py's layers are kept where they do something here (connecting, its health
    check, turning a failed write into ConnectionError and closing the connection) and
    left where they cost more than the exchange: with a socket timeout set, its send
    runs the write in a task of its own (asyncio.wait_for), and each reply read through
    the connection formats the server's address, checks the protocol version and arms
    or skips a timeout. The replies come from the connection's parser (hiredis), which
    returns an error reply as its ResponseError (_read_replies). Measured with the pool
    above, against a local Redis under uvloop (CPU per run_reads, medians of five alternated rounds,
    before and after both): one GET 226 -> 82 µs, 43 GETs 605 -> 241 µs; a reply read
    cost about 4 µs, where it cost 9 (before _read_replies)."""
    packed = pack_reads(commands)
    replies: list[Any] = []
    if not connection.is_connected:
        # Connected, its handshake read, under the connection's own timeouts and not the
        # one below: cancelled by that one, a connect or handshake that timed out was no
        # redis error, so a cluster node that accepts connections and never answers (a
        # stopped process, a lost network) was never skipped (_NodeGuardedConnection),
        # and every read of its keys waited out the whole timeout.
        await connection.connect()
    try:
        async with asyncio.timeout(connection.socket_timeout):
            # The timeout above covers the write: no second one, and so no task, for it.
            socket_timeout, connection.socket_timeout = connection.socket_timeout, None
            try:
                await connection.send_packed_command(packed)
            finally:
                connection.socket_timeout = socket_timeout
            parser: Any = connection._parser  # redis-py's own reader of this connection (hiredis)
            try:
                await _read_replies(parser, len(commands), replies)
                if connection.health_check_interval:  # as a read through the connection does
                    connection.next_health_check = asyncio.get_running_loop().time() + connection.health_check_interval
            except BaseException as exc:
                # Replies cut short (a timeout, a cancellation, a closed socket) would be
                # read by the connection's next user: it is closed instead.
                await connection.disconnect(nowait=True)
                if isinstance(exc, OSError):
                    raise RedisConnectionError(f"Error while reading from Redis: {exc!r}") from exc
                raise
    except TimeoutError:
        raise RedisTimeoutError(f"Redis did not answer {len(commands)} reads in time") from None
    return replies


async def _read_replies(parser: Any, count: int, replies: list[Any]) -> None:
    """Appends `count` replies from the connection's parser to `replies`.

    With hiredis (redis-py's _AsyncHiredisParser), every reply already in the buffer
    is taken from its reader at once and the socket is read only when it runs dry:
    its read_response, a coroutine per reply with its checks, made a whole cached page
    read cost 1.40 ms of CPU in-process where this makes it 1.31 (medians of eight
    alternated rounds of 300 pages, no gRPC). What read_response does with a reply is
    kept: a closed connection or a ConnectionError reply raises, an error reply is
    returned as its exception, a RESP3 push goes to the parser's push handler and
    is not counted (Chirp subscribes to none, and maintenance pushes are off: see
    connect_redis). Any other parser: one read_response per reply."""
    if type(parser) is not _AsyncHiredisParser:
        for _ in range(count):
            replies.append(await parser.read_response())
        return
    if not parser._connected:
        raise RedisConnectionError("Connection closed by server.")
    reader: Any = parser._reader  # a hiredis.Reader once connected
    wanted = len(replies) + count
    push = parser._hiredis_PushNotificationType
    while len(replies) < wanted:
        reply = reader.gets()
        if reply is NOT_ENOUGH_DATA:
            await parser.read_from_socket()
            continue
        if isinstance(reply, RedisConnectionError):
            raise reply
        if push is not None and isinstance(reply, push):  # RESP3 push: not a reply to a command
            await parser.handle_push_response(reply)
            continue
        if isinstance(reply, list) and reply and isinstance(reply[0], RedisConnectionError):
            raise reply[0]
        replies.append(reply)


async def redis_ping(client: RedisClient) -> bool:
    """For health probes: a standalone Redis answers, or every primary of a cluster does."""
    try:
        if isinstance(client, RedisCluster):
            return await cluster_ping(client)
        return bool(await client.ping())
    except MaxConnectionsError:
        # Every connection busy with commands: a probe that said "down" would take a
        # busy instance out of service, the opposite of what it needs.
        return True
    except Exception:  # noqa: BLE001 - any failure means "not reachable"
        return False


async def cluster_ping(client: RedisCluster) -> bool:
    """Every primary answers PING and every slot is served (none of its owners failing).
    Raises when a node cannot be reached."""
    if not await client.ping(target_nodes=RedisCluster.PRIMARIES):
        return False
    info = await client.cluster_info(target_nodes=RedisCluster.RANDOM)
    return str(info.get("cluster_slots_ok")) == str(REDIS_CLUSTER_HASH_SLOTS)


async def mark_tweet_deleted(client: RedisClient, tweet_id: int) -> None:
    """The deletion marker tweet_svc's cache honours; written by tweet_svc at the
    delete and by the fan-out worker from the tweet_deleted event. Overwrites a
    cached body; a reader's fill (SET NX) never overwrites the marker."""
    key, value, ttl_ms = deletion_marker(tweet_id)
    await client.set(key, value, px=ttl_ms)


def deletion_marker(tweet_id: int) -> tuple[str, bytes, int]:
    """(key, value, time to live in ms) of a tweet's deletion marker."""
    return tweet_key("body", tweet_id), TWEET_DELETED, int(TWEET_DELETED_SECONDS * 1000)


class Tolerant:
    """A Redis-backed cache whose read-path calls can act as misses while Redis is down.

    Given a cluster client, a failure is one node's: the call that met it misses, and
    the transport skips that node alone for a while (NodeUnreachable), so the other
    calls keep the keys the other nodes hold. A standalone Redis that fails is
    skipped by every call for RETRY_AFTER_SECONDS."""

    def __init__(self, client: object = None) -> None:
        self.down_until = 0.0  # read-path calls skip Redis until then
        self.node_scoped = isinstance(client, RedisCluster)
        self.warned_at = -RETRY_AFTER_SECONDS  # the last warning: full, or a node unavailable

    def full(self, exc: OutOfMemoryError, doing: str) -> None:
        """Redis refused a write for memory: counted for the alert ChirpRedisFull, and
        logged at most once a RETRY_AFTER_SECONDS with what the caller does instead."""
        REDIS_FULL.inc()
        now = time.monotonic()
        if now >= self.warned_at + RETRY_AFTER_SECONDS:
            self.warned_at = now
            log.warning("Redis is full and may not evict; %s: %r", doing, exc)


F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def _nothing() -> None:
    return None


def tolerant(miss: Callable[[], Any] = _nothing, unavailable: str = "serving reads without it") -> Callable[[F], F]:
    """For read-path calls: while Redis is unreachable, act as a cache miss so
    reads are served from the CQL store and the other services instead.

    `miss` makes the miss value, afresh for every call: callers add what they
    load from the store to it, and a shared object would keep that for the next
    caller (deleted tweets served, like counts frozen while Redis is down).
    `unavailable` says in the log what the caller does without Redis."""
    if not callable(miss):
        raise TypeError("tolerant() takes a factory of the miss value, e.g. tolerant(dict)")

    def wrap(method: F) -> F:
        @functools.wraps(method)
        async def guarded(self: Tolerant, *args: Any, **kwargs: Any) -> Any:
            if time.monotonic() < self.down_until:
                return miss()
            try:
                return await method(self, *args, **kwargs)
            except MaxConnectionsError:
                # This process waited for a connection in vain (PoolExhausted) or a
                # node's pool was full: Redis itself answers, so only this call misses.
                return miss()
            except OutOfMemoryError as exc:
                # A Redis that may not evict (the state Redis, infra/topology.py) is at its
                # memory limit: it refuses writes at once and still answers reads, so only
                # this call misses.
                self.full(exc, unavailable)
                return miss()
            except REDIS_UNAVAILABLE_ERRORS as exc:
                now = time.monotonic()
                if self.node_scoped:
                    if now >= self.warned_at + RETRY_AFTER_SECONDS:
                        self.warned_at = now
                        log.warning("Redis node unavailable; %s for its keys: %r", unavailable, exc)
                    return miss()
                if now >= self.down_until + RETRY_AFTER_SECONDS:
                    log.warning("Redis unavailable; %s: %r", unavailable, exc)
                self.down_until = now + RETRY_AFTER_SECONDS
                return miss()

        return cast(F, guarded)

    return wrap
