"""Start, check and stop the local Chirp stack, all on 127.0.0.1.

    python -m infra.stack up | down | status
    python -m infra.stack kill | stop | start NAME    (one component, e.g. cassandra-2)

Every process started here has its pid (and start time, so a reused pid is
never signalled) in .state/run/, its log in .state/logs/, its data in
.state/data/. `up` is idempotent: running components are kept, except service
processes whose CHIRP_* settings changed, Cassandra and Kafka nodes whose
rendered config or JVM options changed and Redis servers whose config file
changed, which are restarted. It ends once the edge routes to every instance
(or warns after 30 s).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from common import priority
from infra import jvm, keys, prometheus, topology

ROOT = Path(__file__).resolve().parent.parent
STATE = ROOT / ".state"
DEPS = ROOT / ".deps"
RUN, LOGS, CONF, KEYS = STATE / "run", STATE / "logs", STATE / "conf", STATE / "keys"
PYTHON = sys.executable
VENV_BIN = Path(sys.executable).parent

INFRA_KINDS = ("redis", "redis_state", "cassandra", "kafka")
EDGE = ("edge_sidecar", "envoy", "prometheus")  # stopped first, by `down`
STORE_STOP_TIMEOUT = 60.0  # a Cassandra node or Kafka broker shutting down cleanly
KILL_WAIT_S = 30.0  # a SIGKILLed process is gone long before this
EDGE_ADMIT_TIMEOUT_S = 30.0  # a health check every 10 s (envoy/render.py) admits a started instance within 11


@dataclass
class Component:
    name: str
    argv: Callable[[], list[str]]
    ready: Callable[[], bool]
    timeout: float
    env: dict[str, str] = field(default_factory=dict)
    stop_timeout: float = 20.0
    fingerprint: str = ""  # a change of it restarts a running component
    where: str = ""
    timer_slack_ns: int = 0  # the process's timer slack (0: the kernel's default)


def _tcp_open(port: int) -> bool:
    try:
        with socket.create_connection((topology.HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def _redis_ready(port: int) -> bool:
    try:
        with socket.create_connection((topology.HOST, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _grpc_serving(port: int, service: str) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with grpc.insecure_channel(f"{topology.HOST}:{port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=1.0
            )
            return reply.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


def edge_routed() -> dict[str, int] | None:
    """How many instances Envoy routes to, per cluster (every cluster, 0 included): those
    that failed no health check (nor marked themselves draining) and are not ejected as
    outliers. None when Envoy does not answer."""
    try:
        base = f"http://{topology.HOST}:{topology.ENVOY_ADMIN_PORT}"
        # 2 s: under the fault suite's load the admin port answers slower.
        with urllib.request.urlopen(f"{base}/ready", timeout=2) as reply:
            if reply.status != 200:
                return None
        with urllib.request.urlopen(f"{base}/clusters?format=json", timeout=2) as reply:
            clusters = json.load(reply)["cluster_statuses"]
    except (OSError, ValueError, KeyError):
        return None
    routed: dict[str, int] = {}
    for cluster in clusters:
        routed[cluster["name"]] = 0
        for host in cluster.get("host_statuses", []):
            status = host.get("health_status", {})
            out = status.get("failed_active_health_check") or status.get("failed_outlier_check")
            if not out and status.get("eds_health_status") == "HEALTHY":
                routed[cluster["name"]] += 1
    return routed


def _service_clusters(routed: dict[str, int], service: str) -> list[str]:
    """A service's own cluster and any others of its (graph_svc's argon2 one)."""
    return [name for name in routed if name == service or name.startswith(f"{service}_")]


def _envoy_ready() -> bool:
    """Envoy is live and routes to at least one instance of every service."""
    routed = edge_routed()
    return routed is not None and all(routed.get(svc.name, 0) > 0 for svc in topology.SERVICES)


def edge_short_clusters() -> list[str] | None:
    """The services' clusters in which Envoy routes to fewer than every instance
    (a service's own, and graph_svc's argon2 one); None when Envoy does not answer."""
    routed = edge_routed()
    if routed is None:
        return None
    short = []
    for svc in topology.SERVICES:
        for name in _service_clusters(routed, svc.name) or [svc.name]:
            if routed.get(name, 0) < topology.instance_count():
                short.append(name)
    return short


def edge_routes_every_instance() -> bool:
    """Envoy routes to every instance of every service, in each of its clusters."""
    return edge_short_clusters() == []


CODE_DIRS = ("common", "generated", "graph_svc", "tweet_svc", "feed_svc", "rank_svc")


def _settings_fingerprint() -> str:
    """CHIRP_* settings and the code: a change of either restarts the services."""
    digest = hashlib.sha256()
    digest.update(json.dumps(sorted((k, v) for k, v in os.environ.items() if k.startswith("CHIRP_"))).encode())
    for directory in CODE_DIRS:
        for path in sorted((ROOT / directory).rglob("*.py")):
            digest.update(path.relative_to(ROOT).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def _service_env() -> dict[str, str]:
    """Settings every service process gets: where its peers and its keys are."""
    private_key, _ = keys.ensure_keys(KEYS)
    env = {
        "CHIRP_TOKEN_KEY_FILE": str(private_key),
        "CHIRP_PAGE_TOKEN_KEY_FILE": str(keys.ensure_page_token_key(KEYS)),
        "PYTHONUNBUFFERED": "1",
        "CHIRP_CQL_HOSTS": ",".join(topology.cql_hosts()),
        "CHIRP_KAFKA_BOOTSTRAP": topology.kafka_bootstrap(),
        "CHIRP_REDIS_URL": topology.redis_url(),
        "CHIRP_REDIS_STATE_URL": topology.state_redis_url(),
    }
    for svc in topology.SERVICES:
        targets = ",".join(f"{topology.HOST}:{inst.port}" for inst in topology.instances(svc))
        env[f"CHIRP_{svc.name.split('_')[0].upper()}_TARGET"] = f"ipv4:{targets}"
    return env


def _service_components(prepare: bool) -> list[Component]:
    """`prepare`: work out settings and keys, as starting needs (stopping and status do not)."""
    fingerprint = _settings_fingerprint() if prepare else ""
    shared = _service_env() if prepare else {}
    components = []
    for inst in topology.all_instances():
        components.append(
            Component(
                name=inst.name,
                argv=functools.partial(list, [PYTHON, "-m", inst.service.module]),
                ready=functools.partial(_grpc_serving, inst.port, inst.service.grpc_service),
                timeout=150,  # room for common/cql.py's prepare retries while a node is overloaded
                env={
                    **shared,
                    "CHIRP_GRPC_PORT": str(inst.port),
                    "CHIRP_METRICS_PORT": str(inst.metrics_port),
                    "CHIRP_INSTANCE_ID": str(inst.instance_id),
                },
                # Drain, grace for calls in flight, and a worker's idle Kafka poll
                # (common/worker.py IDLE_WAIT_SECONDS), which its close waits out.
                stop_timeout=20,
                fingerprint=fingerprint,
                where=f"gRPC {topology.HOST}:{inst.port}, metrics :{inst.metrics_port}",
            )
        )
    return components


def _envoy_component(prepare: bool) -> Component:
    """Envoy restarts when its rendered config or the API descriptor changes.
    `prepare`: render that config (and make the keys), as starting needs."""
    out = CONF / "envoy.json"
    fingerprint = ""
    nice = priority.edge_niceness()
    if prepare:
        CONF.mkdir(parents=True, exist_ok=True)
        _, jwks = keys.ensure_keys(KEYS)
        subprocess.run([PYTHON, str(ROOT / "envoy" / "render.py"), str(out), "--jwks", str(jwks)], check=True)
        digest = hashlib.sha256(out.read_bytes() + (ROOT / "generated" / "chirp.binpb").read_bytes())
        digest.update(str(nice).encode())  # a changed CHIRP_EDGE_NICE restarts Envoy too
        fingerprint = digest.hexdigest()[:16]
    argv = [
        PYTHON, "-m", "infra.supervise", "--nice", str(nice), "--",
        str(VENV_BIN / "envoy"),
        "-c", str(out),
        "--base-id", "8080",
        "--concurrency", "2",
        "--log-level", "warn",
        "--drain-time-s", "2",
    ]  # fmt: skip
    return Component(
        name="envoy",
        argv=functools.partial(list, argv),
        ready=_envoy_ready,
        timeout=60,
        fingerprint=fingerprint,
        where=f"REST+gRPC http://{topology.HOST}:{topology.EDGE_PORT}, admin :{topology.ENVOY_ADMIN_PORT}",
    )


EDGE_SIDECAR_PORT = topology.EDGE_SIDECAR_PORT  # where Envoy routes reflection and health


def _edge_sidecar_component() -> Component:
    """Reflection of the public API and health for the edge; restarts when its code or the API changes."""
    digest = hashlib.sha256()
    for path in ("envoy/sidecar.py", "envoy/render.py", "common/server.py", "generated/chirp.binpb"):
        digest.update((ROOT / path).read_bytes())
    return Component(
        name="edge_sidecar",
        argv=functools.partial(list, [PYTHON, str(ROOT / "envoy" / "sidecar.py"), "--port", str(EDGE_SIDECAR_PORT)]),
        ready=functools.partial(_tcp_open, EDGE_SIDECAR_PORT),
        timeout=30,
        stop_timeout=5,
        fingerprint=digest.hexdigest()[:16],
        where=f"gRPC {topology.HOST}:{EDGE_SIDECAR_PORT} (reflection, health; behind Envoy)",
    )


def _prometheus_component() -> Component:
    """Scrapes every instance, Envoy and itself; restarts when its config or rules change."""
    return Component(
        name="prometheus",
        argv=lambda: prometheus.prometheus_command(ROOT, STATE),
        ready=prometheus.prometheus_ready,
        timeout=30,
        fingerprint=prometheus.fingerprint(ROOT),
        where=f"http://{topology.HOST}:{prometheus.PROMETHEUS_PORT} (alerts: /alerts)",
    )


def _store_components() -> list[Component]:
    nodes = topology.store_nodes()
    kafka = topology.kafka_nodes()
    cassandra = topology.cassandra_nodes()
    redis_clustered = len(topology.redis_nodes()) > 1
    comps = []
    for node in nodes:
        if node.kind in ("redis", "redis_state"):
            comps.append(
                Component(
                    name=node.name,
                    argv=functools.partial(_redis_argv, node, redis_clustered),
                    ready=functools.partial(_redis_ready, node.port),
                    timeout=20,
                    # A changed config file restarts the server (it reloads its RDB snapshot).
                    fingerprint=_redis_fingerprint(node, redis_clustered),
                    where=node.address,
                )
            )
        elif node.kind == "cassandra":
            comps.append(
                Component(
                    name=node.name,
                    argv=functools.partial(jvm.cassandra_command, ROOT, DEPS, STATE, node, cassandra),
                    ready=functools.partial(jvm.cassandra_ready, node.host, node.port),
                    # A node restarted under the fault suite's load on 2 cores took 2.5-3
                    # minutes on a slow machine (23 s on another): most of it waiting for CPU.
                    timeout=420,
                    stop_timeout=STORE_STOP_TIMEOUT,
                    # A changed cassandra.yaml or JVM option restarts the node, as settings do a service.
                    fingerprint=jvm.cassandra_fingerprint(ROOT, STATE, node, cassandra),
                    where=f"CQL {node.address}",
                    timer_slack_ns=jvm.JVM_TIMER_SLACK_NS,
                )
            )
        else:
            comps.append(
                Component(
                    name=node.name,
                    argv=functools.partial(_kafka_argv, node, kafka),
                    ready=functools.partial(jvm.kafka_ready, node.host, node.port),
                    timeout=300,
                    stop_timeout=STORE_STOP_TIMEOUT,
                    fingerprint=jvm.kafka_fingerprint(
                        ROOT, STATE, node, kafka, topology.kafka_replication(), topology.kafka_min_insync()
                    ),
                    where=node.address,
                    timer_slack_ns=jvm.JVM_TIMER_SLACK_NS,
                )
            )
    return comps


def components(prepare: bool = True) -> list[Component]:
    """Everything `up` starts, in order. `prepare=False` (down, status, stop) renders
    no config and makes no keys: those are for starting."""
    return [
        *_store_components(),
        *_service_components(prepare),
        _edge_sidecar_component(),
        _envoy_component(prepare),
        _prometheus_component(),
    ]


def _redis_conf(clustered: bool) -> Path:
    return ROOT / "infra" / "redis" / ("redis-cluster.conf" if clustered else "redis.conf")


# The state Redis (infra/topology.py) is the cache's configuration with these last, so
# they win: it never evicts (a write past the limit is refused). 256 MB hold the
# counters and the trending tallies of a 48 h window at about 13 likes/s (about 100 B
# per tweet and user for 48 to 60 h), far above what the tests and benchmarks here make.
STATE_REDIS_SETTINGS = ("--maxmemory-policy", "noeviction", "--maxmemory", "256mb")


def _redis_settings(node: topology.StoreNode) -> tuple[str, ...]:
    return STATE_REDIS_SETTINGS if node.kind == "redis_state" else ()


def _redis_fingerprint(node: topology.StoreNode, clustered: bool) -> str:
    settings = " ".join(_redis_settings(node)).encode()
    return hashlib.sha256(_redis_conf(clustered).read_bytes() + settings).hexdigest()[:16]


def _redis_argv(node: topology.StoreNode, clustered: bool) -> list[str]:
    return [
        "redis-server",
        str(_redis_conf(clustered)),
        "--dir",
        str(_data(node.name)),
        "--port",
        str(node.port),
        *_redis_settings(node),
    ]


def _data(name: str) -> Path:
    path = STATE / "data" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def _kafka_argv(node: topology.StoreNode, cluster: list[topology.StoreNode]) -> list[str]:
    settings = (topology.kafka_replication(), topology.kafka_min_insync())
    fmt = jvm.kafka_format_command(ROOT, DEPS, STATE, node, cluster, *settings)
    if fmt is not None:
        _run_step(f"{node.name}-format", fmt)
    return jvm.kafka_command(ROOT, DEPS, STATE, node, cluster, *settings)


# ---- pid bookkeeping -------------------------------------------------------


def _start_time(pid: int) -> str | None:
    """The process's start time (to tell a reused pid), or None once it has exited.
    A zombie whose threads have all exited counts as exited: its ports and files are
    released, and its reaper here, the machine's init, takes a second or two to
    collect it. Its main thread alone turns Z first, while the others still hold them."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] in ("Z", "X") and len(os.listdir(f"/proc/{pid}/task")) <= 1:
            return None
    except OSError:
        return None
    return fields[19]


def _read_pid(name: str) -> dict[str, str] | None:
    path = RUN / f"{name}.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if _start_time(int(record["pid"])) != record.get("start"):
        path.unlink(missing_ok=True)  # the process is gone (or the pid was reused)
        return None
    return dict(record)


def _start(comp: Component) -> int:
    log_path = LOGS / f"{comp.name}.log"
    env = {**os.environ, **comp.env}
    with open(log_path, "ab") as log, _timer_slack(comp.timer_slack_ns):
        proc = subprocess.Popen(
            comp.argv(),
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    record = {"pid": str(proc.pid), "start": _start_time(proc.pid) or "", "fingerprint": comp.fingerprint}
    (RUN / f"{comp.name}.json").write_text(json.dumps(record))
    return proc.pid


PR_SET_TIMERSLACK, PR_GET_TIMERSLACK = 29, 30  # linux/prctl.h


@contextlib.contextmanager
def _timer_slack(ns: int) -> Iterator[None]:
    """This thread's timer slack set to `ns` (none if 0) while it starts a child: the
    child inherits it, and so do the threads it starts. Set here rather than in the
    child, so the child is spawned as any other (no Python between fork and exec)."""
    if not ns:
        yield
        return
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    before = prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0)
    if before < 0 or prctl(PR_SET_TIMERSLACK, ctypes.c_ulong(ns), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_TIMERSLACK)")
    try:
        yield
    finally:
        prctl(PR_SET_TIMERSLACK, ctypes.c_ulong(before), 0, 0, 0)


def _stop(name: str, timeout: float) -> bool:
    return bool(_stop_together({name: timeout}))


def _stop_together(timeouts: dict[str, float]) -> list[str]:
    """SIGTERM every named component that runs, all at once, then wait for each to
    exit; one still running past its timeout is SIGKILLed. Returns those stopped."""
    records = {name: record for name in timeouts if (record := _read_pid(name)) is not None}
    started = time.monotonic()
    for record in records.values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(record["pid"]), signal.SIGTERM)
    running = dict(records)
    while running:
        for name, record in list(running.items()):
            pid = int(record["pid"])
            if _start_time(pid) != record["start"]:
                del running[name]
            elif time.monotonic() - started > timeouts[name]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if running:
            time.sleep(0.2)
    for name in records:
        (RUN / f"{name}.json").unlink(missing_ok=True)
    return list(records)


def _run_step(name: str, argv: list[str]) -> None:
    log_path = LOGS / f"{name}.log"
    with open(log_path, "ab") as log:
        result = subprocess.run(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise StartError(name, log_path)


class StartError(Exception):
    def __init__(self, component: str, log_path: Path) -> None:
        super().__init__(f"{component} failed to start; see its log: {log_path}")


def _wait_until(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.25)
    return True


def _wait_ready(comp: Component, pid: int | None) -> None:
    ready = False

    def ready_or_exited() -> bool:
        nonlocal ready
        ready = comp.ready()
        return ready or (pid is not None and _start_time(pid) is None)

    _wait_until(ready_or_exited, comp.timeout)
    if not ready:
        raise StartError(comp.name, LOGS / f"{comp.name}.log")


# ---- commands --------------------------------------------------------------


RESERVED_PORTS = Path("/proc/sys/net/ipv4/ip_local_reserved_ports")


def _reserve_ports() -> None:
    """Keep the services' gRPC and metrics ports out of the kernel's ephemeral range:
    with three stores of three nodes, the many client connections made a service's
    fixed port (say 51052) the local port of some connection, and its bind failed."""
    ports = sorted(p for inst in topology.all_instances() for p in (inst.port, inst.metrics_port))
    wanted = f"{ports[0]}-{ports[len(ports) // 2 - 1]},{ports[len(ports) // 2]}-{ports[-1]}"
    try:
        current = RESERVED_PORTS.read_text().strip()
        if wanted not in current:
            RESERVED_PORTS.write_text(",".join(filter(None, [current, wanted])))
    except OSError as exc:  # not root, or no such setting: ports may collide now and then
        print(f"  could not reserve ports {wanted}: {exc}", file=sys.stderr)


def up() -> int:
    for path in (RUN, LOGS, CONF):
        path.mkdir(parents=True, exist_ok=True)
    _reserve_ports()
    chosen = topology.current()
    previous = topology.recorded()
    if previous not in (None, chosen) and any(RUN.glob("*.json")):
        print(f"the {previous} stack is running: `make down` first, then bring up the {chosen} one", file=sys.stderr)
        return 1
    topology.record(chosen)
    started_at = time.monotonic()
    try:
        jvm.fetch_jars(ROOT, DEPS)
    except RuntimeError as exc:
        print(f"fetching the Cassandra/Kafka jars failed: {exc}", file=sys.stderr)
        return 1
    comps = components()
    stores = {c.name: c for c in _store_components()}
    cassandra = [n.name for n in topology.cassandra_nodes()]
    try:
        # A joining Cassandra node needs its seed up; the Kafka nodes need each
        # other (controller quorum), so they start together.
        _start_all([c for name, c in stores.items() if name not in cassandra[1:]])
        _start_all([stores[name] for name in cassandra[1:]])
        _prepare_stores()
        _start_all([c for c in comps if c.name not in stores])
    except StartError as exc:
        print(f"\nERROR: {exc}", file=sys.stderr)
        return 1
    # Envoy admits a started (or restarted) instance at its next passing health check
    # (envoy/render.py HEALTH_CHECK_SECONDS): until then calls go to the others.
    # `up` still succeeds (the edge serves from the others); tests/faults.py's restore() insists.
    if not _wait_until(edge_routes_every_instance, EDGE_ADMIT_TIMEOUT_S):
        short = edge_short_clusters()
        print(
            f"WARNING: after {EDGE_ADMIT_TIMEOUT_S:.0f}s the edge does not route to every instance of "
            f"{', '.join(short) if short else 'any service (its admin does not answer)'}",
            file=sys.stderr,
        )
    print(f"\nChirp ({chosen}) is up in {time.monotonic() - started_at:.0f}s:")
    _print_table(comps)
    return 0


def _start_all(comps: list[Component]) -> None:
    """Start what is not running (or whose settings changed), then wait for all."""
    pending: list[tuple[Component, int]] = []
    for comp in comps:
        record = _read_pid(comp.name)
        if record is not None and record.get("fingerprint", "") != comp.fingerprint:
            print(f"  {comp.name}: settings changed, restarting")
            _stop(comp.name, comp.stop_timeout)
            record = None
        if record is None:
            print(f"  starting {comp.name}")
            pending.append((comp, _start(comp)))
        else:
            pending.append((comp, int(record["pid"])))
    for comp, pid in pending:
        _wait_ready(comp, pid)


def _prepare_stores() -> None:
    if len(topology.redis_nodes()) > 1:
        _run_step("redis-cluster", [PYTHON, "-m", "infra.redis_cluster", "create"])
        _run_step("redis-state-cluster", [PYTHON, "-m", "infra.redis_cluster", "create", "redis_state"])
    hosts = ",".join(topology.cql_hosts())
    _run_step("migrate", [PYTHON, "-m", "infra.migrate", "--hosts", hosts, "--replication", topology.cql_replication()])
    _run_step("topics", [PYTHON, "-m", "infra.topics"])


def _print_table(comps: list[Component]) -> None:
    for comp in comps:
        record = _read_pid(comp.name)
        pid = record["pid"] if record else "-"
        print(f"  {comp.name:<14} pid {pid:<8} {comp.where:<58} log .state/logs/{comp.name}.log")


def down() -> int:
    """Stop everything with a pid file: the edge first, then every service instance
    at once, then the stores, the nodes of one store at once (the last of three Kafka
    brokers stopped alone would wait for its lost controller quorum until killed)."""
    comps = components(prepare=False)
    timeouts = {c.name: c.stop_timeout for c in comps}
    running = {p.stem for p in RUN.glob("*.json")} if RUN.exists() else set()
    # Waves by name, from what runs: instances beyond today's CHIRP_INSTANCES, and store
    # nodes of a topology other than today's, are stopped with their kind too.
    edge = [n for n in EDGE if n in running]
    stores = [sorted(n for n in running if n.rsplit("-", 1)[0] == kind) for kind in reversed(INFRA_KINDS)]
    services = sorted(running - set(edge) - set().union(*stores))
    waves = [(edge, 20.0), (services, 20.0), *((nodes, STORE_STOP_TIMEOUT) for nodes in stores)]
    for wave, default in waves:
        for name in _stop_together({n: timeouts.get(n, default) for n in wave}):
            print(f"  stopped {name}")
    return 0


def status() -> int:
    bad = 0
    for comp in components(prepare=False):
        record = _read_pid(comp.name)
        ok = record is not None and comp.ready()
        bad += not ok
        print(f"  {comp.name:<14} {'healthy' if ok else 'DOWN':<8} {comp.where}")
    return 1 if bad else 0


# ---- one component at a time (fault injection, rolling restarts) ------------


def component(name: str, prepare: bool = True) -> Component:
    found = {c.name: c for c in components(prepare)}
    if name not in found:
        raise KeyError(f"no component {name!r} in the {topology.current()} topology")
    return found[name]


def kill(name: str) -> int:
    """SIGKILL one running component (a crash: no shutdown hooks); returns its pid."""
    return kill_together([name])[0]


def kill_together(names: list[str]) -> list[int]:
    """SIGKILL running components all at once, then wait until every one has died; their pids."""
    records = []
    for name in names:
        record = _read_pid(name)
        if record is None:
            raise RuntimeError(f"{name} is not running")
        records.append(record)
    for record in records:
        os.killpg(int(record["pid"]), signal.SIGKILL)  # its own session: a supervised child dies with it
    deadline = time.monotonic() + KILL_WAIT_S
    for name, record in zip(names, records, strict=True):
        while _start_time(int(record["pid"])) == record["start"]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} (pid {record['pid']}) still runs {KILL_WAIT_S:.0f}s after SIGKILL")
            time.sleep(0.05)
        (RUN / f"{name}.json").unlink(missing_ok=True)
    return [int(record["pid"]) for record in records]


def stop(name: str) -> bool:
    """Stop one component gracefully (SIGTERM, as `make down` does)."""
    return _stop(name, component(name, prepare=False).stop_timeout)


def start(name: str) -> None:
    """Start one component if it is not running, and wait until it is ready."""
    comp = component(name)
    _start_all([comp])


def main() -> int:
    commands = {"up": up, "down": down, "status": status}
    one = {"kill": kill, "stop": stop, "start": start}
    if len(sys.argv) == 3 and sys.argv[1] in one:
        one[sys.argv[1]](sys.argv[2])
        return 0
    if len(sys.argv) != 2 or sys.argv[1] not in commands:
        print(__doc__, file=sys.stderr)
        return 2
    return commands[sys.argv[1]]()


if __name__ == "__main__":
    sys.exit(main())
