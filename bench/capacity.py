"""Capacity model: the seeds' load priced in cores, nodes, memory and network.

    python -m bench.capacity [--no-gather] [--out docs/CAPACITY.md]

Every input is a `Figure`: a value with the place it came from. Measured
figures are read from the newest benchmark results (bench/results/*.json,
newest `started` first), from the seeded graph's manifest
(.state/bench/seed.json), or gathered from the running stack (Redis MEMORY
USAGE of sampled keys; cached in .state/capacity/measured.json so an offline
run reuses the last measurement). Whatever the bench does not measure yet
falls back to a named assumption, marked as such in the report, so the report
says what to measure next. The arithmetic (`plan` and the helpers above it) is
pure: no I/O, no clock, so a test can check it on a hand-computed example.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"


def result_files() -> list[Path]:
    """Every benchmark result (a labelled `make bench` run too); the newest `started` wins."""
    return sorted(RESULTS_DIR.glob("*.json"))


MANIFEST = ROOT / ".state" / "bench" / "seed.json"
MEASURED_CACHE = ROOT / ".state" / "capacity" / "measured.json"
OUT = ROOT / "docs" / "CAPACITY.md"

GB = 1024**3
TB = 1024**4

# Stack components (bench/load.py names them after .state/run pid files) -> capacity tier.
TIER_OF_COMPONENT = {
    "envoy": "Envoy (edge)",
    "edge_sidecar": "Envoy (edge)",
    "graph_svc": "graph_svc",
    "tweet_svc": "tweet_svc",
    "feed_svc": "feed_svc",
    "rank_svc": "rank_svc",
    "fanout_worker": "fanout_worker pool",
    "like_worker": "like_worker pool",
    "rank_worker": "rank_worker pool",
    "cassandra": "ScyllaDB",
    "kafka": "Kafka",
    "redis": "Redis Cluster",
    # The state Redis (counters, trending tallies): a Redis Cluster of its own in production,
    # sized here with the cache's tier.
    "redis_state": "Redis Cluster",
}
# Monitoring is sized apart from the request path.
IGNORED_COMPONENTS = frozenset({"prometheus"})
STATELESS_TIERS = (
    "Envoy (edge)",
    "graph_svc",
    "tweet_svc",
    "feed_svc",
    "rank_svc",
    "fanout_worker pool",
    "like_worker pool",
    "rank_worker pool",
)
ALL_TIERS = (*STATELESS_TIERS, "ScyllaDB", "Kafka", "Redis Cluster")
# Components whose per-post work grows with the timelines a post is pushed into.
FANOUT_COMPONENTS = frozenset({"fanout_worker", "graph_svc", "cassandra", "redis"})


# ---- inputs ------------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    value: float
    unit: str
    source: str
    measured: bool  # False: a named assumption (the report says what to measure)


@dataclass(frozen=True)
class Split:
    """CPU ms per request, by stack component."""

    ms: Mapping[str, float]
    source: str
    measured: bool

    @property
    def total(self) -> float:
        return sum(self.ms.values())


@dataclass(frozen=True)
class FollowerBand:
    label: str
    authors_share: float  # of sampled authors with 1..threshold-1 followers
    mean_followers: float


@dataclass(frozen=True)
class Inputs:
    daily_users: Figure
    concurrent_users: Figure
    feed_reads_per_s: Figure
    posts_per_s: Figure
    likes_per_post: Figure
    follows_per_post: Figure
    peak_to_average: Figure
    monthly_per_daily: Figure
    # CPU per request by component, on the stack the bench ran (replication `measured_rf`).
    read_cpu: Split
    post_cpu: Split  # one post including its fan-out, at `bench_followers_per_post`
    post_ack_cpu: Split  # the acknowledgement path alone
    entry_cpu: Split | None  # per delivered timeline entry, when the bench measures it
    like_cpu: Split
    follow_cpu: Split
    # Fan-out.
    bench_followers_per_post: Figure
    seeded_followers_per_post: Figure  # posts spread evenly over all users, celebrities pulled
    active_follower_share: Figure
    follow_backfill_entries: Figure
    follow_backfill_cpu_timelines: Figure  # a backfill's CPU, in pushed-timeline equivalents
    timeline_entries: Figure
    cql_timeline_copy: Figure  # 1: every pushed entry also written to CQL; 0: Redis only
    # Sizes.
    redis_bytes_per_entry: Figure
    redis_bytes_per_body: Figure
    body_cache_days: Figure
    cql_bytes_per_timeline_row: Figure
    cql_bytes_per_tweet_row: Figure
    cql_bytes_per_like_row: Figure
    tweet_retention_days: Figure
    page_bytes_out: Figure
    page_bytes_internal: Figure
    request_bytes_in: Figure
    event_bytes: Figure
    entry_wire_bytes: Figure
    # Replication and clusters.
    measured_rf: Figure
    rf: Figure
    read_replicas: Figure
    redis_replicas: Figure
    scylla_cpu_factor: Figure
    # Nodes.
    utilisation: Figure
    cores_per_node: Figure
    scylla_cores_per_node: Figure
    scylla_disk_tb_per_node: Figure
    scylla_disk_usable: Figure
    redis_node_gb: Figure
    redis_usable: Figure
    redis_cores_per_shard: Figure
    redis_processes_per_node: Figure
    kafka_events_per_partition_s: Figure
    nic_gbit_per_node: Figure
    nic_usable: Figure
    min_nodes: Figure
    follower_bands: tuple[FollowerBand, ...] = ()
    follower_bands_source: str = ""
    seed_note: str = ""

    def figures(self) -> list[tuple[str, Figure]]:
        return [(name, value) for name, value in vars(self).items() if isinstance(value, Figure)]

    def splits(self) -> list[tuple[str, Split]]:
        return [(name, value) for name, value in vars(self).items() if isinstance(value, Split)]


def assume(value: float, unit: str, why: str) -> Figure:
    return Figure(value, unit, f"assumption: {why}", measured=False)


# ---- pure arithmetic ---------------------------------------------------------------


def cores_for(rate_per_s: float, cpu_ms: float, utilisation: float) -> float:
    """Cores to serve `rate_per_s` requests of `cpu_ms` each, run at `utilisation` at peak."""
    return rate_per_s * cpu_ms / 1000.0 / utilisation


def nodes_for(cores: float, cores_per_node: float, min_nodes: int) -> int:
    return max(min_nodes, math.ceil(cores / cores_per_node - 1e-9))


def pushed_per_post(followers_per_post: float, active_share: float) -> float:
    """Timelines one post is pushed into: celebrities (at or above the threshold) are
    already out of `followers_per_post`; inactive followers are rebuilt on read, not pushed."""
    return followers_per_post * active_share


def post_split(inputs: Inputs, pushed: float) -> dict[str, float]:
    """CPU ms per post by component, fan-out included, for `pushed` timelines per post."""
    if inputs.entry_cpu is not None:
        parts = dict(inputs.post_ack_cpu.ms)
        for name, ms in inputs.entry_cpu.ms.items():
            parts[name] = parts.get(name, 0.0) + pushed * ms
        return parts
    # Only a whole-post figure at the bench's fan-out: its fan-out components scale with it.
    scale = pushed / inputs.bench_followers_per_post.value if inputs.bench_followers_per_post.value else 0.0
    return {name: ms * (scale if name in FANOUT_COMPONENTS else 1.0) for name, ms in inputs.post_cpu.ms.items()}


def entry_split(inputs: Inputs) -> dict[str, float]:
    """CPU ms per timeline a post is pushed into (used for follow backfills)."""
    if inputs.entry_cpu is not None:
        return dict(inputs.entry_cpu.ms)
    per = inputs.bench_followers_per_post.value
    return {n: ms / per for n, ms in inputs.post_cpu.ms.items() if n in FANOUT_COMPONENTS} if per else {}


@dataclass(frozen=True)
class Tier:
    name: str
    cores: float  # at the target utilisation
    nodes: int
    net_in_gbit: float
    net_out_gbit: float
    detail: str = ""


@dataclass(frozen=True)
class Plan:
    rates: dict[str, float]  # per second at peak
    pushed_per_post: float
    entries_per_s: float
    redis_writes_per_post: float
    cql_writes_per_post: float
    demand_cores: dict[str, dict[str, float]]  # tier -> traffic class -> cores (before headroom)
    tiers: dict[str, Tier]
    redis_memory_gb: dict[str, float]
    scylla_disk_tb: float
    kafka_partitions: dict[str, int]
    timeline_users: float
    notes: list[str] = field(default_factory=list)

    @property
    def total_cores(self) -> float:
        return sum(t.cores for t in self.tiers.values())

    @property
    def total_nodes(self) -> int:
        return sum(t.nodes for t in self.tiers.values())

    def dominant(self) -> list[tuple[str, str, float]]:
        """(tier, traffic class, cores at utilisation), largest first."""
        rows = [(tier, cls, c) for tier, by in self.demand_cores.items() for cls, c in by.items()]
        return sorted(rows, key=lambda r: -r[2])


def gbit(bytes_per_s: float) -> float:
    return bytes_per_s * 8 / 1e9


def plan(inputs: Inputs) -> Plan:
    v = {name: fig.value for name, fig in inputs.figures()}
    util, min_nodes = v["utilisation"], int(v["min_nodes"])
    posts = v["posts_per_s"]
    rates = {
        "feed reads": v["feed_reads_per_s"],
        "posts": posts,
        "likes": posts * v["likes_per_post"],
        "follows": posts * v["follows_per_post"],
    }
    pushed = pushed_per_post(v["seeded_followers_per_post"], v["active_follower_share"])
    entries_per_s = posts * pushed + rates["follows"] * v["follow_backfill_entries"]
    backfill = entry_split(inputs)
    follow_ms = dict(inputs.follow_cpu.ms)
    for name, ms in backfill.items():
        follow_ms[name] = follow_ms.get(name, 0.0) + v["follow_backfill_cpu_timelines"] * ms
    per_class: dict[str, tuple[dict[str, float], bool]] = {
        "feed reads": (dict(inputs.read_cpu.ms), False),
        "posts": (post_split(inputs, pushed), True),
        "likes": (dict(inputs.like_cpu.ms), True),
        "follows": (follow_ms, True),
    }

    def store_factor(component: str, is_write: bool) -> float:
        # The bench ran at replication `measured_rf`; writes are done by every replica,
        # reads by the replicas the consistency level asks (LOCAL_QUORUM: 2 of 3).
        if component == "cassandra":
            replicas = v["rf"] if is_write else v["read_replicas"]
            return replicas / v["measured_rf"] * v["scylla_cpu_factor"]
        if component == "kafka":
            return v["rf"] / v["measured_rf"]
        if component in ("redis", "redis_state") and is_write:
            return 1.0 + v["redis_replicas"]
        return 1.0

    demand: dict[str, dict[str, float]] = {tier: {} for tier in ALL_TIERS}
    for cls, (split, is_write) in per_class.items():
        for component, ms in split.items():
            if component in IGNORED_COMPONENTS or component not in TIER_OF_COMPONENT:
                continue
            tier = TIER_OF_COMPONENT[component]
            cores = cores_for(rates[cls], ms * store_factor(component, is_write), util)
            demand[tier][cls] = demand[tier].get(cls, 0.0) + cores

    # Network, bytes per second in and out of each tier.
    reads, likes, follows = rates["feed reads"], rates["likes"], rates["follows"]
    writes = posts + likes + follows
    # The edge takes requests in and pages back from feed_svc; sends requests on and pages out.
    edge_in = (reads + writes) * v["request_bytes_in"] + reads * v["page_bytes_internal"]
    edge_out = (reads + writes) * v["request_bytes_in"] + reads * v["page_bytes_out"]
    events_per_s = {"tweets": posts, "likes": likes, "follows": follows}
    event_bytes = sum(events_per_s.values()) * v["event_bytes"]
    redis_write_bytes = entries_per_s * v["entry_wire_bytes"] * (1.0 + v["redis_replicas"])
    cql_copy = v["cql_timeline_copy"]
    cql_write_bytes = v["rf"] * (
        posts * v["cql_bytes_per_tweet_row"]
        + entries_per_s * cql_copy * v["cql_bytes_per_timeline_row"]
        + likes * v["cql_bytes_per_like_row"]
    )
    net = {
        "Envoy (edge)": (edge_in, edge_out),
        "feed_svc": (reads * v["request_bytes_in"], reads * v["page_bytes_internal"]),
        "tweet_svc": (writes * v["request_bytes_in"], writes * v["request_bytes_in"]),
        "graph_svc": (follows * v["request_bytes_in"], posts * pushed * 8.0),
        "fanout_worker pool": ((posts + follows) * v["event_bytes"] + posts * pushed * 8.0, redis_write_bytes),
        "like_worker pool": (likes * v["event_bytes"], likes * v["cql_bytes_per_like_row"]),
        "rank_worker pool": (likes * v["event_bytes"], 0.0),
        "rank_svc": (0.0, 0.0),
        "Redis Cluster": (redis_write_bytes, reads * v["page_bytes_internal"]),
        "ScyllaDB": (cql_write_bytes, cql_write_bytes * (v["rf"] - 1) / v["rf"]),
        # Producers in, replicas and the consumer groups (fan-out, like, rank workers) out.
        "Kafka": (event_bytes * v["rf"], event_bytes * (v["rf"] - 1 + 2)),
    }
    nic_bytes = v["nic_gbit_per_node"] * 1e9 / 8 * v["nic_usable"]

    def net_nodes(tier: str) -> int:
        i, o = net[tier]
        return math.ceil(max(i, o) / nic_bytes - 1e-9) if nic_bytes else 0

    tiers: dict[str, Tier] = {}
    for tier in STATELESS_TIERS:
        cores = sum(demand[tier].values())
        nodes = max(nodes_for(cores, v["cores_per_node"], min_nodes), net_nodes(tier))
        tiers[tier] = Tier(tier, cores, nodes, gbit(net[tier][0]), gbit(net[tier][1]))

    # Redis: timelines of everyone active within the push window, and a body cache.
    timeline_users = v["daily_users"] * v["monthly_per_daily"]
    timelines_gb = timeline_users * v["timeline_entries"] * v["redis_bytes_per_entry"] / GB
    posts_per_day = posts / v["peak_to_average"] * 86_400
    bodies_gb = posts_per_day * v["body_cache_days"] * v["redis_bytes_per_body"] / GB
    primary_gb = timelines_gb + bodies_gb
    memory = {
        "timelines": timelines_gb,
        "tweet bodies": bodies_gb,
        "primaries": primary_gb,
        "with replicas": primary_gb * (1 + v["redis_replicas"]),
    }
    redis_cores = sum(demand["Redis Cluster"].values())
    copies = 1 + v["redis_replicas"]
    # A Redis process runs its commands on one core; reads go to primaries, and the
    # write CPU counted above already includes the replicas' copies.
    primary_cores = sum(c if cls == "feed reads" else c / copies for cls, c in demand["Redis Cluster"].items())
    shards = max(math.ceil(primary_cores / v["redis_cores_per_shard"] - 1e-9), min_nodes)
    redis_processes = int(shards * copies)
    by = {
        "CPU": math.ceil(redis_processes / v["redis_processes_per_node"] - 1e-9),
        "memory": math.ceil(memory["with replicas"] / (v["redis_node_gb"] * v["redis_usable"]) - 1e-9),
        "network": net_nodes("Redis Cluster"),
    }
    tiers["Redis Cluster"] = Tier(
        "Redis Cluster",
        redis_cores,
        max(min_nodes, *by.values()),
        gbit(net["Redis Cluster"][0]),
        gbit(net["Redis Cluster"][1]),
        f"{shards:,} primaries + {int(v['redis_replicas'])} replica each; nodes by "
        + ", ".join(f"{k} {n:,}" for k, n in by.items())
        + f"; {memory['with replicas'] / 1024:,.1f} TiB with replicas",
    )

    # ScyllaDB: CPU or disk, whichever needs more nodes.
    tweets_tb = posts_per_day * v["tweet_retention_days"] * v["cql_bytes_per_tweet_row"] / TB
    timelines_tb = timeline_users * v["timeline_entries"] * v["cql_bytes_per_timeline_row"] * cql_copy / TB
    likes_tb = posts_per_day * v["likes_per_post"] * v["tweet_retention_days"] * v["cql_bytes_per_like_row"] / TB
    disk_tb = (tweets_tb + timelines_tb + likes_tb) * v["rf"]
    scylla_cores = sum(demand["ScyllaDB"].values())
    cpu_nodes = nodes_for(scylla_cores, v["scylla_cores_per_node"], min_nodes)
    disk_nodes = math.ceil(disk_tb / (v["scylla_disk_tb_per_node"] * v["scylla_disk_usable"]) - 1e-9)
    scylla_nodes = max(cpu_nodes, disk_nodes, net_nodes("ScyllaDB"))
    tiers["ScyllaDB"] = Tier(
        "ScyllaDB",
        scylla_cores,
        scylla_nodes,
        gbit(net["ScyllaDB"][0]),
        gbit(net["ScyllaDB"][1]),
        f"{cpu_nodes:,} by CPU, {disk_nodes:,} by disk ({disk_tb:,.0f} TB at RF {v['rf']:.0f})",
    )

    # Kafka: brokers by CPU or network; partitions so every consumer process has one.
    kafka_cores = sum(demand["Kafka"].values())
    per_part = v["kafka_events_per_partition_s"]

    def processes(tier: str) -> int:
        return max(1, math.ceil(tiers[tier].cores))

    partitions = {
        "chirp.tweets.v1": max(math.ceil(posts / per_part), processes("fanout_worker pool")),
        "chirp.likes.v1": max(
            math.ceil(likes / per_part), processes("like_worker pool"), processes("rank_worker pool")
        ),
        "chirp.follows.v1": max(math.ceil(follows / per_part), processes("fanout_worker pool")),
    }
    kafka_nodes = max(nodes_for(kafka_cores, v["cores_per_node"], min_nodes), net_nodes("Kafka"))
    tiers["Kafka"] = Tier(
        "Kafka",
        kafka_cores,
        kafka_nodes,
        gbit(net["Kafka"][0]),
        gbit(net["Kafka"][1]),
        ", ".join(f"{t}: {p:,} partitions" for t, p in partitions.items()) + f", RF {v['rf']:.0f}",
    )
    redis_per_post = pushed * (1 + v["redis_replicas"])
    cql_per_post = pushed * cql_copy * v["rf"]
    return Plan(
        rates=rates,
        pushed_per_post=pushed,
        entries_per_s=entries_per_s,
        redis_writes_per_post=redis_per_post,
        cql_writes_per_post=cql_per_post,
        demand_cores=demand,
        tiers=tiers,
        redis_memory_gb=memory,
        scylla_disk_tb=disk_tb,
        kafka_partitions=partitions,
        timeline_users=timeline_users,
    )


# ---- reading the measurements -------------------------------------------------------


@dataclass(frozen=True)
class Results:
    """The benchmark result files, newest first."""

    runs: tuple[tuple[str, dict[str, Any]], ...]  # (file name, parsed)

    @classmethod
    def load(cls, paths: Iterable[Path]) -> Results:
        runs = []
        for path in paths:
            try:
                runs.append((f"bench/results/{path.name}", json.loads(path.read_text())))
            except (OSError, ValueError):
                continue
        runs.sort(key=lambda r: str(r[1].get("started", "")), reverse=True)
        return cls(tuple(runs))

    def rows(self, scenario: str) -> list[tuple[str, str, dict[str, Any]]]:
        """(file, field path, row) of a scenario's load-ladder steps, newest file first; in a
        file, the fastest rate with at most 1% errors first (fixed background CPU weighs least there)."""
        found: list[tuple[str, str, dict[str, Any]]] = []
        for name, run in self.runs:
            # "like" finds "h_like": the letter says where a scenario runs, not what it is.
            scenarios = run.get("scenarios", {})
            key = next((k for k in scenarios if k == scenario or k.endswith("_" + scenario)), scenario)
            value = scenarios.get(key)
            if isinstance(value, dict):
                found.append((name, f"scenarios.{key}", value))
            elif isinstance(value, list):
                # Overload and cold-start steps measure shedding, not the cost of a served request.
                indexed = [
                    (i, r) for i, r in enumerate(value) if isinstance(r, dict) and r.get("step", "ladder") == "ladder"
                ]
                clean = [(i, r) for i, r in indexed if _error_share(r) <= 0.01] or indexed
                clean.sort(key=lambda ir: -float(ir[1].get("achieved_rps", 0.0)))
                found += [(name, f"scenarios.{key}[{i}]", r) for i, r in clean]
        return found

    def split(self, scenario: str) -> tuple[Split | None, Figure | None]:
        """The newest by-component CPU split of a scenario (net of idle when the bench
        reports it), else its newest total."""
        rows = self.rows(scenario)
        for key in ("net_cpu_ms_per_req_by_component", "cpu_ms_per_req_by_component"):
            for name, path, row in rows:
                if isinstance(row.get(key), dict) and row[key]:
                    # Net of idle, a quiet component can come out slightly negative: noise, not a credit.
                    ms = {str(k): max(0.0, float(x)) for k, x in row[key].items()}
                    return Split(ms, f"{name}: {path}.{key}", True), None
        for key in ("net_stack_cpu_ms_per_req", "stack_cpu_ms_per_req"):
            for name, path, row in rows:
                if isinstance(row.get(key), int | float):
                    return None, Figure(float(row[key]), "ms", f"{name}: {path}.{key}", True)
        return None, None

    def number(self, paths: Sequence[str]) -> Figure | None:
        """The first of `paths` (dotted, from the top of a result file; a part "*x" matches
        any key ending in x) present in the newest file."""
        for name, run in self.runs:
            for path in paths:
                found, value = _lookup(run, path)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    return Figure(float(value), "", f"{name}: {found}", True)
        return None

    def components(self, paths: Sequence[str]) -> Split | None:
        for name, run in self.runs:
            for path in paths:
                found, value = _lookup(run, path)
                if isinstance(value, dict) and value and all(isinstance(x, int | float) for x in value.values()):
                    return Split({str(k): float(x) for k, x in value.items()}, f"{name}: {found}", True)
        return None


def _lookup(run: Mapping[str, Any], path: str) -> tuple[str, Any]:
    value: Any = run
    found: list[str] = []
    for part in path.split("."):
        if not isinstance(value, dict):
            return path, None
        key = next((k for k in value if k.endswith(part[1:])), part) if part.startswith("*") else part
        value = value.get(key)
        found.append(key)
    return ".".join(found), value


def _error_share(row: Mapping[str, Any]) -> float:
    requests = float(row.get("requests", 0) or 0)
    return float(row.get("errors", 0) or 0) / requests if requests else 1.0


def scaled(split: Mapping[str, float], total: float) -> dict[str, float]:
    whole = sum(split.values())
    return {k: x * total / whole for k, x in split.items()} if whole else {}


# Issue 14's profile of a cached feed read (80 req/s, net ms per read).
READ_SPLIT_ISSUE_14 = {
    "feed_svc": 6.0,
    "tweet_svc": 6.1,
    "envoy": 2.2,
    "redis": 0.6,
    "cassandra": 0.3,
    "graph_svc": 0.3,
}
# Issue 15: "a post costs about 65 ms of CPU across the stack once it has been fanned
# out (graph_svc 18, Cassandra 19, fan-out worker 17, tweet_svc 10, Kafka 7)".
POST_SPLIT_ISSUE_15 = {"graph_svc": 18.0, "cassandra": 19.0, "fanout_worker": 17.0, "tweet_svc": 10.0, "kafka": 7.0}
POST_TOTAL_ISSUE_15 = 65.0
BURST_POST_CPU = "scenarios.m_burst.burst.net_cpu_ms_per_post_by_component"


@dataclass(frozen=True)
class CpuInputs:
    read: Split
    ack: Split
    entry: Split | None
    post: Split
    like: Split
    follow: Split


def cpu_inputs(results: Results) -> CpuInputs:
    read, read_total = results.split("a_feed_rest")
    if read is None:
        total = read_total.value if read_total else sum(READ_SPLIT_ISSUE_14.values())
        where = read_total.source if read_total else "assumption: issue 14's total"
        read = Split(
            scaled(READ_SPLIT_ISSUE_14, total),
            f"{where}, split by component as issue 14's profile (bench reports no split yet)",
            read_total is not None,
        )
    ack, ack_total = results.split("b_post")
    if ack is None:
        ack_parts = {k: x for k, x in POST_SPLIT_ISSUE_15.items() if k not in FANOUT_COMPONENTS}
        total = ack_total.value if ack_total else sum(ack_parts.values())
        ack = Split(
            scaled(ack_parts, total),
            f"{ack_total.source if ack_total else 'assumption'}, split as issue 15's non-fan-out components",
            ack_total is not None,
        )
    else:
        # The fan-out worker's share in a post run belongs to the entries, counted apart.
        ack = Split(
            {k: x for k, x in ack.ms.items() if k != "fanout_worker"}, ack.source + " (minus fanout_worker)", True
        )
    entry = results.components(
        ["fanout.cpu_ms_per_entry_by_component", "scenarios.*_fanout.cpu_ms_per_entry_by_component"]
    )
    whole = results.components(
        [
            "fanout.cpu_ms_per_post_by_component",
            "scenarios.*_fanout.cpu_ms_per_post_by_component",
            # bench/burst.py: a burst of posts until its fan-out drained, idle subtracted
            BURST_POST_CPU,
        ]
    )
    if whole is not None and whole.source.endswith(BURST_POST_CPU):
        whole = Split({k: max(0.0, x) for k, x in whole.ms.items()}, whole.source, True)
    post = whole or Split(
        scaled(POST_SPLIT_ISSUE_15, POST_TOTAL_ISSUE_15),
        "assumption: issue 15, about 65 ms per post once fanned out at the seeded graph's average "
        "(split graph_svc 18, Cassandra 19, fan-out worker 17, tweet_svc 10, Kafka 7, scaled to 65); "
        "measure: CPU per delivered timeline entry",
        False,
    )
    like = results.split("like")[0] or Split(
        dict(ack.ms),
        f"assumption: a like costs a post's acknowledgement ({ack.source}); measure: a like scenario",
        False,
    )
    # A follow is graph_svc's acknowledgement where a post is tweet_svc's.
    follow = results.split("follow")[0] or Split(
        {("graph_svc" if k == "tweet_svc" else k): x for k, x in ack.ms.items()},
        f"assumption: a follow costs a post's acknowledgement ({ack.source}), graph_svc in tweet_svc's place, "
        "plus its backfill; "
        "measure: a follow scenario",
        False,
    )
    return CpuInputs(read=read, ack=ack, entry=entry, post=post, like=like, follow=follow)


def fanout_inputs(manifest: Mapping[str, Any] | None, results: Results) -> dict[str, Any]:
    """Followers per post from the seeded graph: the bench posts as authors sampled from
    users with 1..threshold-1 followers; production posts come from every user, and a
    celebrity's post (at or above the threshold) is pulled, not pushed."""
    if manifest and manifest.get("authors"):
        counts = [int(a["followers"]) for a in manifest["authors"]]
        users, threshold = int(manifest["users"]), int(manifest["celebrity_threshold"])
        sampled = min(2000, users)  # bench/seed.py samples this many users, keeps 0 < followers < threshold
        mean = sum(counts) / len(counts)
        with_followers = len(counts) / sampled
        where = ".state/bench/seed.json"
        bands = []
        edges = [1, 10, 100, 1000, threshold]
        for lo, hi in itertools.pairwise(edges):
            band = [c for c in counts if lo <= c < hi]
            if band:
                bands.append(FollowerBand(f"{lo:,}-{hi - 1:,}", len(band) / len(counts), sum(band) / len(band)))
        celebs = manifest.get("celebrities", [])
        if celebs:
            share = len(celebs) / users
            mean_c = sum(int(c["followers"]) for c in celebs) / len(celebs)
            bands.append(FollowerBand(f">= {threshold:,} (pulled)", share, mean_c))
        return {
            "bench": Figure(mean, "followers", f"{where}: mean of authors[].followers ({len(counts)} authors)", True),
            "seeded": Figure(
                mean * with_followers,
                "timelines",
                f"{where}: mean of authors[].followers x share of sampled users with 1..{threshold - 1:,} "
                f"followers ({len(counts)}/{sampled}); users {users:,}, edges {manifest.get('edges', 0):,}, "
                f"threshold {threshold:,}",
                True,
            ),
            "bands": tuple(bands),
            "bands_source": f"{where} (authors sample and celebrities)",
        }
    seed_edges = results.number(["seed.edges"])
    seed_users = results.number(["seed.users"])
    if seed_edges and seed_users and seed_users.value:
        mean = seed_edges.value / seed_users.value
        fig = Figure(mean, "followers", f"{seed_edges.source} / {seed_users.source} (celebrities kept in)", True)
        return {"bench": fig, "seeded": fig, "bands": (), "bands_source": ""}
    fig = assume(17.9, "followers", "the 100K-user seed's edges per user")
    return {"bench": fig, "seeded": fig, "bands": (), "bands_source": ""}


def burst_followers(results: Results, file: str) -> Figure | None:
    """Timelines written per tweet in the burst of `file` (the post CPU it measured goes with it)."""
    for name, run in results.runs:
        if name == file:
            burst = run.get("scenarios", {}).get("m_burst", {}).get("burst", {})
            written, handled = burst.get("timeline_entries_written"), burst.get("tweets_handled")
            if written and handled:
                where = f"{name}: scenarios.m_burst.burst.timeline_entries_written / tweets_handled"
                return Figure(float(written) / float(handled), "followers", where, True)
    return None


def build_inputs(results: Results, manifest: Mapping[str, Any] | None, measured: Mapping[str, Any]) -> Inputs:
    cpu = cpu_inputs(results)
    fan = fanout_inputs(manifest, results)
    bench_followers = results.number(["fanout.followers_per_post"])
    if cpu.post.source.endswith(BURST_POST_CPU):
        bench_followers = burst_followers(results, cpu.post.source.split(":")[0])
    if bench_followers is None and not cpu.post.measured:
        # Issue 15's 65 ms was measured on the graph the result files were benchmarked on.
        edges, users = results.number(["seed.edges"]), results.number(["seed.users"])
        if edges and users and users.value:
            bench_followers = Figure(
                edges.value / users.value,
                "followers",
                f"{edges.source} / {users.source}: the graph issue 15's per-post figure was measured on",
                True,
            )
    seed_note = ""
    users_run = results.number(["seed.users"])
    if manifest and users_run and int(users_run.value) != int(manifest.get("users", 0)):
        seed_note = (
            f"The results were benchmarked on a {int(users_run.value):,}-user seed; the follower distribution "
            f"comes from the {int(manifest.get('users', 0)):,}-user seed in .state/bench/seed.json. "
            "`make seed` then `make bench` aligns them."
        )

    def gathered(key: str, unit: str, fallback: Figure) -> Figure:
        entry = measured.get(key)
        if isinstance(entry, dict) and isinstance(entry.get("value"), int | float):
            return Figure(float(entry["value"]), unit, str(entry["source"]), True)
        return fallback

    timeline_size = results.number(["fanout.timeline_entries"]) or Figure(
        800.0, "entries", "feed_svc/config.py: CHIRP_TIMELINE_SIZE default", True
    )
    measured_rf = results.number(["machine.replication", "machine.rf"]) or Figure(
        1.0, "", "bench results record no topology: `make bench` runs the single-node stack (RF 1)", True
    )
    active = results.number(["fanout.active_follower_share"]) or assume(
        1.0, "", "every follower active within CHIRP_ACTIVE_DAYS (conservative); measure: share pushed to"
    )
    copy = results.number(["fanout.cql_timeline_copy"]) or Figure(
        0.0, "", "feed_svc/fanout.py: pushed entries go to Redis only; a lost timeline is rebuilt by pulling", True
    )
    seed_load = "seeds 000 (capacity estimation)"
    return Inputs(
        daily_users=Figure(500e6, "users", f"{seed_load}: 500M DAU", True),
        concurrent_users=Figure(100e6, "users", f"{seed_load}: 100M concurrent", True),
        feed_reads_per_s=Figure(100e6, "req/s", f"{seed_load}: about 100M reads/s", True),
        posts_per_s=Figure(100e3, "posts/s", f"{seed_load}: 1000:1 read:write, 100K writes/s, taken as posts", True),
        likes_per_post=assume(10.0, "x posts", "10 likes per post"),
        follows_per_post=assume(1.0, "x posts", "1 follow per post"),
        peak_to_average=assume(2.0, "x", "peak rate is twice the daily average (for daily volumes)"),
        monthly_per_daily=assume(1.5, "x", "users active within 30 days per daily user (who keep a timeline)"),
        read_cpu=cpu.read,
        post_cpu=cpu.post,
        post_ack_cpu=cpu.ack,
        entry_cpu=cpu.entry,
        like_cpu=cpu.like,
        follow_cpu=cpu.follow,
        bench_followers_per_post=bench_followers or fan["bench"],
        seeded_followers_per_post=fan["seeded"],
        active_follower_share=active,
        follow_backfill_entries=Figure(20.0, "entries", "feed_svc/fanout.py: FOLLOW_BACKFILL", True),
        follow_backfill_cpu_timelines=assume(
            1.0,
            "timelines",
            "a follow's backfill (one timeline, one batch) costs one pushed timeline; measure: CPU per follow with its backfill",
        ),
        timeline_entries=timeline_size,
        cql_timeline_copy=copy,
        redis_bytes_per_entry=gathered(
            "redis_bytes_per_entry",
            "bytes",
            assume(
                80.0, "bytes", "skiplist ZSET entry; measure: MEMORY USAGE of timelines (gathered when the stack is up)"
            ),
        ),
        redis_bytes_per_body=gathered(
            "redis_bytes_per_body",
            "bytes",
            assume(
                160.0,
                "bytes",
                "cached tweet body; measure: MEMORY USAGE of cached bodies (gathered when Redis holds some)",
            ),
        ),
        body_cache_days=assume(2.0, "days", "tweet bodies of the last two days stay cached"),
        cql_bytes_per_timeline_row=assume(60.0, "bytes", "home_timeline row on disk, compressed; measure: nodetool"),
        cql_bytes_per_tweet_row=assume(250.0, "bytes", "tweets row + user_tweets entry on disk; measure: nodetool"),
        cql_bytes_per_like_row=assume(60.0, "bytes", "likes row on disk; measure: nodetool"),
        tweet_retention_days=assume(365.0, "days", "one year of tweets and likes on disk (older: colder storage)"),
        page_bytes_out=assume(
            3000.0, "bytes", "gzipped 20-item feed page (issue 14: a 3 KB page); measure: response size"
        ),
        page_bytes_internal=assume(
            6000.0, "bytes", "the same page uncompressed, gRPC between tiers; measure: the page's gRPC size"
        ),
        request_bytes_in=assume(600.0, "bytes", "request with headers and a JWT; measure: request size at the edge"),
        event_bytes=assume(300.0, "bytes", "Kafka event with key and headers; measure: topic bytes per event"),
        entry_wire_bytes=assume(
            60.0, "bytes", "ZADD of one entry on the wire, pipelined; measure: Redis bytes in per entry"
        ),
        measured_rf=measured_rf,
        rf=Figure(3.0, "", "issue 15: ScyllaDB and Kafka at RF 3", True),
        read_replicas=Figure(2.0, "", "common/config.py: CHIRP_CQL_CONSISTENCY default LOCAL_QUORUM (2 of 3)", True),
        redis_replicas=assume(1.0, "", "one replica per primary (as the cluster topology)"),
        scylla_cpu_factor=assume(
            1.0, "x", "ScyllaDB costs what the measured Cassandra costs (conservative); measure: the bench on ScyllaDB"
        ),
        utilisation=assume(0.6, "", "cores run at 60% at peak (headroom for a zone loss and bursts)"),
        cores_per_node=assume(16.0, "cores", "16-core service, worker and Kafka nodes"),
        scylla_cores_per_node=assume(16.0, "cores", "16-core ScyllaDB nodes"),
        scylla_disk_tb_per_node=assume(7.5, "TB", "NVMe per ScyllaDB node"),
        scylla_disk_usable=assume(0.5, "", "half the disk used (compaction space)"),
        redis_node_gb=assume(256.0, "GiB", "256 GiB Redis nodes"),
        redis_usable=assume(0.75, "", "75% of a Redis node's memory for data (fragmentation, fork)"),
        redis_cores_per_shard=assume(1.0, "cores", "one core of commands per Redis primary"),
        redis_processes_per_node=assume(12.0, "processes", "12 Redis processes per 16-core node (rest: network, fork)"),
        kafka_events_per_partition_s=assume(
            5000.0,
            "events/s",
            "one Python consumer process drains 5K events/s; measure: the burst drain rate per worker",
        ),
        nic_gbit_per_node=assume(25.0, "Gbit/s", "25 Gbit NIC per node"),
        nic_usable=assume(0.5, "", "half the NIC at peak"),
        min_nodes=assume(3.0, "nodes", "three per tier, one per zone"),
        follower_bands=fan["bands"],
        follower_bands_source=fan["bands_source"],
        seed_note=seed_note,
    )


# ---- gathering from the stack (optional) --------------------------------------------


def gather(timeline_size: int, sample: int = 200) -> dict[str, Any]:
    """Bytes per timeline entry and per cached body from the running Redis. The timeline
    figure is taken at `timeline_size` entries: small sets use a compact encoding, so
    when no sampled timeline is that long, a scratch copy of a real one's members is
    grown to that size, measured and deleted."""
    import redis

    from common.keys import feed_key, tweet_key
    from infra import topology

    nodes = topology.redis_nodes()
    client: Any
    if len(nodes) == 1:
        client = redis.Redis(host=nodes[0].host, port=nodes[0].port, socket_timeout=3, socket_connect_timeout=2)
    else:
        from redis.cluster import ClusterNode, RedisCluster

        client = RedisCluster(startup_nodes=[ClusterNode(n.host, n.port) for n in nodes], socket_timeout=3)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    tl_pattern = feed_key("timeline", 0).replace(":0", ":*")
    keys = [k for _, k in zip(range(sample), client.scan_iter(match=tl_pattern, count=1000), strict=False)]
    if not keys:
        raise RuntimeError("no timelines in Redis")
    usage = [(int(client.memory_usage(k, samples=0) or 0), int(client.zcard(k))) for k in keys]
    limit = int(client.config_get("zset-max-listpack-entries").get("zset-max-listpack-entries", 128))
    long_ones = [(b, n) for b, n in usage if n > limit]
    small_bytes, small_entries = sum(b for b, _ in usage), sum(n for _, n in usage)
    out: dict[str, Any] = {
        "redis_timeline_sample": {
            "value": small_bytes / max(1, small_entries),
            "source": f"Redis MEMORY USAGE / ZCARD of {len(keys)} sampled tl: keys "
            f"({small_entries} entries, mostly compact encoding), {now}",
        }
    }
    if len(long_ones) >= 5:
        per = sum(b for b, _ in long_ones) / sum(n for _, n in long_ones)
        where = f"Redis MEMORY USAGE / ZCARD of {len(long_ones)} sampled tl: keys over {limit} entries, {now}"
    else:
        fullest = max(keys, key=lambda k: client.zcard(k))
        members = client.zrange(fullest, -1, -1, withscores=True)
        top_id, top_score = (int(members[0][0]), float(members[0][1])) if members else (10**18, 1.7e12)
        probe = f"capacity-probe:{os.getpid()}"
        try:
            pipe = client.pipeline(transaction=False)
            pipe.zadd(probe, {str(top_id - i * 4_194_304): top_score - i * 1000 for i in range(timeline_size)})
            pipe.expire(probe, 60)
            pipe.execute()
            per = int(client.memory_usage(probe, samples=0) or 0) / timeline_size
        finally:
            client.delete(probe)
        where = (
            f"Redis MEMORY USAGE of a scratch {timeline_size}-entry ZSET with tl: members' format "
            f"(no sampled timeline was over {limit} entries), {now}"
        )
    out["redis_bytes_per_entry"] = {"value": round(per, 1), "source": where}
    body_pattern = tweet_key("body", 0).replace(":0", ":*")
    bodies = [k for _, k in zip(range(sample), client.scan_iter(match=body_pattern, count=1000), strict=False)]
    if not bodies:
        out["skipped"] = f"no cached tweet bodies ({body_pattern}) in Redis"
    else:
        sizes = [int(client.memory_usage(k, samples=0) or 0) for k in bodies]
        out["redis_bytes_per_body"] = {
            "value": round(sum(sizes) / len(sizes), 1),
            "source": f"Redis MEMORY USAGE of {len(bodies)} sampled tw: keys (key included), {now}",
        }
    client.close()
    return out


def measured_figures(want_gather: bool, timeline_size: int) -> tuple[dict[str, Any], str]:
    """Fresh measurements when the stack answers, else the last ones cached, else none."""
    cached: dict[str, Any] = {}
    if MEASURED_CACHE.is_file():
        try:
            cached = json.loads(MEASURED_CACHE.read_text())
        except ValueError:
            cached = {}
    if not want_gather:
        return cached, "not gathered (--no-gather): last cached measurements used" if cached else "not gathered"
    try:
        fresh = gather(timeline_size)
    except (OSError, RuntimeError, ValueError, RedisError) as exc:  # a report: no stack means fall back
        note = f"stack not reachable ({type(exc).__name__}: {str(exc)[:80]})"
        return cached, f"{note}: last cached measurements used" if cached else f"{note}: assumptions used"
    MEASURED_CACHE.parent.mkdir(parents=True, exist_ok=True)
    MEASURED_CACHE.write_text(json.dumps(fresh, indent=1))
    skipped = f" ({fresh['skipped']}: assumption used)" if fresh.get("skipped") else ""
    return fresh, f"gathered from the running stack{skipped}"


# ---- the report -------------------------------------------------------------------


def _num(x: float) -> str:
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:,.1f}"
    return f"{x:,.2f}"


def _value(fig: Figure) -> str:
    if fig.value >= 1e6:
        return f"{fig.value / 1e6:,.6g}M"
    return f"{fig.value:,.6g}"


def render(inputs: Inputs, result: Plan, gather_note: str, generated: str) -> str:
    lines: list[str] = []
    add = lines.append
    tiers = [result.tiers[t] for t in ALL_TIERS]
    add("# Capacity model")
    add("")
    add(
        f"Generated by `make capacity` (bench/capacity.py) on {generated}; do not edit: re-run it after "
        "`make bench`. Every figure below is derived from the inputs table, each traced to a measured "
        "number (file and field) or a named **assumption**. Optional stack measurements: "
        f"{gather_note}."
    )
    add("")
    add("## Headline: the seeds' load at peak")
    add("")
    add(
        f"{_num(result.rates['feed reads'] / 1e6)}M feed reads/s, {_num(result.rates['posts'] / 1e3)}K posts/s, "
        f"{_num(result.rates['likes'] / 1e3)}K likes/s, {_num(result.rates['follows'] / 1e3)}K follows/s; "
        f"cores at {inputs.utilisation.value:.0%} utilisation."
    )
    add("")
    add("| tier | cores | nodes | network in Gbit/s | network out Gbit/s | notes |")
    add("|---|---:|---:|---:|---:|---|")
    for t in tiers:
        add(
            f"| {t.name} | {_num(t.cores)} | {t.nodes:,} | {_num(t.net_in_gbit)} | {_num(t.net_out_gbit)} | {t.detail} |"
        )
    add(f"| **total** | **{_num(result.total_cores)}** | **{result.total_nodes:,}** | | | |")
    add("")
    add("## What dominates the cost")
    add("")
    total = result.total_cores
    by_class: dict[str, float] = {}
    for by in result.demand_cores.values():
        for cls, c in by.items():
            by_class[cls] = by_class.get(cls, 0.0) + c
    add("| traffic | cores | share |")
    add("|---|---:|---:|")
    for cls, c in sorted(by_class.items(), key=lambda kv: -kv[1]):
        add(f"| {cls} | {_num(c)} | {c / total:.1%} |")
    add("")
    add("Largest single items (tier, traffic):")
    add("")
    for tier, cls, c in result.dominant()[:5]:
        add(f"- {tier}, {cls}: {_num(c)} cores ({c / total:.1%})")
    add("")
    add(
        f"Redis memory: {_num(result.redis_memory_gb['with replicas'] / 1024)} TiB with replicas "
        f"({_num(result.redis_memory_gb['timelines'] / 1024)} TiB of timelines for "
        f"{_num(result.timeline_users / 1e6)}M users x {inputs.timeline_entries.value:.0f} entries, "
        f"{_num(result.redis_memory_gb['tweet bodies'] / 1024)} TiB of tweet bodies, per copy)."
    )
    add("")
    add("## Write amplification of a post")
    add("")
    add(
        f"Timelines pushed per post: {_num(result.pushed_per_post)} (seeded graph, posts spread over every user, "
        f"celebrities pulled, x active share {inputs.active_follower_share.value:g}). Timeline entry writes per post: "
        f"{_num(result.redis_writes_per_post)} in Redis (primary + replicas) and {_num(result.cql_writes_per_post)} "
        f"in ScyllaDB (durable copy x{inputs.cql_timeline_copy.value:g}, RF {inputs.rf.value:.0f}); "
        f"{_num(result.entries_per_s / 1e6)}M timeline entries/s delivered at peak (follow backfills included)."
    )
    add("")
    if inputs.seed_note:
        add(inputs.seed_note)
        add("")
    if inputs.follower_bands:
        add(f"Follower distribution ({inputs.follower_bands_source}):")
        add("")
        add("| followers | share of authors | mean followers | share of pushed entries |")
        add("|---|---:|---:|---:|")
        pushed_total = sum(b.authors_share * b.mean_followers for b in inputs.follower_bands if "pulled" not in b.label)
        for b in inputs.follower_bands:
            share = (
                0.0 if "pulled" in b.label or not pushed_total else b.authors_share * b.mean_followers / pushed_total
            )
            who = "share of users" if "pulled" in b.label else ""
            add(
                f"| {b.label} | {b.authors_share:.2%}{' (' + who + ')' if who else ''} | "
                f"{_num(b.mean_followers)} | {share:.1%} |"
            )
        add("")
    add("## CPU per request by component (as measured, before replication factors)")
    add("")
    add("| traffic | component | ms | source |")
    add("|---|---|---:|---|")
    post_now = post_split(inputs, result.pushed_per_post)
    rows: list[tuple[str, Mapping[str, float], str, bool]] = [
        ("feed read", inputs.read_cpu.ms, inputs.read_cpu.source, inputs.read_cpu.measured),
        (
            f"post incl. fan-out to {_num(result.pushed_per_post)} timelines",
            post_now,
            (inputs.entry_cpu.source if inputs.entry_cpu else inputs.post_cpu.source)
            + f"; fan-out components scaled from {_num(inputs.bench_followers_per_post.value)} followers per bench post",
            inputs.entry_cpu is not None or inputs.post_cpu.measured,
        ),
        ("like", inputs.like_cpu.ms, inputs.like_cpu.source, inputs.like_cpu.measured),
        ("follow (before backfill)", inputs.follow_cpu.ms, inputs.follow_cpu.source, inputs.follow_cpu.measured),
    ]
    for name, split, source, measured in rows:
        shown = source if measured else f"**{source}**"
        for i, (component, ms) in enumerate(sorted(split.items(), key=lambda kv: -kv[1])):
            add(f"| {name if i == 0 else ''} | {component} | {ms:.2f} | {shown if i == 0 else ''} |")
        add(f"| | *total* | {sum(split.values()):.2f} | |")
    add("")
    add("Each row comes from the newest result file holding the scenario and, within it, from the fastest")
    add("rate with at most 1% errors (the stack's fixed background CPU weighs least there).")
    add("")
    add("Replication: CPU measured at RF 1 on ScyllaDB/Cassandra is multiplied by RF for writes and by the")
    add("replicas a LOCAL_QUORUM read asks for reads; Kafka by RF; Redis writes by 1 + replicas.")
    add("")
    add("## Inputs")
    add("")
    add("| input | value | unit | source |")
    add("|---|---:|---|---|")
    for name, fig in inputs.figures():
        source = fig.source if fig.measured else f"**{fig.source}**"
        add(f"| {name} | {_value(fig)} | {fig.unit} | {source} |")
    add("")
    unmeasured = [f"{name}: {fig.source.split('measure: ')[-1]}" for name, fig in inputs.figures() if _to_measure(fig)]
    unmeasured += [f"{name} (CPU by component)" for name, s in inputs.splits() if not s.measured]
    if inputs.entry_cpu is None:
        unmeasured.append("entry_cpu: CPU per delivered timeline entry, by component")
    idle = [t.name for t in tiers if t.cores == 0]
    if idle:
        unmeasured.append(f"CPU of {', '.join(idle)} (no split attributes any yet: sized at the minimum)")
    choices = [name for name, fig in inputs.figures() if not fig.measured and not _to_measure(fig)]
    add("## To measure next")
    add("")
    add(
        "The bench does not report these yet; each is an assumption above. `make capacity` picks them up "
        "from bench/results/*.json when they appear (`fanout.cpu_ms_per_entry_by_component`, "
        "`fanout.cpu_ms_per_post_by_component` (or the same in a `scenarios.<x>_fanout`), "
        "`fanout.followers_per_post`, `fanout.active_follower_share`, `fanout.cql_timeline_copy`, "
        "a `scenarios.<x>_like` and `scenarios.<x>_follow` step, `machine.replication`, and the net or by-component CPU "
        "of every scenario):"
    )
    add("")
    for name in unmeasured:
        add(f"- {name}")
    add("")
    add(f"Load and sizing choices (assumptions no benchmark measures): {', '.join(choices)}.")
    add("")
    return "\n".join(lines)


def _to_measure(fig: Figure) -> bool:
    return not fig.measured and "measure:" in fig.source


def main(argv: Sequence[str] | None = None, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-gather", action="store_true", help="do not measure on the running stack")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(list(argv) if argv is not None else None)
    results = Results.load(result_files())
    manifest = json.loads(MANIFEST.read_text()) if MANIFEST.is_file() else None
    base = build_inputs(results, manifest, {})
    measured, note = measured_figures(not args.no_gather, int(base.timeline_entries.value))
    inputs = build_inputs(results, manifest, measured) if measured else base
    result = plan(inputs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(inputs, result, note, now().isoformat(timespec="seconds")))
    print(f"capacity: {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out} ({note})")
    for t in (result.tiers[name] for name in ALL_TIERS):
        print(f"  {t.name:<20} {t.cores:>12,.0f} cores {t.nodes:>8,} nodes  {t.detail}")
    print(f"  {'total':<20} {result.total_cores:>12,.0f} cores {result.total_nodes:>8,} nodes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
