"""The production manifests in k8s/, checked offline.

Built-in kinds validate against the Kubernetes JSON schemas that the
kubernetes-validate package ships (strict: unknown fields fail); operators'
custom resources get their required structure and replication settings checked
here. Then the properties the cluster relies on: gRPC probes, non-root and
read-only pods, resources, a drain that fits the grace period, an HPA and a
PDB per workload, headless Services for per-request balancing, settings that
the services' own config loaders accept, Envoy's config generated from
envoy/render.py (and accepted by `envoy --mode validate`), RF 3 stores.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import kubernetes_validate
import pytest
import yaml  # type: ignore[import-untyped]  # PyYAML is pinned in requirements.lock; no stubs installed

from common import cql, kafka
from feed_svc import config as feed_config
from graph_svc import config as graph_config
from infra import keys, topology
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
EXTERNAL_SECRETS = {"chirp-token-key", "chirp-jwks"}
# Services that mint Snowflake ids: each live pod needs its own instance id.
ID_MINTING = {"graph_svc", "tweet_svc"}
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
WORKLOADS = [o for o in OBJECTS if o["kind"] in WORKLOAD_KINDS and o["metadata"]["name"] != "redis"]
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


def _pod_env(workload: Obj) -> dict[str, str]:
    """What the process sees: chirp-config, the container's own values, the computed instance id."""
    container = _main_container(workload)
    env = dict(CONFIG)
    env |= {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    if container.get("command") == ["/bin/sh", "-c"]:
        env["CHIRP_INSTANCE_ID"] = _run_instance_id_script(container, f"{workload['metadata']['name']}-0")
    return env


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


def test_scylla_has_three_members_in_the_datacenter_the_driver_uses() -> None:
    (scylla,) = _find("ScyllaCluster")
    datacenter = scylla["spec"]["datacenter"]
    # The driver's DCAwareRoundRobinPolicy only talks to LOCAL_DC.
    assert datacenter["name"] == cql.LOCAL_DC
    (rack,) = datacenter["racks"]
    assert rack["members"] == 3
    assert rack["storage"]["capacity"]
    assert CONFIG["CHIRP_CQL_HOSTS"] == _fqdn(f"{scylla['metadata']['name']}-client")


def test_kafka_runs_kraft_on_three_nodes_with_rf3_and_min_isr_2() -> None:
    (cluster,) = _find("Kafka")
    name = cluster["metadata"]["name"]
    assert "zookeeper" not in cluster["spec"]  # KRaft: the controllers are Kafka nodes of a pool
    config = cluster["spec"]["kafka"]["config"]
    assert config["default.replication.factor"] == 3
    assert config["min.insync.replicas"] == 2
    assert config["offsets.topic.replication.factor"] == 3
    assert config["transaction.state.log.replication.factor"] == 3
    assert config["transaction.state.log.min.isr"] == 2
    assert config["unclean.leader.election.enable"] is False
    pools = [p for p in _find("KafkaNodePool") if p["metadata"]["labels"]["strimzi.io/cluster"] == name]
    brokers = sum(p["spec"]["replicas"] for p in pools if "broker" in p["spec"]["roles"])
    controllers = sum(p["spec"]["replicas"] for p in pools if "controller" in p["spec"]["roles"])
    assert brokers == 3
    assert controllers == 3
    (plain,) = [lst for lst in cluster["spec"]["kafka"]["listeners"] if lst["tls"] is False]
    assert CONFIG["CHIRP_KAFKA_BOOTSTRAP"] == f"{_fqdn(f'{name}-kafka-bootstrap')}:{plain['port']}"
    assert "topicOperator" in cluster["spec"]["entityOperator"]


def test_every_topic_the_code_uses_is_declared_with_three_replicas() -> None:
    topics = {t["spec"]["topicName"]: t["spec"] for t in _find("KafkaTopic")}
    assert set(topics) == set(kafka.TOPICS)
    for spec in topics.values():
        assert spec["replicas"] == 3
        assert spec["config"]["min.insync.replicas"] == 2
    # More consumers than partitions would sit idle.
    for workload in CHIRP_WORKLOADS:
        svc = _service_of(workload)
        if svc.name in WORKER_TOPICS:
            hpa = _hpa_for(workload)
            assert hpa["spec"]["maxReplicas"] <= min(topics[t]["partitions"] for t in WORKER_TOPICS[svc.name])


def test_redis_url_names_a_service_of_the_redis_statefulset() -> None:
    match = re.fullmatch(r"redis://([a-z0-9-]+)\.chirp\.svc\.cluster\.local:(\d+)/\d+", CONFIG["CHIRP_REDIS_URL"])
    assert match, CONFIG["CHIRP_REDIS_URL"]
    service = _one("Service", match.group(1))
    redis = _one("StatefulSet", "redis")
    assert _selects({"matchLabels": service["spec"]["selector"]}, redis["spec"]["template"]["metadata"]["labels"])
    assert service["spec"]["ports"][0]["port"] == int(match.group(2))


def test_migration_job_creates_the_keyspace_with_rf3_in_the_scylla_datacenter() -> None:
    job = _one("Job", "chirp-migrate")
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].startswith(APP_IMAGE)
    command: list[str] = container["command"]
    assert command[:3] == ["python", "-m", "infra.migrate"]
    flags = dict(zip(command[3::2], command[4::2], strict=True))
    known = set(re.findall(r'add_argument\("(--[a-z-]+)"', (ROOT / "infra" / "migrate.py").read_text()))
    assert set(flags) <= known
    assert flags["--host"] == CONFIG["CHIRP_CQL_HOSTS"]
    assert flags["--keyspace"] == CONFIG["CHIRP_CQL_KEYSPACE"]
    assert int(flags["--port"]) == int(CONFIG["CHIRP_CQL_PORT"])
    assert ast.literal_eval(flags["--replication"]) == {"class": "NetworkTopologyStrategy", cql.LOCAL_DC: 3}
    _assert_hardened(job["spec"]["template"]["spec"], container)


# ---- workloads ----------------------------------------------------------------


def _hpa_for(workload: Obj) -> Obj:
    (hpa,) = [
        h
        for h in _find("HorizontalPodAutoscaler")
        if h["spec"]["scaleTargetRef"]["kind"] == workload["kind"]
        and h["spec"]["scaleTargetRef"]["name"] == workload["metadata"]["name"]
    ]
    return hpa


def _assert_hardened(pod: Obj, container: Obj, writable_tmp: bool = True) -> None:
    pod_security = pod["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert pod_security["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod.get("automountServiceAccountToken") is False
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security.get("runAsUser", pod_security.get("runAsUser")) == 10001
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
    assert liveness.get("service", "") == ""
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
    assert grace > common.drain_seconds + common.shutdown_grace_seconds
    assert common.drain_seconds >= 3, "Envoy needs about 2 s of health checks to take a pod out"
    if svc.name == "graph_svc":
        _assert_token_key_is_mounted(workload, settings.token_key_file)


def _assert_token_key_is_mounted(workload: Obj, key_file: Path) -> None:
    pod = workload["spec"]["template"]["spec"]
    (mount,) = [m for m in _main_container(workload)["volumeMounts"] if key_file.is_relative_to(m["mountPath"])]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == "chirp-token-key"
    assert [item["path"] for item in volume["secret"]["items"]] == [key_file.name]
    assert volume["secret"]["items"][0]["key"] == keys.PRIVATE_KEY


@pytest.mark.parametrize("workload", [w for w in CHIRP_WORKLOADS if _service_of(w).name in ID_MINTING], ids=_id)
def test_id_minting_service_gets_a_unique_instance_id_per_live_pod(workload: Obj) -> None:
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
    assert provider["claim_to_headers"] == [{"header_name": "x-chirp-user-id", "claim_name": "sub"}]
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
    assert container["image"].startswith("envoyproxy/envoy:v1.")
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
