"""Where everything listens: the one place instance counts and ports come from."""

from __future__ import annotations

import os
from dataclasses import dataclass

HOST = "127.0.0.1"
EDGE_PORT = 8080
ENVOY_ADMIN_PORT = 9901
CQL_PORT = 9042
KAFKA_PORT = 9092
REDIS_PORT = 6379
METRICS_OFFSET = 1000  # an instance's /metrics port is its gRPC port + 1000


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


SERVICES = (
    Service("graph_svc", "graph_svc.main", "chirp.graph.v1.GraphService", 50051, 1),
    Service("tweet_svc", "tweet_svc.main", "chirp.tweet.v1.TweetService", 50061, 2),
    Service("feed_svc", "feed_svc.main", "chirp.feed.v1.FeedService", 50071, 3),
    Service("rank_svc", "rank_svc.main", "chirp.rank.v1.RankService", 50081, 4),
)
WORKERS = (
    Service("like_worker", "tweet_svc.like_worker", "", 50091, 5),
    Service("fanout_worker", "feed_svc.fanout_worker", "", 50101, 6),
    Service("rank_worker", "rank_svc.worker", "", 50111, 7),
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
