"""A burst of posts, and the fan-out that follows it (scenario m_burst of bench/run.py).

Three steps on the seeded graph:
1. burst: posts at BURST_RATE for a few seconds, nothing else; how many the post
   path took, how long the fan-out workers took to apply every event on Kafka
   (the backlog sampled every SAMPLE_SECONDS), the drain rate in tweets and
   timeline entries per second, and the stack's CPU per acknowledged post from
   the first post until the backlog is gone: the cost of a post with its fan-out.
2. reads alone: home-feed reads at READ_RATE, the latency the request path has
   when the workers are idle;
3. the same burst again with the same reads running through it and its drain: if
   the fan-out starved the request path, these reads would be the slower.
Then the same three steps for a fan-out burst: a few posts (FANOUT_POSTS in one
second) by the most-followed authors below the celebrity threshold, little work
for the post path and thousands of timeline entries for the fan-out, so the reads
beside it show what the fan-out alone takes from the request path (the post burst
above saturates the post path itself, which starves reads whatever the workers
do).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.load import Outcome, Stats, cpu_spent, stack_cpu_seconds, summarize
from bench.strategies import fanout_backlog, fanout_totals, wait_drained

BURST_RATE = 200  # posts/s offered: about what the post path of the 2-core stack takes
READ_RATE = 50  # home-feed reads/s beside it
FANOUT_POSTS = 50  # posts of the fan-out burst, sent within one second
FANOUT_AUTHORS = 5  # the most-followed authors below the celebrity threshold post them
SAMPLE_SECONDS = 0.25
DRAIN_LIMIT_SECONDS = 300.0

Run = Callable[[float, float], Outcome]  # (rate, seconds) -> the step's outcome


def measure(
    post: Run, read: Run, burst_seconds: float, idle_cores: Mapping[str, float], fanout_post: Run | None = None
) -> dict[str, Any]:
    """The post burst beside reads; with `fanout_post` (posts by the most-followed
    authors), the fan-out burst beside reads too, under "fanout"."""
    result = {"burst_rate_rps": BURST_RATE, "burst_seconds": burst_seconds} | _beside_reads(
        post, read, BURST_RATE, burst_seconds, idle_cores
    )
    if fanout_post is not None:
        result["fanout"] = {"posts": FANOUT_POSTS, "authors": FANOUT_AUTHORS} | _beside_reads(
            fanout_post, read, FANOUT_POSTS, 1.0, idle_cores
        )
    return result


def _beside_reads(post: Run, read: Run, rate: float, seconds: float, idle_cores: Mapping[str, float]) -> dict[str, Any]:
    """A burst alone, reads alone for as long as it took to drain, then both together."""
    wait_drained(DRAIN_LIMIT_SECONDS)
    alone = _burst(post, rate, seconds, idle_cores)
    wait_drained(DRAIN_LIMIT_SECONDS)
    quiet = summarize(read(READ_RATE, alone["drained_after_s"]), idle_cores, step="reads alone")
    with ThreadPoolExecutor(1) as pool:
        reads = pool.submit(read, READ_RATE, alone["drained_after_s"])
        time.sleep(0.5)
        beside = _burst(post, rate, seconds, idle_cores)
        during = summarize(reads.result(), idle_cores, step="reads during a burst")
    return {
        "burst": alone,
        "burst_beside_reads": beside,
        "reads_alone": _latency(quiet),
        "reads_during_burst": _latency(during),
    }


def _burst(post: Run, rate: float, seconds: float, idle_cores: Mapping[str, float]) -> dict[str, Any]:
    written_before, handled_before = fanout_totals()
    cpu_before, started = stack_cpu_seconds(), time.monotonic()
    backlog_peak = 0
    with ThreadPoolExecutor(1) as pool:
        sent = pool.submit(post, rate, seconds)
        while not sent.done():
            backlog_peak = max(backlog_peak, fanout_backlog())
            time.sleep(SAMPLE_SECONDS)
        posted = summarize(sent.result(), idle_cores, step="burst")
    while (backlog := fanout_backlog()) > 0:
        backlog_peak = max(backlog_peak, backlog)
        if time.monotonic() - started > DRAIN_LIMIT_SECONDS:
            raise TimeoutError(f"the fan-out did not drain a burst within {DRAIN_LIMIT_SECONDS:.0f} s")
        time.sleep(SAMPLE_SECONDS)
    drained = time.monotonic() - started
    spent = cpu_spent(cpu_before, stack_cpu_seconds())
    written_after, handled_after = fanout_totals()
    accepted = posted.requests - posted.errors
    net = {name: spent.get(name, 0.0) - idle_cores.get(name, 0.0) * drained for name in {*spent, *idle_cores}}
    per_post = (lambda cpu: round(sum(cpu.values()) * 1000 / accepted, 2)) if accepted else (lambda cpu: None)
    by_component = sorted(net.items(), key=lambda kv: -kv[1])
    return {
        "posts": _latency(posted) | {"accepted": accepted, "shed": posted.errors, "statuses": posted.statuses},
        "backlog_peak_events": backlog_peak,
        "drained_after_s": round(drained, 2),
        "tweets_handled": int(handled_after - handled_before),
        "timeline_entries_written": int(written_after - written_before),
        "drain_tweets_per_s": round((handled_after - handled_before) / drained, 1),
        "drain_entries_per_s": round((written_after - written_before) / drained, 1),
        "cpu_ms_per_post_with_fanout": per_post(spent),
        "net_cpu_ms_per_post_with_fanout": per_post(net),
        "net_cpu_ms_per_post_by_component": {
            name: round(cpu * 1000 / accepted, 2) + 0.0 for name, cpu in by_component if accepted
        },
    }


def _latency(step: Stats) -> dict[str, Any]:
    return {
        "offered_rps": step.offered_rps,
        "achieved_rps": step.achieved_rps,
        "requests": step.requests,
        "errors": step.errors,
        "p50_ms": step.p50_ms,
        "p99_ms": step.p99_ms,
    }


def describe(result: Mapping[str, Any]) -> list[str]:
    """Lines for bench/results/<label>.md."""
    b, r = result["burst"], result["burst_beside_reads"]
    quiet, during = result["reads_alone"], result["reads_during_burst"]
    return [
        "",
        f"(m) burst: {b['posts']['requests']} posts offered at {result['burst_rate_rps']}/s for "
        f"{result['burst_seconds']:.0f} s, {b['posts']['accepted']} accepted ({b['posts']['shed']} shed), post p50 "
        f"{b['posts']['p50_ms']} ms, p99 {b['posts']['p99_ms']} ms; fan-out backlog peaked at "
        f"{b['backlog_peak_events']} events and was gone {b['drained_after_s']} s after the first post: "
        f"{b['drain_tweets_per_s']} tweets/s, {b['drain_entries_per_s']} timeline entries/s. "
        f"Stack CPU per accepted post with its fan-out: {b['cpu_ms_per_post_with_fanout']} ms gross, "
        f"{b['net_cpu_ms_per_post_with_fanout']} ms net of idle ({_top(b['net_cpu_ms_per_post_by_component'])}).",
        f"Home-feed reads at {quiet['offered_rps']:.0f}/s alone: p50 {quiet['p50_ms']} ms, p99 {quiet['p99_ms']} ms, "
        f"{quiet['errors']} errors; through the same burst and its drain ({r['drained_after_s']} s): "
        f"p50 {during['p50_ms']} ms, p99 {during['p99_ms']} ms, {during['errors']} errors.",
        *_describe_fanout(result.get("fanout")),
    ]


def _describe_fanout(fanout: Mapping[str, Any] | None) -> list[str]:
    if fanout is None:  # a result from before the fan-out burst was measured
        return []
    b, r = fanout["burst"], fanout["burst_beside_reads"]
    quiet, during = fanout["reads_alone"], fanout["reads_during_burst"]
    return [
        f"Fan-out burst: {b['posts']['accepted']} posts by the {fanout['authors']} most-followed authors within 1 s, "
        f"{b['timeline_entries_written']} timeline entries written, all gone {b['drained_after_s']} s after the first "
        f"post ({b['drain_entries_per_s']} entries/s). Home-feed reads at {quiet['offered_rps']:.0f}/s alone: "
        f"p50 {quiet['p50_ms']} ms, p99 {quiet['p99_ms']} ms, {quiet['errors']} errors; through the fan-out burst "
        f"({r['drained_after_s']} s, {r['timeline_entries_written']} entries): p50 {during['p50_ms']} ms, "
        f"p99 {during['p99_ms']} ms, {during['errors']} errors.",
    ]


def _top(by_component: Mapping[str, float], n: int = 5) -> str:
    return ", ".join(f"{name} {ms}" for name, ms in list(by_component.items())[:n])
