"""Benchmark results as JSON, a Markdown table and PNG plots; the table also
goes into docs/BENCHMARKS.md between its result markers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "BENCHMARKS.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"
LOAD_SCENARIOS = {
    "a_feed_rest": "(a) home feed, REST via Envoy",
    "a_feed_grpc": "(a) home feed, gRPC via Envoy",
    "b_post": "(b) tweet post",
    "e_mixed": "(e) mixed 60/30/10",
}


def markdown(results: dict[str, Any]) -> str:
    scenarios = results["scenarios"]
    lines = [
        f"Run `{results['label']}` started {results['started']} on {results['machine']['cpus']} cores, "
        f"{results['machine']['instances']} instances per service; graph: {results['seed']['users']} users, "
        f"{results['seed']['edges']} follows, {results['seed']['tweets']} seeded tweets.",
        "",
        "| scenario | offered req/s | achieved req/s | errors | p50 ms | p90 ms | p99 ms | p99.9 ms "
        "| stack CPU ms/req |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, title in LOAD_SCENARIOS.items():
        for row in scenarios.get(key, []):
            lines.append(
                f"| {title} | {row['offered_rps']:.0f} | {row['achieved_rps']:.0f} | {row['errors']} | "
                f"{row['p50_ms']} | {row['p90_ms']} | {row['p99_ms']} | {row['p999_ms']} | "
                f"{row.get('stack_cpu_ms_per_req') or '-'} |"
            )
    split = [r for r in scenarios.get("a_feed_rest", []) if r.get("cpu_ms_per_req_by_component") and not r["errors"]]
    if split:
        row = split[-1]  # the highest load served without errors
        parts = ", ".join(f"{name} {ms}" for name, ms in row["cpu_ms_per_req_by_component"].items() if ms >= 0.05)
        lines += ["", f"Stack CPU per REST home-feed read at {row['offered_rps']:.0f} req/s, ms by component: {parts}."]
    if "c_fanout_lag" in scenarios:
        c = scenarios["c_fanout_lag"]
        lines += ["", f"(c) fan-out delivery, post to visible in a follower's feed, {c['probes']} probes under "
                  f"{c['background_posts_per_s']} posts/s of background load: p50 {c['p50_ms']} ms, "
                  f"p99 {c['p99_ms']} ms, max {c['max_ms']} ms."]  # fmt: skip
    if "d_celebrity" in scenarios:
        d = scenarios["d_celebrity"]
        r = d["follower_reads"]
        lines += ["", f"(d) celebrity with {d['celebrity_followers']} followers posts ({d['post_ms']} ms, nothing "
                  f"pushed); a follower sees it after {d['visible_to_a_follower_ms']} ms (pulled; celebrity cache "
                  f"{'≤'}5 s), {d['sampled_followers_seeing_it_after']} of a random sample of seeded readers "
                  f"see it then (not all of them follow it); reads by 300 readers at {r['offered_rps']:.0f}/s: p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, {r['errors']} errors."]  # fmt: skip
    if "f_baseline" in scenarios:
        f = scenarios["f_baseline"]
        lines += ["", f"(f) raw Redis + CQL calls of one cached home-feed read from Python: p50 {f['p50_ms']} ms, "
                  f"p99 {f['p99_ms']} ms one at a time; {f['throughput_rps_32_in_flight']} reads/s with 32 in flight."]  # fmt: skip
        rest = scenarios.get("a_feed_rest")
        if rest:
            ratio = rest[0]["p50_ms"] / f["p50_ms"] if f["p50_ms"] else float("nan")
            lines.append(
                f"Chirp's REST home-feed p50 at {rest[0]['offered_rps']:.0f} req/s is {ratio:.2f}x the baseline p50."
            )
    if "strategies" in results:
        lines += ["", "| fan-out strategy | timelines written per post | post → fanned out (s) | home feed p50 ms | p99 ms |",
                  "|---|---:|---:|---:|---:|"]  # fmt: skip
        for name, s in results["strategies"].items():
            lines.append(
                f"| {name} | {s['writes_per_post']} | {s['fanout_seconds']} | {s['feed']['p50_ms']} | {s['feed']['p99_ms']} |"
            )
    return "\n".join(lines) + "\n"


def plots(results: dict[str, Any], directory: Path, label: str) -> list[Path]:
    made = []
    scenarios = results["scenarios"]
    present = [k for k in LOAD_SCENARIOS if scenarios.get(k)]
    if present:
        fig, axes = plt.subplots(1, len(present), figsize=(4.5 * len(present), 3.6), squeeze=False)
        for ax, key in zip(axes[0], present, strict=True):
            rows = scenarios[key]
            rates = [r["offered_rps"] for r in rows]
            for field, style in (("p50_ms", "o-"), ("p99_ms", "s--"), ("p999_ms", "^:")):
                ax.plot(rates, [r[field] for r in rows], style, label=field.replace("_ms", ""))
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
