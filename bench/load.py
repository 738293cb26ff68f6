"""Drivers for the load tools, and latency statistics.

HTTP: bench/loadgen (Go, open loop, latency measured from each request's
scheduled start). gRPC: ghz with a fixed request rate and enough workers
that the rate, not the workers, sets the pace.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GO_BIN = ROOT / ".deps" / "go" / "bin"
LOADGEN = GO_BIN / "loadgen"
GHZ = GO_BIN / "ghz"
DESCRIPTOR = ROOT / "generated" / "chirp.binpb"


@dataclass
class Stats:
    offered_rps: float
    achieved_rps: float
    requests: int
    errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    # CPU time the whole local stack (services, workers, Envoy, Cassandra, Kafka,
    # Redis) spent per successful request during the run; steadier than latency
    # on a shared machine, so it is what before/after comparisons quote.
    stack_cpu_ms_per_req: float | None = None
    # The same split by component (feed_svc, tweet_svc, envoy, cassandra, ...), largest first.
    cpu_ms_per_req_by_component: dict[str, float] | None = None

    def row(self) -> dict[str, Any]:
        return asdict(self)


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def stats(offered: float, elapsed: float, latencies_ms: list[float], ok: list[bool]) -> Stats:
    values = sorted(latencies_ms)
    good = sum(ok)
    return Stats(
        offered_rps=offered,
        achieved_rps=round(good / elapsed, 1) if elapsed else 0.0,
        requests=len(ok),
        errors=len(ok) - good,
        p50_ms=round(percentile(values, 0.50), 2),
        p90_ms=round(percentile(values, 0.90), 2),
        p99_ms=round(percentile(values, 0.99), 2),
        p999_ms=round(percentile(values, 0.999), 2),
        max_ms=round(values[-1], 2) if values else float("nan"),
    )


def _with_children(pid: str) -> list[str]:
    """The process and its children (Envoy runs under a small supervisor)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return [pid, *children]


def stack_cpu_seconds() -> dict[str, float]:
    """utime + stime of every process `make up` started (from its pid files), by
    component (instances of one service summed)."""
    ticks: dict[str, int] = {}
    for pid_file in (ROOT / ".state" / "run").glob("*.json"):
        component = pid_file.stem.rsplit("-", 1)[0]
        for pid in _with_children(json.loads(pid_file.read_text())["pid"]):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # not running
            ticks[component] = ticks.get(component, 0) + int(fields[11]) + int(fields[12])
    hz = os.sysconf("SC_CLK_TCK")
    return {name: t / hz for name, t in ticks.items()}


def with_cpu(run: Stats, cpu_before: dict[str, float]) -> Stats:
    good = run.requests - run.errors
    if good > 0:
        after = stack_cpu_seconds()
        spent = {name: after[name] - cpu_before.get(name, 0.0) for name in after}
        run.stack_cpu_ms_per_req = round(sum(spent.values()) * 1000 / good, 2)
        run.cpu_ms_per_req_by_component = {
            name: round(seconds * 1000 / good, 2) for name, seconds in sorted(spent.items(), key=lambda kv: -kv[1])
        }
    return run


def http_load(targets: list[dict[str, Any]], rate: float, seconds: float) -> Stats:
    cpu_before = stack_cpu_seconds()
    with tempfile.TemporaryDirectory() as tmp:
        targets_path, out = Path(tmp) / "targets.json", Path(tmp) / "out.json"
        targets_path.write_text(json.dumps(targets))
        subprocess.run(
            [
                str(LOADGEN),
                "-targets",
                str(targets_path),
                "-rate",
                str(rate),
                "-duration",
                f"{seconds}s",
                "-out",
                str(out),
            ],
            check=True,
        )
        result = json.loads(out.read_text())
    statuses = result["statuses"]
    ok = [200 <= s < 300 for s in statuses]
    latencies = [us / 1000 for us, s in zip(result["latencies_us"], statuses, strict=True) if s != -1]
    return with_cpu(stats(rate, result["duration_s"], latencies, ok), cpu_before)


def grpc_load(
    call: str, data: dict[str, Any], metadata: dict[str, str], target: str, rate: float, seconds: float
) -> Stats:
    """ghz takes one metadata set per run, so the gRPC load acts as one user."""
    cpu_before = stack_cpu_seconds()
    with tempfile.TemporaryDirectory() as tmp:
        meta_path, out = Path(tmp) / "metadata.json", Path(tmp) / "out.csv"
        meta_path.write_text(json.dumps(metadata))
        subprocess.run(
            [
                str(GHZ), "--insecure", "--protoset", str(DESCRIPTOR), "--call", call,
                "-d", json.dumps(data), "-M", str(meta_path),
                "--rps", str(int(rate)), "-z", f"{seconds}s", "-c", str(max(50, int(rate / 10))),
                "--connections", "4", "-O", "csv", "-o", str(out), target,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        lines = [line for line in out.read_text().splitlines() if line.strip()]  # ghz starts with a blank line
        rows = list(csv.DictReader(lines))
    latencies = [float(r["duration (ms)"]) for r in rows]
    ok = [r["status"] == "OK" for r in rows]
    return with_cpu(stats(rate, seconds, latencies, ok), cpu_before)
