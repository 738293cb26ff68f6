"""The production manifests in k8s/, checked offline.

Built-in kinds validate against the Kubernetes JSON schemas that the
kubernetes-validate package ships (strict: unknown fields fail); operators'
custom resources get their required structure and replication settings checked
here. Then the properties the cluster relies on: gRPC probes, non-root and
read-only pods, resources, a drain that fits the grace period, an HPA and a
PDB per workload, headless Services for per-request balancing, settings that
the services' own config loaders accept, Envoy's config generated from
envoy/render.py (and accepted by `envoy --mode validate`), and stores laid out
across three zones: Scylla racks (RF 3, LOCAL_QUORUM), Kafka rack awareness
(RF 3, min ISR 2), and two Redis Clusters of 3 primaries and 3 replicas each
(their membership script run against a fake redis-cli): the cache
(allkeys-lru) and the state Redis for counters and tallies (noeviction, its
own URL setting), generated from the cache's manifest by
infra/k8s_redis_state.py, neither selecting the other's pods.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import kubernetes_validate
import pytest
import yaml  # type: ignore[import-untyped]  # PyYAML is pinned in requirements.lock; no stubs installed
from redis.asyncio.cluster import RedisCluster

from common import cache, cql, kafka
from common.server import LIVENESS_SERVICE
from common.worker import IDLE_WAIT_SECONDS
from feed_svc import config as feed_config
from graph_svc import config as graph_config
from infra import jvm, k8s_redis_state, keys, topology
from rank_svc import config as rank_config
from tweet_svc import config as tweet_config

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
KUBERNETES_VERSION = "1.30"  # the oldest version the manifests must work on
NAMESPACE = "chirp"
APP_IMAGE = "ghcr.io/chirp/chirp:"
GRPC_PORT = 50051
METRICS_PORT = GRPC_PORT + topology.METRICS_OFFSET
CUSTOM_GROUPS = {"scylla.scylladb.com", "kafka.strimzi.io"}
CUSTOM_KINDS = {"ScyllaCluster", "Kafka", "KafkaNodePool", "KafkaTopic"}
# Made from the key pair out of band (k8s/README.md); key material is never committed.
EXTERNAL_SECRETS = {"chirp-token-key", "chirp-jwks", "chirp-page-token-key"}
# Services that mint Snowflake ids: each live pod needs its own instance id.
ID_MINTING = {"graph_svc", "tweet_svc"}
ZONE = "topology.kubernetes.io/zone"
HOSTNAME = "kubernetes.io/hostname"
ID_SLOTS = 32  # instance ids per service in infra/topology.py (index * 32 + ordinal)
WORKLOAD_KINDS = {"Deployment", "StatefulSet"}
# The Kafka topics each worker's consumer group reads.
WORKER_TOPICS = {
    "like_worker": [kafka.TOPIC_LIKES],
    "fanout_worker": [kafka.TOPIC_TWEETS, kafka.TOPIC_FOLLOWS],
    "rank_worker": [kafka.TOPIC_LIKES],
}
CONFIG_LOADERS: dict[str, Callable[[Mapping[str, str]], Any]] = {
    "graph_svc": graph_config.load,
    "tweet_svc": tweet_config.load,
    "feed_svc": feed_config.load,
    "rank_svc": rank_config.load,
}

Obj = dict[str, Any]


# ---- loading ----------------------------------------------------------------


def _load_kustomization() -> Obj:
    kustomization: Obj = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return kustomization


def _generated_configmaps(kustomization: Obj) -> Iterator[Obj]:
    """The ConfigMaps kustomize generates (names without the hash suffix, which it adds everywhere)."""
    for generator in kustomization.get("configMapGenerator", []):
        data: dict[str, str] = {}
        for literal in generator.get("literals", []):
            key, _, value = literal.partition("=")
            data[key] = value
        for spec in generator.get("files", []):
            key, _, relative = spec.partition("=")
            data[key] = (K8S / relative).read_text()
        yield {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": generator["name"], "namespace": kustomization["namespace"]},
            "data": data,
        }


def _generator_files(kustomization: Obj) -> set[str]:
    return {
        spec.partition("=")[2]
        for generator in kustomization.get("configMapGenerator", [])
        for spec in generator.get("files", [])
    }


KUSTOMIZATION = _load_kustomization()
RESOURCE_OBJECTS: list[Obj] = [
    doc
    for relative in KUSTOMIZATION["resources"]
    for doc in yaml.safe_load_all((K8S / relative).read_text())
    if doc is not None
]
OBJECTS: list[Obj] = RESOURCE_OBJECTS + list(_generated_configmaps(KUSTOMIZATION))


def _id(obj: Obj) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def _group(obj: Obj) -> str:
    api_version: str = obj["apiVersion"]
    return api_version.split("/")[0] if "/" in api_version else ""


def _find(kind: str, name: str | None = None) -> list[Obj]:
    return [o for o in OBJECTS if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def _one(kind: str, name: str) -> Obj:
    (found,) = _find(kind, name)
    return found


BUILTIN = [o for o in OBJECTS if _group(o) not in CUSTOM_GROUPS]
CUSTOM = [o for o in OBJECTS if _group(o) in CUSTOM_GROUPS]
WORKLOADS = [
    o
    for o in OBJECTS
    if o["kind"] in WORKLOAD_KINDS and o["metadata"]["labels"]["app.kubernetes.io/component"] != "store"
]
CONFIG: dict[str, str] = _one("ConfigMap", "chirp-config")["data"]


def _main_container(workload: Obj) -> Obj:
    container: Obj = workload["spec"]["template"]["spec"]["containers"][0]
    return container


def _module(container: Obj) -> str | None:
    """What `python -m` the container runs, if it is a Chirp process."""
    words = " ".join([*container.get("command", []), *container.get("args", [])])
    match = re.search(r"\bpython -m ([\w.]+)", words)
    return match.group(1) if match else None


SERVICE_BY_MODULE = {svc.module: svc for svc in (*topology.SERVICES, *topology.WORKERS)}
CHIRP_WORKLOADS = [w for w in WORKLOADS if _module(_main_container(w)) in SERVICE_BY_MODULE]


def _service_of(workload: Obj) -> topology.Service:
    module = _module(_main_container(workload))
    assert module is not None
    return SERVICE_BY_MODULE[module]


def _ports(container: Obj) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container.get("ports", [])}


def _selects(selector: Obj, labels: Mapping[str, str]) -> bool:
    match_labels: dict[str, str] = selector.get("matchLabels", {})
    return bool(match_labels) and all(labels.get(k) == v for k, v in match_labels.items())


def _fqdn(service_name: str) -> str:
    return f"{service_name}.{NAMESPACE}.svc.cluster.local"


def _load_by_path(name: str, path: Path) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _instance_id_script(container: Obj) -> str:
    """The container's shell script as the shell sees it (Kubernetes turns $$ into $)."""
    assert container["command"] == ["/bin/sh", "-c"]
    (script,) = container["args"]
    return str(script).replace("$$", "$")


def _container_env(container: Obj, pod_labels: Mapping[str, str]) -> dict[str, str]:
    """What the process sees on Kubernetes 1.30: chirp-config, the container's own values, and
    its pod's labels; a label the template does not set (the node's zone, copied onto pods
    only from 1.35 on) reads as ""."""
    env: dict[str, str] = {}
    if {"configMapRef": {"name": "chirp-config"}} in container.get("envFrom", []):
        env |= CONFIG
    for entry in container.get("env", []):
        field = entry.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath", "")
        label = re.fullmatch(r"metadata\.labels\['([^']+)'\]", field)
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        elif label:
            env[entry["name"]] = pod_labels.get(label.group(1), "")
    return env


def _expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(NAME) references in command and args ($$ is a literal $)."""
    return re.sub(r"\$\$|\$\((\w+)\)", lambda m: env[m.group(1)] if m.group(1) else "$", text)


def _pod_env(workload: Obj) -> dict[str, str]:
    """What the process sees: _container_env plus the instance id its script computes."""
    container = _main_container(workload)
    env = _container_env(container, workload["spec"]["template"]["metadata"]["labels"])
    if container.get("command") == ["/bin/sh", "-c"]:
        env["CHIRP_INSTANCE_ID"] = _run_instance_id_script(container, f"{workload['metadata']['name']}-0")
    return env


def _zone_of(affinity: Obj) -> str:
    """The one zone a required node affinity pins pods to."""
    (term,) = affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    (expression,) = [e for e in term["matchExpressions"] if e["key"] == ZONE]
    assert expression["operator"] == "In"
    (zone,) = expression["values"]
    return str(zone)


def _run_instance_id_script(container: Obj, pod_name: str) -> str:
    script = _instance_id_script(container)
    module = _module(container)
    probe = script.replace(f"exec python -m {module}", 'echo "$CHIRP_INSTANCE_ID"')
    assert probe != script, "the script should end in `exec python -m <module>`"
    done = subprocess.run(
        ["/bin/sh", "-c", probe], env={"POD_NAME": pod_name}, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


# ---- every file, every object -------------------------------------------------


def test_every_yaml_file_under_k8s_is_used_by_the_kustomization() -> None:
    on_disk = {p.relative_to(K8S).as_posix() for p in K8S.rglob("*") if p.suffix in {".yaml", ".yml"}}
    used = {"kustomization.yaml", *KUSTOMIZATION["resources"], *_generator_files(KUSTOMIZATION)}
    assert on_disk == used


def test_every_object_is_named_and_in_the_chirp_namespace() -> None:
    assert KUSTOMIZATION["namespace"] == NAMESPACE
    for obj in OBJECTS:
        assert obj["metadata"]["name"], obj
        if obj["kind"] == "Namespace":
            assert obj["metadata"]["name"] == NAMESPACE
        else:
            assert obj["metadata"].get("namespace") == NAMESPACE, _id(obj)
    names = [_id(o) for o in OBJECTS]
    assert len(names) == len(set(names)), "duplicate kind/name"


@pytest.mark.parametrize("obj", BUILTIN, ids=_id)
def test_builtin_kind_validates_against_the_kubernetes_schema(obj: Obj) -> None:
    assert kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True) == KUBERNETES_VERSION


@pytest.mark.parametrize("obj", CUSTOM, ids=_id)
def test_custom_resource_has_the_structure_its_operator_requires(obj: Obj) -> None:
    assert obj["kind"] in CUSTOM_KINDS
    expected_api = {"scylla.scylladb.com": "scylla.scylladb.com/v1", "kafka.strimzi.io": "kafka.strimzi.io/v1"}
    assert obj["apiVersion"] == expected_api[_group(obj)]
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", obj["metadata"]["name"])
    assert isinstance(obj["spec"], dict) and obj["spec"]
    if obj["kind"] in {"KafkaNodePool", "KafkaTopic"}:
        (kafka_cluster,) = _find("Kafka")
        assert obj["metadata"]["labels"]["strimzi.io/cluster"] == kafka_cluster["metadata"]["name"]


def test_no_secret_is_committed_and_only_the_documented_ones_are_used() -> None:
    assert not _find("Secret")
    used = {
        volume["secret"]["secretName"]
        for obj in OBJECTS
        if obj["kind"] in {*WORKLOAD_KINDS, "Job"}
        for volume in obj["spec"]["template"]["spec"].get("volumes", [])
        if "secret" in volume
    }
    assert used == EXTERNAL_SECRETS
    readme = (K8S / "README.md").read_text()
    for name in EXTERNAL_SECRETS:
        assert f"create secret generic {name}" in readme


def test_every_referenced_configmap_exists() -> None:
    existing = {o["metadata"]["name"] for o in _find("ConfigMap")}
    for obj in OBJECTS:
        if obj["kind"] not in {*WORKLOAD_KINDS, "Job"}:
            continue
        pod = obj["spec"]["template"]["spec"]
        refs = {v["configMap"]["name"] for v in pod.get("volumes", []) if "configMap" in v}
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            refs |= {e["configMapRef"]["name"] for e in container.get("envFrom", []) if "configMapRef" in e}
        assert refs <= existing, _id(obj)


# ---- stores -----------------------------------------------------------------

SCYLLA: Obj = _one("ScyllaCluster", "scylla")
SCYLLA_DC: Obj = SCYLLA["spec"]["datacenter"]
SCYLLA_ZONES = [_zone_of(rack["placement"]) for rack in SCYLLA_DC["racks"]]


def test_scylla_has_one_rack_per_zone_in_the_datacenter_the_services_use() -> None:
    racks = SCYLLA_DC["racks"]
    assert len(racks) == 3
    assert len(set(SCYLLA_ZONES)) == 3, "each rack in its own zone"
    assert len({rack["members"] for rack in racks}) == 1, "racks grow together: a third of the data per zone"
    for rack in racks:
        assert rack["members"] >= 1
        assert rack["storage"]["capacity"]
        (spread,) = rack["placement"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert spread["topologyKey"] == HOSTNAME
        assert spread["labelSelector"]["matchLabels"] == {"scylla/cluster": SCYLLA["metadata"]["name"]}
    # The driver's DC-aware policy only talks to the local datacenter.
    assert CONFIG["CHIRP_CQL_LOCAL_DC"] == SCYLLA_DC["name"]
    assert graph_config.load(CONFIG).common.cql_local_dc == SCYLLA_DC["name"]
    # Contact points: a member Service (<cluster>-<dc>-<rack>-<ordinal>) of every rack.
    members = {
        _fqdn(f"{SCYLLA['metadata']['name']}-{SCYLLA_DC['name']}-{rack['name']}-{i}"): rack["name"]
        for rack in racks
        for i in range(rack["members"])
    }
    hosts = CONFIG["CHIRP_CQL_HOSTS"].split(",")
    assert set(hosts) <= set(members)
    assert {members[h] for h in hosts} == {rack["name"] for rack in racks}


def test_scylla_answers_a_write_timeout_while_the_client_can_still_retry() -> None:
    """A WriteTimeout the server sends after the client's own timeout is never retried:
    Scylla's default (2 s) left no room, the local cluster runs 1 s (infra/jvm.py)."""
    names = {rack["scyllaConfig"] for rack in SCYLLA_DC["racks"]}
    assert len(names) == 1
    overrides = yaml.safe_load(_one("ConfigMap", names.pop())["data"]["scylla.yaml"])
    write_ms = overrides["write_request_timeout_in_ms"]
    assert write_ms == int(jvm.CLUSTER_WRITE_TIMEOUT.removesuffix("ms"))
    client_ms = graph_config.load(CONFIG).common.cql_timeout_seconds * 1000
    assert 2 * write_ms <= cql.LOGGED_BATCH_TIMEOUT_SECONDS * 1000 and write_ms < client_ms


def test_keyspace_has_three_replicas_in_the_local_dc_read_and_written_at_local_quorum() -> None:
    replication = ast.literal_eval(CONFIG["CHIRP_CQL_REPLICATION"])
    assert replication == {"class": "NetworkTopologyStrategy", SCYLLA_DC["name"]: 3}
    # NetworkTopologyStrategy puts replicas on distinct racks: one per zone.
    assert len(SCYLLA_DC["racks"]) >= replication[SCYLLA_DC["name"]]
    # A quorum of 3 is 2: a node or a zone down changes nothing for clients.
    assert CONFIG["CHIRP_CQL_CONSISTENCY"] == "LOCAL_QUORUM"
    assert graph_config.load(CONFIG).common.cql_consistency == "LOCAL_QUORUM"


def test_migration_job_creates_the_keyspace_with_the_configured_replication() -> None:
    job = _one("Job", "chirp-migrate")
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].startswith(APP_IMAGE)
    env = _container_env(container, job["spec"]["template"]["metadata"]["labels"])
    command = [_expand(word, env) for word in container["command"]]
    assert command[:3] == ["python", "-m", "infra.migrate"]
    flags = dict(zip(command[3::2], command[4::2], strict=True))
    known = set(re.findall(r'add_argument\(\s*"(--[a-z-]+)"', (ROOT / "infra" / "migrate.py").read_text()))
    assert set(flags) <= known
    assert flags["--hosts"] == CONFIG["CHIRP_CQL_HOSTS"]
    assert flags["--keyspace"] == CONFIG["CHIRP_CQL_KEYSPACE"]
    assert int(flags["--port"]) == int(CONFIG["CHIRP_CQL_PORT"])
    assert ast.literal_eval(flags["--replication"]) == {"class": "NetworkTopologyStrategy", SCYLLA_DC["name"]: 3}
    assert flags["--replication"] == CONFIG["CHIRP_CQL_REPLICATION"]
    _assert_hardened(job["spec"]["template"]["spec"], container)


KAFKA: Obj = _one("Kafka", "chirp-kafka")
KAFKA_CONFIG: Obj = KAFKA["spec"]["kafka"]["config"]


def test_kafka_runs_kraft_on_three_nodes_with_rf3_and_min_isr_2() -> None:
    name = KAFKA["metadata"]["name"]
    assert "zookeeper" not in KAFKA["spec"]  # KRaft: the controllers are Kafka nodes of a pool
    assert KAFKA_CONFIG["default.replication.factor"] == int(CONFIG["CHIRP_KAFKA_REPLICATION"]) == 3
    assert KAFKA_CONFIG["min.insync.replicas"] == int(CONFIG["CHIRP_KAFKA_MIN_ISR"]) == 2
    assert KAFKA_CONFIG["offsets.topic.replication.factor"] == 3
    assert KAFKA_CONFIG["transaction.state.log.replication.factor"] == 3
    assert KAFKA_CONFIG["transaction.state.log.min.isr"] == 2
    assert KAFKA_CONFIG["unclean.leader.election.enable"] is False
    pools = [p for p in _find("KafkaNodePool") if p["metadata"]["labels"]["strimzi.io/cluster"] == name]
    brokers = sum(p["spec"]["replicas"] for p in pools if "broker" in p["spec"]["roles"])
    controllers = sum(p["spec"]["replicas"] for p in pools if "controller" in p["spec"]["roles"])
    assert brokers == 3
    assert controllers == 3
    (plain,) = [lst for lst in KAFKA["spec"]["kafka"]["listeners"] if lst["tls"] is False]
    assert CONFIG["CHIRP_KAFKA_BOOTSTRAP"] == f"{_fqdn(f'{name}-kafka-bootstrap')}:{plain['port']}"
    assert "topicOperator" in KAFKA["spec"]["entityOperator"]


def test_kafka_spreads_nodes_and_replicas_across_zones() -> None:
    # broker.rack from the node's zone: the replicas of a partition land in distinct zones.
    assert KAFKA["spec"]["kafka"]["rack"]["topologyKey"] == ZONE
    assert KAFKA["spec"]["kafka"]["rack"].get("type", "topology-label") == "topology-label"
    for pool in _find("KafkaNodePool"):
        pod = pool["spec"]["template"]["pod"]
        pool_pods = {"strimzi.io/cluster": KAFKA["metadata"]["name"], "strimzi.io/pool-name": pool["metadata"]["name"]}
        (zones,) = [c for c in pod["topologySpreadConstraints"] if c["topologyKey"] == ZONE]
        assert (zones["maxSkew"], zones["whenUnsatisfiable"]) == (1, "DoNotSchedule")
        assert zones["labelSelector"]["matchLabels"] == pool_pods
        (hosts,) = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert hosts["topologyKey"] == HOSTNAME
        assert hosts["labelSelector"]["matchLabels"] == pool_pods


@pytest.mark.parametrize("worker", [w for w in CHIRP_WORKLOADS if _service_of(w).name in WORKER_TOPICS], ids=_id)
def test_consumer_fetches_from_the_replica_in_its_own_zone_where_it_knows_it(worker: Obj) -> None:
    assert KAFKA_CONFIG["replica.selector.class"] == "org.apache.kafka.common.replica.RackAwareReplicaSelector"
    (rack,) = [e for e in _main_container(worker)["env"] if e["name"] == "CHIRP_KAFKA_CLIENT_RACK"]
    assert rack["valueFrom"]["fieldRef"]["fieldPath"] == f"metadata.labels['{ZONE}']"
    # Before Kubernetes 1.35 the pod has no zone label: empty, so no client.rack (leader reads).
    assert _pod_env(worker)["CHIRP_KAFKA_CLIENT_RACK"] == ""


TOPICS: dict[str, Obj] = {t["spec"]["topicName"]: t["spec"] for t in _find("KafkaTopic")}


def test_every_topic_the_code_uses_is_declared_with_the_configured_replication() -> None:
    assert set(TOPICS) == set(kafka.TOPICS)
    for spec in TOPICS.values():
        assert spec["replicas"] == int(CONFIG["CHIRP_KAFKA_REPLICATION"]) == 3
        assert spec["config"]["min.insync.replicas"] == int(CONFIG["CHIRP_KAFKA_MIN_ISR"]) == 2
        assert spec["partitions"] == int(CONFIG["CHIRP_KAFKA_PARTITIONS"])
    # More consumers than partitions would sit idle.
    for workload in CHIRP_WORKLOADS:
        svc = _service_of(workload)
        if svc.name in WORKER_TOPICS:
            hpa = _hpa_for(workload)
            assert hpa["spec"]["maxReplicas"] <= min(TOPICS[t]["partitions"] for t in WORKER_TOPICS[svc.name])


def test_likes_outlive_the_trending_window_the_rank_worker_replays() -> None:
    # The rank worker rebuilds its tallies by replaying the likes of its window from Kafka.
    window_hours = rank_config.load(CONFIG).window_hours
    likes = TOPICS[kafka.TOPIC_LIKES]["config"]
    assert int(likes["retention.ms"]) >= (window_hours + 1) * 3_600_000
    assert likes.get("cleanup.policy", "delete") == "delete", "compaction would keep one like per tweet"
    assert int(likes.get("retention.bytes", -1)) == -1, "a size cap could cut the window short"
    assert "log.retention.bytes" not in KAFKA_CONFIG


@dataclass(frozen=True)
class RedisStore:
    """One Redis Cluster of the manifests: the cache, or the state Redis (counters and tallies)."""

    name: str  # app.kubernetes.io/name of its pods, and its PDB's and NetworkPolicy's name
    configmap: str  # redis.conf, shards, cluster.sh
    headless: str
    job: str  # joins the nodes (cluster.sh create)
    url_setting: str  # the CHIRP_* setting that lists its nodes
    url_field: str  # the same in CommonConfig
    file: str  # under k8s/

    def config(self) -> dict[str, str]:
        data: dict[str, str] = _one("ConfigMap", self.configmap)["data"]
        return data

    def sets(self) -> list[Obj]:
        return [
            o
            for o in OBJECTS
            if o["kind"] == "StatefulSet"
            and o["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"] == self.name
        ]

    def pods(self) -> dict[str, Obj]:
        return {f"{s['metadata']['name']}-{i}": s for s in self.sets() for i in range(s["spec"]["replicas"])}

    def conf(self) -> dict[str, str]:
        lines = (line.split(None, 1) for line in self.config()["redis.conf"].splitlines())
        return {words[0]: words[1] for words in lines if len(words) == 2 and not words[0].startswith("#")}

    def shards(self) -> list[tuple[str, str]]:
        """cluster.sh's shards: (first primary, its replica), as host:port."""
        lines = [line.split() for line in self.config()["shards"].splitlines() if line.strip() and line[0] != "#"]
        assert all(len(words) == 2 for words in lines)
        return [(words[0], words[1]) for words in lines]

    def pod_at(self, address: str) -> str:
        """The pod a host:port of the shards file or the URL setting names."""
        (headless,) = {s["spec"]["serviceName"] for s in self.sets()}
        match = re.fullmatch(rf"([a-z0-9-]+)\.{re.escape(_fqdn(headless))}:(\d+)", address)
        assert match, address
        pod = match.group(1)
        assert int(match.group(2)) == _ports(_main_container(self.pods()[pod]))["redis"]
        return pod

    def zone(self, pod: str) -> str:
        return _zone_of(self.pods()[pod]["spec"]["template"]["spec"]["affinity"])

    def pod_labels(self) -> list[Mapping[str, str]]:
        return [s["spec"]["template"]["metadata"]["labels"] for s in self.sets()]


CACHE_REDIS = RedisStore(
    name="redis",
    configmap="redis-cluster",
    headless="redis-headless",
    job="redis-cluster-create",
    url_setting="CHIRP_REDIS_URL",
    url_field="redis_url",
    file="stores/redis.yaml",
)
# Rate-limit and login counters, trending tallies: never evicted (common/config.py redis_state_url).
STATE_REDIS = RedisStore(
    name="redis-state",
    configmap="redis-state-cluster",
    headless="redis-state-headless",
    job="redis-state-cluster-create",
    url_setting="CHIRP_REDIS_STATE_URL",
    url_field="redis_state_url",
    file="stores/redis-state.yaml",
)
REDIS_STORES = [CACHE_REDIS, STATE_REDIS]
redis_stores = pytest.mark.parametrize("store", REDIS_STORES, ids=lambda s: s.name)


def _other(store: RedisStore) -> RedisStore:
    (other,) = [s for s in REDIS_STORES if s is not store]
    return other


@redis_stores
def test_redis_cluster_has_three_primaries_and_three_replicas_in_three_zones(store: RedisStore) -> None:
    pods = store.pods()
    assert len(pods) == 6
    conf = store.conf()
    assert conf["cluster-enabled"] == "yes"
    # nodes.conf (the node's identity in the cluster) on the pod's volume.
    assert not conf["cluster-config-file"].startswith("/")
    for redis in store.sets():
        template = redis["spec"]["template"]
        (data,) = [m for m in _main_container(redis)["volumeMounts"] if m["mountPath"] == conf["dir"]]
        assert data["name"] in {c["metadata"]["name"] for c in redis["spec"]["volumeClaimTemplates"]}
        assert redis["spec"]["serviceName"] == store.headless
        assert _selects(redis["spec"]["selector"], template["metadata"]["labels"])
    # The same three zones as the Scylla racks, two nodes in each.
    zones = [store.zone(pod) for pod in pods]
    assert sorted(zones) == sorted(SCYLLA_ZONES * 2)
    shards = store.shards()
    assert len(shards) == 3
    members = [store.pod_at(node) for shard in shards for node in shard]
    assert sorted(members) == sorted(pods), "every node in exactly one shard"
    for primary, replica in shards:
        assert store.zone(store.pod_at(primary)) != store.zone(store.pod_at(replica))
    # One first primary per zone: losing a zone leaves 2 of 3 primaries, the majority a failover needs.
    assert len({store.zone(store.pod_at(primary)) for primary, _ in shards}) == 3


@redis_stores
def test_redis_nodes_are_reachable_by_name_from_chirp_and_each_other(store: RedisStore) -> None:
    service = _one("Service", store.headless)
    assert service["spec"]["clusterIP"] == "None"
    # Nodes look each other up before they are ready.
    assert service["spec"]["publishNotReadyAddresses"] is True
    for redis in store.sets():
        labels = redis["spec"]["template"]["metadata"]["labels"]
        assert _selects({"matchLabels": service["spec"]["selector"]}, labels)
        container = _main_container(redis)
        assert set(_ports(container)) == {"redis", "cluster-bus"}
        assert _ports(container)["cluster-bus"] == _ports(container)["redis"] + 10000
        # Redirects name the pod's stable DNS name, not its IP.
        env = _container_env(container, labels) | {"POD_NAME": f"{redis['metadata']['name']}-0"}
        command = [_expand(word, env) for word in container["command"]]
        announced = command[command.index("--cluster-announce-hostname") + 1]
        assert store.pod_at(f"{announced}:{_ports(container)['redis']}") == env["POD_NAME"]
    assert store.conf()["cluster-preferred-endpoint-type"] == "hostname"
    policy = _one("NetworkPolicy", store.name)
    rules = {(p["port"], json.dumps(r["from"], sort_keys=True)) for r in policy["spec"]["ingress"] for p in r["ports"]}
    from_chirp = json.dumps([{"podSelector": {"matchLabels": {"app.kubernetes.io/part-of": "chirp"}}}], sort_keys=True)
    from_own = json.dumps([{"podSelector": {"matchLabels": {"app.kubernetes.io/name": store.name}}}], sort_keys=True)
    assert rules == {("redis", from_chirp), ("cluster-bus", from_own)}
    # As the policies add up: every Chirp pod (and the Job) reaches the redis port, no one
    # else; the cluster bus only from this cluster's nodes, not from the other cluster's.
    chirp = [labels for labels in _pod_labels().values() if labels.get("app.kubernetes.io/part-of") == "chirp"]
    chirp.append(_one("Job", store.job)["spec"]["template"]["metadata"]["labels"])
    for target in store.pod_labels():
        assert all(_reaches(source, target, "redis") for source in chirp)
        assert not _reaches(None, target, "redis")
        assert not _reaches({"app.kubernetes.io/name": "intruder"}, target, "redis")
        assert all(_reaches(source, target, "cluster-bus") for source in store.pod_labels())
        assert not any(_reaches(source, target, "cluster-bus") for source in _other(store).pod_labels())
        assert not any(_reaches(source, target, "cluster-bus") for source in chirp if source not in store.pod_labels())


@redis_stores
def test_redis_url_lists_every_node_so_clients_speak_cluster(store: RedisStore) -> None:
    url = CONFIG[store.url_setting]
    # Several nodes make connect_redis build the cluster client (it connects on first use).
    assert isinstance(cache.connect_redis(url), RedisCluster)
    nodes = [store.pod_at(f"{host}:{port}") for host, port in cache.cluster_nodes(url)]
    assert sorted(nodes) == sorted(store.pods())
    # Every service's loader takes it as this cluster's URL.
    for load in CONFIG_LOADERS.values():
        assert getattr(load(CONFIG).common, store.url_field) == url


def test_the_cache_and_the_state_redis_are_apart() -> None:
    cache_url, state_url = CONFIG["CHIRP_REDIS_URL"], CONFIG["CHIRP_REDIS_STATE_URL"]
    assert not set(cache.cluster_nodes(cache_url)) & set(cache.cluster_nodes(state_url))
    common = graph_config.load(CONFIG).common
    assert common.redis_url == cache_url
    assert common.redis_state_url == state_url


def test_only_the_cache_redis_evicts() -> None:
    """The cache makes room by evicting the least recently used key; the state Redis must not
    (an evicted counter or tally is lost silently): at its limit it refuses the write."""
    assert {s.name: s.conf()["maxmemory-policy"] for s in REDIS_STORES} == {
        "redis": "allkeys-lru",
        "redis-state": "noeviction",
    }


def _selectors(obj: Obj) -> Iterator[Obj]:
    """The pod selectors of a Redis object: whom it serves, owns, budgets, spreads apart or admits."""
    spec = obj["spec"]
    if obj["kind"] == "Service":
        yield {"matchLabels": spec["selector"]}
    elif obj["kind"] == "PodDisruptionBudget":
        yield spec["selector"]
    elif obj["kind"] == "StatefulSet":
        yield spec["selector"]
        anti = spec["template"]["spec"]["affinity"]["podAntiAffinity"]
        for term in anti.get("requiredDuringSchedulingIgnoredDuringExecution", []):
            yield term["labelSelector"]
        for weighted in anti.get("preferredDuringSchedulingIgnoredDuringExecution", []):
            yield weighted["podAffinityTerm"]["labelSelector"]
    elif obj["kind"] == "NetworkPolicy":
        yield spec["podSelector"]
        for rule in spec["ingress"]:
            if "cluster-bus" in {p["port"] for p in rule["ports"]}:
                yield from (peer["podSelector"] for peer in rule["from"])


@redis_stores
def test_redis_cluster_objects_select_only_their_own_pods(store: RedisStore) -> None:
    """The two clusters share a layout but nothing else: a Service, PDB, anti-affinity or
    NetworkPolicy of one that selected the other's pods would mix their nodes."""
    own = [doc for doc in yaml.safe_load_all((K8S / store.file).read_text()) if doc is not None]
    assert {o["metadata"]["name"] for o in own if o["kind"] == "StatefulSet"} == {
        s["metadata"]["name"] for s in store.sets()
    }
    objects = [o for o in own if o["kind"] in {"Service", "PodDisruptionBudget", "StatefulSet"}]
    objects.append(_one("NetworkPolicy", store.name))
    selectors = [(o, s) for o in objects for s in _selectors(o)]
    # A headless Service, a PDB, two per StatefulSet (its own, anti-affinity), two of the policy.
    assert len(selectors) == 1 + 1 + 2 * len(store.sets()) + 2
    for obj, selector in selectors:
        assert any(_matches(selector, labels) for labels in store.pod_labels()), _id(obj)
        assert not any(_matches(selector, labels) for labels in _other(store).pod_labels()), _id(obj)
    # No object name in common: kind/name is unique over the whole kustomization as well.
    other_file = [doc for doc in yaml.safe_load_all((K8S / _other(store).file).read_text()) if doc is not None]
    assert not {_id(o) for o in own} & {_id(o) for o in other_file}


def test_state_redis_manifest_is_generated_from_the_caches_manifest() -> None:
    rendered = k8s_redis_state.render((K8S / CACHE_REDIS.file).read_text())
    assert rendered == (K8S / STATE_REDIS.file).read_text(), "stale: run .venv/bin/python -m infra.k8s_redis_state"
    written, read = k8s_redis_state.OUT, k8s_redis_state.SOURCE  # by `python -m infra.k8s_redis_state`
    assert (written, read) == (K8S / STATE_REDIS.file, K8S / CACHE_REDIS.file)
    assert rendered.startswith("# GENERATED by infra/k8s_redis_state.py from k8s/stores/redis.yaml")


def test_state_redis_renderer_fails_when_a_substitution_no_longer_applies() -> None:
    source = k8s_redis_state.SOURCE.read_text()
    for changed in (
        source.replace("maxmemory-policy allkeys-lru", "maxmemory-policy allkeys-lfu"),
        source.replace("# Redis Cluster:", "# Cache:", 1),
        source.replace("appendonly no", "appendonly yes"),
        source.replace("  serviceName: redis-headless", "  serviceName: redis-nodes"),
        # A fourth zone, or a Redis container sized apart from the others.
        source.replace(
            "            requests:\n              cpu:",
            "            requests:\n              gpu: 1\n              cpu:",
            1,
        ),
    ):
        with pytest.raises(ValueError, match=r"redis\.yaml"):
            k8s_redis_state.render(changed)
    # The state Redis keeps its own size when the cache is resized.
    resized = source.replace("maxmemory 2gb", "maxmemory 3gb").replace("memory: 4Gi", "memory: 6Gi")
    resized = resized.replace("container's 4Gi", "container's 6Gi").replace("storage: 20Gi", "storage: 40Gi")
    assert resized != source
    assert k8s_redis_state.render(resized) == k8s_redis_state.render(source)
    # A cache object or selector no substitution knows would collide with the cache's or select its pods.
    exporter = "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: redis-exporter\n"
    flow = "---\nspec:\n  selector: {app.kubernetes.io/name: redis}\n"
    for added in (exporter, flow):
        with pytest.raises(ValueError, match="cache names left"):
            k8s_redis_state.render(source + added)


@redis_stores
def test_redis_disruption_budget_takes_one_node_at_a_time(store: RedisStore) -> None:
    for redis in store.sets():
        labels = redis["spec"]["template"]["metadata"]["labels"]
        budgets = [p for p in _find("PodDisruptionBudget") if _selects(p["spec"]["selector"], labels)]
        assert [b["spec"] for b in budgets] == [
            {"maxUnavailable": 1, "selector": {"matchLabels": {"app.kubernetes.io/name": store.name}}}
        ]


@redis_stores
def test_redis_membership_runs_from_a_job_and_the_pods_lifecycle_hooks(store: RedisStore) -> None:
    config_mount = "/etc/redis"

    def assert_mounts_scripts(pod: Obj, container: Obj) -> None:
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == config_mount]
        (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        assert volume["configMap"]["name"] == store.configmap

    job = _one("Job", store.job)
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["/bin/sh", f"{config_mount}/cluster.sh", "create"]
    assert_mounts_scripts(pod, container)
    _assert_hardened(pod, container, writable_tmp=False, uid=999)
    assert job["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/part-of"] == "chirp"  # NetworkPolicy
    for redis in store.sets():
        pod = redis["spec"]["template"]["spec"]
        container = _main_container(redis)
        assert container["image"] == _main_container(_one("Job", store.job))["image"]
        assert container["command"][:2] == ["redis-server", f"{config_mount}/redis.conf"]
        assert_mounts_scripts(pod, container)
        hooks = container["lifecycle"]
        assert hooks["postStart"]["exec"]["command"] == ["/bin/sh", f"{config_mount}/cluster.sh", "rejoin"]
        assert hooks["preStop"]["exec"]["command"] == ["/bin/sh", f"{config_mount}/cluster.sh", "handover"]
        _assert_hardened(pod, container, writable_tmp=False, uid=999)


# cluster.sh against a fake redis-cli: nodes live in a JSON file, every change is logged.
FAKE_REDIS_CLI = r"""
import json, os, sys

path = os.environ["FAKE_REDIS_STATE"]
with open(path) as f:
    state = json.load(f)
nodes, hosts = state["nodes"], state["hosts"]
at = {n["id"]: a for a, n in nodes.items()}


def log(*words):
    state["log"].append(list(words))


def shards():
    return [n for n in nodes.values() if n["joined"] and n["master"] is None]


args = sys.argv[1:]
out = ""
if args[0] == "--cluster":
    if args[1] == "create":
        primaries = args[2 : args.index("--cluster-replicas")]
        for a in primaries:
            nodes[a].update(joined=True, master=None)
        log("create", *primaries)
    elif args[1] == "add-node":
        new, existing, master = args[2], args[3], args[args.index("--cluster-master-id") + 1]
        assert "--cluster-slave" in args and nodes[existing]["joined"] and nodes[at[master]]["master"] is None
        nodes[new].update(joined=True, master=master)
        log("add-node", new, at[master])
else:
    me_at = f"{hosts.get(args[1], args[1])}:{args[3]}"
    me, command = nodes[me_at], args[4:]
    if command == ["ping"]:
        out = "PONG"
    elif command == ["cluster", "info"]:
        joined = [n for n in nodes.values() if n["joined"]]
        known = len(joined) + len(state["stale"]) if me["joined"] else 1
        size = len(shards()) if me["joined"] else 0
        ok = 16384 if size == 3 else 5461 * size
        info = {"cluster_state": "ok" if ok == 16384 else "fail", "cluster_slots_ok": ok}
        info |= {"cluster_known_nodes": known, "cluster_size": size}
        out = "".join(f"{k}:{v}\r\n" for k, v in info.items())
    elif command == ["cluster", "nodes"]:
        rows = []
        for a, n in nodes.items():
            if n["joined"] and me["joined"] or n is me:
                flags = ("myself," if n is me else "") + ("slave" if n["master"] else "master")
                port = int(a.split(":")[1]) + 10000
                rows.append(f"{n['id']} {a}@{port},x {flags} {n['master'] or '-'} 0 0 1 connected")
        if me["joined"]:
            rows += [f"{i} :0@0,x master,fail,noaddr - 0 0 1 disconnected" for i in state["stale"]]
        out = "\n".join(rows)
    elif command == ["cluster", "myid"]:
        out = me["id"]
    elif command == ["role"]:
        out = "slave" if me["master"] else "master"
    elif command[:2] == ["cluster", "meet"]:
        log("meet", me_at, f"{command[2]}:{command[3]}")
    elif command == ["cluster", "failover"]:
        old = nodes[at[me["master"]]]
        old["master"], me["master"] = me["id"], None
        log("failover", me_at)
    elif command[:2] == ["cluster", "forget"]:
        state["stale"] = [i for i in state["stale"] if i != command[2]]
        log("forget", me_at, command[2])
    else:
        sys.exit(f"fake redis-cli: unexpected {args}")
print(out)
with open(path, "w") as f:
    json.dump(state, f)
"""
FAKE_GETENT = r"""
import json, os, sys

hosts = json.load(open(os.environ["FAKE_REDIS_STATE"]))["hosts"]
if sys.argv[1:2] != ["hosts"] or sys.argv[2] not in hosts:
    sys.exit(2)
print(f"{hosts[sys.argv[2]]}    {sys.argv[2]}")
"""


class FakeRedisNodes:
    """The six pods of a Redis Cluster as a fake redis-cli sees them, each at its own IP, port 6379."""

    def __init__(self, tmp_path: Path, store: RedisStore) -> None:
        self.tmp = tmp_path
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        for name, source in {"redis-cli": FAKE_REDIS_CLI, "getent": FAKE_GETENT}.items():
            (bin_dir / name).write_text(f"#!{sys.executable} -S\n{source}")
            (bin_dir / name).chmod(0o755)
        (tmp_path / "shards").write_text(store.config()["shards"])
        (tmp_path / "cluster.sh").write_text(store.config()["cluster.sh"])
        self.shards = store.shards()
        names = [node for shard in self.shards for node in shard]
        self.hosts = {name.rsplit(":", 1)[0]: f"10.0.0.{i}" for i, name in enumerate(names, 1)}
        self.ip_port = {name: f"{self.hosts[name.rsplit(':', 1)[0]]}:{name.rsplit(':', 1)[1]}" for name in names}
        self.state: Obj = {"nodes": {}, "hosts": self.hosts, "stale": [], "log": []}
        for i, name in enumerate(names):
            self.state["nodes"][self.ip_port[name]] = {"id": f"{i:040x}", "joined": False, "master": None}

    def node(self, name: str) -> Obj:
        node: Obj = self.state["nodes"][self.ip_port[name]]
        return node

    def run(self, mode: str, self_node: str | None = None) -> list[list[str]]:
        """Runs cluster.sh `mode`; returns the changes it made."""
        path = self.tmp / "state.json"
        self.state["log"] = []
        path.write_text(json.dumps(self.state))
        env = {
            "PATH": f"{self.tmp / 'bin'}:/usr/bin:/bin",
            "FAKE_REDIS_STATE": str(path),
            "REDIS_SHARDS": str(self.tmp / "shards"),
            "REDIS_SELF": self.ip_port[self_node] if self_node else "",
        }
        done = subprocess.run(
            ["/bin/sh", str(self.tmp / "cluster.sh"), mode], env=env, capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, done.stdout + done.stderr
        self.state = json.loads(path.read_text())
        log: list[list[str]] = self.state["log"]
        return log

    def whole_cluster(self) -> None:
        """As `create` leaves it: the first of each shard its primary, the second its replica."""
        for primary, replica in self.shards:
            self.node(primary).update(joined=True, master=None)
            self.node(replica).update(joined=True, master=self.node(primary)["id"])


@redis_stores
def test_cluster_script_creates_three_shards_with_the_replica_each_shard_names(
    tmp_path: Path, store: RedisStore
) -> None:
    fake = FakeRedisNodes(tmp_path, store)
    changes = fake.run("create")
    primaries = [fake.ip_port[p] for p, _ in fake.shards]
    assert changes[0] == ["create", *primaries]
    assert sorted(changes[1:]) == sorted(["add-node", fake.ip_port[r], fake.ip_port[p]] for p, r in fake.shards)
    for primary, replica in fake.shards:
        assert fake.node(primary)["master"] is None
        assert fake.node(replica)["master"] == fake.node(primary)["id"]
    assert fake.run("create") == [], "a whole cluster is left as it is"


@redis_stores
def test_cluster_script_adds_a_node_that_lost_its_volume_under_its_shards_new_primary(
    tmp_path: Path, store: RedisStore
) -> None:
    fake = FakeRedisNodes(tmp_path, store)
    fake.whole_cluster()
    primary, replica = fake.shards[0]
    # The primary's pod came back with an empty volume: its replica took over, its old id lingers.
    fake.node(replica)["master"] = None
    fake.node(primary).update(joined=False, id="f" * 40)
    fake.state["stale"] = ["0" * 40]
    changes = fake.run("create")
    assert ["add-node", fake.ip_port[primary], fake.ip_port[replica]] in changes
    assert not [c for c in changes if c[0] == "create"]
    assert fake.node(primary)["master"] == fake.node(replica)["id"]
    forgotten = sorted(c[1] for c in changes if c == ["forget", c[1], "0" * 40])
    assert forgotten == sorted(fake.ip_port.values()), "every node forgets the old id"


@redis_stores
def test_cluster_script_rejoin_meets_every_peer_only_once_in_a_cluster(tmp_path: Path, store: RedisStore) -> None:
    fake = FakeRedisNodes(tmp_path, store)
    first, _ = fake.shards[0]
    assert fake.run("rejoin", first) == [], "a node that knows no cluster stays empty for create"
    fake.whole_cluster()
    met = [c[2] for c in fake.run("rejoin", first) if c[:2] == ["meet", fake.ip_port[first]]]
    assert sorted(met) == sorted(fake.ip_port.values())


@redis_stores
def test_cluster_script_handover_makes_the_replica_primary_before_the_primary_stops(
    tmp_path: Path, store: RedisStore
) -> None:
    fake = FakeRedisNodes(tmp_path, store)
    fake.whole_cluster()
    primary, replica = fake.shards[1]
    assert fake.run("handover", replica) == [], "a replica has nothing to hand over"
    assert fake.run("handover", primary) == [["failover", fake.ip_port[replica]]]
    assert fake.node(replica)["master"] is None
    assert fake.node(primary)["master"] == fake.node(replica)["id"]


# ---- workloads ----------------------------------------------------------------


def _hpa_for(workload: Obj) -> Obj:
    (hpa,) = [
        h
        for h in _find("HorizontalPodAutoscaler")
        if h["spec"]["scaleTargetRef"]["kind"] == workload["kind"]
        and h["spec"]["scaleTargetRef"]["name"] == workload["metadata"]["name"]
    ]
    return hpa


def _assert_hardened(pod: Obj, container: Obj, writable_tmp: bool = True, uid: int = 10001) -> None:
    pod_security = pod["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert pod_security["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod.get("automountServiceAccountToken") is False
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security.get("runAsUser", pod_security.get("runAsUser")) == uid
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    assert security["seccompProfile"]["type"] == "RuntimeDefault"
    if writable_tmp:
        empty_dirs = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
        assert any(m["mountPath"] == "/tmp" and m["name"] in empty_dirs for m in container["volumeMounts"])
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), kind


EDGE_AND_CHIRP = [*CHIRP_WORKLOADS, _one("Deployment", "envoy")]


def test_every_service_and_worker_of_the_topology_is_deployed_once() -> None:
    deployed = [_service_of(w).name for w in CHIRP_WORKLOADS]
    assert sorted(deployed) == sorted(svc.name for svc in (*topology.SERVICES, *topology.WORKERS))


@pytest.mark.parametrize("workload", EDGE_AND_CHIRP, ids=_id)
def test_workload_is_hardened_and_sized(workload: Obj) -> None:
    pod = workload["spec"]["template"]["spec"]
    for container in pod["containers"]:
        _assert_hardened(pod, container)
    for container in pod.get("initContainers", []):  # short copy jobs: no /tmp needed
        _assert_hardened(pod, container, writable_tmp=False)


@pytest.mark.parametrize("workload", EDGE_AND_CHIRP, ids=_id)
def test_workload_has_an_autoscaler_and_a_disruption_budget(workload: Obj) -> None:
    hpa = _hpa_for(workload)
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    (cpu,) = [m for m in hpa["spec"]["metrics"] if m["type"] == "Resource"]
    assert cpu["resource"]["name"] == "cpu"
    assert "replicas" not in workload["spec"], "the HPA owns the replica count"
    labels = workload["spec"]["template"]["metadata"]["labels"]
    assert _selects(workload["spec"]["selector"], labels)
    budgets = [p for p in _find("PodDisruptionBudget") if _selects(p["spec"]["selector"], labels)]
    assert len(budgets) == 1
    assert budgets[0]["spec"].get("maxUnavailable") == 1


@pytest.mark.parametrize("workload", EDGE_AND_CHIRP, ids=_id)
def test_workload_is_scraped_by_prometheus_on_its_metrics_port(workload: Obj) -> None:
    annotations = workload["spec"]["template"]["metadata"]["annotations"]
    container = _main_container(workload)
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) in _ports(container).values()
    if workload in CHIRP_WORKLOADS:
        assert int(annotations["prometheus.io/port"]) == _ports(container)["metrics"] == METRICS_PORT
        assert annotations["prometheus.io/path"] == "/metrics"
        # Same job label as the local stack, so infra/prometheus/ rules apply unchanged.
        assert annotations["prometheus.io/job"] == _service_of(workload).name
    else:
        assert annotations["prometheus.io/path"] == "/stats/prometheus"
        assert annotations["prometheus.io/job"] == "envoy"


@pytest.mark.parametrize("workload", CHIRP_WORKLOADS, ids=_id)
def test_chirp_pod_has_grpc_probes_on_its_named_grpc_port(workload: Obj) -> None:
    svc = _service_of(workload)
    container = _main_container(workload)
    assert container["image"].startswith(APP_IMAGE)
    assert _ports(container) == {"grpc": GRPC_PORT, "metrics": METRICS_PORT}
    readiness = container["readinessProbe"]["grpc"]
    liveness = container["livenessProbe"]["grpc"]
    assert readiness["port"] == liveness["port"] == GRPC_PORT
    assert readiness.get("service", "") in {"", svc.grpc_service}
    # Not "", which turns NOT_SERVING while a store is down: a restart does not bring it back.
    assert liveness["service"] == LIVENESS_SERVICE
    if svc.routed:
        assert readiness["service"] == svc.grpc_service


@pytest.mark.parametrize("workload", CHIRP_WORKLOADS, ids=_id)
def test_chirp_pod_settings_load_and_drain_within_the_grace_period(workload: Obj) -> None:
    svc = _service_of(workload)
    container = _main_container(workload)
    assert {"configMapRef": {"name": "chirp-config"}} in container["envFrom"]
    env = _pod_env(workload)
    # The service's own loader accepts the settings (it refuses bad values at start).
    settings = CONFIG_LOADERS[svc.module.split(".")[0]](env)
    common = settings.common
    assert common.grpc_host == "0.0.0.0"
    assert common.grpc_port == _ports(container)["grpc"]
    assert common.metrics_port == _ports(container)["metrics"]
    grace = workload["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    # A worker's consumer closes once its idle poll returns.
    assert grace > common.drain_seconds + common.shutdown_grace_seconds + IDLE_WAIT_SECONDS
    # A draining pod answers NOT_SERVING, which takes it out at each edge's next
    # check (a non-retriable failure), and marks its answers, which take it out at
    # an edge's first; the drain outlasts the check, so the pod stops taking calls
    # only once no edge sends it any.
    assert common.drain_seconds >= _seconds_to_take_out(svc.name)
    if svc.name.endswith("_worker"):
        assert common.drain_seconds == 0  # no edge calls it: a drain only holds its partitions
    if svc.name in KAFKA_CONSUMERS:
        assert "CHIRP_KAFKA_CLIENT_RACK" in {e["name"] for e in container.get("env", [])}
    if svc.routed:
        # A rolling update replaces the next pod only once the edge has found this one
        # (a DNS refresh) and admitted it (a check passed): else the one being replaced
        # leaves at its first answer while its successor is not yet taking calls.
        assert workload["spec"]["minReadySeconds"] >= _seconds_to_find(svc.name) + _seconds_to_take_out(svc.name)
    if svc.name == "graph_svc":
        _assert_token_key_is_mounted(workload, settings.token_key_file)


# The processes that consume a topic (graph_svc: the follow-count repair), which fetch
# from a replica in their own zone given the pod's zone.
KAFKA_CONSUMERS = {"like_worker", "fanout_worker", "rank_worker", "graph_svc"}


def _seconds_to_take_out(service: str) -> float:
    """The longest the edge's health checks take to see a pod's answer, NOT_SERVING
    (out) or SERVING (in): an interval and a timeout (0 for a worker: no edge calls it)."""
    clusters = [c for c in ENVOY_CONFIG["static_resources"]["clusters"] if c["name"].startswith(service)]
    worst = 0.0
    for cluster in clusters:
        (check,) = cluster["health_checks"]
        interval, timeout = (float(check[key].removesuffix("s")) for key in ("interval", "timeout"))
        worst = max(worst, interval + timeout)
    return worst


def _seconds_to_find(service: str) -> float:
    """The longest the edge takes to resolve a new pod of a service: its clusters'
    DNS refresh (Envoy's default is 5 s)."""
    clusters = [c for c in ENVOY_CONFIG["static_resources"]["clusters"] if c["name"].startswith(service)]
    assert clusters and all(c["type"] == "STRICT_DNS" for c in clusters)
    return max(float(c.get("dns_refresh_rate", "5s").removesuffix("s")) for c in clusters)


def _assert_token_key_is_mounted(workload: Obj, key_file: Path) -> None:
    pod = workload["spec"]["template"]["spec"]
    (mount,) = [m for m in _main_container(workload)["volumeMounts"] if key_file.is_relative_to(m["mountPath"])]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == "chirp-token-key"
    assert [item["path"] for item in volume["secret"]["items"]] == [key_file.name]
    assert volume["secret"]["items"][0]["key"] == keys.PRIVATE_KEY


# Id-minting services need it for Snowflake ids; the Kafka workers name their group
# members with it (client.id), one name per live pod.
NEEDS_INSTANCE_ID = ID_MINTING | set(WORKER_TOPICS)


@pytest.mark.parametrize("workload", [w for w in CHIRP_WORKLOADS if _service_of(w).name in NEEDS_INSTANCE_ID], ids=_id)
def test_service_gets_a_stable_unique_instance_id_per_live_pod(workload: Obj) -> None:
    # A StatefulSet never runs two pods with the same ordinal, a Deployment may.
    svc = _service_of(workload)
    assert workload["kind"] == "StatefulSet"
    container = _main_container(workload)
    (pod_name,) = [e for e in container["env"] if e["name"] == "POD_NAME"]
    assert pod_name["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert _instance_id_script(container).endswith(f"exec python -m {svc.module}")
    name = workload["metadata"]["name"]
    for ordinal in (0, 7, ID_SLOTS - 1):
        assert int(_run_instance_id_script(container, f"{name}-{ordinal}")) == svc.index * ID_SLOTS + ordinal
    assert _hpa_for(workload)["spec"]["maxReplicas"] <= ID_SLOTS


@pytest.mark.parametrize("svc", topology.SERVICES, ids=lambda s: s.name)
def test_api_service_has_a_headless_service_for_per_request_balancing(svc: topology.Service) -> None:
    (workload,) = [w for w in CHIRP_WORKLOADS if _service_of(w) is svc]
    service = _one("Service", f"{workload['metadata']['name']}-headless")
    assert service["spec"]["clusterIP"] == "None"
    assert _selects({"matchLabels": service["spec"]["selector"]}, workload["spec"]["template"]["metadata"]["labels"])
    (port,) = service["spec"]["ports"]
    assert (port["name"], port["port"], port["targetPort"]) == ("grpc", GRPC_PORT, "grpc")
    if workload["kind"] == "StatefulSet":
        assert workload["spec"]["serviceName"] == service["metadata"]["name"]


def test_client_targets_resolve_every_pod_of_a_headless_service() -> None:
    targets = {k: v for k, v in CONFIG.items() if k.startswith("CHIRP_") and k.endswith("_TARGET")}
    assert {"CHIRP_GRAPH_TARGET", "CHIRP_TWEET_TARGET"} <= set(targets)
    for value in targets.values():
        match = re.fullmatch(r"dns:///([a-z0-9-]+)\.chirp\.svc\.cluster\.local:(\d+)", value)
        assert match, value
        assert _one("Service", match.group(1))["spec"]["clusterIP"] == "None"
        assert int(match.group(2)) == GRPC_PORT


# ---- the edge ---------------------------------------------------------------

ENVOY_CONFIG: Obj = yaml.safe_load((K8S / "envoy" / "envoy.yaml").read_text())


def _envoy_listener(name: str) -> Obj:
    (listener,) = [lst for lst in ENVOY_CONFIG["static_resources"]["listeners"] if lst["name"] == name]
    return listener


def _edge_hcm() -> Obj:
    (chain,) = _envoy_listener("edge")["filter_chains"]
    (hcm,) = chain["filters"]
    typed: Obj = hcm["typed_config"]
    return typed


def _http_filter(name: str) -> Obj:
    (found,) = [f for f in _edge_hcm()["http_filters"] if f["name"] == name]
    typed: Obj = found["typed_config"]
    return typed


def _envoy_mount_of(path: str) -> Obj:
    pod = _one("Deployment", "envoy")["spec"]["template"]["spec"]
    (mount,) = [
        m for m in _main_container(_one("Deployment", "envoy"))["volumeMounts"] if path.startswith(m["mountPath"])
    ]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    return volume


def test_envoy_config_is_generated_from_render_py() -> None:
    production = _load_by_path("chirp_k8s_render_production", K8S / "envoy" / "render_production.py")
    assert production.build() == ENVOY_CONFIG, "stale: run .venv/bin/python k8s/envoy/render_production.py"


def test_envoy_config_passes_envoy_validate(tmp_path: Path) -> None:
    _, jwks = keys.ensure_keys(tmp_path / "keys")
    config = (K8S / "envoy" / "envoy.yaml").read_text()
    config = config.replace(
        _http_filter("envoy.filters.http.grpc_json_transcoder")["proto_descriptor"],
        str(ROOT / "generated" / "chirp.binpb"),
    )
    (provider,) = _http_filter("envoy.filters.http.jwt_authn")["providers"].values()
    config = config.replace(provider["local_jwks"]["filename"], str(jwks))
    path = tmp_path / "envoy.yaml"
    path.write_text(config)
    envoy = Path(sys.executable).parent / "envoy"
    done = subprocess.run(
        [str(envoy), "--mode", "validate", "-c", str(path), "--disable-hot-restart", "--log-level", "error"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK" in done.stdout + done.stderr


@pytest.mark.parametrize("svc", topology.SERVICES, ids=lambda s: s.name)
def test_envoy_balances_over_every_pod_of_each_api_service(svc: topology.Service) -> None:
    (cluster,) = [c for c in ENVOY_CONFIG["static_resources"]["clusters"] if c["name"] == svc.name]
    assert cluster["type"] == "STRICT_DNS"
    assert cluster["lb_policy"] == "LEAST_REQUEST"
    options = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert "http2_protocol_options" in options["explicit_http_config"]
    (health_check,) = cluster["health_checks"]
    assert health_check["grpc_health_check"]["service_name"] == svc.grpc_service
    (locality,) = cluster["load_assignment"]["endpoints"]
    (endpoint,) = locality["lb_endpoints"]
    address = endpoint["endpoint"]["address"]["socket_address"]
    (workload,) = [w for w in CHIRP_WORKLOADS if _service_of(w) is svc]
    headless = f"{workload['metadata']['name']}-headless"
    assert address == {"address": _fqdn(headless), "port_value": GRPC_PORT}
    assert _one("Service", headless)["spec"]["clusterIP"] == "None"


def test_envoy_drops_client_identity_and_verifies_tokens_from_mounted_files() -> None:
    (mutation,) = _edge_hcm()["early_header_mutation_extensions"]
    assert {"remove": "x-chirp-user-id"} in mutation["typed_config"]["mutations"]
    names = [f["name"] for f in _edge_hcm()["http_filters"]]
    transcoder = names.index("envoy.filters.http.grpc_json_transcoder")
    assert transcoder < names.index("envoy.filters.http.jwt_authn") < names.index("envoy.filters.http.router")
    assert names[-1] == "envoy.filters.http.router"
    # The key set: a file from the Secret chirp-jwks.
    (provider,) = _http_filter("envoy.filters.http.jwt_authn")["providers"].values()
    jwks_file = provider["local_jwks"]["filename"]
    assert _envoy_mount_of(jwks_file)["secret"]["secretName"] == "chirp-jwks"
    assert provider["claim_to_headers"] == [
        {"header_name": "x-chirp-user-id", "claim_name": "sub"},
        {"header_name": "x-chirp-session-id", "claim_name": "sid"},
    ]
    # The descriptor: copied from the app image into an emptyDir before Envoy starts.
    transcoder_config = _http_filter("envoy.filters.http.grpc_json_transcoder")
    assert set(transcoder_config["services"]) == {svc.grpc_service for svc in topology.SERVICES}
    descriptor = transcoder_config["proto_descriptor"]
    volume = _envoy_mount_of(descriptor)
    assert "emptyDir" in volume
    pod = _one("Deployment", "envoy")["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["image"].startswith(APP_IMAGE)
    assert any(m["name"] == volume["name"] for m in init["volumeMounts"])
    assert Path(descriptor).name in " ".join(init["command"])


def test_envoy_pods_and_service_expose_the_listeners_of_its_config() -> None:
    envoy = _one("Deployment", "envoy")
    container = _main_container(envoy)
    # An exact release: a moving tag (v1.40-latest) changes what runs with no change here.
    assert re.fullmatch(r"envoyproxy/envoy:v1\.\d+\.\d+", container["image"])
    ports = _ports(container)
    assert ports["http"] == _envoy_listener("edge")["address"]["socket_address"]["port_value"]
    assert ports["ops"] == _envoy_listener("ops")["address"]["socket_address"]["port_value"]
    assert ENVOY_CONFIG["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "ops"}
    config_volume = _envoy_mount_of(container["args"][container["args"].index("--config-path") + 1])
    assert config_volume["configMap"]["name"] == "envoy-config"
    service = _one("Service", "envoy")
    assert service["spec"].get("clusterIP") != "None"
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]


def _envoy_cluster(name: str) -> Obj:
    (cluster,) = [c for c in ENVOY_CONFIG["static_resources"]["clusters"] if c["name"] == name]
    return cluster


def _load_sidecar() -> ModuleType:
    return _load_by_path("chirp_edge_sidecar", ROOT / "envoy" / "sidecar.py")


def test_envoy_pod_runs_the_edge_sidecar_on_its_cluster_port_asking_each_public_services_headless_service() -> None:
    sidecar = _load_sidecar()
    envoy = _one("Deployment", "envoy")
    pod_labels = envoy["spec"]["template"]["metadata"]["labels"]
    (container,) = [c for c in envoy["spec"]["template"]["spec"]["containers"] if c is not _main_container(envoy)]
    assert {container["image"]} == {_main_container(w)["image"] for w in CHIRP_WORKLOADS}
    # The script from the app image, with the arguments its own parser accepts.
    assert container["command"] == ["python", "/app/envoy/sidecar.py"]
    options = sidecar.parse_args(container["args"])
    # Envoy reaches it inside the pod, on the port the rendered config names.
    cluster = _envoy_cluster(sidecar.render.SIDECAR_CLUSTER)
    assert cluster["type"] == "STATIC"
    (locality,) = cluster["load_assignment"]["endpoints"]
    (endpoint,) = locality["lb_endpoints"]
    assert endpoint["endpoint"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": options.port}
    assert _ports(container) == {"sidecar": options.port}
    # The kubelet probes the pod IP; no one else reaches the port (Envoy is in the pod).
    assert options.host == "0.0.0.0"
    assert container["readinessProbe"]["tcpSocket"]["port"] == "sidecar"
    pods = _pod_labels()
    assert not any(_reaches(labels, pod_labels, "sidecar") for labels in pods.values())
    assert not _reaches(None, pod_labels, "sidecar")
    assert _reaches(None, pod_labels, "http") and _reaches(pods["graph-svc"], pod_labels, "http")
    # One target per public service: its headless Service, every pod, reachable from the edge.
    expected = {}
    for svc in topology.SERVICES:
        (workload,) = [w for w in CHIRP_WORKLOADS if _service_of(w) is svc]
        headless = f"{workload['metadata']['name']}-headless"
        assert _one("Service", headless)["spec"]["clusterIP"] == "None"
        assert _reaches(pod_labels, workload["spec"]["template"]["metadata"]["labels"], "grpc")
        expected[svc.grpc_service] = [f"dns:///{_fqdn(headless)}:{GRPC_PORT}"]
    assert options.targets == expected
    assert set(options.targets) == set(sidecar.render.SERVICE_DESCRIPTORS)


def test_edge_sidecar_refuses_targets_for_only_some_services_and_defaults_to_local_instances() -> None:
    sidecar = _load_sidecar()
    (container,) = [c for c in _one("Deployment", "envoy")["spec"]["template"]["spec"]["containers"][1:]]
    args = container["args"]
    # A forgotten target would leave that service asking 127.0.0.1, where nothing listens in the pod.
    with pytest.raises(SystemExit):
        sidecar.parse_args(args[:-2])
    with pytest.raises(SystemExit):
        sidecar.parse_args([*args, "--target", "like_worker=dns:///like-worker-headless:50051"])
    local = sidecar.parse_args([])
    assert local.host == topology.HOST
    graph = next(svc for svc in topology.SERVICES if svc.name == "graph_svc")
    assert local.targets[graph.grpc_service] == [f"{topology.HOST}:{i.port}" for i in topology.instances(graph)]


def test_envoy_config_points_at_loopback_only_for_its_admin_interface_and_the_sidecar() -> None:
    production = _load_by_path("chirp_k8s_render_production", K8S / "envoy" / "render_production.py")
    loopback = sorted(
        a["port_value"] for a in production._socket_addresses(ENVOY_CONFIG) if a["address"] == "127.0.0.1"
    )
    assert loopback == sorted([production.ADMIN_PORT, production.ADMIN_PORT, _load_sidecar().render.SIDECAR_PORT])
    # A local cluster render.py might add is refused instead of written out.
    config = production.build()
    config["static_resources"]["clusters"].append(
        {"name": "new_svc", "load_assignment": production._static_loopback("new_svc", GRPC_PORT)}
    )
    with pytest.raises(RuntimeError, match=str(GRPC_PORT)):
        production._check_loopback(config, {production.ADMIN_PORT, _load_sidecar().render.SIDECAR_PORT})


# ---- monitoring ---------------------------------------------------------------


def test_prometheus_keeps_annotated_pods_and_takes_port_path_and_job_from_them() -> None:
    config = yaml.safe_load(_one("ConfigMap", "prometheus-config")["data"]["prometheus.yml"])
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "chirp-pods"]
    (discovery,) = job["kubernetes_sd_configs"]
    assert discovery == {"role": "pod", "namespaces": {"names": [NAMESPACE]}}
    rules = job["relabel_configs"]
    keep = rules[0]
    assert keep["action"] == "keep"
    assert keep["source_labels"] == ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"]
    assert keep["regex"] == "true"
    targets = {rule.get("target_label"): rule["source_labels"] for rule in rules}
    assert "__meta_kubernetes_pod_annotation_prometheus_io_port" in targets["__address__"]
    assert targets["__metrics_path__"] == ["__meta_kubernetes_pod_annotation_prometheus_io_path"]
    assert targets["job"] == ["__meta_kubernetes_pod_annotation_prometheus_io_job"]
    assert targets["instance"] == ["__meta_kubernetes_pod_name"]
    # Prometheus joins the source labels with ";" and anchors the regex; $1 is \\1.
    address = next(r for r in rules if r.get("target_label") == "__address__")
    match = re.fullmatch(address["regex"], "10.1.2.3:50051;51051")
    assert match is not None
    assert match.expand(address["replacement"].replace("$", "\\")) == "10.1.2.3:51051"


# Who may call whose gRPC port: the edge and the peers that hold a target for it
# (common/clients.py Peers: tweet_svc dials graph_svc; feed_svc, rank_svc, the
# fan-out worker (feed_svc/wiring.py) and the rank worker dial both).
GRPC_CALLERS = {
    "graph-svc": {"envoy", "tweet-svc", "feed-svc", "rank-svc", "fanout-worker", "rank-worker"},
    "tweet-svc": {"envoy", "feed-svc", "rank-svc", "fanout-worker", "rank-worker"},
    "feed-svc": {"envoy"},
    "rank-svc": {"envoy"},
    "like-worker": set(),
    "fanout-worker": set(),
    "rank-worker": set(),
}


def _matches(selector: Obj, labels: Mapping[str, str]) -> bool:
    """A label selector with matchLabels and `In` expressions (all the policies use)."""
    if not all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In", expression
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def _pod_labels() -> dict[str, Mapping[str, str]]:
    return {
        w["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]: w["spec"]["template"]["metadata"][
            "labels"
        ]
        for w in OBJECTS
        if w["kind"] in WORKLOAD_KINDS
    }


def _reaches(source: Mapping[str, str] | None, target: Mapping[str, str], port: str) -> bool:
    """Whether a pod (labels; None: a pod in namespace `monitoring`) may open `port` on `target`.
    Kubernetes semantics: a pod selected by no Ingress policy accepts anything; otherwise
    the union of the selecting policies' rules."""
    policies = [p for p in _find("NetworkPolicy") if _matches(p["spec"]["podSelector"], target)]
    if not policies:
        return True
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            if port not in {p["port"] for p in rule.get("ports", [])}:
                continue
            if "from" not in rule:  # every source, inside the cluster or not
                return True
            for peer in rule["from"]:
                if "namespaceSelector" in peer:
                    names = peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                    if source is None and names == "monitoring":
                        return True
                elif source is not None and _matches(peer["podSelector"], source):
                    return True
    return False


def test_grpc_ports_are_reachable_only_from_the_edge_and_the_peers_that_call_them() -> None:
    pods = _pod_labels()
    assert set(GRPC_CALLERS) <= set(pods)
    for target, callers in GRPC_CALLERS.items():
        reachable = {name for name, labels in pods.items() if _reaches(labels, pods[target], "grpc")}
        assert reachable == callers, target
        assert not _reaches(None, pods[target], "grpc"), target
        # Prometheus scrapes every Chirp pod; no Chirp pod can reach a metrics port.
        assert _reaches(None, pods[target], "metrics"), target
        assert not any(_reaches(labels, pods[target], "metrics") for labels in pods.values()), target


def _bytes(quantity: str) -> int:
    units = {"gb": 10**9, "mb": 10**6, "Gi": 2**30, "Mi": 2**20}
    for unit, size in units.items():
        if quantity.endswith(unit):
            return int(quantity[: -len(unit)]) * size
    return int(quantity)


@redis_stores
def test_redis_leaves_room_under_its_memory_limit_for_a_forked_snapshot_or_resync(store: RedisStore) -> None:
    """A snapshot (`save`) and a replica's full resync fork the process: the fork's
    copy-on-write pages and the replica's output buffer are not counted in maxmemory."""
    conf = store.conf()
    assert conf["save"] != '""'  # snapshots on: the room is needed
    assert store.sets()
    for redis in store.sets():
        limit = _bytes(_main_container(redis)["resources"]["limits"]["memory"])
        assert _bytes(conf["maxmemory"]) <= 0.6 * limit


def _flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_an_envoy_pod_drains_its_clients_before_envoy_stops() -> None:
    """On SIGTERM alone Envoy closes its listeners at once, resetting every request in
    flight and every keep-alive connection (tests/integration/test_edge_drain.py)."""
    pod = _one("Deployment", "envoy")["spec"]["template"]["spec"]
    envoy = _main_container(_one("Deployment", "envoy"))
    (sidecar,) = [c for c in pod["containers"] if c["name"] == "edge-sidecar"]
    command = sidecar["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:2] == ["python", "/app/envoy/drain.py"]
    admin = ENVOY_CONFIG["admin"]["address"]["socket_address"]
    assert _flag(command, "--admin") == f"{admin['address']}:{admin['port_value']}"
    after, hold = float(_flag(command, "--after")), float(_flag(command, "--hold"))
    envoy_stops_at = envoy["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain_time = float(_flag(envoy["args"], "--drain-time-s"))
    assert _flag(envoy["args"], "--drain-strategy") == "immediate"
    # Draining while Envoy runs, through its drain time, and the sidecar outlives it.
    assert after + drain_time <= envoy_stops_at < after + hold
    assert pod["terminationGracePeriodSeconds"] > after + hold + 1
