"""Benchmark scenarios against the running stack (after `make seed`).

    python -m bench.run [--quick] [--only a,b,...] [--strategies]

Scenarios: (a) cached home-feed read through Envoy REST and gRPC; (b) tweet
post; (c) fan-out delivery lag (post to visible in a follower's feed) under a
background post load; (d) a celebrity post read by its followers; (e) mixed
60% home feed / 30% user timeline / 10% post; (f) the raw Redis and CQL calls
one cached home-feed read needs, from Python, as the baseline; (j) cold
start: Redis emptied, then a minute of mixed reads; (k) the push cost
against follower count; (l) a returning reader's first read; (m) a burst of
posts drained by the fan-out, beside feed reads. With --strategies,
hybrid, push-all and pull-all fan-out are compared on the same graph.
Results go to bench/results/ (JSON, Markdown, PNG) and the table into
docs/BENCHMARKS.md.

The feed reads (a) climb a ladder of rates until a step fails the saturation
rule (bench/load.py, SATURATION_RULE), past its listed rates if need be (`climb`),
then run one overload step at twice the saturation rate. CPU per read is given gross and net of the idle stack's CPU,
measured once before the first load step (the quietest of IDLE_WINDOWS windows
of IDLE_SECONDS). Without a seeded
graph (no manifest, or its users gone from the store) a small one is seeded
first (--seed-args).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench import baseline, burst, coldstart, report, seed, threshold
from bench import idle as idle_probe
from bench.load import (
    OK,
    SATURATION_RULE,
    Outcome,
    Stats,
    grpc_run,
    http_load,
    http_run,
    overload_stats,
    percentile,
    saturation,
    summarize,
    windows,
    within_capacity,
)
from infra import topology

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
EDGE = f"http://{topology.HOST}:{topology.EDGE_PORT}"
ENVOY_READY = f"http://{topology.HOST}:{topology.ENVOY_ADMIN_PORT}/ready"
GRPC_EDGE = f"{topology.HOST}:{topology.EDGE_PORT}"
SMALL_GRAPH = "--users 10000 --edges 200000"
IDLE_SECONDS = 10.0
IDLE_WINDOWS = 3  # the quietest is the idle stack
# Between a step past saturation and the next one, so its queues drain first.
SETTLE_SECONDS = 3.0
# A ladder whose listed rates all pass climbs on, each rate CLIMB_FACTOR times the last, so the
# saturation rate is measured (and the overload step at twice it overloads) on a
# machine faster than the list assumed; up to this rate, which the load
# generators on the same two cores still offer (a stack that passes it is
# reported as saturating at "≥ 3000", and its overload step offers twice that,
# which the generators may fall short of).
CLIMB_FACTOR = 1.5
MAX_LADDER_RPS = 3000


def climb(rates: list[int]) -> Iterator[int]:
    """The listed rates, then each one CLIMB_FACTOR higher (rounded to 50, at least
    50 more) up to MAX_LADDER_RPS."""
    if not rates:
        raise ValueError("a ladder needs at least one rate")
    yield from rates
    rate = rates[-1]
    while rate < MAX_LADDER_RPS:
        rate = min(MAX_LADDER_RPS, max(rate + 50, round(rate * CLIMB_FACTOR / 50) * 50))
        yield rate


class Bench:
    def __init__(self, quick: bool, manifest: dict[str, Any]) -> None:
        self.quick = quick
        self.manifest = manifest
        self.client = httpx.Client(base_url=EDGE, timeout=10)
        self.rng = random.Random(11)
        self.seconds = 5.0 if quick else 12.0
        self.overload_seconds = 10.0 if quick else 20.0
        self.tokens: dict[int, str] = {}
        self.idle: dict[str, Any] | None = None

    # ---- accounts -----------------------------------------------------------------

    def login(self, users: list[dict[str, Any]]) -> list[tuple[int, str]]:
        missing = [u for u in users if u["user_id"] not in self.tokens]

        def one(user: dict[str, Any]) -> tuple[int, str]:
            reply = self.client.post(
                "/v1/sessions", json={"username": user["username"], "password": self.manifest["password"]}
            )
            reply.raise_for_status()
            return user["user_id"], reply.json()["access_token"]

        with ThreadPoolExecutor(4) as pool:
            self.tokens.update(dict(pool.map(one, missing)))
        return [(u["user_id"], self.tokens[u["user_id"]]) for u in users]

    def readers(self, n: int) -> list[tuple[int, str]]:
        return self.login(self.manifest["readers"][:n])

    def authors(self, n: int) -> list[tuple[int, str]]:
        return self.login(self.manifest["authors"][:n])

    def warm(self, readers: list[tuple[int, str]]) -> None:
        for _, token in readers:
            self.client.get("/v1/feed", headers=_auth(token))

    def idle_cores(self) -> dict[str, float]:
        """The idle stack's CPU by component, measured once, before the first load step:
        the quietest of IDLE_WINDOWS windows, one without a restart or edge requests if any
        is. A single window right after `make up` caught
        Cassandra compacting at up to 16% of a core (run stop25), and subtracting that from
        every step made the net figures look better than they were."""
        if self.idle is None:
            time.sleep(1)  # let the warm-up's last requests finish
            windows = [idle_probe.measure(IDLE_SECONDS) for _ in range(IDLE_WINDOWS)]
            totals = [sum(idle_probe.by_component(w.per_process).values()) for w in windows]
            # A window with a restart leaves the restarted process out (a lower total), and one
            # with traffic is not idle: the quietest of the clean ones, if there is one.
            window = windows[
                min(
                    range(IDLE_WINDOWS),
                    key=lambda i: (bool(windows[i].restarted), bool(windows[i].requests), totals[i]),
                )
            ]
            by_component = sorted(idle_probe.by_component(window.per_process).items(), key=lambda kv: -kv[1])
            runs = idle_probe.by_component(window.runs)
            self.idle = {
                "seconds": round(window.seconds, 1),
                "cores": round(sum(c for _, c in by_component), 4),
                "cores_by_component": {name: round(c, 4) for name, c in by_component},
                "windows_cores": [round(t, 4) for t in totals],
                # Host-independent: wake-ups; host-dependent: what one costs (bench/idle.py).
                "runs_per_second": round(sum(runs.values()), 1),
                "runs_per_second_by_component": {name: round(runs.get(name, 0.0), 1) for name, _ in by_component},
                "wake_cost_us": round(idle_probe.wake_cost_us(), 1),
                "windows_restarted": [w.restarted for w in windows],
                "windows_edge_requests": [w.requests for w in windows],
                # Anything here means the window was not quite idle (other traffic, a restart).
                # Envoy's counter starts again when it restarts: unknown then.
                "edge_requests": window.requests if window.requests is None or window.requests >= 0 else None,
                "restarted": window.restarted,
            }
            print(
                f"   idle stack, {self.idle['seconds']} s windows{report.idle_windows(self.idle)}: "
                f"{report.idle_cores(self.idle)}{report.idle_runs(self.idle)}; edge requests meanwhile: {self.idle['edge_requests']}, "
                f"restarted: {', '.join(window.restarted) or 'none'}",
                flush=True,
            )
        cores: dict[str, float] = self.idle["cores_by_component"]
        return cores

    def ladder(self, run: Callable[[float, float], Outcome], rates: list[int]) -> list[Stats]:
        """Steps up the rates until one fails the saturation rule (past the listed
        rates, `climb` goes on), then one overload step at twice the saturation
        rate (twice the lowest rate when even that failed)."""
        idle = self.idle_cores()
        steps: list[Stats] = []
        for rate in climb(rates):
            steps.append(summarize(run(rate, self.seconds), idle))
            print("   " + _describe(steps[-1]), flush=True)
            if not within_capacity(steps[-1]):
                break
        at_saturation = saturation(steps)
        base = at_saturation or steps[0]
        time.sleep(SETTLE_SECONDS)
        outcome = run(2 * base.offered_rps, self.overload_seconds)
        over = summarize(outcome, idle, step="overload")
        over.overload = {
            "saturation_rps": at_saturation.offered_rps if at_saturation else None,
            # The ladder ended before any step failed: the stack saturates higher still.
            "saturation_is_lower_bound": at_saturation is steps[-1] and steps[-1].offered_rps >= MAX_LADDER_RPS,
            "rule": SATURATION_RULE,
            **overload_stats(outcome, at_saturation.achieved_rps if at_saturation else None),
        }
        print("   " + _describe(over), flush=True)
        time.sleep(SETTLE_SECONDS)
        return [*steps, over]

    # ---- scenarios ---------------------------------------------------------------

    def feed_rest(self) -> list[Stats]:
        readers = self.readers(100 if self.quick else 400)
        self.warm(readers)
        targets = [_get("/v1/feed?page_size=20", token) for _, token in readers]
        rates = [100, 200, 400, 500] if self.quick else [50, 100, 200, 300, 400, 500, 600]
        return self.ladder(lambda rate, seconds: http_run(targets, rate, seconds), rates)

    def feed_grpc(self) -> list[Stats]:
        readers = self.readers(1)
        self.warm(readers)
        metadata = {"authorization": f"Bearer {readers[0][1]}"}
        rates = [100, 200, 400, 600] if self.quick else [100, 200, 300, 400, 500, 600, 800]
        call = "chirp.feed.v1.FeedService.GetHomeFeed"
        return self.ladder(
            lambda rate, seconds: grpc_run(call, {"page_size": 20}, metadata, GRPC_EDGE, rate, seconds), rates
        )

    def post(self) -> list[Stats]:
        authors = self.authors(50 if self.quick else 200)
        targets = [_post("/v1/tweets", token, {"text": f"bench post by {uid}"}) for uid, token in authors]
        rates = [100, 250] if self.quick else [100, 250, 500, 750]
        return [http_load(targets, rate, self.seconds) for rate in rates]

    def fanout_lag(self) -> dict[str, Any]:
        """Post by a normal author, poll a follower's feed until the tweet shows."""
        pairs = self._author_follower_pairs(10 if self.quick else 30)
        background = [_post("/v1/tweets", token, {"text": "background"}) for _, token in self.authors(50)]
        rate = 25 if self.quick else 100
        probes = 20 if self.quick else 100
        lags: list[float] = []
        with ThreadPoolExecutor(1) as pool:
            load = pool.submit(http_load, background, rate, probes * 0.6 + 5)
            time.sleep(1)
            for n in range(probes):
                (author_token, follower_token) = pairs[n % len(pairs)]
                lags.append(self._post_until_visible(author_token, follower_token))
            bg = load.result()
        lags.sort()
        return {
            "background_posts_per_s": rate,
            "background": bg.row(),
            "probes": len(lags),
            "p50_ms": round(statistics.median(lags), 1),
            "p99_ms": round(lags[min(len(lags) - 1, int(0.99 * len(lags)))], 1),
            "max_ms": round(lags[-1], 1),
            "lags_ms": [round(v, 1) for v in lags],
        }

    def celebrity(self) -> dict[str, Any]:
        """The top celebrity posts; how soon its followers see it (pulled), and their read latency."""
        if not self.manifest["celebrities"]:
            threshold = self.manifest["celebrity_threshold"]
            return {"skipped": f"no user of the seeded graph has {threshold} followers (the celebrity threshold)"}
        celeb = self.manifest["celebrities"][0]
        ((_, celeb_token),) = self.login([celeb])
        followers = self.readers(100 if self.quick else 300)
        self.warm(followers)
        reply = self.client.post("/v1/tweets", json={"text": "celebrity bench post"}, headers=_auth(celeb_token))
        tweet_id = reply.json()["tweet"]["tweet_id"]
        posted = time.monotonic()
        visible_ms: float | None = None
        watcher = followers[0][1]
        while visible_ms is None and time.monotonic() - posted < 15:
            if self._in_feed(watcher, int(tweet_id)):
                visible_ms = round((time.monotonic() - posted) * 1000, 1)
            time.sleep(0.05)
        seen = sum(self._in_feed(t, int(tweet_id)) for _, t in followers[:20])
        reads = http_load([_get("/v1/feed?page_size=20", t) for _, t in followers], 100, self.seconds)
        return {
            "celebrity_followers": celeb["followers"],
            "post_ms": round(reply.elapsed.total_seconds() * 1000, 1),
            "visible_to_a_follower_ms": visible_ms,
            "sampled_followers_seeing_it_after": f"{seen}/20",
            "follower_reads": reads.row(),
        }

    def mixed(self) -> list[Stats]:
        readers = self.readers(100 if self.quick else 400)
        self.warm(readers)
        authors = self.authors(50)
        targets: list[dict[str, Any]] = []
        for i in range(1000):
            roll = i % 10
            if roll < 6:
                targets.append(_get("/v1/feed?page_size=20", readers[i % len(readers)][1]))
            elif roll < 9:
                targets.append(_get(f"/v1/users/{readers[i % len(readers)][0]}/tweets?page_size=20", None))
            else:
                targets.append(_post("/v1/tweets", authors[i % len(authors)][1], {"text": "mixed workload"}))
        self.rng.shuffle(targets)
        rates = [100, 200] if self.quick else [100, 200, 300]
        return [http_load(targets, rate, self.seconds) for rate in rates]

    def baseline(self) -> dict[str, Any]:
        readers = self.readers(100 if self.quick else 400)
        self.warm(readers)
        found = asyncio.run(baseline.measure([uid for uid, _ in readers], 500 if self.quick else 3000))
        # The HTTP load generator's own p50 at the same rate, against the cheapest answer
        # there is (Envoy's admin /ready): its timers and client are part of every REST p50.
        floor = http_run([_get_url(ENVOY_READY)], baseline.PACED_RPS, 5.0)
        answered = sorted(ms for ms, kind in zip(floor.latencies_ms, floor.kinds, strict=True) if kind == OK)
        failed = len(floor.kinds) - len(answered)
        return {
            **found,
            # None when any request failed: a floor from a failing endpoint means nothing.
            "loadgen_floor_p50_ms": round(percentile(answered, 0.5), 2) if answered and not failed else None,
            "loadgen_floor_failed": failed,
        }

    def cold_start(self) -> dict[str, Any]:
        """Redis emptied, then a minute of mixed reads, as after a restart or a lost
        Redis node: errors and latency per 10 s window."""
        readers = self.readers(400 if self.quick else 1000)
        feeds = [_get("/v1/feed?page_size=20", token) for _, token in readers]
        # 80% home feeds: one user timeline (of a distinct author) for every four feeds.
        authors = self.manifest["authors"][: max(1, len(feeds) // 4)]
        timelines = [_get(f"/v1/users/{a['user_id']}/tweets?page_size=20", None) for a in authors]
        targets = feeds + timelines
        self.rng.shuffle(targets)
        flushed = coldstart.flush_redis()
        print(f"   emptied Redis ({', '.join(flushed)})", flush=True)
        outcome = http_run(targets, coldstart.RATE, coldstart.SECONDS)
        total = summarize(outcome, self.idle["cores_by_component"] if self.idle else None, step="cold start")
        per_window = windows(outcome, coldstart.WINDOW_SECONDS)
        for w in per_window:
            print(
                f"   {w['from_s']:>4.0f}-{w['to_s']:.0f} s: {w['requests']} requests, {w['errors']} errors"
                f"{_statuses(w['statuses'])}, p50 {w['p50_ms']} ms, p99 {w['p99_ms']} ms",
                flush=True,
            )
        return {
            "rate_rps": coldstart.RATE,
            "seconds": coldstart.SECONDS,
            "mix": f"{len(feeds)} home feeds, {len(timelines)} user timelines (round robin, shuffled)",
            "flushed": flushed,
            "windows": per_window,
            "total": total.row(),
        }

    def threshold_curve(self) -> dict[str, Any]:
        """What one post's push costs against its author's follower count (bench/threshold.py)."""
        authors = threshold.pick_authors(
            [a for a in self.manifest["authors"] if int(a["followers"]) < self.manifest["celebrity_threshold"]]
        )

        def post(author: Mapping[str, Any]) -> None:
            ((_, token),) = self.login([dict(author)])
            reply = self.client.post("/v1/tweets", json={"text": "threshold curve"}, headers=_auth(token))
            reply.raise_for_status()

        points = threshold.measure_push(post, authors)
        following = [int(r["following"]) for r in self.manifest["readers"]]
        result = threshold.curve(points, threshold.latest_strategies(RESULTS), statistics.fmean(following))
        for p in points:
            print(f"   {p.followers} followers: {p.pushed} pushed in {p.fanout_ms} ms, {p.cpu_ms} ms CPU", flush=True)
        return result

    def returning_reader(self) -> dict[str, Any]:
        """Readers away longer than CHIRP_ACTIVE_DAYS: their first read rebuilds the timeline
        (pulled and merged); the second is an ordinary cached read."""
        readers = self.readers(40 if self.quick else 200)
        self.warm(readers)
        threshold.send_away([uid for uid, _ in readers], days=400)
        first: list[float] = []
        second: list[float] = []
        for _, token in readers:
            for into in (first, second):
                started = time.monotonic()
                self.client.get("/v1/feed?page_size=20", headers=_auth(token)).raise_for_status()
                into.append((time.monotonic() - started) * 1000)
        first.sort()
        second.sort()
        return {
            "readers": len(readers),
            "first_read_p50_ms": round(statistics.median(first), 1),
            "first_read_p99_ms": round(first[min(len(first) - 1, int(0.99 * len(first)))], 1),
            "next_read_p50_ms": round(statistics.median(second), 1),
            "next_read_p99_ms": round(second[min(len(second) - 1, int(0.99 * len(second)))], 1),
        }

    def burst(self) -> dict[str, Any]:
        """A burst of posts and its fan-out, alone and beside home-feed reads (bench/burst.py)."""
        posts = [_post("/v1/tweets", token, {"text": "burst"}) for _, token in self.authors(50)]
        readers = self.readers(100 if self.quick else 400)
        self.warm(readers)
        feeds = [_get("/v1/feed?page_size=20", token) for _, token in readers]
        below = [a for a in self.manifest["authors"] if a["followers"] < self.manifest["celebrity_threshold"]]
        most_followed = sorted(below, key=lambda a: -a["followers"])[: burst.FANOUT_AUTHORS]
        fanout_posts = [_post("/v1/tweets", token, {"text": "fan-out burst"}) for _, token in self.login(most_followed)]
        return burst.measure(
            lambda rate, seconds: http_run(posts, rate, seconds),
            lambda rate, seconds: http_run(feeds, rate, seconds),
            5.0 if self.quick else 10.0,
            self.idle_cores(),
            lambda rate, seconds: http_run(fanout_posts, rate, seconds),
        )

    # ---- helpers -----------------------------------------------------------------

    def _author_follower_pairs(self, n: int) -> list[tuple[str, str]]:
        pairs: list[tuple[str, str]] = []
        for author in self.manifest["authors"]:
            if len(pairs) >= n:
                break
            followers = self.client.get(f"/v1/users/{author['user_id']}/followers?page_size=1").json()["users"]
            if followers:
                (_, a_token), (_, f_token) = self.login(
                    [author, {"user_id": int(followers[0]["user_id"]), "username": followers[0]["username"]}]
                )
                pairs.append((a_token, f_token))
        return pairs

    def _post_until_visible(self, author_token: str, follower_token: str) -> float:
        started = time.monotonic()
        tweet = self.client.post("/v1/tweets", json={"text": "lag probe"}, headers=_auth(author_token)).json()["tweet"]
        while time.monotonic() - started < 30:
            if self._in_feed(follower_token, int(tweet["tweet_id"])):
                return (time.monotonic() - started) * 1000
            time.sleep(0.02)
        return 30_000.0

    def _in_feed(self, token: str, tweet_id: int) -> bool:
        """Whether the tweet is in the reader's feed. Pages are walked until they pass
        its id (feeds are newest first), so tweets posted after it by other followed
        authors under the background load cannot push it out of sight."""
        page_token = ""
        for _ in range(10):
            reply = self.client.get(
                "/v1/feed", params={"page_size": 100, "page_token": page_token}, headers=_auth(token)
            )
            if reply.status_code != 200:
                return False
            body = reply.json()
            ids = [int(t["tweet_id"]) for t in body["tweets"]]
            if tweet_id in ids:
                return True
            page_token = body.get("next_page_token", "")
            if not ids or ids[-1] < tweet_id or not page_token:
                return False
        return False


def _statuses(counts: dict[str, int] | None) -> str:
    return f" ({', '.join(f'{code}: {n}' for code, n in counts.items())})" if counts else ""


def _describe(step: Stats) -> str:
    """One line for the console."""
    line = (
        f"{step.offered_rps:.0f} req/s{' (overload)' if step.step == 'overload' else ''}: "
        f"{step.achieved_rps:.0f} ok/s, {step.errors} errors{_statuses(step.statuses)}, "
        f"p50 {step.p50_ms} ms, p99 {step.p99_ms} ms; CPU per read {step.stack_cpu_ms_per_req} ms gross, "
        f"{step.net_stack_cpu_ms_per_req} net"
    )
    if step.restarted:
        line += f" (restarted meanwhile, CPU left out: {', '.join(step.restarted)})"
    if step.overload:
        o = step.overload
        line += (
            f"; saturation {o['saturation_rps']} req/s, goodput {o['goodput_rps']}/s "
            f"({o['goodput_vs_peak']} of peak), shed {o['shed_per_s']}/s (p50 {o['shed_p50_ms']} ms, "
            f"p99 {o['shed_p99_ms']} ms; every non-2xx p99 {o['non_2xx_p99_ms']} ms), "
            f"excess shed within 50 ms: {o['excess_shed_within_50ms']}"
        )
    return line


def _auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def _get(path: str, token: str | None) -> dict[str, Any]:
    return {**_get_url(EDGE + path), "headers": _auth(token) if token else {}}


def _get_url(url: str) -> dict[str, Any]:
    return {"method": "GET", "url": url, "headers": {}, "body": ""}


def _post(path: str, token: str, body: dict[str, Any]) -> dict[str, Any]:
    headers = {**_auth(token), "content-type": "application/json"}
    return {"method": "POST", "url": EDGE + path, "headers": headers, "body": json.dumps(body)}


SCENARIOS = {
    "a_feed_rest": Bench.feed_rest,
    "a_feed_grpc": Bench.feed_grpc,
    "b_post": Bench.post,
    "c_fanout_lag": Bench.fanout_lag,
    "d_celebrity": Bench.celebrity,
    "e_mixed": Bench.mixed,
    "f_baseline": Bench.baseline,
    "k_threshold_curve": Bench.threshold_curve,
    "l_returning_reader": Bench.returning_reader,
    "m_burst": Bench.burst,
}
# Empties Redis, so it runs after everything else (the fan-out strategies too).
LAST = {"j_cold_start": Bench.cold_start}
LADDERS = ("a_feed_rest", "a_feed_grpc")
NEEDS_IDLE = (*LADDERS, "m_burst")  # they report CPU net of the idle stack


def run_strategies(bench: Bench) -> dict[str, Any]:
    from bench import strategies

    return strategies.compare(bench)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short runs, fewer rates (a few minutes)")
    parser.add_argument("--only", default="", help="comma-separated scenario prefixes, e.g. a,f")
    parser.add_argument("--strategies", action="store_true", help="also compare hybrid, push-all and pull-all")
    parser.add_argument("--label", default="", help="a name for this run (e.g. before-uvloop)")
    parser.add_argument(
        "--seed-args", default=SMALL_GRAPH, help=f"bench.seed arguments when there is no seeded graph ({SMALL_GRAPH})"
    )
    args = parser.parse_args()
    bench = Bench(args.quick, seed.ensure_seeded(args.seed_args.split()))
    wanted = [p for p in args.only.split(",") if p]
    results: dict[str, Any] = {
        "label": args.label or ("quick" if args.quick else "full"),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "instances": topology.instance_count(),
        },
        "seed": {k: bench.manifest[k] for k in ("users", "edges", "tweets")},
        "scenarios": {},
    }

    def run(scenarios: Mapping[str, Callable[[Bench], Any]]) -> None:
        for name, scenario in scenarios.items():
            if wanted and not any(name.startswith(p) for p in wanted):
                continue
            print(f"== {name}", flush=True)
            started = time.monotonic()
            outcome = scenario(bench)
            value = [s.row() for s in outcome] if isinstance(outcome, list) else outcome
            results["scenarios"][name] = value
            if name not in LADDERS and name not in LAST:  # those print a line per step as they go
                print(json.dumps(value, default=str)[:600], flush=True)
            print(f"   ({time.monotonic() - started:.0f}s)", flush=True)

    # Measured first, where a run needs it: its windows (half a minute) between a scenario's
    # warm-up and its first step let caches the warm-up relied on expire in that step
    # (readers' like states live 60 s from their creation, maybe by the run before: run
    # stop25c's first step refilled every reader's, 1.8 ms of tweet_svc CPU per read).
    if any(not wanted or any(name.startswith(p) for p in wanted) for name in NEEDS_IDLE):
        bench.idle_cores()
    run(SCENARIOS)
    if args.strategies:
        results["strategies"] = run_strategies(bench)
    run(LAST)
    if bench.idle is not None:
        results["idle"] = bench.idle
    curve = results["scenarios"].get("k_threshold_curve")
    if curve and curve.get("points"):
        print(f"plot: {threshold.plot(curve, RESULTS / (results['label'] + '-threshold.png')).relative_to(ROOT)}")
    # Only a run of every scenario replaces the table in docs/BENCHMARKS.md.
    path = report.write(results, RESULTS, update_doc=not wanted)
    print(f"results: {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
