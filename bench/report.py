"""Benchmark results as JSON, a Markdown table and PNG plots; the table also
goes into docs/BENCHMARKS.md between its result markers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench import burst

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "BENCHMARKS.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"
LOAD_SCENARIOS = {
    "a_feed_rest": "(a) home feed, REST via Envoy",
    "a_feed_grpc": "(a) home feed, gRPC via Envoy",
    "b_post": "(b) tweet post",
    "e_mixed": "(e) mixed 60/30/10",
}
FEED_READS = {"a_feed_rest": "REST", "a_feed_grpc": "gRPC"}
# The rate the CPU split by component is quoted at (the aim is set there).
CPU_SPLIT_RPS = 100


def _cell(value: Any, suffix: str = "") -> str:
    return "-" if value is None else f"{value}{suffix}"


def _split_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The ladder step at CPU_SPLIT_RPS, else the lowest one."""
    ladder = [r for r in rows if r.get("step", "ladder") == "ladder" and r.get("cpu_ms_per_req_by_component")]
    return next((r for r in ladder if r["offered_rps"] == CPU_SPLIT_RPS), ladder[0] if ladder else None)


def idle_windows(idle: dict[str, Any]) -> str:
    """ ", the quietest of 3 windows (7.2%, 7.7%, 8.2%)", or nothing for a single window."""
    windows = idle.get("windows_cores") or []
    if len(windows) < 2:
        return ""
    return f", the quietest of {len(windows)} windows (" + ", ".join(f"{t * 100:.1f}%" for t in windows) + ")"


def idle_cores(idle: dict[str, Any]) -> str:
    """ "7.2% of one core (cassandra 2.2%, kafka 1.3%, ...)": the idle stack's figure, by component."""
    parts = ", ".join(f"{n} {c * 100:.1f}%" for n, c in idle["cores_by_component"].items() if c >= 0.0005)
    return f"{idle['cores'] * 100:.1f}% of one core ({parts})"


def idle_runs(idle: dict[str, Any]) -> str:
    """ "; its threads ran 960 times a second, and a Python thread's sleep and wake
    cost 72 us of CPU on this host", or nothing for a run from before they were measured."""
    runs, cost = idle.get("runs_per_second"), idle.get("wake_cost_us")
    if runs is None or cost is None:
        return ""
    return f"; its threads ran {runs:.0f} times a second, and a Python thread's sleep and wake cost {cost:.0f} us of CPU on this host"


def feed_read_tables(results: dict[str, Any]) -> list[str]:
    """Idle CPU, CPU per feed read by component (gross and net), and the overload steps."""
    scenarios = results["scenarios"]
    lines: list[str] = []
    idle = results.get("idle")
    if idle:
        lines += ["", f"Idle stack, measured for {idle['seconds']} s before the load steps{idle_windows(idle)}: "
                  f"{idle_cores(idle)}{idle_runs(idle)}. Net CPU below is gross minus this over each step's span."]  # fmt: skip
    splits = {label: _split_row(scenarios.get(key, [])) for key, label in FEED_READS.items()}
    present = {label: row for label, row in splits.items() if row}
    if present:
        header = " | ".join(f"{label} at {row['offered_rps']:.0f} req/s gross | net" for label, row in present.items())
        lines += ["", "CPU per feed read by component, ms:", "", f"| component | {header} |",
                  "|---|" + "---:|---:|" * len(present)]  # fmt: skip
        names: list[str] = []
        for row in present.values():
            names += [n for n in row["cpu_ms_per_req_by_component"] if n not in names]
        for name in [*names, "total"]:
            cells = []
            for row in present.values():
                if name == "total":
                    cells += [_cell(row.get("stack_cpu_ms_per_req")), _cell(row.get("net_stack_cpu_ms_per_req"))]
                else:
                    net = row.get("net_cpu_ms_per_req_by_component") or {}
                    cells += [_cell(row["cpu_ms_per_req_by_component"].get(name)), _cell(net.get(name))]
            lines.append(f"| {'**total**' if name == 'total' else name} | " + " | ".join(cells) + " |")
    overloads = [(label, r) for key, label in FEED_READS.items() for r in scenarios.get(key, []) if r.get("overload")]
    if overloads:
        lines += ["", "| feed read | saturation req/s | overload offered req/s | goodput req/s | goodput / peak "
                  "| shed per s | shed p50 ms | shed p99 ms | non-2xx p99 ms | excess shed within 50 ms | other errors |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for label, r in overloads:
            o = r["overload"]
            saturation = "below the lowest step" if o["saturation_rps"] is None else f"{o['saturation_rps']:.0f}"
            if o.get("saturation_is_lower_bound"):
                saturation = f"≥ {saturation}"
            share = o["excess_shed_within_50ms"]
            lines.append(
                f"| {label} | {saturation} | {r['offered_rps']:.0f} | {o['goodput_rps']} | "
                f"{_cell(o['goodput_vs_peak'])} | {o['shed_per_s']} | {_cell(o['shed_p50_ms'])} | "
                f"{_cell(o['shed_p99_ms'])} | {_cell(o.get('non_2xx_p99_ms'))} | {'no excess' if share is None else f'{share:.1%}'} | {o['other_errors']} |"
            )
        lines += ["", f"Saturation: {overloads[0][1]['overload']['rule']}. Shed: answers 429 or 503 (gRPC: "
                  "UNAVAILABLE or RESOURCE_EXHAUSTED, which also covers Envoy's timeouts); excess: every request "
                  "not answered 2xx; peak: goodput at saturation."]  # fmt: skip
    return lines


def cold_start_table(results: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    cold = results["scenarios"].get("j_cold_start")
    if cold:
        lines += ["", f"(j) cold start: Redis emptied ({', '.join(cold['flushed'])}), then {cold['rate_rps']} "
                  f"reads/s for {cold['seconds']:.0f} s ({cold['mix']}):", "",
                  "| seconds | requests | errors | error statuses | p50 ms | p99 ms | max ms |",
                  "|---|---:|---:|---|---:|---:|---:|"]  # fmt: skip
        for w in cold["windows"]:
            statuses = ", ".join(f"{code}: {n}" for code, n in w["statuses"].items()) or "-"
            lines.append(
                f"| {w['from_s']:.0f}-{w['to_s']:.0f} | {w['requests']} | {w['errors']} | {statuses} | "
                f"{w['p50_ms']} | {w['p99_ms']} | {w['max_ms']} |"
            )
    return lines


def markdown(results: dict[str, Any]) -> str:
    scenarios = results["scenarios"]
    lines = [
        f"Run `{results['label']}` started {results['started']} on {results['machine']['cpus']} cores, "
        f"{results['machine']['instances']} instances per service; graph: {results['seed']['users']} users, "
        f"{results['seed']['edges']} follows, {results['seed']['tweets']} seeded tweets.",
        "",
        "| scenario | offered req/s | achieved req/s | errors | p50 ms | p90 ms | p99 ms | p99.9 ms "
        "| stack CPU ms/req | net CPU ms/req |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    restarted = False
    for key, title in LOAD_SCENARIOS.items():
        for row in scenarios.get(key, []):
            step = ", overload (2x saturation)" if row.get("step") == "overload" else ""
            mark = " †" if row.get("restarted") else ""
            lines.append(
                f"| {title}{step} | {row['offered_rps']:.0f} | {row['achieved_rps']:.0f} | {row['errors']} | "
                f"{row['p50_ms']} | {row['p90_ms']} | {row['p99_ms']} | {row['p999_ms']} | "
                f"{_cell(row.get('stack_cpu_ms_per_req'))}{mark} | {_cell(row.get('net_stack_cpu_ms_per_req'))}{mark} |"
            )
            restarted = restarted or bool(mark)
    if len(lines) == 4:  # no load scenario in this run: no table
        del lines[1:]
    if restarted:
        lines += ["", "† a stack process restarted during the step; its CPU is left out, so the figure is too low."]
    lines += feed_read_tables(results)
    if "c_fanout_lag" in scenarios:
        c = scenarios["c_fanout_lag"]
        lines += ["", f"(c) fan-out delivery, post to visible in a follower's feed, {c['probes']} probes under "
                  f"{c['background_posts_per_s']} posts/s of background load: p50 {c['p50_ms']} ms, "
                  f"p99 {c['p99_ms']} ms, max {c['max_ms']} ms."]  # fmt: skip
    if "l_returning_reader" in scenarios:
        r = scenarios["l_returning_reader"]
        lines += ["", f"(l) {r['readers']} readers away longer than CHIRP_ACTIVE_DAYS: first read (timeline rebuilt) "
                  f"p50 {r['first_read_p50_ms']} ms, p99 {r['first_read_p99_ms']} ms; the next read p50 "
                  f"{r['next_read_p50_ms']} ms, p99 {r['next_read_p99_ms']} ms."]  # fmt: skip
    if "m_burst" in scenarios:
        lines += burst.describe(scenarios["m_burst"])
    if "d_celebrity" in scenarios and "skipped" in scenarios["d_celebrity"]:
        lines += ["", f"(d) celebrity: skipped, {scenarios['d_celebrity']['skipped']}."]
    elif "d_celebrity" in scenarios:
        d = scenarios["d_celebrity"]
        r = d["follower_reads"]
        lines += ["", f"(d) celebrity with {d['celebrity_followers']} followers posts ({d['post_ms']} ms, nothing "
                  f"pushed); a follower sees it after {d['visible_to_a_follower_ms']} ms (pulled; celebrity cache "
                  f"{'≤'}5 s), {d['sampled_followers_seeing_it_after']} of a random sample of seeded readers "
                  f"see it then (not all of them follow it); reads by 300 readers at {r['offered_rps']:.0f}/s: p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, {r['errors']} errors."]  # fmt: skip
    if "f_baseline" in scenarios:
        f = scenarios["f_baseline"]
        lines += ["", f"(f) raw Redis calls of one cached home-feed read (three round trips) from Python: p50 {f['p50_ms']} ms, "
                  f"p99 {f['p99_ms']} ms one at a time; {f['throughput_rps_32_in_flight']} reads/s with 32 in flight."]  # fmt: skip
        ladder = [r for r in scenarios.get("a_feed_rest", []) if r.get("step", "ladder") == "ladder"]
        if ladder:
            # The step at the paced rate if there is one (the quick ladder's first), else the first.
            rest = next((r for r in ladder if r["offered_rps"] == f.get("paced_rps")), ladder[0])
            ratio = rest["p50_ms"] / f["p50_ms"] if f["p50_ms"] else float("nan")
            line = f"Chirp's REST home-feed p50 at {rest['offered_rps']:.0f} req/s is {ratio:.2f}x the baseline p50"
            if f.get("paced_p50_ms") and rest["offered_rps"] == f["paced_rps"]:
                paced = rest["p50_ms"] / f["paced_p50_ms"]
                line += f", {paced:.2f}x its p50 paced at {f['paced_rps']} reads/s ({f['paced_p50_ms']} ms)"
                if f.get("loadgen_floor_p50_ms") is not None:
                    line += (f"; the HTTP load generator's own p50 at that rate, against Envoy's admin /ready, "
                             f"is {f['loadgen_floor_p50_ms']} ms of it")  # fmt: skip
            if f.get("loadgen_floor_failed"):
                line += f" (the load generator's floor: {f['loadgen_floor_failed']} requests to /ready failed)"
            lines.append(line + ".")
    if "strategies" in results:
        lines += ["", "| fan-out strategy | timelines written per post | post → fanned out (s) | home feed p50 ms | p99 ms |",
                  "|---|---:|---:|---:|---:|"]  # fmt: skip
        for name, s in results["strategies"].items():
            lines.append(
                f"| {name} | {s['writes_per_post']} | {s['fanout_seconds']} | {s['feed']['p50_ms']} | {s['feed']['p99_ms']} |"
            )
    lines += cold_start_table(results)
    return "\n".join(lines) + "\n"


def plots(results: dict[str, Any], directory: Path, label: str) -> list[Path]:
    made = []
    scenarios = results["scenarios"]
    present = [k for k in LOAD_SCENARIOS if scenarios.get(k)]
    if present:
        fig, axes = plt.subplots(1, len(present), figsize=(4.5 * len(present), 3.6), squeeze=False)
        for ax, key in zip(axes[0], present, strict=True):
            rows = [r for r in scenarios[key] if r.get("step", "ladder") == "ladder"]
            rates = [r["offered_rps"] for r in rows]
            for field, style in (("p50_ms", "o-"), ("p99_ms", "s--"), ("p999_ms", "^:")):
                ax.plot(rates, [r[field] for r in rows], style, label=field.replace("_ms", ""))
            for r in scenarios[key]:
                if r.get("step") == "overload":
                    ax.plot([r["offered_rps"]] * 2, [r["p50_ms"], r["p99_ms"]], "kx", label="overload p50, p99")
            ax.set_title(LOAD_SCENARIOS[key], fontsize=9)
            ax.set_xlabel("offered load (req/s)")
            ax.set_ylabel("latency (ms)")
            ax.set_yscale("log")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = directory / f"{label}-latency.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)
    if "c_fanout_lag" in scenarios:
        lags = scenarios["c_fanout_lag"]["lags_ms"]
        fig, ax = plt.subplots(figsize=(5, 3.4))
        ax.hist(lags, bins=30)
        ax.set_title("(c) post to visible in a follower's feed", fontsize=9)
        ax.set_xlabel("delivery lag (ms)")
        ax.set_ylabel("probes")
        fig.tight_layout()
        path = directory / f"{label}-fanout-lag.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)
    return made


def write(results: dict[str, Any], directory: Path, update_doc: bool = True) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    label = results["label"]
    path = directory / f"{label}.json"
    path.write_text(json.dumps(results, indent=1))
    table = markdown(results)
    (directory / f"{label}.md").write_text(table)
    images = plots(results, directory, label)
    if update_doc and DOC.exists():
        doc = DOC.read_text()
        if START in doc and END in doc:
            links = "".join(f"\n![{p.stem}](../bench/results/{p.name})\n" for p in images)
            block = f"{START}\n{table}{links}{END}"
            DOC.write_text(doc[: doc.index(START)] + block + doc[doc.index(END) + len(END) :])
    return path
