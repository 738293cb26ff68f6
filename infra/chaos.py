"""The fault suite (`make chaos`): on the cluster topology, under an open-loop
mixed load through the edge, kill one node of each store, then one instance
of every service and worker, then restart every component one at a time;
afterwards check every acknowledged write.

    CHIRP_TOPOLOGY=cluster make up && make chaos
    python -m infra.chaos [--rate 12] [--users 24] [--down 10] [--only cassandra,redis,redis_state] [--no-rolling] [--rolling-scope all|one]

Set-up leaves the cluster busy for a while, so the load first runs until a
few seconds of it are nearly all answered (at most 3 minutes; the warm-up is
the first row of the report), then a fault-free baseline window. Per fault it
reports the requests sent while the fault lasted (from the kill
until the cluster was whole again, plus a few seconds), their success rate,
p99 and worst latency, and how long after the component's restart the
cluster was whole again, counting every request of a window once it has
ended (a request that times out after its window closed is in its row). The
acknowledged-write check (bench/chaos_check.py)
decides the exit status: 1 if anything acknowledged was lost. The report goes
to docs/RELIABILITY.md and bench/results/chaos.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cassandra import ConsistencyLevel
from cassandra.cluster import Cluster
from cassandra.policies import ConstantReconnectionPolicy
from cassandra.query import SimpleStatement
from confluent_kafka.admin import AdminClient

from bench import chaos_check, chaos_load
from common.kafka import TOPICS, group_offsets
from infra import redis_cluster, stack, topology
from infra.groups import CHECKED_GROUPS, CONSUMER_GROUPS, GROUP_PROCESSES, unassigned

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
REPORT = ROOT / "docs" / "RELIABILITY.md"
EDGE = f"http://{topology.HOST}:{topology.EDGE_PORT}"
SETTLE_SECONDS = 5.0  # load keeps running this long after the cluster is whole
WHOLE_TIMEOUT = 300.0
SEGMENT_SECONDS = 5.0  # the load runs in back-to-back segments until the suite is done
# After set-up the load runs until WARM_SUCCESS of a WARM_WINDOW_SECONDS window (of which at
# least WARM_ANSWERED of the offered requests answered) succeed, at most WARM_LIMIT_SECONDS.
WARM_WINDOW_SECONDS = 5.0
WARM_SUCCESS = 0.95
WARM_ANSWERED = 0.9
WARM_LIMIT_SECONDS = 180.0
WARM_POLL_SECONDS = 1.0
CHECK_DEADLINE_S = 300.0  # eventual consistency on a slow, just-restarted cluster; ends once all pass


# The aims the issue sets for every single-node fault.
AIM_SUCCESS = 0.99
AIM_P99_MS = 1000.0
AIM_WHOLE_S = 60.0


@dataclass
class FaultResult:
    fault: str
    requests: int
    success: float
    p99_ms: float | None
    worst_ms: float | None
    down_s: float  # from the kill to the restart (a rolling restart: its whole length)
    start_s: float  # from the restart until the component answered again
    whole_after_s: float  # from then until the whole cluster was whole again
    failed_by_kind: dict[str, int] = field(default_factory=dict)


# ---- is the cluster whole? ---------------------------------------------------------


def cassandra_whole() -> bool:
    """Every node answers, and a read at consistency ALL (every replica of RF 3) succeeds."""
    cluster = Cluster(
        topology.cql_hosts(),
        port=topology.CQL_PORT,
        protocol_version=4,
        connect_timeout=2,
        reconnection_policy=ConstantReconnectionPolicy(1.0),
    )
    try:
        session = cluster.connect("chirp")
        if not all(host.is_up for host in cluster.metadata.all_hosts()) or len(cluster.metadata.all_hosts()) < 3:
            return False
        statement = SimpleStatement("SELECT user_id FROM users LIMIT 1", consistency_level=ConsistencyLevel.ALL)
        session.execute(statement, timeout=3)
        return True
    except Exception:  # noqa: BLE001 - any failure means "not whole yet"
        return False
    finally:
        cluster.shutdown()


def kafka_whole() -> bool:
    """Every broker is back and every partition of Chirp's topics has all its replicas in sync."""
    try:
        metadata = AdminClient({"bootstrap.servers": topology.kafka_bootstrap()}).list_topics(timeout=3)
    except Exception:  # noqa: BLE001
        return False
    if len(metadata.brokers) < len(topology.kafka_nodes()):
        return False
    for name in TOPICS:
        topic = metadata.topics.get(name)
        if topic is None or topic.error is not None:
            return False
        if any(len(p.isrs) < len(p.replicas) or p.leader < 0 for p in topic.partitions.values()):
            return False
    return True


def redis_roles(kind: str = "redis") -> dict[str, str]:
    """Component name -> "master" or "slave", as a live node of the cluster of `kind` (the
    cache's, or the state Redis's) sees it (failed nodes left out)."""
    nodes = {node.port: node.name for node in topology.redis_nodes(kind)}
    reply = subprocess.run(
        ["redis-cli", "-h", topology.HOST, "-p", str(_live_redis_port(kind)), "cluster", "nodes"],
        capture_output=True,
        text=True,
        timeout=5,
        check=False,
    )
    roles = {}
    for line in reply.stdout.splitlines():
        parts = line.split()
        if len(parts) < 3 or "fail" in parts[2]:
            continue
        name = nodes.get(int(parts[1].split("@")[0].rsplit(":", 1)[1] or 0))
        if name is not None:  # not a node still shaking hands (":0@0")
            roles[name] = "master" if "master" in parts[2] else "slave"
    return roles


def _live_redis_port(kind: str) -> int:
    nodes = topology.redis_nodes(kind)
    for node in nodes:
        if stack._redis_ready(node.port):
            return node.port
    return nodes[0].port


def redis_whole(kind: str = "redis") -> bool:
    """Every slot served, all six nodes healthy: three primaries, each with a replica."""
    try:
        roles = redis_roles(kind)
        return redis_cluster.whole(kind) and len(roles) == 6 and list(roles.values()).count("master") == 3
    except (OSError, subprocess.SubprocessError, ValueError):
        return False


def services_whole() -> bool:
    """Envoy routes to every instance of every service, in each of its clusters (a
    service's own and graph_svc_argon2 for the password calls, each checked on its
    own; stack.edge_routes_every_instance). And every worker is SERVING."""
    return stack.edge_routes_every_instance() and all(
        stack._grpc_serving(inst.port, "") for svc in topology.WORKERS for inst in topology.instances(svc)
    )


def groups_whole() -> bool:
    """Every worker group STABLE, each partition of its topics with a member (a
    partition left with no owner is read by no one, with no error anywhere)."""
    try:
        return not unassigned(AdminClient({"bootstrap.servers": topology.kafka_bootstrap()}))
    except Exception:  # noqa: BLE001 - Kafka not answering: not whole
        return False


def whole() -> bool:
    return (
        services_whole()
        and redis_whole()
        and redis_whole("redis_state")
        and kafka_whole()
        and cassandra_whole()
        and groups_whole()
    )


async def wait_whole(check: Callable[[], bool] = whole) -> float:
    """Seconds until `check` holds (polled off the event loop, so the load keeps its schedule)."""
    started = time.monotonic()
    while time.monotonic() - started < WHOLE_TIMEOUT:
        if await asyncio.to_thread(check):
            return time.monotonic() - started
        await asyncio.sleep(0.5)
    raise RuntimeError(f"the cluster was not whole {WHOLE_TIMEOUT:.0f}s after the restart")


# ---- faults --------------------------------------------------------------------------


def redis_primary(kind: str = "redis") -> str:
    return sorted(name for name, role in redis_roles(kind).items() if role == "master")[0]


async def kill_and_restart(names: list[str], down_s: float) -> tuple[float, float, float]:
    """SIGKILL the components, leave them dead `down_s`, start them again.
    Returns seconds (down, restart until answering, then until the cluster is whole)."""
    killed_at = time.monotonic()
    await asyncio.to_thread(stack.kill_together, names)
    print(f"    killed {', '.join(names)}", flush=True)
    await asyncio.sleep(down_s)
    restarted_at = time.monotonic()
    for name in names:
        await asyncio.to_thread(stack.start, name)
    answering_at = time.monotonic()
    print(f"    restarted {', '.join(names)} in {answering_at - restarted_at:.1f}s", flush=True)
    return restarted_at - killed_at, answering_at - restarted_at, await wait_whole()


def _redis_cli(port: int, *args: str) -> str:
    reply = subprocess.run(
        ["redis-cli", "-h", topology.HOST, "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=5,
        check=True,
    )
    return reply.stdout


def _failover_to_replica(name: str) -> None:
    port = topology.store_node(name).port
    nodes = [line.split() for line in _redis_cli(port, "cluster", "nodes").splitlines() if line.strip()]
    me = next(fields[0] for fields in nodes if "myself" in fields[2])
    replica = next(int(f[1].split("@")[0].rsplit(":", 1)[1]) for f in nodes if f[3] == me and "fail" not in f[2])
    _redis_cli(replica, "cluster", "failover")


async def redis_handover(name: str) -> None:
    """Before a primary restarts gracefully, its replica takes over (CLUSTER FAILOVER), as an SRE would."""
    kind = topology.store_node(name).kind
    if (await asyncio.to_thread(redis_roles, kind)).get(name) != "master":
        return
    await asyncio.to_thread(_failover_to_replica, name)
    deadline = time.monotonic() + 30
    while (await asyncio.to_thread(redis_roles, kind)).get(name) != "slave":
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name}'s replica did not take over")
        await asyncio.sleep(0.2)


async def rolling_restart(names: list[str]) -> tuple[float, float, float]:
    """Restart each component gracefully, one at a time, waiting for the cluster to be whole in between.
    Returns (whole length, the slowest component's restart, the longest wait for wholeness after one)."""
    started = time.monotonic()
    slowest_start = slowest_whole = 0.0
    for name in names:
        if name.startswith(("redis-", "redis_state-")):
            await redis_handover(name)
        await asyncio.to_thread(stack.stop, name)
        restarted_at = time.monotonic()
        await asyncio.to_thread(stack.start, name)
        start_s = time.monotonic() - restarted_at
        whole_s = await wait_whole()
        slowest_start, slowest_whole = max(slowest_start, start_s), max(slowest_whole, whole_s)
        print(f"    restarted {name} in {start_s:.1f}s, whole after {whole_s:.1f}s", flush=True)
    return time.monotonic() - started, slowest_start, slowest_whole


def rolling_order(scope: str = "all") -> list[str]:
    """Stores first (a Cassandra node, a Kafka broker, a Redis node at a time), then every instance.
    Envoy is left out: the local stack has one edge (production runs several behind a load balancer).
    Scope "one" restarts one node of each store and one instance of each service and worker
    (each restart is the same kind of event; CI's time allows that much on a slow machine)."""
    stores = [n.name for n in topology.store_nodes()]
    instances = [inst.name for inst in topology.all_instances()]
    if scope == "all":
        return stores + instances
    return _first_of_each(stores) + _first_of_each(instances)


def _first_of_each(names: list[str]) -> list[str]:
    """The first name of each kind ("redis-1", "graph_svc-0"...), in the given order."""
    kinds: dict[str, str] = {}
    for name in names:
        kinds.setdefault(name.rsplit("-", 1)[0], name)
    return list(kinds.values())


# ---- the suite -----------------------------------------------------------------------


class Suite:
    def __init__(self, load: chaos_load.Load, population: chaos_load.Population, rate: float) -> None:
        self.load = load
        self.population = population
        self.rate = rate
        self._windows: list[tuple[str, float, float, tuple[float, float, float]]] = []
        self._stop = asyncio.Event()

    async def drive(self) -> None:
        """Back-to-back load segments until the faults are over."""
        while not self._stop.is_set():
            await self.load.run(self.population, self.rate, SEGMENT_SECONDS)

    async def warm_up(self, limit: float = WARM_LIMIT_SECONDS) -> float:
        """Load until the requests of the last WARM_WINDOW_SECONDS whose answers are
        due (sent at least a request timeout ago) were nearly all answered, or for
        `limit` seconds; the seconds it took. Set-up leaves the cluster busy (JVMs
        compiling, a node's hints, the users' first fan-out): the baseline starts after."""
        started = time.monotonic()
        while time.monotonic() - started < limit:
            await asyncio.sleep(WARM_POLL_SECONDS)
            end = time.monotonic() - chaos_load.TIMEOUT_S
            if end - WARM_WINDOW_SECONDS < started:
                continue
            window = self.load.stats(end - WARM_WINDOW_SECONDS, end)
            if (
                window.requests >= WARM_ANSWERED * self.rate * WARM_WINDOW_SECONDS
                and (window.success_rate or 0.0) >= WARM_SUCCESS
            ):
                break
        ended = time.monotonic()
        self.window("warm-up after set-up", started, ended, (0.0, 0.0, 0.0))
        return ended - started

    async def fault(self, label: str, action: Callable[[], Awaitable[tuple[float, float, float]]]) -> None:
        print(f"  {label}", flush=True)
        start = time.monotonic()
        times = await action()
        await asyncio.sleep(SETTLE_SECONDS)
        self.window(label, start, time.monotonic(), times)

    def window(self, label: str, start: float, end: float, times: tuple[float, float, float]) -> None:
        """Record a window; its row so far is printed (requests still in flight are
        not in it yet: `finish` counts them)."""
        self._windows.append((label, start, end, times))
        print(f"    {_row(_result(label, self.load.stats(start, end), *times))} (so far)", flush=True)

    def finish(self) -> list[FaultResult]:
        """Every window's result, once the load has stopped and all its requests ended."""
        return [_result(label, self.load.stats(start, end), *times) for label, start, end, times in self._windows]

    def stop(self) -> None:
        self._stop.set()


def _result(label: str, stats: chaos_load.WindowStats, down_s: float, start_s: float, whole_s: float) -> FaultResult:
    return FaultResult(
        label,
        stats.requests,
        stats.success_rate or 0.0,
        stats.p99_ms,
        stats.max_ms,
        round(down_s, 1),
        round(start_s, 1),
        round(whole_s, 1),
        stats.failed_by_kind,
    )


def _row(r: FaultResult) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f}"

    failed = ", ".join(f"{k} {v}" for k, v in sorted(r.failed_by_kind.items())) or "none"
    return (
        f"| {r.fault} | {r.requests} | {r.success * 100:.2f}% | {ms(r.p99_ms)} | {ms(r.worst_ms)} "
        f"| {r.down_s:.0f} | {r.start_s:.0f} | {r.whole_after_s:.1f} | {failed} |"
    )


async def run(args: argparse.Namespace) -> int:
    if not topology.is_cluster():
        print("make chaos needs the cluster topology: CHIRP_TOPOLOGY=cluster make up", file=sys.stderr)
        return 2
    started_wall = datetime.now(UTC)
    print("waiting for the cluster to be whole", flush=True)
    await wait_whole()
    print(f"setting up {args.users} users", flush=True)
    population = await chaos_load.setup(EDGE, users=args.users)
    load = chaos_load.Load(seed=args.seed)
    suite = Suite(load, population, args.rate)
    driver = asyncio.create_task(suite.drive())
    wanted = set(args.only.split(",")) if args.only else None

    def chosen(kind: str) -> bool:
        return wanted is None or kind in wanted

    baseline_start = time.monotonic()
    try:
        warm_s = await suite.warm_up()
        print(f"  warmed up in {warm_s:.0f}s", flush=True)
        baseline_start = time.monotonic()
        await asyncio.sleep(args.down)
        suite.window("no fault (baseline)", baseline_start, time.monotonic(), (0.0, 0.0, 0.0))
        if chosen("cassandra"):
            await suite.fault("SIGKILL Cassandra node 127.0.0.2", lambda: kill_and_restart(["cassandra-2"], args.down))
        if chosen("kafka"):
            await suite.fault("SIGKILL Kafka broker 2", lambda: kill_and_restart(["kafka-2"], args.down))
        if chosen("redis"):
            primary = redis_primary()
            await suite.fault(f"SIGKILL Redis primary ({primary})", lambda: kill_and_restart([primary], args.down))
        if chosen("redis_state"):
            state = redis_primary("redis_state")
            await suite.fault(f"SIGKILL state Redis primary ({state})", lambda: kill_and_restart([state], args.down))
        if chosen("services"):
            victims = [topology.instances(svc)[-1].name for svc in (*topology.SERVICES, *topology.WORKERS)]
            await suite.fault(
                "SIGKILL one instance of every service and worker", lambda: kill_and_restart(victims, args.down)
            )
        if args.rolling:
            order = rolling_order(args.rolling_scope)
            await suite.fault(f"rolling restart of {len(order)} components", lambda: rolling_restart(order))
    finally:
        suite.stop()
        await driver
    results = suite.finish()
    print("\n".join(_row(r) for r in results), flush=True)
    ledger_dir = RESULTS / "chaos"
    ledger_dir.mkdir(parents=True, exist_ok=True)
    population.ledger.write(ledger_dir / "ledger.json")
    load.write(ledger_dir / "requests.json")
    print("checking every acknowledged write", flush=True)
    report = await chaos_check.check(EDGE, population.ledger, CHECK_DEADLINE_S)
    print(report.table(), flush=True)
    lag = groups_lag()
    print(f"worker groups' events not yet applied after the check: {lag}", flush=True)
    for line in explain_lag(lag, started_wall):
        print(line, flush=True)
    whole = load.stats(baseline_start, time.monotonic())  # the warm-up has its own row
    write_report(args, results, report, whole, started_wall, lag)
    return 0 if report.passed else 1


def groups_lag(groups: dict[str, tuple[str, ...]] = CHECKED_GROUPS) -> dict[str, int | str]:
    """Per worker group, the events its topics hold past its committed offsets (or why
    that could not be read)."""
    lag: dict[str, int | str] = {}
    for group, topics in groups.items():
        try:
            offsets = group_offsets(topology.kafka_bootstrap(), group, topics)
            lag[group] = sum(max(0, end - committed) for committed, end in offsets.values())
        except Exception as exc:  # noqa: BLE001 - a diagnostic; the check's verdict stands alone
            lag[group] = f"unknown: {exc!r}"
    return lag


def explain_lag(lag: dict[str, int | str], since: datetime) -> list[str]:
    """For each group still behind: its state, which member holds which partition and
    where each partition stands, and what its members logged as warnings since `since`
    (most frequent first), so a run that ends with a group behind says why."""
    lines: list[str] = []
    behind = [group for group, n in lag.items() if n != 0]
    if not behind:
        return lines
    admin = AdminClient({"bootstrap.servers": topology.kafka_bootstrap()})
    for group in behind:
        try:
            described = admin.describe_consumer_groups([group], request_timeout=10)[group].result()
            members = "; ".join(
                f"{m.client_id}: " + ",".join(str(tp.partition) for tp in m.assignment.topic_partitions)
                for m in described.members
            )
            lines.append(f"{group}: state {described.state.name}, members {members or 'none'}")
            offsets = group_offsets(topology.kafka_bootstrap(), group, CONSUMER_GROUPS[group])
            lines.append(
                "  behind: "
                + (", ".join(f"{tp} {c}/{end}" for tp, (c, end) in offsets.items() if end > c) or "nothing now")
            )
        except Exception as exc:  # noqa: BLE001 - a diagnostic
            lines.append(f"{group}: not described: {exc!r}")
        for log_path in sorted(stack.LOGS.glob(f"{GROUP_PROCESSES[group]}-*.log")):
            lines += [f"  {log_path.stem}: {entry}" for entry in _warnings_since(log_path, since)]
    return lines


def _warnings_since(log_path: Path, since: datetime, top: int = 4) -> list[str]:
    """The most frequent warnings and errors a service logged (JSON lines) since `since`."""
    counts: dict[str, int] = {}
    last: dict[str, str] = {}
    stamp = since.isoformat(timespec="milliseconds")[:23]
    with open(log_path, errors="replace") as log:
        for raw in log:
            if '"level": "warning"' not in raw and '"level": "error"' not in raw:
                continue
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            if str(entry.get("ts", ""))[:23] < stamp:
                continue
            key = str(entry.get("msg", ""))[:110]
            counts[key] = counts.get(key, 0) + 1
            last[key] = str(entry.get("ts", ""))[11:19]
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
    return [f"{n}x, last {last[msg]}: {msg}" for msg, n in ranked] or ["no warnings"]


def write_report(
    args: argparse.Namespace,
    results: list[FaultResult],
    check: chaos_check.Report,
    overall: chaos_load.WindowStats,
    started: datetime,
    lag: dict[str, int | str] | None = None,
) -> None:
    (RESULTS / "chaos.json").write_text(
        json.dumps(
            {
                "started": started.isoformat(),
                "rate_per_s": args.rate,
                "users": args.users,
                "down_s": args.down,
                "faults": [asdict(r) for r in results],
                "overall": asdict(overall),
                "check": check.to_json(),
                "worker_lag_after_check": lag or {},
            },
            indent=1,
        )
    )
    lines = [
        "| fault | requests | success | p99 ms | worst ms | down s | restart until answering, s "
        "| then whole again after, s | failed requests by kind |",
        "|---|---|---|---|---|---|---|---|---|",
        *(_row(r) for r in results),
    ]
    checks = [
        "| acknowledged writes | checked | passed | lost | unverified | not owed (ambiguous) |",
        "|---|---|---|---|---|---|",
        *(
            f"| {name} | {c.checked} | {c.passed} | {c.lost} | {c.unverified} | {c.skipped} |"
            for name, c in check.categories.items()
        ),
    ]
    details = [f"- {name}: {d}" for name, c in check.categories.items() for d in c.details]
    table = "\n".join(lines)
    verdict = "every acknowledged write accounted for" if check.passed else f"{check.lost} acknowledged writes LOST"
    section = "\n".join(
        [
            RESULTS_START,
            f"Run of {started:%Y-%m-%d %H:%M} UTC: {args.rate:g} requests/s open loop, {args.users} users, "
            f"each node down {args.down:g} s; {overall.requests} requests from the baseline on, "
            f"{(overall.success_rate or 0) * 100:.2f}% succeeded. Result: **{verdict}**.",
            "",
            table,
            "",
            "\n".join(checks),
            "",
            *(details or ["No acknowledged write was lost or left unverified."]),
            "",
            "Events the worker groups had not applied when the check ended (a count still off while "
            "its group lags is lag, not loss): "
            + (", ".join(f"{group} {n}" for group, n in (lag or {}).items()) or "not read")
            + ".",
            RESULTS_END,
        ]
    )
    text = REPORT.read_text() if REPORT.is_file() else ""
    if RESULTS_START in text and RESULTS_END in text:
        head, _, rest = text.partition(RESULTS_START)
        _, _, tail = rest.partition(RESULTS_END)
        text = head + section + tail
    else:
        text = text + "\n" + section + "\n"
    REPORT.write_text(text)


RESULTS_START = "<!-- chaos results: written by `make chaos` -->"
RESULTS_END = "<!-- end of chaos results -->"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=float(os.environ.get("CHAOS_RATE", "12")))
    parser.add_argument("--users", type=int, default=24)
    parser.add_argument("--down", type=float, default=10.0, help="seconds each killed component stays down")
    parser.add_argument(
        "--only", default="", help="comma-separated subset of cassandra,kafka,redis,redis_state,services"
    )
    parser.add_argument("--no-rolling", dest="rolling", action="store_false")
    parser.add_argument(
        "--rolling-scope",
        choices=("all", "one"),
        default=os.environ.get("CHAOS_ROLLING_SCOPE", "all"),
        help="restart every component, or one of each kind",
    )
    parser.add_argument("--seed", type=int, default=7)
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
