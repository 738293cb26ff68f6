"""What the stack costs doing nothing: CPU of every process `make up` started,
read from /proc over a window, summed by component and printed in cores.

    python -m bench.idle [--seconds 60] [--runs 3] [--quiet-only [--tries 20] [--max-calls N]] [--per-process]
                         [--threads COMPONENTS] [--json FILE]

A component is a process name without its instance number (feed_svc-0 and
feed_svc-1 are feed_svc); Envoy's supervisor counts with Envoy. With several
runs it prints each run, then per component the minimum and the median over
the runs: the machine is shared, and other engineers' test traffic lands in
some windows, so the minimum is the idle figure and the median says how steady
it is. Requests through the edge during each window (Envoy's downstream
counter), calls the services handled during it (their grpc_server_handled_total:
tests and tools on the shared stack call services directly, past the edge) and
processes that restarted in it are printed next to each run, so a busy window
can be told from an idle one; with --quiet-only such windows (and, with
--max-calls, those with more service calls: an idle stack makes some itself,
e.g. rank_svc hydrating its list every CHIRP_RANK_INTERVAL_SECONDS) are left
out of the summary and more are measured, up to --tries in all. `--threads cassandra,kafka` also
splits those components' CPU by thread name (numbers folded: Native-Transport-Requests-#),
which tells a JVM's or a Python process's idle work apart.

Next to the CPU it prints how many times a second each component's threads were
put on a CPU (thread runs: wake-ups, and returns after preemption), and, first, what
one bare sleep and wake of a Python thread costs on this host. An idle stack's
CPU rises and falls with that cost, which differs between hosts of the same kind
and on one host over a day, several times over; its thread runs a second do not,
so those are what to compare across hosts (threads that end within a window are
not counted).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from infra import topology

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / ".state" / "run"
PROC = Path("/proc")
CLK_TCK = os.sysconf("SC_CLK_TCK")
# The wake probe: 200 sleeps of 5 ms, one second.
WAKE_PROBE_CYCLES = 200
WAKE_PROBE_PAUSE_S = 0.005
ENVOY_STATS = f"http://{topology.HOST}:{topology.ENVOY_ADMIN_PORT}/stats?filter=downstream_rq_total$"


@dataclass(frozen=True)
class Sample:
    """CPU seconds (user + system, every thread) of one process, how many times each
    of its threads was put on a CPU (thread_runs), and its start time (to spot a new pid)."""

    name: str  # instance name, e.g. feed_svc-1, or envoy
    pid: int
    start: str
    cpu_seconds: float
    runs: Mapping[str, int] = field(default_factory=dict)  # by thread id (thread_runs)


def component_of(name: str) -> str:
    """feed_svc-1 -> feed_svc; a name without an instance number is its own component."""
    base, _, ordinal = name.rpartition("-")
    return base if base and ordinal.isdigit() else name


# Fields of /proc/<pid>/stat (and of a thread's) counted after the command name,
# which is in parentheses and may itself hold spaces or ")": see stat_fields.
UTIME, STIME, NICE = 11, 12, 16


def stat_fields(stat: Path) -> list[str]:
    """The fields of a process's or thread's stat file after its command name."""
    return stat.read_text().rsplit(")", 1)[1].split()


def _stat_fields(pid: int) -> list[str] | None:
    try:
        return stat_fields(Path(f"/proc/{pid}/stat"))
    except OSError:
        return None


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def thread_runs(pid: int, proc: Path = PROC) -> dict[str, int]:
    """Times each thread of one process was put on a CPU so far, by thread id: the
    third field of its schedstat, a wake-up or a return after preemption. An idle
    stack pays per wake-up (a timer, a poll that times out, a heartbeat), and what
    one costs depends on the host (`wake_cost_us`), so this count is the idle work
    that does not depend on the host. Empty if the process is gone."""
    out: dict[str, int] = {}
    try:
        tids = os.listdir(proc / str(pid) / "task")
    except OSError:
        return out
    for tid in tids:
        try:
            out[tid] = int((proc / str(pid) / "task" / tid / "schedstat").read_text().split()[2])
        except (OSError, IndexError, ValueError):
            continue  # the thread ended meanwhile
    return out


def wake_cost_us(cycles: int = WAKE_PROBE_CYCLES, pause: float = WAKE_PROBE_PAUSE_S) -> float:
    """CPU microseconds one Python thread spends per sleep and wake (`time.sleep`,
    `pause` apart) on this host: what a bare wake-up costs here. Hosts differ, and
    one host over a day (docs/BENCHMARKS.md, "Idle counted in thread runs"); the
    thread runs of an idle stack do not."""
    if cycles < 1:
        raise ValueError(f"cycles must be at least 1, got {cycles}")
    started = time.thread_time()
    for _ in range(cycles):
        time.sleep(pause)
    return (time.thread_time() - started) / cycles * 1e6


def sample(with_runs: bool = False) -> list[Sample]:
    """Every running stack process and its direct children (Envoy runs under a supervisor);
    `with_runs` also reads every thread's schedstat (a thousand files or so)."""
    found: list[Sample] = []
    for pid_file in sorted(RUN.glob("*.json")):
        try:
            pid = int(json.loads(pid_file.read_text())["pid"])
        except (OSError, ValueError, KeyError):
            continue
        for p in [pid, *_children(pid)]:
            fields = _stat_fields(p)
            if fields is None:
                continue
            # After the ")": state is field 0, utime 11, stime 12, starttime 19.
            cpu = (int(fields[UTIME]) + int(fields[STIME])) / CLK_TCK
            found.append(Sample(pid_file.stem, p, fields[19], cpu, thread_runs(p) if with_runs else {}))
    return found


def _thread_times(pid: int) -> dict[tuple[int, str], tuple[str, float]]:
    """CPU seconds of each thread of one process, by (pid, tid): (name with numbers folded into #, seconds)."""
    out: dict[tuple[int, str], tuple[str, float]] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            text = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        name = re.sub(r"\d+", "#", text[text.index("(") + 1 : text.rindex(")")])
        fields = text.rsplit(")", 1)[1].split()  # as stat_fields, from the text read once
        out[(pid, tid)] = (name, (int(fields[UTIME]) + int(fields[STIME])) / CLK_TCK)
    return out


def thread_sample(components: Sequence[str]) -> dict[tuple[int, str], tuple[str, float]]:
    """Every thread of every process of these components, named "component: thread"."""
    out: dict[tuple[int, str], tuple[str, float]] = {}
    for s in sample():
        component = component_of(s.name)
        if component in components:
            out.update({key: (f"{component}: {name}", cpu) for key, (name, cpu) in _thread_times(s.pid).items()})
    return out


def cores_by_thread(
    before: Mapping[tuple[int, str], tuple[str, float]],
    after: Mapping[tuple[int, str], tuple[str, float]],
    seconds: float,
) -> dict[str, float]:
    """Cores per thread name; a thread started within the window counts whole
    (a thread that ended in it is missed: its time is gone from /proc)."""
    out: dict[str, float] = {}
    for key, (name, cpu) in after.items():
        spent = cpu - before[key][1] if key in before else cpu
        if spent > 0:
            out[name] = out.get(name, 0.0) + spent / seconds
    return out


def cores_by_process(before: Sequence[Sample], after: Sequence[Sample], seconds: float) -> dict[str, float]:
    """Cores used per instance name over the window. A process that is not in
    both samples with the same start time (started, stopped or restarted in
    between) is left out: its share of the window is unknown."""
    start = {(s.pid, s.start): s.cpu_seconds for s in before}
    used: dict[str, float] = {}
    for s in after:
        was = start.get((s.pid, s.start))
        if was is not None:
            used[s.name] = used.get(s.name, 0.0) + (s.cpu_seconds - was) / seconds
    return used


def runs_by_process(before: Sequence[Sample], after: Sequence[Sample], seconds: float) -> dict[str, float]:
    """Thread runs a second per instance name over the window, thread by thread: a
    thread started within the window counts whole, one that ended in it is missed
    (its count is gone from /proc), as in cores_by_thread. Processes as in
    cores_by_process."""
    start = {(s.pid, s.start): s.runs for s in before}
    out: dict[str, float] = {}
    for s in after:
        was = start.get((s.pid, s.start))
        if was is not None:
            ran = sum(max(0, n - was.get(tid, 0)) for tid, n in s.runs.items())
            out[s.name] = out.get(s.name, 0.0) + ran / seconds
    return out


def changed(before: Sequence[Sample], after: Sequence[Sample]) -> list[str]:
    """Instance names whose processes are not the same at both ends of the window."""
    a = {(s.name, s.pid, s.start) for s in before}
    b = {(s.name, s.pid, s.start) for s in after}
    return sorted({name for name, _pid, _start in a ^ b})


def by_component(per_process: Mapping[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, cores in per_process.items():
        out[component_of(name)] = out.get(component_of(name), 0.0) + cores
    return out


def summarize(runs: Sequence[Mapping[str, float]]) -> dict[str, tuple[float, float]]:
    """Per component (and "total"): (minimum, median) over the runs; a component
    missing from a run counts as absent there, not as zero."""
    names = sorted({n for run in runs for n in run})
    out = {n: (min(v), statistics.median(v)) for n in names if (v := [run[n] for run in runs if n in run])}
    totals = [sum(run.values()) for run in runs]
    if totals:
        out["total"] = (min(totals), statistics.median(totals))
    return out


def edge_requests() -> int | None:
    """Requests Envoy has taken on its listeners so far (admin excluded); None if it does not answer."""
    try:
        with urllib.request.urlopen(ENVOY_STATS, timeout=2) as reply:
            text = reply.read().decode()
    except OSError:
        return None
    total = 0
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.startswith("http.") and not name.startswith("http.admin.") and value.strip().isdigit():
            total += int(value)
    return total


def service_calls() -> int | None:
    """RPCs the service instances have handled so far (health checks are not counted
    there); None if no instance answers."""
    total, answered = 0, False
    for inst in topology.all_instances():
        try:
            with urllib.request.urlopen(f"http://{topology.HOST}:{inst.metrics_port}/metrics", timeout=2) as reply:
                text = reply.read().decode()
        except OSError:
            continue
        answered = True
        for line in text.splitlines():
            if line.startswith("grpc_server_handled_total{"):
                total += int(float(line.rsplit(" ", 1)[1]))
    return total if answered else None


@dataclass
class Window:
    seconds: float
    per_process: dict[str, float]
    requests: int | None  # through the edge during the window
    calls: int | None  # handled by the services during the window (edge and direct)
    restarted: list[str]
    threads: dict[str, float]  # cores per thread name of the --threads components
    runs: dict[str, float] = field(default_factory=dict)  # thread runs a second per instance name (thread_runs)


def measure(seconds: float, threads_of: Sequence[str] = ()) -> Window:
    threads_before = thread_sample(threads_of) if threads_of else {}
    calls_before, rq_before, before, t0 = service_calls(), edge_requests(), sample(with_runs=True), time.monotonic()
    time.sleep(seconds)
    after, elapsed, rq_after, calls_after = (
        sample(with_runs=True),
        time.monotonic() - t0,
        edge_requests(),
        service_calls(),
    )
    threads_after = thread_sample(threads_of) if threads_of else {}
    requests = rq_after - rq_before if rq_before is not None and rq_after is not None else None
    calls = calls_after - calls_before if calls_before is not None and calls_after is not None else None
    threads = cores_by_thread(threads_before, threads_after, elapsed)
    return Window(
        elapsed,
        cores_by_process(before, after, elapsed),
        requests,
        calls,
        changed(before, after),
        threads,
        runs_by_process(before, after, elapsed),
    )


def _table(values: Mapping[str, float], runs: Mapping[str, float] | None = None) -> str:
    """One line per name, most CPU first: cores, and with `runs` thread runs a second."""
    rows = sorted(values.items(), key=lambda kv: -kv[1])
    if runs is None:
        return "\n".join(f"  {name:<32} {cores:8.4f}" for name, cores in rows)
    return "\n".join(f"  {name:<32} {cores:8.4f} {runs.get(name, 0.0):8.1f} runs/s" for name, cores in rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each window")
    parser.add_argument("--runs", type=int, default=1, help="windows to summarize")
    parser.add_argument(
        "--quiet-only",
        action="store_true",
        help="summarize only windows with no edge request and no restart",
    )
    parser.add_argument(
        "--max-calls", type=int, help="with --quiet-only: also leave out windows with more service calls than this"
    )
    parser.add_argument("--tries", type=int, default=20, help="with --quiet-only: windows to measure at most")
    parser.add_argument("--per-process", action="store_true", help="also print every instance")
    parser.add_argument(
        "--threads", default="", metavar="COMPONENTS", help="also split these components (comma-separated) by thread"
    )
    parser.add_argument("--json", type=Path, help="write every window and the summary here")
    args = parser.parse_args(argv)
    if not any(RUN.glob("*.json")):
        print(f"no stack processes found under {RUN}: is the stack up?")
        return 1
    print(f"this host: {wake_cost_us():.0f} us of CPU per sleep and wake of a Python thread")
    windows: list[Window] = []
    tries = args.tries if args.quiet_only else args.runs
    for n in range(tries):
        w = measure(args.seconds, [c for c in args.threads.split(",") if c])
        comps = by_component(w.per_process)
        traffic = "unknown" if w.requests is None else str(w.requests)
        calls = "unknown" if w.calls is None else str(w.calls)
        few_calls = args.max_calls is None or (w.calls is not None and w.calls <= args.max_calls)
        quiet = w.requests == 0 and few_calls and not w.restarted
        kept = quiet or not args.quiet_only
        runs = w.runs if args.per_process else by_component(w.runs)
        print(f"window {n + 1}: {w.seconds:.0f} s, {sum(comps.values()):.4f} cores in all", end="")
        print(f", threads run {sum(runs.values()):.0f} times a second", end="")
        print(f" (edge requests in the window: {traffic}; service calls: {calls}", end="")
        print(f"; restarted: {', '.join(w.restarted) or 'none'})", end="")
        print("" if kept else ": not quiet, left out")
        if not kept:
            continue
        windows.append(w)
        print(_table(w.per_process if args.per_process else comps, runs), flush=True)
        if args.threads:
            print(f"{args.threads} by thread (top 25):")
            print(_table(dict(sorted(w.threads.items(), key=lambda kv: -kv[1])[:25])), flush=True)
        if len(windows) == args.runs:
            break
    if not windows:
        print("no quiet window: the stack was busy the whole time")
        return 1
    summary = summarize([by_component(w.per_process) for w in windows])
    runs_summary = summarize([by_component(w.runs) for w in windows])
    if len(windows) > 1:
        print(f"over {len(windows)} windows, cores (min / median) and thread runs a second (min / median):")
        for name, (low, mid) in sorted(summary.items(), key=lambda kv: (kv[0] == "total", -kv[1][1])):
            rlow, rmid = runs_summary.get(name, (0.0, 0.0))
            print(f"  {name:<32} {low:8.4f} {mid:8.4f} {rlow:8.1f} {rmid:8.1f}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "windows": [w.__dict__ for w in windows],
                    "summary": {k: {"min": v[0], "median": v[1]} for k, v in summary.items()},
                    "runs_summary": {k: {"min": v[0], "median": v[1]} for k, v in runs_summary.items()},
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
