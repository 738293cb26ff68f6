"""How full the state Redis is, before it refuses writes.

The state Redis never evicts (infra/topology.py): at its memory limit it refuses
writes (ChirpRedisFull). Each rank worker, its main writer, reads every node's
used memory and limit (INFO memory) every POLL_SECONDS and exports their ratio,
`chirp_redis_state_memory_used_ratio{node}`, for the alert
ChirpRedisStateAlmostFull. Every node listed in CHIRP_REDIS_STATE_URL is read
over a connection of its own (replicas too: a replica as full as its primary
says the same), so a failover does not change what is read. A node that does
not answer reads NaN (no alert on it; ChirpRedisUnavailable covers it).
"""

from __future__ import annotations

import asyncio
import logging
import math

import redis.asyncio as aioredis
from prometheus_client import Gauge
from redis.exceptions import RedisError

from common.cache import cluster_nodes

log = logging.getLogger(__name__)

POLL_SECONDS = 30.0
TIMEOUT_SECONDS = 2.0

MEMORY_USED = Gauge(
    "chirp_redis_state_memory_used_ratio",
    "The state Redis node's used memory over its maxmemory (it refuses writes past 1); NaN while unread.",
    ["node"],
)


class MemoryWatch:
    def __init__(self, url: str, interval_seconds: float = POLL_SECONDS) -> None:
        self._interval = interval_seconds
        self._clients = {
            f"{host}:{port}": aioredis.Redis(
                host=host, port=port, socket_timeout=TIMEOUT_SECONDS, socket_connect_timeout=TIMEOUT_SECONDS
            )
            for host, port in cluster_nodes(url)
        }

    async def read_once(self) -> None:
        for node, client in self._clients.items():
            try:
                info = await client.info("memory")
                limit = int(info["maxmemory"])
                MEMORY_USED.labels(node).set(int(info["used_memory"]) / limit if limit else 0.0)
            except (RedisError, OSError, KeyError, ValueError) as exc:
                MEMORY_USED.labels(node).set(math.nan)
                log.debug("could not read the memory of %s: %r", node, exc)

    async def run_forever(self) -> None:
        while True:
            await self.read_once()
            await asyncio.sleep(self._interval)

    async def close(self) -> None:
        for client in self._clients.values():
            await client.aclose()
