"""Fan-out strategies side by side on the same graph: hybrid (the default),
push to everyone, pull everything. For each, the stack's feed processes are
restarted with CHIRP_FANOUT_STRATEGY, a fixed set of posts (two by the top
celebrity, twenty by normal authors) is fanned out, and home feeds are read
at a fixed rate below saturation. Each strategy starts once the fan-out
workers have caught up with everything before it, so backlog from earlier
scenarios is not counted."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.load import http_load
from common.cache import connect_redis
from common.cql import CqlSession
from common.kafka import TOPIC_FOLLOWS, TOPIC_TWEETS, group_offsets
from feed_svc.fanout_worker import GROUP as FANOUT_GROUP
from infra import topology

if TYPE_CHECKING:
    from bench.run import Bench

STRATEGIES = ("hybrid", "push", "pull")
FEED_RATE = 60  # home-feed reads per second: well below where the 2-core stack saturates
FANOUT_TOPICS = (TOPIC_TWEETS, TOPIC_FOLLOWS)


def fanout_totals() -> tuple[float, float]:
    """(timelines written, tweets handled) summed over the fan-out workers."""
    written = handled = 0.0
    worker = next(w for w in topology.WORKERS if w.name == "fanout_worker")
    for inst in topology.instances(worker):
        text = httpx.get(f"http://{topology.HOST}:{inst.metrics_port}/metrics", timeout=5).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "chirp_fanout_pushed_per_tweet_sum":
                    written += sample.value
                elif sample.name == "chirp_fanout_pushed_per_tweet_count":
                    handled += sample.value
    return written, handled


def fanout_backlog() -> int:
    offsets = group_offsets(f"{topology.HOST}:{topology.KAFKA_PORT}", FANOUT_GROUP, FANOUT_TOPICS)
    return sum(end - done for done, end in offsets.values())


def wait_drained(within_seconds: float) -> float:
    """Wait until the fan-out group has applied every event on Kafka; returns seconds waited."""
    started = time.monotonic()
    while fanout_backlog() > 0:
        if time.monotonic() - started > within_seconds:
            raise TimeoutError(f"fan-out backlog not drained in {within_seconds}s")
        time.sleep(0.25)
    return time.monotonic() - started


def restart(strategy: str) -> None:
    env = {**os.environ, "CHIRP_FANOUT_STRATEGY": strategy}
    subprocess.run([sys.executable, "-m", "infra.stack", "up"], env=env, check=True, stdout=subprocess.DEVNULL)


async def reset_registry(celebrities: list[int]) -> None:
    """Pull-all marks every poster a celebrity; put the registry back as the graph says."""
    cql = await CqlSession.connect([topology.HOST], topology.CQL_PORT, "chirp", 10.0)
    await cql.execute("TRUNCATE celebrities")
    for author in celebrities:
        await cql.execute("INSERT INTO celebrities (shard, author_id) VALUES (0, %s)", (author,))
    cql.close()
    redis = connect_redis(f"redis://{topology.HOST}:{topology.REDIS_PORT}/0")
    await redis.delete("celebrities")
    await redis.aclose()


def compare(bench: Bench) -> dict[str, Any]:
    from bench.run import _auth, _get

    celebrity = bench.manifest["celebrities"][0]
    ((_, celeb_token),) = bench.login([celebrity])
    authors = bench.authors(20)
    readers = bench.readers(100)
    results: dict[str, Any] = {}
    for strategy in STRATEGIES:
        print(f"== strategy {strategy}", flush=True)
        restart(strategy)
        wait_drained(600)
        written0, handled0 = fanout_totals()
        started = time.monotonic()
        posts = [celeb_token, celeb_token, *[t for _, t in authors]]
        for token in posts:
            bench.client.post("/v1/tweets", json={"text": f"{strategy} strategy post"}, headers=_auth(token))
        time.sleep(0.5)  # the posts' events are on Kafka by now (published before the reply, or just after)
        wait_drained(600)
        written, handled = fanout_totals()
        fanout_seconds = round(time.monotonic() - started, 1)
        for _, token in readers:
            bench.client.get("/v1/feed", headers=_auth(token))
        feed = http_load([_get("/v1/feed?page_size=20", t) for _, t in readers], FEED_RATE, bench.seconds)
        results[strategy] = {
            "posts": len(posts),
            "writes_per_post": round((written - written0) / max(1.0, handled - handled0), 1),
            "fanout_seconds": fanout_seconds,
            "feed": feed.row(),
        }
        print(results[strategy], flush=True)
    asyncio.run(reset_registry([c["user_id"] for c in bench.manifest["celebrities"]]))
    restart("hybrid")
    return results
