"""Drivers for the load tools, latency statistics and the stack's CPU.

HTTP: bench/loadgen (Go, open loop, latency measured from each request's
scheduled start). gRPC: ghz in async mode at a fixed request rate, so a slow
answer does not hold back the next request (open loop too).

CPU comes from /proc for every process the stack started: "gross" is all of
it during a load step, "net" subtracts what the same components burn with no
traffic at all (measured once before the load steps), so per-request figures
do not charge the idle stack's pollers to the requests.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import idle

ROOT = Path(__file__).resolve().parent.parent
GO_BIN = ROOT / ".deps" / "go" / "bin"
LOADGEN = GO_BIN / "loadgen"
GHZ = GO_BIN / "ghz"
DESCRIPTOR = ROOT / "generated" / "chirp.binpb"
REQUEST_TIMEOUT_S = 5.0

# What became of one request.
OK, SHED, ERROR, FAILED = "ok", "shed", "error", "failed"
# Answers that mean "not now, come back later": what a stack shedding load sends.
SHED_HTTP = frozenset({429, 503})
# Envoy turns 429, 502, 503 and 504 into UNAVAILABLE for gRPC callers, so a gRPC
# shed count also holds timeouts inside the stack; their latency tells them apart.
SHED_GRPC = frozenset({"Unavailable", "ResourceExhausted"})

# Saturation: the highest step of the ladder (rates in increasing order) before
# the first one that fails this rule.
MAX_ERROR_RATIO = 0.01
SATURATION_P99_MS = 100.0
SATURATION_RULE = (
    f"highest rate of the ladder, before the first step that fails, with under {MAX_ERROR_RATIO:.0%} "
    f"of requests not answered 2xx and p99 at most {SATURATION_P99_MS:.0f} ms"
)
# An excess request counts as shed fast when its 429/503 came back within this.
FAST_SHED_MS = 50.0


@dataclass
class Outcome:
    """Every request of one load step (HTTP: in the order they were scheduled; gRPC:
    as ghz lists them), and the stack's CPU while it ran."""

    offered_rps: float
    seconds: float  # how long requests were sent for
    latencies_ms: list[float]  # one per request (0 for one never sent)
    kinds: list[str]  # OK, SHED, ERROR or FAILED per request
    codes: list[str]  # the raw status per request (HTTP code, gRPC code name, "none", "unsent")
    cpu_seconds: dict[str, float] = field(default_factory=dict)  # by component, during the step
    wall_seconds: float = 0.0  # the span cpu_seconds covers
    restarted: list[str] = field(default_factory=list)  # processes left out of cpu_seconds


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
    # The same with the idle stack's CPU over the step's duration taken off.
    net_stack_cpu_ms_per_req: float | None = None
    net_cpu_ms_per_req_by_component: dict[str, float] | None = None
    # Answers other than 2xx, by status ("none": no answer in time, "unsent": the
    # load generator's in-flight cap was reached).
    statuses: dict[str, int] | None = None
    # Stack processes that started or stopped during the step (a restart on a shared
    # stack): their CPU is left out, so the figures above are too low.
    restarted: list[str] | None = None
    step: str = "ladder"  # or "overload", "cold start"
    overload: dict[str, Any] | None = None

    def row(self) -> dict[str, Any]:
        return asdict(self)


def percentile(sorted_values: Sequence[float], q: float) -> float:
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


# ---- what became of a request -----------------------------------------------------------


def http_kind(status: int) -> str:
    if 200 <= status < 300:
        return OK
    if status in SHED_HTTP:
        return SHED
    return ERROR if status > 0 else FAILED


def http_code(status: int) -> str:
    """loadgen writes 0 for a request with no answer (timeout, refused) and -1 for one never sent."""
    return {0: "none", -1: "unsent"}.get(status, str(status))


def grpc_kind(status: str, error: str) -> str:
    if status == "OK":
        return OK
    # ghz reports a refused connection as UNAVAILABLE too; that is no answer at all.
    if status in ("DeadlineExceeded", "Canceled") or "connection error" in error:
        return FAILED
    return SHED if status in SHED_GRPC else ERROR


# ---- CPU -------------------------------------------------------------------------------


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
                fields = idle.stat_fields(Path(f"/proc/{pid}/stat"))
            except OSError:
                continue  # not running
            ticks[component] = ticks.get(component, 0) + int(fields[idle.UTIME]) + int(fields[idle.STIME])
    hz = os.sysconf("SC_CLK_TCK")
    return {name: t / hz for name, t in ticks.items()}


def cpu_spent(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    return {name: after[name] - before.get(name, 0.0) for name in after}


def net_spent(spent: Mapping[str, float], idle_cores: Mapping[str, float], wall_seconds: float) -> dict[str, float]:
    """CPU seconds a step cost beyond what the idle stack burns over the same span.
    A component can come out slightly negative: noise, kept so the sum stays honest."""
    return {name: spent.get(name, 0.0) - idle_cores.get(name, 0.0) * wall_seconds for name in {*spent, *idle_cores}}


def per_request_ms(spent: Mapping[str, float], good: int) -> dict[str, float]:
    """CPU ms per successful request by component, largest first."""
    if good <= 0:
        return {}
    # "+ 0.0" prints a rounded -0.0 as 0.0.
    return {name: round(s * 1000 / good, 2) + 0.0 for name, s in sorted(spent.items(), key=lambda kv: -kv[1])}


def spent_by_component(before: Sequence[idle.Sample], after: Sequence[idle.Sample]) -> dict[str, float]:
    """CPU seconds by component between two samples, counting only processes that
    ran through the whole span (a restarted one's counter starts again at zero)."""
    start = {(s.pid, s.start): s.cpu_seconds for s in before}
    spent: dict[str, float] = {}
    for s in after:
        was = start.get((s.pid, s.start))
        if was is not None:
            name = idle.component_of(s.name)
            spent[name] = spent.get(name, 0.0) + s.cpu_seconds - was
    return spent


def with_cpu(run: Stats, cpu_before: Mapping[str, float]) -> Stats:
    """Gross CPU per successful request since `cpu_before` (stack_cpu_seconds())."""
    good = run.requests - run.errors
    if good > 0:
        spent = cpu_spent(cpu_before, stack_cpu_seconds())
        run.stack_cpu_ms_per_req = round(sum(spent.values()) * 1000 / good, 2)
        run.cpu_ms_per_req_by_component = per_request_ms(spent, good)
    return run


def summarize(outcome: Outcome, idle_cores: Mapping[str, float] | None = None, step: str = "ladder") -> Stats:
    """Latency, errors and CPU per successful request (gross, and net of `idle_cores`)."""
    sent = [ms for ms, code in zip(outcome.latencies_ms, outcome.codes, strict=True) if code != "unsent"]
    ok = [kind == OK for kind in outcome.kinds]
    result = stats(outcome.offered_rps, outcome.seconds, sent, ok)
    result.step = step
    result.restarted = outcome.restarted or None
    result.statuses = dict(
        sorted(Counter(code for code, kind in zip(outcome.codes, outcome.kinds, strict=True) if kind != OK).items())
    )
    good = sum(ok)
    if good > 0 and outcome.cpu_seconds:
        gross = per_request_ms(outcome.cpu_seconds, good)
        result.stack_cpu_ms_per_req = round(sum(outcome.cpu_seconds.values()) * 1000 / good, 2)
        result.cpu_ms_per_req_by_component = gross
        if idle_cores is not None:
            net = net_spent(outcome.cpu_seconds, idle_cores, outcome.wall_seconds)
            result.net_stack_cpu_ms_per_req = round(sum(net.values()) * 1000 / good, 2)
            result.net_cpu_ms_per_req_by_component = per_request_ms(net, good)
    return result


# ---- saturation and overload ---------------------------------------------------------------


def within_capacity(step: Stats) -> bool:
    return step.requests > 0 and step.errors / step.requests < MAX_ERROR_RATIO and step.p99_ms <= SATURATION_P99_MS


def saturation(steps: Sequence[Stats]) -> Stats | None:
    """The step at saturation (see SATURATION_RULE); None when even the lowest rate fails."""
    found: Stats | None = None
    for step in sorted(steps, key=lambda s: s.offered_rps):
        if not within_capacity(step):
            break
        found = step
    return found


def overload_stats(outcome: Outcome, peak_rps: float | None) -> dict[str, Any]:
    """How a step above saturation was served: goodput against the peak, how much
    was shed (429/503) and how fast, and how much of the excess (every request not
    served) got a fast "no" rather than a slow one or none. `peak_rps`: goodput at
    saturation (None when no step was within capacity)."""
    seconds = outcome.seconds or 1.0
    good = outcome.kinds.count(OK)
    shed_ms = sorted(ms for ms, kind in zip(outcome.latencies_ms, outcome.kinds, strict=True) if kind == SHED)
    refused_ms = sorted(
        ms
        for ms, kind, code in zip(outcome.latencies_ms, outcome.kinds, outcome.codes, strict=True)
        if kind != OK and code != "unsent"
    )
    excess = len(outcome.kinds) - good
    fast = sum(1 for ms in shed_ms if ms <= FAST_SHED_MS)
    goodput = good / seconds
    return {
        "peak_rps": None if peak_rps is None else round(peak_rps, 1),
        "goodput_rps": round(goodput, 1),
        "goodput_vs_peak": round(goodput / peak_rps, 3) if peak_rps else None,
        "shed": len(shed_ms),
        "shed_per_s": round(len(shed_ms) / seconds, 1),
        "shed_p50_ms": round(percentile(shed_ms, 0.50), 2) if shed_ms else None,
        "shed_p99_ms": round(percentile(shed_ms, 0.99), 2) if shed_ms else None,
        # Every answer other than 2xx, shed or not, and requests that got none (at their timeout).
        "non_2xx_p50_ms": round(percentile(refused_ms, 0.50), 2) if refused_ms else None,
        "non_2xx_p99_ms": round(percentile(refused_ms, 0.99), 2) if refused_ms else None,
        "other_errors": excess - len(shed_ms),
        "excess": excess,
        "excess_shed_within_50ms": round(fast / excess, 3) if excess else None,
    }


def windows(outcome: Outcome, window_seconds: float = 10.0) -> list[dict[str, Any]]:
    """Errors and latency per window of the step, by each request's scheduled start
    (requests are scheduled evenly at the offered rate, in order)."""
    per_window = max(1, round(outcome.offered_rps * window_seconds))
    rows = []
    for start in range(0, len(outcome.kinds), per_window):
        kinds = outcome.kinds[start : start + per_window]
        codes = outcome.codes[start : start + per_window]
        sent = sorted(
            ms
            for ms, code in zip(outcome.latencies_ms[start : start + per_window], codes, strict=True)
            if code != "unsent"
        )
        errors = Counter(code for code, kind in zip(codes, kinds, strict=True) if kind != OK)
        rows.append(
            {
                "from_s": round(start / outcome.offered_rps, 1),
                "to_s": round((start + len(kinds)) / outcome.offered_rps, 1),
                "requests": len(kinds),
                "errors": sum(errors.values()),
                "statuses": dict(sorted(errors.items())),
                "p50_ms": round(percentile(sent, 0.50), 2),
                "p99_ms": round(percentile(sent, 0.99), 2),
                "max_ms": round(sent[-1], 2) if sent else float("nan"),
            }
        )
    return rows


# ---- load generators -------------------------------------------------------------------------


def http_run(targets: list[dict[str, Any]], rate: float, seconds: float) -> Outcome:
    before, started = idle.sample(), time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        targets_path, out = Path(tmp) / "targets.json", Path(tmp) / "out.json"
        targets_path.write_text(json.dumps(targets))
        subprocess.run(
            [
                str(LOADGEN), "-targets", str(targets_path), "-rate", str(rate), "-duration", f"{seconds}s",
                "-timeout", f"{REQUEST_TIMEOUT_S}s", "-out", str(out),
            ],
            check=True,
        )  # fmt: skip
        result = json.loads(out.read_text())
    after, wall = idle.sample(), time.monotonic() - started
    statuses: list[int] = result["statuses"]
    return Outcome(
        offered_rps=rate,
        seconds=result["duration_s"],
        latencies_ms=[us / 1000 for us in result["latencies_us"]],
        kinds=[http_kind(s) for s in statuses],
        codes=[http_code(s) for s in statuses],
        cpu_seconds=spent_by_component(before, after),
        wall_seconds=wall,
        restarted=idle.changed(before, after),
    )


def grpc_run(
    call: str, data: dict[str, Any], metadata: dict[str, str], target: str, rate: float, seconds: float
) -> Outcome:
    """ghz takes one metadata set per run, so the gRPC load acts as one user.

    At the end of its duration ghz waits for the calls still in flight
    (`--duration-stop wait`, as bench/loadgen does for HTTP). Its default closes its
    connections under them, and each such call was counted as an UNAVAILABLE the
    stack never sent ("error reading from server: ... use of closed network
    connection"): the one error of run stop38's gRPC steps at 400 and 600 req/s."""
    before, started = idle.sample(), time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        meta_path, out = Path(tmp) / "metadata.json", Path(tmp) / "out.csv"
        meta_path.write_text(json.dumps(metadata))
        subprocess.run(
            [
                str(GHZ), "--insecure", "--protoset", str(DESCRIPTOR), "--call", call,
                "-d", json.dumps(data), "-M", str(meta_path), "--async",
                "--rps", str(int(rate)), "-z", f"{seconds}s", "-c", str(max(50, int(rate / 10))),
                "-t", f"{REQUEST_TIMEOUT_S}s", "--duration-stop", "wait", "--connections", "4",
                "-O", "csv", "-o", str(out), target,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        lines = [line for line in out.read_text().splitlines() if line.strip()]  # ghz starts with a blank line
        rows = list(csv.DictReader(lines))
    after, wall = idle.sample(), time.monotonic() - started
    return Outcome(
        offered_rps=rate,
        seconds=seconds,
        latencies_ms=[float(r["duration (ms)"]) for r in rows],
        kinds=[grpc_kind(r["status"], r.get("error") or "") for r in rows],
        codes=[r["status"] for r in rows],
        cpu_seconds=spent_by_component(before, after),
        wall_seconds=wall,
        restarted=idle.changed(before, after),
    )


def http_load(targets: list[dict[str, Any]], rate: float, seconds: float) -> Stats:
    return summarize(http_run(targets, rate, seconds))


def grpc_load(
    call: str, data: dict[str, Any], metadata: dict[str, str], target: str, rate: float, seconds: float
) -> Stats:
    return summarize(grpc_run(call, data, metadata, target, rate, seconds))
