"""Where everything listens: the one place instance counts, ports and store
nodes come from.

Two topologies, chosen by CHIRP_TOPOLOGY when the stack is brought up and
recorded in .state/topology so later commands (down, status, tests) follow it:

- ``single`` (default): one Cassandra, one Kafka, one Redis on 127.0.0.1, and
  one state Redis (below) on 127.0.0.1:6390.
- ``cluster``: three Cassandra nodes on 127.0.0.1/.2/.3 (keyspace at
  NetworkTopologyStrategy RF 3), three Kafka nodes in KRaft (each broker and
  controller) on the same three addresses (topics at RF 3, min.insync.replicas
  2), a Redis Cluster of 3 primaries and 3 replicas on 127.0.0.1:6379-6384, and
  a state Redis Cluster laid out the same on 127.0.0.1:6390-6395.

Two Redis stores: the cache (timelines, tweet and list caches: evicts the
least recently used key when full) and the state Redis (rate-limit and login
counters, trending tallies: never evicts; a write that would pass its memory
limit is refused instead), since a counter evicted alone is lost silently.

Only one topology runs at a time: the first cluster node uses the single
node's addresses and ports.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
EDGE_PORT = 8080
ENVOY_ADMIN_PORT = 9901
# The edge's reflection and health endpoint (envoy/sidecar.py), routed by Envoy.
# Not 9902: the production Envoy pod serves its ops listener there.
EDGE_SIDECAR_PORT = 9903
CQL_PORT = 9042
CASSANDRA_STORAGE_PORT = 7000
KAFKA_PORT = 9092
KAFKA_CONTROLLER_PORT = 9093
REDIS_PORT = 6379
STATE_REDIS_PORT = 6390  # the state Redis (below): 6390-6395 on the cluster topology
METRICS_OFFSET = 1000  # an instance's /metrics port is its gRPC port + 1000

SINGLE, CLUSTER = "single", "cluster"
TOPOLOGIES = (SINGLE, CLUSTER)
RECORD = Path(__file__).resolve().parent.parent / ".state" / "topology"

CLUSTER_HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
# Evenly spaced Murmur3 tokens, one per node (num_tokens: 1).
CLUSTER_TOKENS = ("-9223372036854775808", "-3074457345618258603", "3074457345618258602")
REDIS_CLUSTER_NODES = 6  # 3 primaries, each with one replica


@dataclass(frozen=True)
class Service:
    """A kind of process: an API service behind Envoy, or a worker."""

    name: str  # e.g. graph_svc, like_worker
    module: str  # what `python -m` runs
    grpc_service: str  # fully-qualified gRPC service name; "" for a worker (health only)
    base_port: int  # gRPC port (health, reflection) of instance 0
    index: int  # spreads instance ids so every process gets its own

    @property
    def routed(self) -> bool:
        """Served to clients through Envoy."""
        return bool(self.grpc_service)


@dataclass(frozen=True)
class Instance:
    service: Service
    ordinal: int

    @property
    def name(self) -> str:
        return f"{self.service.name}-{self.ordinal}"

    @property
    def port(self) -> int:
        return self.service.base_port + self.ordinal

    @property
    def metrics_port(self) -> int:
        return self.port + METRICS_OFFSET

    @property
    def instance_id(self) -> int:
        # 10-bit Snowflake instance id: 32 slots per service.
        return self.service.index * 32 + self.ordinal


@dataclass(frozen=True)
class StoreNode:
    """One process of a store: a Cassandra node, a Kafka node or a Redis node."""

    kind: str  # cassandra | kafka | redis | redis_state
    name: str  # component name: "cassandra" alone, "cassandra-2" in a cluster
    host: str
    port: int
    ordinal: int  # 1-based position in its cluster

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


SERVICES = (
    Service("graph_svc", "graph_svc.main", "chirp.graph.v1.GraphService", 50051, 1),
    Service("tweet_svc", "tweet_svc.main", "chirp.tweet.v1.TweetService", 50061, 2),
    Service("feed_svc", "feed_svc.main", "chirp.feed.v1.FeedService", 50071, 3),
    Service("rank_svc", "rank_svc.main", "chirp.rank.v1.RankService", 50081, 4),
)
WORKERS = (
    Service("like_worker", "tweet_svc.like_worker", "", 50091, 5),
    Service("fanout_worker", "feed_svc.fanout_worker", "", 50101, 6),
    Service("rank_worker", "rank_svc.rank_worker", "", 50111, 7),
)


def instance_count() -> int:
    count = int(os.environ.get("CHIRP_INSTANCES", "2"))
    if not 1 <= count <= 9:
        raise ValueError("CHIRP_INSTANCES must be between 1 and 9")
    return count


def instances(service: Service) -> list[Instance]:
    return [Instance(service, i) for i in range(instance_count())]


def all_instances() -> list[Instance]:
    return [inst for svc in (*SERVICES, *WORKERS) for inst in instances(svc)]


# ---- the store topology ------------------------------------------------------------


def current() -> str:
    """CHIRP_TOPOLOGY if set, else the topology the stack was last brought up with."""
    chosen = os.environ.get("CHIRP_TOPOLOGY", "").strip()
    if not chosen and RECORD.is_file():
        chosen = RECORD.read_text().strip()
    chosen = chosen or SINGLE
    if chosen not in TOPOLOGIES:
        raise ValueError(f"CHIRP_TOPOLOGY must be one of {', '.join(TOPOLOGIES)}, got {chosen!r}")
    return chosen


def recorded() -> str | None:
    """The topology whose state is in .state (None before the first `up`)."""
    return RECORD.read_text().strip() if RECORD.is_file() else None


def record(topology: str) -> None:
    RECORD.parent.mkdir(parents=True, exist_ok=True)
    RECORD.write_text(topology + "\n")


def is_cluster() -> bool:
    return current() == CLUSTER


def cassandra_nodes() -> list[StoreNode]:
    if not is_cluster():
        return [StoreNode("cassandra", "cassandra", HOST, CQL_PORT, 1)]
    return [StoreNode("cassandra", f"cassandra-{i}", h, CQL_PORT, i) for i, h in enumerate(CLUSTER_HOSTS, 1)]


def kafka_nodes() -> list[StoreNode]:
    if not is_cluster():
        return [StoreNode("kafka", "kafka", HOST, KAFKA_PORT, 1)]
    return [StoreNode("kafka", f"kafka-{i}", h, KAFKA_PORT, i) for i, h in enumerate(CLUSTER_HOSTS, 1)]


def redis_nodes(kind: str = "redis") -> list[StoreNode]:
    """The cache Redis's nodes, or the state Redis's (kind "redis_state")."""
    port = STATE_REDIS_PORT if kind == "redis_state" else REDIS_PORT
    if not is_cluster():
        return [StoreNode(kind, kind, HOST, port, 1)]
    return [StoreNode(kind, f"{kind}-{i}", HOST, port + i - 1, i) for i in range(1, REDIS_CLUSTER_NODES + 1)]


def state_redis_nodes() -> list[StoreNode]:
    return redis_nodes("redis_state")


def store_nodes() -> list[StoreNode]:
    return [*redis_nodes(), *state_redis_nodes(), *cassandra_nodes(), *kafka_nodes()]


def store_node(name: str) -> StoreNode:
    return next(node for node in store_nodes() if node.name == name)


def cql_hosts() -> list[str]:
    return [node.host for node in cassandra_nodes()]


def kafka_bootstrap() -> str:
    return ",".join(node.address for node in kafka_nodes())


def redis_url(kind: str = "redis") -> str:
    """One URL for a standalone Redis; a comma-separated list of nodes means a Redis Cluster."""
    nodes = redis_nodes(kind)
    if len(nodes) == 1:
        return f"redis://{nodes[0].address}/0"
    return ",".join(f"redis://{node.address}" for node in nodes)


def state_redis_url() -> str:
    return redis_url("redis_state")


def _env_int(name: str, default: int, minimum: int) -> int:
    raw = os.environ.get(name, "").strip()
    value = int(raw) if raw else default
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return value


def cql_replication() -> str:
    """The keyspace's replication map (CHIRP_CQL_REPLICATION overrides the topology's default)."""
    default = (
        "{'class': 'NetworkTopologyStrategy', 'datacenter1': 3}"
        if is_cluster()
        else "{'class': 'SimpleStrategy', 'replication_factor': 1}"
    )
    return os.environ.get("CHIRP_CQL_REPLICATION", "").strip() or default


def kafka_partitions() -> int:
    return _env_int("CHIRP_KAFKA_PARTITIONS", 6, 1)


def kafka_replication() -> int:
    return _env_int("CHIRP_KAFKA_REPLICATION", 3 if is_cluster() else 1, 1)


def kafka_min_insync() -> int:
    return _env_int("CHIRP_KAFKA_MIN_ISR", 2 if is_cluster() else 1, 1)
