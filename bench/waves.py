"""Cache expiry waves under a steady feed load, the like-count one apart from the
recent-ids one (docs/BENCHMARKS.md, "Like counts rebuilt after the read").

    python -m bench.waves [--rate 750] [--seconds 45]

A warm-up fills every cache the readers' pages use at once, so each cache's
lifetime ends for all of them at once too. This warms the bench's 100 readers,
drops the like counts 15 s later and warms them again, then reads their home
feeds through the edge at a steady rate: the authors' recent-ids sets
(CHIRP_AUTHOR_RECENT_CACHE_SECONDS, 30 s) reach the end of their lifetime about
10 s in, the like counts (CHIRP_LIKE_COUNT_CACHE_SECONDS, 30 s) about 30 s in.
It prints the calls the reads made to tweet_svc meanwhile, goodput per second,
and errors and latency in each window. Run it against `make bench`'s stack
(BENCH_ENV) after `make seed`; run it on each commit to compare, alternated.
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Sequence

import httpx
import redis

from bench import seed
from bench.load import OK, Outcome, http_run, percentile
from bench.run import Bench, _get
from common.keys import tweet_key
from infra import topology

READERS = 100
APART_SECONDS = 15.0
# (label, from s, to s) of the run, by each request's scheduled start.
WINDOWS = (("recent-ids lifetime ends", 8, 20), ("like-count lifetime ends", 24, 36), ("after", 38, 45))
CALLS = ("BatchGetLikeCounts", "ListRecentTweetIds")


def tweet_svc_calls() -> dict[str, float]:
    """Calls tweet_svc's instances answered so far, by method."""
    service = next(s for s in topology.SERVICES if s.name == "tweet_svc")
    totals = dict.fromkeys(CALLS, 0.0)
    for instance in topology.instances(service):
        text = httpx.get(f"http://{topology.HOST}:{instance.metrics_port}/metrics", timeout=5).text
        for method in CALLS:
            pattern = r"grpc_server_handled_total\{[^}]*grpc_method=\"" + method + r"\"[^}]*\} (\S+)"
            totals[method] += sum(float(v) for v in re.findall(pattern, text))
    return totals


def drop_like_counts() -> int:
    """Deletes every cached like count (single topology); returns how many."""
    dropped = 0
    with redis.Redis(host=topology.HOST, port=topology.REDIS_PORT) as client:
        keys = [k for k in client.scan_iter(match=tweet_key("like_count", 0)[:-1] + "*", count=1000)]
        for start in range(0, len(keys), 500):
            dropped += client.delete(*keys[start : start + 500])
    return dropped


def describe(outcome: Outcome, rate: float, start: int, end: int) -> str:
    picked = [i for i in range(len(outcome.kinds)) if start <= i / rate < end]
    latencies = sorted(outcome.latencies_ms[i] for i in picked)
    errors = sum(1 for i in picked if outcome.kinds[i] != OK)
    per_second = [
        sum(1 for i in picked if int(i / rate) == second and outcome.kinds[i] == OK) for second in range(start, end)
    ]
    return (
        f"{errors} errors, p50 {percentile(latencies, 0.5):.1f} ms, p99 {percentile(latencies, 0.99):.1f} ms, "
        f"max {latencies[-1]:.0f} ms, slowest second {min(per_second)} ok"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=750.0, help="home-feed reads a second")
    parser.add_argument("--seconds", type=float, default=45.0)
    args = parser.parse_args(argv)
    bench = Bench(True, seed.ensure_seeded([]))
    readers = bench.readers(READERS)
    targets = [_get("/v1/feed?page_size=20", token) for _, token in readers]
    bench.warm(readers)
    time.sleep(APART_SECONDS)
    print(f"dropped {drop_like_counts()} like counts, warming them again", flush=True)
    bench.warm(readers)
    before = tweet_svc_calls()
    outcome = http_run(targets, args.rate, args.seconds)
    after = tweet_svc_calls()
    print("calls to tweet_svc during the run: " + ", ".join(f"{m} {after[m] - before[m]:.0f}" for m in CALLS))
    seconds = int(args.seconds)
    ok = [0] * seconds
    for i, kind in enumerate(outcome.kinds):
        if kind == OK and int(i / args.rate) < seconds:
            ok[int(i / args.rate)] += 1
    print("ok per second: " + " ".join(str(n) for n in ok))
    for label, start, end in WINDOWS:
        if end <= seconds:
            print(f"{start}-{end} s ({label}): {describe(outcome, args.rate, start, end)}")


if __name__ == "__main__":
    main()
