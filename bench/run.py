"""Benchmark scenarios against the running stack (after `make seed`).

    python -m bench.run [--quick] [--only a,b,...] [--strategies]

Scenarios: (a) cached home-feed read through Envoy REST and gRPC; (b) tweet
post; (c) fan-out delivery lag (post to visible in a follower's feed) under a
background post load; (d) a celebrity post read by its followers; (e) mixed
60% home feed / 30% user timeline / 10% post; (f) the raw Redis and CQL calls
one cached home-feed read needs, from Python, as the baseline. With
--strategies, hybrid, push-all and pull-all fan-out are compared on the same
graph. Results go to bench/results/ (JSON, Markdown, PNG) and the table into
docs/BENCHMARKS.md.
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
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench import baseline, report
from bench.load import Stats, grpc_load, http_load
from infra import topology

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / ".state" / "bench" / "seed.json"
RESULTS = ROOT / "bench" / "results"
EDGE = f"http://{topology.HOST}:{topology.EDGE_PORT}"
GRPC_EDGE = f"{topology.HOST}:{topology.EDGE_PORT}"


class Bench:
    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.manifest = json.loads(MANIFEST.read_text())
        self.client = httpx.Client(base_url=EDGE, timeout=10)
        self.rng = random.Random(11)
        self.seconds = 5.0 if quick else 12.0
        self.tokens: dict[int, str] = {}

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

    # ---- scenarios ---------------------------------------------------------------

    def feed_rest(self) -> list[Stats]:
        readers = self.readers(100 if self.quick else 400)
        self.warm(readers)
        targets = [_get("/v1/feed?page_size=20", token) for _, token in readers]
        rates = [100, 200] if self.quick else [50, 100, 150, 200, 250]
        return [http_load(targets, rate, self.seconds) for rate in rates]

    def feed_grpc(self) -> list[Stats]:
        readers = self.readers(1)
        self.warm(readers)
        metadata = {"authorization": f"Bearer {readers[0][1]}"}
        rates = [100, 200] if self.quick else [100, 200, 300, 400]
        return [
            grpc_load(
                "chirp.feed.v1.FeedService.GetHomeFeed", {"page_size": 20}, metadata, GRPC_EDGE, rate, self.seconds
            )
            for rate in rates
        ]

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
        return asyncio.run(baseline.measure([uid for uid, _ in readers], 500 if self.quick else 3000))

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


def _auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def _get(path: str, token: str | None) -> dict[str, Any]:
    return {"method": "GET", "url": EDGE + path, "headers": _auth(token) if token else {}, "body": ""}


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
}


def run_strategies(bench: Bench) -> dict[str, Any]:
    from bench import strategies

    return strategies.compare(bench)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short runs, fewer rates (under 2 minutes)")
    parser.add_argument("--only", default="", help="comma-separated scenario prefixes, e.g. a,f")
    parser.add_argument("--strategies", action="store_true", help="also compare hybrid, push-all and pull-all")
    parser.add_argument("--label", default="", help="a name for this run (e.g. before-uvloop)")
    args = parser.parse_args()
    if not MANIFEST.exists():
        print("no seeded graph: run `make seed` first", file=sys.stderr)
        return 1
    bench = Bench(args.quick)
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
    for name, scenario in SCENARIOS.items():
        if wanted and not any(name.startswith(p) for p in wanted):
            continue
        print(f"== {name}", flush=True)
        started = time.monotonic()
        outcome = scenario(bench)
        value = [s.row() for s in outcome] if isinstance(outcome, list) else outcome
        results["scenarios"][name] = value
        print(json.dumps(value, default=str)[:600], flush=True)
        print(f"   ({time.monotonic() - started:.0f}s)", flush=True)
    if args.strategies:
        results["strategies"] = run_strategies(bench)
    # Only a run of every scenario replaces the table in docs/BENCHMARKS.md.
    path = report.write(results, RESULTS, update_doc=not wanted)
    print(f"results: {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
