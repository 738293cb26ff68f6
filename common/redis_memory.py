"""How full the state Redis is, before it refuses writes, and whether it evicts.

The state Redis never evicts (infra/topology.py): at its memory limit it refuses
writes (ChirpRedisFull). Each rank worker, its main writer, reads every node's
INFO memory every POLL_SECONDS and exports, per node:
- `chirp_redis_state_memory_used_ratio`: used memory over maxmemory, for the
  alert ChirpRedisStateAlmostFull; NaN while the node does not answer, and when
  it has no limit (maxmemory 0): ChirpRedisStateNodeUnread when no worker reads it;
- `chirp_redis_state_evicts`: 1 when its maxmemory-policy is not noeviction (a
  state URL that names an evicting Redis), for the alert ChirpRedisStateEvicts.

Every node listed in CHIRP_REDIS_STATE_URL is read at once, over a connection of
its own made from its URL (credentials, TLS and db as given), with no retry and
a short timeout, so one node that does not answer delays no other. Replicas are
read too: a replica as full as its primary says the same, and a failover changes
nothing in what is read. Reading is never an error of the worker: whatever goes
wrong reads NaN.
"""

from __future__ import annotations

import asyncio
import logging
import math

import redis.asyncio as aioredis
from prometheus_client import Gauge
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from common.cache import named_node

log = logging.getLogger(__name__)

POLL_SECONDS = 30.0
TIMEOUT_SECONDS = 2.0

MEMORY_USED = Gauge(
    "chirp_redis_state_memory_used_ratio",
    "The state Redis node's used memory over its maxmemory (it refuses writes past 1); NaN while unread or unlimited.",
    ["node"],
)
EVICTS = Gauge(
    "chirp_redis_state_evicts",
    "1 when the state Redis node's maxmemory-policy is not noeviction (its counters and tallies can be evicted).",
    ["node"],
)


class MemoryWatch:
    def __init__(self, url: str, interval_seconds: float = POLL_SECONDS) -> None:
        self._interval = interval_seconds
        self._clients = {
            "{}:{}".format(*named_node(part)): aioredis.Redis.from_url(
                part.strip(),
                socket_timeout=TIMEOUT_SECONDS,
                socket_connect_timeout=TIMEOUT_SECONDS,
                retry=Retry(NoBackoff(), 0),
            )
            for part in url.split(",")
        }

    async def read_once(self) -> None:
        await asyncio.gather(*(self._read(node, client) for node, client in self._clients.items()))

    async def _read(self, node: str, client: aioredis.Redis) -> None:
        try:
            info = await asyncio.wait_for(client.info("memory"), TIMEOUT_SECONDS * 2)
            limit = int(info["maxmemory"])
            MEMORY_USED.labels(node).set(int(info["used_memory"]) / limit if limit else math.nan)
            EVICTS.labels(node).set(0.0 if info.get("maxmemory_policy") == "noeviction" else 1.0)
        except Exception as exc:  # noqa: BLE001 - monitoring: whatever fails reads NaN, never stops the worker
            MEMORY_USED.labels(node).set(math.nan)
            EVICTS.labels(node).set(math.nan)
            log.debug("could not read the memory of %s: %r", node, exc)

    async def run_forever(self) -> None:
        while True:
            await self.read_once()
            await asyncio.sleep(self._interval)

    async def close(self) -> None:
        for client in self._clients.values():
            await client.aclose()
