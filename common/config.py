"""Settings every service shares, read from the environment once at start."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


class ConfigError(ValueError):
    """A setting is missing or malformed; the service refuses to start."""


def env_str(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, default).strip()
    if not value:
        raise ConfigError(f"{name} must not be empty")
    return value


def env_int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def env_float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def graph_target(env: Mapping[str, str]) -> str:
    """graph_svc as a gRPC target (client-side round robin over its instances)."""
    return env_str(env, "CHIRP_GRAPH_TARGET", "ipv4:127.0.0.1:50051,127.0.0.1:50052")


def tweet_target(env: Mapping[str, str]) -> str:
    """tweet_svc as a gRPC target (client-side round robin over its instances)."""
    return env_str(env, "CHIRP_TWEET_TARGET", "ipv4:127.0.0.1:50061,127.0.0.1:50062")


@dataclass(frozen=True)
class CommonConfig:
    """What every service process needs: where it listens and where its stores are."""

    service: str
    grpc_host: str
    grpc_port: int
    grpc_max_connection_age_seconds: float
    metrics_port: int
    instance_id: int
    cql_hosts: tuple[str, ...]
    cql_port: int
    cql_keyspace: str
    cql_timeout_seconds: float
    cql_local_dc: str
    cql_consistency: str
    cql_connect_wait_seconds: float
    kafka_bootstrap: str
    kafka_client_rack: str  # the zone a consumer prefers to fetch from ("" = the leader)
    redis_url: str
    redis_state_url: str  # counters and tallies: a Redis that never evicts (infra/topology.py)
    log_level: str
    drain_seconds: float
    shutdown_grace_seconds: float


# On SIGTERM an instance answers NOT_SERVING for this long before it refuses
# calls, and marks every answer (common/interceptors.py): an edge that sends it a
# call takes it out at the answer, and calls it sent before that are served. An
# edge with no traffic for it takes it out at its next check (every
# envoy/render.py HEALTH_CHECK_SECONDS) when that comes within the drain, else
# at the second that finds the listener closed (a refused connection counts
# once of two); a call it sends there meanwhile is refused before any of it is
# sent and retried on another instance. The k8s manifests set 11 s, a check and
# its timeout: there a stopped pod's address may not refuse but time out.
DEFAULT_DRAIN_SECONDS = 2.5
# How long a service keeps a client's connection before asking it to dial again
# (common/server.py MAX_CONNECTION_AGE_GRACE_SECONDS).
DEFAULT_GRPC_MAX_CONNECTION_AGE_SECONDS = 300.0
# A process starting while its CQL store does not answer waits this long for it before
# it exits (common/cql.py CqlSession.from_config), so a pod outlives a store outage of
# up to this long at its start. With a last attempt of up to 15 s (three contact points
# that drop packets) and the id reservation's wait (up to 21 s), inside the 120 s the k8s
# startup probes allow.
DEFAULT_CQL_CONNECT_WAIT_SECONDS = 80.0


def load_common(env: Mapping[str, str], service: str, default_port: int) -> CommonConfig:
    grpc_port = env_int(env, "CHIRP_GRPC_PORT", default_port, minimum=0)
    return CommonConfig(
        service=service,
        grpc_host=env_str(env, "CHIRP_GRPC_HOST", "127.0.0.1"),
        grpc_port=grpc_port,
        grpc_max_connection_age_seconds=env_float(
            env, "CHIRP_GRPC_MAX_CONNECTION_AGE_SECONDS", DEFAULT_GRPC_MAX_CONNECTION_AGE_SECONDS, minimum=0.0
        ),
        metrics_port=env_int(env, "CHIRP_METRICS_PORT", grpc_port + 1000 if grpc_port else 0),
        instance_id=env_int(env, "CHIRP_INSTANCE_ID", 0),
        cql_hosts=tuple(h.strip() for h in env_str(env, "CHIRP_CQL_HOSTS", "127.0.0.1").split(",")),
        cql_port=env_int(env, "CHIRP_CQL_PORT", 9042, minimum=1),
        cql_keyspace=env_str(env, "CHIRP_CQL_KEYSPACE", "chirp"),
        cql_timeout_seconds=env_float(env, "CHIRP_CQL_TIMEOUT_SECONDS", 2.0, minimum=0.01),
        cql_local_dc=env_str(env, "CHIRP_CQL_LOCAL_DC", "datacenter1"),
        cql_consistency=_consistency(env),
        cql_connect_wait_seconds=env_float(
            env, "CHIRP_CQL_CONNECT_WAIT_SECONDS", DEFAULT_CQL_CONNECT_WAIT_SECONDS, minimum=0.0
        ),
        kafka_bootstrap=env_str(env, "CHIRP_KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
        # May be empty: pods get it from their zone label, which older clusters do not set.
        kafka_client_rack=env.get("CHIRP_KAFKA_CLIENT_RACK", "").strip(),
        redis_url=env_str(env, "CHIRP_REDIS_URL", "redis://127.0.0.1:6379/0"),
        redis_state_url=env_str(env, "CHIRP_REDIS_STATE_URL", "redis://127.0.0.1:6390/0"),
        log_level=env_str(env, "CHIRP_LOG_LEVEL", "INFO").upper(),
        drain_seconds=env_float(env, "CHIRP_DRAIN_SECONDS", DEFAULT_DRAIN_SECONDS),
        shutdown_grace_seconds=env_float(env, "CHIRP_SHUTDOWN_GRACE_SECONDS", 10.0),
    )


CONSISTENCY_LEVELS = ("LOCAL_QUORUM", "QUORUM", "LOCAL_ONE", "ONE", "EACH_QUORUM", "ALL")


def _consistency(env: Mapping[str, str]) -> str:
    # LOCAL_QUORUM: with RF 3 one replica down changes nothing for clients, and a
    # quorum read sees every acknowledged quorum write.
    value = env_str(env, "CHIRP_CQL_CONSISTENCY", "LOCAL_QUORUM").upper()
    if value not in CONSISTENCY_LEVELS:
        raise ConfigError(f"CHIRP_CQL_CONSISTENCY must be one of {', '.join(CONSISTENCY_LEVELS)}, got {value!r}")
    return value
