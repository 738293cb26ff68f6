"""Redis client set-up; Redis holds only derived data that can be rebuilt.

CHIRP_REDIS_URL is one URL (a standalone Redis) or a comma-separated list of
`redis://host:port` nodes (a Redis Cluster, reached through redis-py's cluster
client, which follows MOVED/ASK redirections and re-discovers the topology
after a failover). Callers use one type, `RedisClient`, and only single-key
commands or pipelines of them (see common/keys.py), which both clients run.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias, TypeVar, cast
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.crc import REDIS_CLUSTER_HASH_SLOTS
from redis.exceptions import (
    ClusterDownError,
    ClusterError,
    MasterDownError,
    MaxConnectionsError,
    ReadOnlyError,
    RedisClusterException,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from common.keys import TWEET_DELETED, TWEET_DELETED_SECONDS, tweet_key

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

TIMEOUT_SECONDS = 0.5
MAX_CONNECTIONS = 64  # per node on a cluster
# One retry, after the cluster client has re-read the topology: that is what
# finds a replica promoted in a failover. More would only hold a request while a
# node is away (the cluster pipeline sleeps 0.25 s per retry); the read path
# falls back to the CQL store instead, and workers re-apply their batch.
RETRIES = 1


def _retry() -> Retry:
    return Retry(ExponentialWithJitterBackoff(cap=0.1, base=0.01), RETRIES)


def cluster_nodes(url: str) -> list[tuple[str, int]]:
    """(host, port) of each `redis://host:port` in a comma-separated list."""
    nodes = []
    for part in url.split(","):
        parsed = urlsplit(part.strip())
        if parsed.scheme != "redis" or not parsed.hostname or parsed.path not in ("", "/", "/0"):
            raise ValueError(f"a Redis Cluster node must be redis://host:port, got {part.strip()!r}")
        nodes.append((parsed.hostname, parsed.port or 6379))
    return nodes


def connect_redis(url: str, timeout_seconds: float = TIMEOUT_SECONDS) -> RedisClient:
    """A standalone client for one URL, a cluster client for a list of nodes.
    Neither connects before its first command, so a service starts while Redis is down."""
    if "," not in url:
        return aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_seconds,
            socket_connect_timeout=timeout_seconds,
            health_check_interval=10,
            max_connections=MAX_CONNECTIONS,
            retry=_retry(),
        )
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in cluster_nodes(url)],
        socket_timeout=timeout_seconds,
        socket_connect_timeout=timeout_seconds,
        health_check_interval=10,
        max_connections=MAX_CONNECTIONS,
        retry=_retry(),
        # The servers decide whether a shard without a primary stops the others
        # (cluster-require-full-coverage); the client keeps serving the slots it can.
        require_full_coverage=False,
    )


async def redis_ping(client: RedisClient) -> bool:
    """For health probes: a standalone Redis answers, or every primary of a cluster does."""
    try:
        if isinstance(client, RedisCluster):
            return await cluster_ping(client)
        return bool(await client.ping())
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
    await client.set(tweet_key("body", tweet_id), TWEET_DELETED, px=int(TWEET_DELETED_SECONDS * 1000))


class Tolerant:
    """A Redis-backed cache whose read-path calls can act as misses while Redis is down."""

    def __init__(self) -> None:
        self.down_until = 0.0  # read-path calls skip Redis until then


F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
RETRY_AFTER_SECONDS = 1.0


def _nothing() -> None:
    return None


def tolerant(miss: Callable[[], Any] = _nothing) -> Callable[[F], F]:
    """For read-path calls: while Redis is unreachable, act as a cache miss so
    reads are served from the CQL store and the other services instead.

    `miss` makes the miss value, afresh for every call: callers add what they
    load from the store to it, and a shared object would keep that for the next
    caller (deleted tweets served, like counts frozen while Redis is down)."""
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
                # This process's pool is exhausted: Redis itself is fine, so only this call misses.
                return miss()
            except REDIS_UNAVAILABLE_ERRORS as exc:
                if time.monotonic() >= self.down_until + RETRY_AFTER_SECONDS:
                    log.warning("Redis unavailable; serving reads without it: %r", exc)
                self.down_until = time.monotonic() + RETRY_AFTER_SECONDS
                return miss()

        return cast(F, guarded)

    return wrap
