"""Writes a worker commits its Kafka offsets after must survive a Redis failover.

Redis replicates asynchronously: a primary killed right after acknowledging a
write can be replaced by a replica that never got it, and a worker that has
already committed the event behind that write never applies it again. The
fan-out's timeline pushes were lost that way: the `tl:` key survives with its
`built` marker, so no read rebuilds it, and the tweet is missing from the
follower's home feed for good.

`ReplicaWaits` adds `WAIT 1 <ms>` to a pipeline of writes, once per primary the
pipeline writes to, on the connection that carried that primary's writes (WAIT
counts only its own connection's writes: redis-py's cluster pipeline sends each
node's commands in order on one connection). A primary whose replicas did not
acknowledge in time fails the call with `NotReplicated`, so the batch is not
committed and is applied again (its writes are idempotent). A primary with no
online replica (a standalone Redis; a cluster shard while its replica is away)
gets no WAIT: there is nothing to wait for, and waiting would only stall the
worker. A replica that has acknowledged nothing for a few seconds counts as away.
Replica counts come from INFO replication, read at most every
REPLICAS_CHECK_SECONDS per node, and again after a failed WAIT.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import SlotNotCoveredError

from common.cache import TIMEOUT_SECONDS, RedisClient

log = logging.getLogger(__name__)

# WAIT for one replica at most this long: under the clients' socket timeout
# (common/cache.py TIMEOUT_SECONDS, 0.5 s), so a slow replica is a NotReplicated
# (and its count read again), not a timeout of the whole pipeline.
REPLICA_ACK_MS = 400
REPLICAS_CHECK_SECONDS = 5.0
# A replica acknowledges its primary's stream every second; INFO's `lag` is the seconds
# since its last acknowledgement. One silent for longer is hung (stopped, cut off), though
# its primary calls it online until repl-timeout (60 s): counted, every WAIT on its
# primary would fail and hold the worker's batch back that long. Not counted, the
# primary is one whose replica is away, as while it resyncs.
REPLICA_LAG_SECONDS = 2


assert REPLICA_ACK_MS < TIMEOUT_SECONDS * 1000


class NotReplicated(Exception):
    """No replica acknowledged the writes in time: do not commit what they applied."""


def online_replicas(info: dict[str, Any], max_lag: float = REPLICA_LAG_SECONDS) -> int:
    """Replicas in an INFO replication reply that acknowledge writes: not one still
    syncing, nor one silent for longer than `max_lag` seconds."""
    return sum(
        1
        for name, value in info.items()
        if name.startswith("slave")
        and isinstance(value, dict)
        and value.get("state") == "online"
        and int(value.get("lag", 0)) <= max_lag
    )


@dataclass(frozen=True)
class Waits:
    """The WAITs `ReplicaWaits.queue` put on a pipeline, for `confirm`."""

    nodes: list[ClusterNode | None]  # the primaries waited on (None: a standalone Redis)
    owners: dict[str, str]  # key -> name of the primary it was written to (cluster)


class ReplicaWaits:
    def __init__(
        self, redis: RedisClient, ack_ms: int = REPLICA_ACK_MS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._redis = redis
        self._ack_ms = ack_ms
        self._clock = clock
        self._replicas: dict[str, tuple[float, int]] = {}  # node name -> (read at, online replicas)

    async def queue(self, pipe: Any, keys: Sequence[str]) -> Waits:
        """After the writes to `keys` are queued on `pipe`: a WAIT for each primary they go
        to that has a replica; its replies come last, one per `Waits.nodes`."""
        owners = await self._owners(keys)
        primaries: dict[str, ClusterNode | None] = {}
        for key in keys:
            node = owners.get(key)
            primaries.setdefault("" if node is None else node.name, node)
        nodes = [node for node in primaries.values() if await self._online(node) > 0]
        for node in nodes:
            if node is None:
                pipe.execute_command("WAIT", 1, self._ack_ms)
            else:
                pipe.execute_command("WAIT", 1, self._ack_ms, target_nodes=node)
        return Waits(nodes, {key: node.name for key, node in owners.items() if node is not None})

    async def execute(self, pipe: Any, keys: Sequence[str]) -> list[Any]:
        """`pipe.execute()` with the WAITs for `keys` (`queue`, then `confirm`); the
        replies of the writes. A pipeline that fails while waited on counts its
        replicas again next time: a replica that stopped answering made it time out."""
        waits = await self.queue(pipe, keys)
        try:
            replies: list[Any] = await pipe.execute()
        except Exception:
            self._forget(waits.nodes)
            raise
        writes = len(replies) - len(waits.nodes)
        self.confirm(waits, replies[writes:])
        return replies[:writes]

    def confirm(self, waits: Waits, acks: Sequence[Any]) -> None:
        """Raises NotReplicated unless every WAIT saw a replica acknowledge, on the primary
        that still owns its keys (a slot that moved was written through a redirection,
        on another connection than its WAIT's)."""
        if not waits.nodes:
            return
        moved = {name for key, name in waits.owners.items() if self._owner_name(key) != name}
        if moved:
            self._forget(waits.nodes)
            raise NotReplicated(f"slots of {sorted(moved)} moved while their writes were waited for")
        for node, acked in zip(waits.nodes, acks, strict=True):
            if int(acked) < 1:
                self._forget([node])
                where = "Redis" if node is None else node.name
                raise NotReplicated(f"no replica of {where} acknowledged the writes within {self._ack_ms} ms")

    async def replicas(self, key: str) -> int:
        """Online replicas of the primary holding `key` (0 on a standalone Redis without any)."""
        return await self._online((await self._owners([key]))[key])

    async def _owners(self, keys: Sequence[str]) -> dict[str, ClusterNode | None]:
        if not isinstance(self._redis, RedisCluster):
            return {key: None for key in keys}
        owners: dict[str, ClusterNode | None] = {}
        reread = False
        for key in keys:
            node = self._primary_of(key)
            if node is None and not reread:
                # After a failover the client may have dropped the slot: read the map again,
                # once a call (RedisCluster.initialize() does nothing once the client is set
                # up; a fold names a slot per trending shard).
                await self._redis.nodes_manager.initialize()
                reread = True
                node = self._primary_of(key)
            if node is None:
                raise NotReplicated(f"no primary is known for {key!r}")
            owners[key] = node
        return owners

    def _primary_of(self, key: str) -> ClusterNode | None:
        assert isinstance(self._redis, RedisCluster)
        try:
            return self._redis.get_node_from_key(key)
        except SlotNotCoveredError:  # the slot map has no owner for it
            return None

    def _owner_name(self, key: str) -> str:
        node = self._primary_of(key)
        return "" if node is None else str(node.name)

    async def _online(self, node: ClusterNode | None) -> int:
        name = "" if node is None else node.name
        read_at, count = self._replicas.get(name, (float("-inf"), 0))
        if self._clock() - read_at < REPLICAS_CHECK_SECONDS:
            return count
        if node is None:
            info = await self._redis.info("replication")
        else:
            info = await self._redis.info("replication", target_nodes=node)
        count = online_replicas(info)
        listed = online_replicas(info, max_lag=float("inf"))
        if count < listed:
            # Its primary still calls it online: writes there are acknowledged by no replica
            # until it answers again (a failover meanwhile can lose them).
            log.warning(
                "a Redis replica is silent; writes on its primary go on without waiting for it",
                extra={"primary": name or "standalone", "silent": listed - count},
            )
        self._replicas[name] = (self._clock(), count)
        return count

    def _forget(self, nodes: Sequence[ClusterNode | None]) -> None:
        """Read these nodes' replicas again next time: one may be gone."""
        for node in nodes:
            self._replicas.pop("" if node is None else node.name, None)
