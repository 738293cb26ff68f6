"""Run the local Apache Cassandra 5.0 and Apache Kafka 4.1 from Maven Central jars.

No Docker, no tarballs: ``fetch_jars`` has Maven copy the runtime dependencies
of ``infra/cassandra/pom.xml`` and ``infra/kafka/pom.xml`` into
``<deps>/cassandra`` and ``<deps>/kafka`` (kept apart: their netty, jackson and
slf4j versions clash). The ``*_command`` functions render the configuration
templates under ``<state>/conf`` and return the ``java`` argv of each server,
which runs in the foreground until SIGTERM (both shut down cleanly on it).
The ``*_ready`` probes connect with the clients' own drivers (cassandra-driver,
confluent-kafka) to tell that the server answers clients.

Layout (all absolute once resolved)::

    <state>/conf/cassandra.yaml      rendered from infra/cassandra/cassandra.yaml.in
    <state>/conf/kafka.properties    rendered from infra/kafka/server.properties.in
    <state>/data/cassandra/...       Cassandra data, commitlog, hints, caches
    <state>/data/kafka/...           Kafka log dirs (KRaft metadata included)
    <state>/logs/cassandra/system.log
    <state>/logs/kafka/server.log

Everything binds to 127.0.0.1: CQL 9042, Cassandra storage 7000, Kafka 9092
(PLAINTEXT) and 9093 (KRaft controller).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path
from string import Template

from infra.topology import CLUSTER_TOKENS, KAFKA_CONTROLLER_PORT, StoreNode

LOOPBACK = "127.0.0.1"
CQL_PORT = 9042
CASSANDRA_STORAGE_PORT = 7000
KAFKA_PORT = 9092

# Fixed KRaft cluster id (base64url of b"ChirpLocalKafka1", 16 bytes) so that a
# re-format or a re-run always yields the same cluster.
KAFKA_CLUSTER_ID = "Q2hpcnBMb2NhbEthZmthMQ"

JAVA = "java"  # OpenJDK 17 on PATH; override with the environment variable below
JAVA_ENV = "CHIRP_JAVA"
MVN = "mvn"
MVN_TIMEOUT_S = 1200

COMPONENTS = ("cassandra", "kafka")
STAMP_FILE = ".pom.sha256"
# Bump to force a re-fetch when the way jars are fetched changes.
FETCH_FORMAT = "1"

CASSANDRA_MAIN = "org.apache.cassandra.service.CassandraDaemon"
KAFKA_MAIN = "kafka.Kafka"
KAFKA_STORAGE_TOOL = "kafka.tools.StorageTool"

CASSANDRA_HEAP = ("-Xms512m", "-Xmx1g")
KAFKA_HEAP = ("-Xms256m", "-Xmx512m")
KAFKA_TOOL_HEAP = ("-Xmx256m",)

# From Cassandra 5.0's conf/jvm17-server.options (JPMS and Netty sections),
# plus java.nio and java.util.concurrent(.atomic), which Cassandra also reflects on.
CASSANDRA_JVM17_OPTS = (
    "-Djdk.attach.allowAttachSelf=true",
    "-Dio.netty.tryReflectionSetAccessible=true",
    "-Dio.netty.allocator.useCacheForAllThreads=true",
    "-Dio.netty.allocator.maxOrder=11",
    "--add-exports=java.base/jdk.internal.misc=ALL-UNNAMED",
    "--add-exports=java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.server=ALL-UNNAMED",
    "--add-exports=java.sql/java.sql=ALL-UNNAMED",
    "--add-exports=java.base/java.lang.ref=ALL-UNNAMED",
    "--add-exports=jdk.unsupported/sun.misc=ALL-UNNAMED",
    "--add-exports=jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED",
    "--add-exports=jdk.attach/sun.tools.attach=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.module=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.loader=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.reflect=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.math=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.module=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.util.jar=ALL-UNNAMED",
    "--add-opens=jdk.management/com.sun.management.internal=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens=jdk.compiler/com.sun.tools.javac=ALL-UNNAMED",
    "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "--add-opens=java.base/java.util=ALL-UNNAMED",
    "--add-opens=java.base/java.nio=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED",
)

# Preset tokens on an empty ring: skip the waits meant for joining a real ring.
CASSANDRA_FAST_START_OPTS = (
    "-Dcassandra.skip_wait_for_gossip_to_settle=0",
    "-Dcassandra.ring_delay_ms=1000",
    "-Dcassandra.load_ring_state=false",
)

# A logged batch is first written to the batchlog of other nodes. With two copies (the
# default) and three nodes in one rack, the two others are always the ones picked, so until
# a killed node is convicted (several seconds, infra/cassandra/cassandra.yaml.in) every
# logged batch waited for it and timed out: 20-26 failed writes per killed node under the
# fault suite's load. With one copy, a node picks one of the others it believes alive and
# the driver's retry picks again: 4-5 failed writes (two runs each, same load). One copy
# still covers what the batchlog is for, finishing a batch whose coordinator died midway
# (an acknowledged batch is already at quorum everywhere); losing the coordinator and that
# copy together means losing two of three nodes. A single node has no other to pick.
CASSANDRA_BATCHLOG_OPTS = ("-Dcassandra.batchlog.required_replica_count=1",)
# Until the killed node is convicted, a coordinator that picked it for the batchlog copy answers
# WriteTimeout(BATCH_LOG) after write_request_timeout. At Cassandra's 2 s, the clients' own 2 s
# timeout came first and the batch failed; at 1 s the driver has time to send it to another
# coordinator, which picks again (common/cql.py, RetryPolicy: the batches are idempotent). It also
# bounds a lightweight transaction's Paxos rounds: an LWT slower than 1 s there fails (docs/RELIABILITY.md).
# The single node keeps the default.
CLUSTER_WRITE_TIMEOUT = "1000ms"
SINGLE_WRITE_TIMEOUT = "2000ms"

COMMON_JVM_OPTS = (
    "-XX:+UseG1GC",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.net.preferIPv4Stack=true",
    "-Djava.awt.headless=true",
)

KAFKA_JVM_OPTS = (
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
)

# The cluster topology runs three Cassandra and three Kafka JVMs, with Redis, the
# services and the fault suite's load, on 2 cores. A node restarted there spent most
# of its start waiting for CPU, much of it taken by C2 compiling: with tiered
# compilation stopped at C1, a killed Cassandra node answered again 17 s after its
# restart instead of 46, a Kafka broker 9 s instead of 31 (same machine, same load).
# The single-node stack, the one `make bench` measures, keeps C2.
CLUSTER_JIT_OPTS = ("-XX:TieredStopAtLevel=1",)


def _is_cluster(cluster: list[StoreNode]) -> bool:
    return len(cluster) > 1


def _jit_opts(cluster: list[StoreNode]) -> tuple[str, ...]:
    return CLUSTER_JIT_OPTS if _is_cluster(cluster) else ()


# Kafka's network, request-handler and group-coordinator threads (num.network.threads,
# num.io.threads, group.coordinator.threads in infra/kafka/server.properties.in). The
# single node, idle most of its life, takes one, two and one. The cluster's brokers
# keep two, four and four: in the fault suite run after the cluster tests, as CI runs
# it, the SIGKILLed-broker step failed 1.3-2.4% of its requests with one, two and one
# (likes and an unlike at their 5 s deadline, while the dead broker was still in every
# ISR; stop 34's two CI runs and two runs alternated with two, four and four), and
# none in those two alternated runs with two, four and four (docs/BENCHMARKS.md,
# "A quieter idle stack", stop 35).
KAFKA_SINGLE_THREADS = (1, 2, 1)
KAFKA_CLUSTER_THREADS = (2, 4, 4)


# Broker heartbeat interval and session timeout, ms (infra/kafka/server.properties.in).
# The cluster fences a dead broker after 4 s, so that its partitions get new leaders
# within the clients' 5 s deadlines. The single node has no peer to hand them to; it
# keeps Kafka's 9 s session and heartbeats every 3 s instead of every second.
KAFKA_SINGLE_HEARTBEAT = (3000, 9000)
KAFKA_CLUSTER_HEARTBEAT = (1000, 4000)


def _kafka_topology_settings(cluster: list[StoreNode]) -> dict[str, str]:
    """The thread counts and broker heartbeat of the single node or of a cluster's brokers."""
    clustered = _is_cluster(cluster)
    network, io, coordinator = KAFKA_CLUSTER_THREADS if clustered else KAFKA_SINGLE_THREADS
    heartbeat, session = KAFKA_CLUSTER_HEARTBEAT if clustered else KAFKA_SINGLE_HEARTBEAT
    return {
        "network_threads": str(network),
        "io_threads": str(io),
        "coordinator_threads": str(coordinator),
        "heartbeat_ms": str(heartbeat),
        "session_ms": str(session),
    }


def _cassandra_jvm_opts(cluster: list[StoreNode]) -> tuple[str, ...]:
    """The options that size and tune a Cassandra node, in its command and its fingerprint alike
    (a change restarts a running node); the per-node paths are in the command only."""
    return (
        *CASSANDRA_HEAP,
        *COMMON_JVM_OPTS,
        *IDLE_JVM_OPTS,
        *CASSANDRA_IDLE_OPTS,
        *CASSANDRA_FAST_START_OPTS,
        *CASSANDRA_BATCHLOG_OPTS,
        *_jit_opts(cluster),
    )


def _kafka_jvm_opts(cluster: list[StoreNode]) -> tuple[str, ...]:
    """The same for a Kafka node."""
    return (*KAFKA_HEAP, *COMMON_JVM_OPTS, *IDLE_JVM_OPTS, *KAFKA_JVM_OPTS, *_jit_opts(cluster))


# What an idle server wakes up for on its own (issue 14, "a quiet idle stack"):
# - the hsperfdata counters (jstat/jps) are sampled every 50 ms by "VM Periodic
#   Task"; nothing here reads them (nodetool and jcmd use JMX and attach);
IDLE_JVM_OPTS = ("-XX:-UsePerfData",)
# - Cassandra's approximate clock (request expiry, timeouts measured in seconds)
#   is re-read every 2 ms by ScheduledFastTasks, 500 wake-ups a second doing
#   nothing else. At 10 ms that thread still took 0.95% of a core on an idle
#   single node, at 50 ms 0.27% (the rest is its other tasks; one run each,
#   docs/BENCHMARKS.md); 50 ms is 5% of the shortest timeout it measures
#   (cas_contention_timeout, 1 s), and the commit log uses the precise clock.
CASSANDRA_IDLE_OPTS = ("-Dcassandra.approximate_time_precision_ms=50",)

# - the timer slack of every JVM thread (how late Linux may wake a sleeping thread,
#   so that nearby wake-ups are served together; systemd's TimerSlackNSec=).
#   Cassandra's request threads (SEPWorker) spin after each request, parking 10 us
#   at a time for about 10 ms: with the default 50 us slack some 100 wake-ups per
#   request, even for the two or three statements a second an idle stack sends.
#   At 200 us those threads took 0.70% of a core idle instead of 0.92 (Cassandra
#   1.28-1.46% against 1.67-1.72, alternated 90 s windows); 1 ms saved a little
#   more but added 0.8 ms to a lone CQL read's median, which 200 us did not
#   measurably (docs/BENCHMARKS.md, "A quieter idle stack"). Set by infra/stack.py
#   before the JVM starts; every thread inherits it from the one that starts it.
JVM_TIMER_SLACK_NS = 200_000

# Writes arriving within this window share one commit-log fsync (group commit).
COMMITLOG_GROUP_WINDOW = "10ms"
# batch (default): a write waits for its own fsync, which every write arriving meanwhile
# shares; group: for the next fsync of a 10 ms cadence, which its thread keeps even
# idle (1% of a core); periodic (every 10 s: acknowledged writes can be lost), to
# measure the difference.
COMMITLOG_ENV = "CHIRP_CQL_COMMITLOG_SYNC"

PROBE_TIMEOUT_S = 2.0
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


# --------------------------------------------------------------------------
# jars


def _pom(root: Path, component: str) -> Path:
    return root / "infra" / component / "pom.xml"


def _pom_digest(pom: Path) -> str:
    digest = hashlib.sha256(pom.read_bytes())
    digest.update(b"\0fetch-format=" + FETCH_FORMAT.encode())
    return digest.hexdigest()


def _has_jars(directory: Path) -> bool:
    return directory.is_dir() and any(directory.glob("*.jar"))


def _jars_current(out: Path, digest: str) -> bool:
    stamp = out / STAMP_FILE
    return _has_jars(out) and stamp.is_file() and stamp.read_text().strip() == digest


def _fetch_one(root: Path, deps: Path, component: str) -> None:
    pom = _pom(root, component)
    if not pom.is_file():
        raise RuntimeError(f"{component}: pom not found at {pom}")
    out = deps / component
    digest = _pom_digest(pom)
    if _jars_current(out, digest):
        return
    mvn = shutil.which(MVN)
    if mvn is None:
        raise RuntimeError(f"{component}: '{MVN}' not found on PATH (Maven is needed to fetch jars)")
    # Resolve into a scratch directory, then swap it in: no stale jars from an
    # older pom, and an interrupted fetch never looks complete.
    scratch = deps / f"{component}.partial"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    cmd = [
        mvn,
        "-q",
        "-B",
        "-Dstyle.color=never",
        "-f",
        str(pom),
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={scratch}",
    ]
    try:
        proc = subprocess.run(
            cmd,
            cwd=pom.parent,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=MVN_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        shutil.rmtree(scratch, ignore_errors=True)
        raise RuntimeError(f"{component}: Maven timed out after {MVN_TIMEOUT_S}s: {' '.join(cmd)}") from exc
    # Maven may log an ERROR about system-scoped JMC/VisualVM paths of a parent
    # pom and still resolve everything: judge by exit code and jars present.
    if proc.returncode != 0 or not _has_jars(scratch):
        shutil.rmtree(scratch, ignore_errors=True)
        output = _ANSI.sub("", proc.stdout + proc.stderr).strip()
        tail = "\n".join(output.splitlines()[-30:])
        raise RuntimeError(f"{component}: fetching jars failed (mvn exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    (scratch / STAMP_FILE).write_text(digest + "\n")
    shutil.rmtree(out, ignore_errors=True)
    scratch.rename(out)


def fetch_jars(root: Path, deps: Path) -> None:
    """Resolve the runtime jars of Cassandra and Kafka into <deps>/cassandra and <deps>/kafka.

    Maven runs only for a component whose directory is missing or whose pom
    changed since the last fetch (a SHA-256 of the pom is kept in a stamp file).
    Raises RuntimeError with Maven's output tail on failure.
    """
    root = root.resolve()
    deps = deps.resolve()
    deps.mkdir(parents=True, exist_ok=True)
    # One fetch at a time (e.g. `make up` and a test run started together).
    with open(deps / ".fetch.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for component in COMPONENTS:
            _fetch_one(root, deps, component)


# --------------------------------------------------------------------------
# helpers


def _java() -> str:
    return os.environ.get(JAVA_ENV) or shutil.which(JAVA) or JAVA


def _jar_dir(deps: Path, component: str) -> Path:
    directory = deps.resolve() / component
    if not _has_jars(directory):
        raise RuntimeError(f"no jars in {directory}: run fetch_jars() first")
    return directory


def _classpath(jar_dir: Path) -> str:
    # The JVM expands "dir/*" to every jar of dir.
    return f"{jar_dir}{os.sep}*"


def _commitlog_sync() -> str:
    mode = os.environ.get(COMMITLOG_ENV, "batch").strip() or "batch"
    if mode == "group":
        return f"commitlog_sync: group\ncommitlog_sync_group_window: {COMMITLOG_GROUP_WINDOW}"
    if mode == "periodic":
        return "commitlog_sync: periodic\ncommitlog_sync_period: 10000ms"
    if mode == "batch":
        return "commitlog_sync: batch"
    raise RuntimeError(f"{COMMITLOG_ENV} must be group, batch or periodic, got {mode!r}")


def _render(template: Path, dest: Path, values: dict[str, str]) -> None:
    """Fill ${name} placeholders of template into dest, rewriting only on change."""
    text = Template(template.read_text()).substitute(values)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file() and dest.read_text() == text:
        return
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(dest)


# --------------------------------------------------------------------------
# Cassandra


def _cassandra_values(state: Path, node: StoreNode, cluster: list[StoreNode]) -> dict[str, str]:
    return {
        "data_dir": str(state.resolve() / "data" / node.name),
        "address": node.host,
        "seeds": cluster[0].host,
        "hinted_handoff": "true" if _is_cluster(cluster) else "false",
        "dynamic_snitch": "true" if _is_cluster(cluster) else "false",
        "write_request_timeout": CLUSTER_WRITE_TIMEOUT if _is_cluster(cluster) else SINGLE_WRITE_TIMEOUT,
        "commitlog_sync": _commitlog_sync(),
    }


def cassandra_fingerprint(root: Path, state: Path, node: StoreNode, cluster: list[StoreNode]) -> str:
    """Digest of the node's rendered config and JVM options: a change restarts a running node."""
    return _fingerprint(
        root / "infra" / "cassandra" / "cassandra.yaml.in",
        _cassandra_values(state, node, cluster),
        _cassandra_jvm_opts(cluster),
    )


def kafka_fingerprint(
    root: Path, state: Path, node: StoreNode, cluster: list[StoreNode], replication: int, min_isr: int
) -> str:
    """Digest of the node's rendered config and JVM options: a change restarts a running node."""
    return _fingerprint(
        root / "infra" / "kafka" / "server.properties.in",
        _kafka_values(state, node, cluster, replication, min_isr),
        _kafka_jvm_opts(cluster),
    )


def _fingerprint(template: Path, values: dict[str, str], jvm_opts: tuple[str, ...]) -> str:
    digest = hashlib.sha256(Template(template.read_text()).substitute(values).encode())
    # The timer slack both JVMs start with counts as one more option.
    digest.update("\0".join((*jvm_opts, f"timer-slack={JVM_TIMER_SLACK_NS}")).encode())
    return digest.hexdigest()[:16]


def cassandra_command(root: Path, deps: Path, state: Path, node: StoreNode, cluster: list[StoreNode]) -> list[str]:
    """Render <state>/conf/<node>.yaml and return the argv running CassandraDaemon in the foreground.

    A single node takes token 0; the nodes of a cluster take evenly spaced
    preset tokens and the first node as their seed.
    """
    root = root.resolve()
    state = state.resolve()
    jars = _jar_dir(deps, "cassandra")
    jamm = sorted(jars.glob("jamm-*.jar"))
    if not jamm:
        raise RuntimeError(f"jamm jar missing from {jars}: run fetch_jars() again")

    data = state / "data" / node.name
    logs = state / "logs" / node.name
    conf = state / "conf"
    triggers = conf / "cassandra-triggers"
    for directory in (data, logs, conf, triggers):
        directory.mkdir(parents=True, exist_ok=True)

    config = conf / f"{node.name}.yaml"
    _render(root / "infra" / "cassandra" / "cassandra.yaml.in", config, _cassandra_values(state, node, cluster))
    token = CLUSTER_TOKENS[node.ordinal - 1] if _is_cluster(cluster) else "0"
    return [
        _java(),
        *_cassandra_jvm_opts(cluster),
        "-Xss256k",
        f"-XX:ErrorFile={logs / 'hs_err_%p.log'}",
        *CASSANDRA_JVM17_OPTS,
        f"-javaagent:{jamm[-1]}",
        "-Dcassandra-foreground=yes",
        f"-Dcassandra.config={config.as_uri()}",
        f"-Dcassandra.storagedir={data}",
        f"-Dcassandra.logdir={logs}",
        f"-Dcassandra.triggers_dir={triggers}",
        f"-Dlogback.configurationFile={root / 'infra' / 'cassandra' / 'logback.xml'}",
        f"-Dcassandra.initial_token={token}",
        "-cp",
        _classpath(jars),
        CASSANDRA_MAIN,
    ]


# --------------------------------------------------------------------------
# Kafka


def _kafka_values(
    state: Path, node: StoreNode, cluster: list[StoreNode], replication: int, min_isr: int
) -> dict[str, str]:
    return {
        "log_dirs": str(state.resolve() / "data" / node.name),
        "node_id": str(node.ordinal),
        "host": node.host,
        "voters": ",".join(f"{n.ordinal}@{n.host}:{KAFKA_CONTROLLER_PORT}" for n in cluster),
        "replication": str(replication),
        "min_isr": str(min_isr),
        **_kafka_topology_settings(cluster),
    }


def _kafka_paths(
    root: Path, deps: Path, state: Path, node: StoreNode, cluster: list[StoreNode], replication: int, min_isr: int
) -> tuple[Path, Path, Path, list[str]]:
    """Render <state>/conf/<node>.properties; return (config, log dir, jar dir, the node's own JVM args)."""
    root = root.resolve()
    state = state.resolve()
    jars = _jar_dir(deps, "kafka")
    data = state / "data" / node.name
    logs = state / "logs" / node.name
    for directory in (data, logs):
        directory.mkdir(parents=True, exist_ok=True)
    config = state / "conf" / f"{node.name}.properties"
    values = _kafka_values(state, node, cluster, replication, min_isr)
    _render(root / "infra" / "kafka" / "server.properties.in", config, values)
    jvm = [
        f"-XX:ErrorFile={logs / 'hs_err_%p.log'}",
        f"-Dkafka.logs.dir={logs}",
        f"-Dlog4j2.configurationFile={root / 'infra' / 'kafka' / 'log4j2.properties'}",
    ]
    return config, data, jars, jvm


def kafka_format_command(
    root: Path, deps: Path, state: Path, node: StoreNode, cluster: list[StoreNode], replication: int, min_isr: int
) -> list[str] | None:
    """Render the node's Kafka config; return the KRaft storage format argv, or None if already formatted."""
    config, data, jars, jvm = _kafka_paths(root, deps, state, node, cluster, replication, min_isr)
    if (data / "meta.properties").is_file():
        return None
    return [
        _java(),
        *KAFKA_TOOL_HEAP,
        *COMMON_JVM_OPTS,
        *IDLE_JVM_OPTS,
        *jvm,
        "-cp",
        _classpath(jars),
        KAFKA_STORAGE_TOOL,
        "format",
        "--cluster-id",
        KAFKA_CLUSTER_ID,
        "--config",
        str(config),
        "--ignore-formatted",
    ]


def kafka_command(
    root: Path, deps: Path, state: Path, node: StoreNode, cluster: list[StoreNode], replication: int, min_isr: int
) -> list[str]:
    """Render the node's Kafka config and return the argv running kafka.Kafka (broker+controller) in the foreground."""
    config, _data, jars, jvm = _kafka_paths(root, deps, state, node, cluster, replication, min_isr)
    return [
        _java(),
        *_kafka_jvm_opts(cluster),
        *jvm,
        "-cp",
        _classpath(jars),
        KAFKA_MAIN,
        str(config),
    ]


# --------------------------------------------------------------------------
# readiness probes


def cassandra_ready(host: str = LOOPBACK, port: int = CQL_PORT, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True when the node at host:port opens a CQL (protocol v4) session. Never raises.

    Only that node is connected to, and no schema or token metadata is read:
    this runs every 0.25 s while the node starts.
    """
    # Imported here, as infra/stack.py imports grpc: commands that probe nothing stay light.
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import WhiteListRoundRobinPolicy

    cluster = None
    try:
        cluster = Cluster(
            contact_points=[host],
            port=port,
            protocol_version=4,
            connect_timeout=timeout,
            control_connection_timeout=timeout,
            execution_profiles={
                EXEC_PROFILE_DEFAULT: ExecutionProfile(load_balancing_policy=WhiteListRoundRobinPolicy([host]))
            },
            schema_metadata_enabled=False,
            token_metadata_enabled=False,
        )
        cluster.connect()
        return True
    except Exception:  # noqa: BLE001 - any failure means "not ready"
        return False
    finally:
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.shutdown()  # its threads and connections


def kafka_ready(host: str = LOOPBACK, port: int = KAFKA_PORT, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True when the broker's metadata lists at least one live broker. Never raises.

    A KRaft broker may answer clients while still fenced; metadata lists only
    unfenced brokers, so a non-empty broker list means topics can be created and used.
    """
    from confluent_kafka.admin import AdminClient

    try:
        # The client waits out the whole timeout for a broker that refuses connections;
        # a port nobody listens on yet (most of a start) fails at once here instead.
        socket.create_connection((host, port), timeout=timeout).close()
        admin = AdminClient(
            {
                "bootstrap.servers": f"{host}:{port}",
                "socket.connection.setup.timeout.ms": max(1000, int(timeout * 1000)),
                # A broker still starting is what this probe is for: not worth a log line each time.
                "log_level": 0,
            }
        )
        return len(admin.list_topics(timeout=timeout).brokers) > 0
    except Exception:  # noqa: BLE001 - any failure means "not ready"
        return False
