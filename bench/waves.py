"""Cache expiry waves under a steady feed load, the like-count one apart from the
recent-ids one (docs/BENCHMARKS.md, "Like counts rebuilt after the read").

    python -m bench.waves [--rate 750] [--seconds 50] [--lifetime 90 --seconds 80]

A warm-up fills every cache the readers' pages use at once, so each cache's
lifetime ends for all of them at once too. This warms the bench's 100 readers,
drops the like counts 15 s later and warms them again, then reads their home
feeds through the edge at a steady rate: the authors' recent-ids sets
(CHIRP_AUTHOR_RECENT_CACHE_SECONDS, 30 s) reach the end of their lifetime about
10 s in, the like counts (CHIRP_LIKE_COUNT_CACHE_SECONDS, 30 s) about 30 s in.
It prints the calls the reads made to tweet_svc meanwhile, goodput per second,
and errors and latency in each window. Run it against `make bench`'s stack
(BENCH_ENV) after `make seed`; run it on each commit to compare, alternated.

Each reader's like states (`ul:`, common/tweet_cache.py: 60 s at most,
spread by the reader's id) and hidden-author set (HIDDEN_SECONDS, 60 s) are
dropped before the warm-up, so the warm-up fills them all, and a window covers
the end of their lifetime (about 25-46 s in). The calls count tweet_svc's
ListLikedTweetIds and graph_svc's ListHiddenAuthorIds.

Tweet bodies and follow lists live minutes (CHIRP_TWEET_CACHE_SECONDS,
CHIRP_FOLLOWING_CACHE_SECONDS, 300 s). To bring the end of their lifetime into a
run, start the stack with both set to the same shorter value and pass it as
`--lifetime`: the readers' bodies and follow lists are then dropped before the
warm-up, so the warm-up fills them all, and a window covers the end of their
lifetime (its last fifth, and 3 s either side). The calls count tweet_svc's
BatchGetTweets and graph_svc's ListFollowingIds too.
"""

from __future__ import annotations

import argparse
import math
import re
import time
from collections.abc import Sequence

import httpx
import redis

from bench import seed
from bench.load import OK, Outcome, http_run, percentile
from bench.run import Bench, _get
from common.hidden import HIDDEN_REFRESH_FRACTION, HIDDEN_SECONDS
from common.keys import feed_key, tweet_key
from common.tweet_cache import LIKED_SECONDS, LIKED_SPREAD
from infra import topology

READERS = 100
APART_SECONDS = 15.0
# (label, from s, to s) of the run, by each request's scheduled start.
WINDOWS = (("recent-ids lifetime ends", 8, 20), ("like-count lifetime ends", 24, 36), ("after", 38, 45))
# (service, method) of the calls the reads make to fill a cache.
CALLS = (
    ("tweet_svc", "BatchGetLikeCounts"),
    ("tweet_svc", "ListRecentTweetIds"),
    ("tweet_svc", "BatchGetTweets"),
    ("graph_svc", "ListFollowingIds"),
    ("tweet_svc", "ListLikedTweetIds"),
    ("graph_svc", "ListHiddenAuthorIds"),
)
# The window starts this share of the lifetime early: a change that spreads the fills'
# lifetimes over the last fifth of the setting (tried in stop 40, docs/BENCHMARKS.md) is
# measured over the same stretch as the fixed lifetimes it would replace.
LIFETIME_SPREAD = 0.2


def service_calls() -> dict[str, float]:
    """Calls the services' instances answered so far, by method."""
    totals = {method: 0.0 for _, method in CALLS}
    for service in topology.SERVICES:
        methods = [method for name, method in CALLS if name == service.name]
        if not methods:
            continue
        for instance in topology.instances(service):
            text = httpx.get(f"http://{topology.HOST}:{instance.metrics_port}/metrics", timeout=5).text
            for method in methods:
                pattern = r"grpc_server_handled_total\{[^}]*grpc_method=\"" + method + r"\"[^}]*\} (\S+)"
                totals[method] += sum(float(v) for v in re.findall(pattern, text))
    return totals


def drop(*patterns: str) -> int:
    """Deletes every cached key matching these patterns (single topology); returns how many."""
    dropped = 0
    with redis.Redis(host=topology.HOST, port=topology.REDIS_PORT) as client:
        for pattern in patterns:
            keys = [k for k in client.scan_iter(match=pattern, count=1000)]
            for start in range(0, len(keys), 500):
                dropped += client.delete(*keys[start : start + 500])
    return dropped


def prefix(key: str) -> str:
    """The SCAN pattern of every key shaped like `key` (made for id 0)."""
    return key[:-1] + "*"


def lifetime_window(lifetime: float, warmed_before_run: float) -> tuple[str, int, int]:
    """The run's window where the warm-up's bodies and follow lists reach the end of their
    lifetime, the warm-up having ended `warmed_before_run` seconds before the run began."""
    start = lifetime * (1 - LIFETIME_SPREAD) - warmed_before_run - 3
    end = lifetime - warmed_before_run + 3
    return "bodies' and follow lists' lifetime ends", max(0, math.floor(start)), max(0, math.ceil(end))


def per_reader_window(warmed_before_run: float) -> tuple[str, int, int]:
    """The run's window where the readers' like states (`ul:`, LIKED_SECONDS, spread over
    its last LIKED_SPREAD) and hidden-author sets (HIDDEN_SECONDS), all filled by the
    warm-up, reach the end of their lifetime."""
    start = (
        min(LIKED_SECONDS * (1 - LIKED_SPREAD), HIDDEN_SECONDS * (1 - HIDDEN_REFRESH_FRACTION)) - warmed_before_run - 3
    )
    end = max(LIKED_SECONDS, HIDDEN_SECONDS) - warmed_before_run + 3
    return "like states' and hidden sets' lifetime ends", max(0, math.floor(start)), max(0, math.ceil(end))


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
    parser.add_argument("--seconds", type=float, default=50.0)
    parser.add_argument(
        "--lifetime",
        type=float,
        default=None,
        help="the stack's CHIRP_TWEET_CACHE_SECONDS and CHIRP_FOLLOWING_CACHE_SECONDS, set alike",
    )
    args = parser.parse_args(argv)
    bench = Bench(True, seed.ensure_seeded([]))
    readers = bench.readers(READERS)
    targets = [_get("/v1/feed?page_size=20", token) for _, token in readers]
    windows = list(WINDOWS)
    if args.lifetime is not None:
        dropped = drop(prefix(tweet_key("body", 0)), prefix(feed_key("following", 0)))
        print(f"dropped {dropped} bodies and follow lists before the warm-up", flush=True)
    # So that the warm-up fills every reader's like states and hidden-author set, and
    # their lifetimes end in a known window of the run, whatever the run before left.
    dropped = drop(prefix(tweet_key("liked", 0)), "hid:{*")
    print(f"dropped {dropped} like states and hidden-author sets before the warm-up", flush=True)
    bench.warm(readers)
    warmed = time.monotonic()
    time.sleep(APART_SECONDS)
    print(f"dropped {drop(prefix(tweet_key('like_count', 0)))} like counts, warming them again", flush=True)
    bench.warm(readers)
    before = service_calls()
    windows.append(per_reader_window(time.monotonic() - warmed))
    if args.lifetime is not None:
        windows.append(lifetime_window(args.lifetime, time.monotonic() - warmed))
    outcome = http_run(targets, args.rate, args.seconds)
    after = service_calls()
    print("calls during the run: " + ", ".join(f"{m} {after[m] - before[m]:.0f}" for m in before))
    seconds = int(args.seconds)
    ok = [0] * seconds
    for i, kind in enumerate(outcome.kinds):
        if kind == OK and int(i / args.rate) < seconds:
            ok[int(i / args.rate)] += 1
    print("ok per second: " + " ".join(str(n) for n in ok))
    for label, start, end in windows:
        if end <= seconds:
            print(f"{start}-{end} s ({label}): {describe(outcome, args.rate, start, end)}")


if __name__ == "__main__":
    main()
