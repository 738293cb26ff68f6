"""Scenario (f): the raw Redis calls one cached home-feed read needs, made
from Python with the same driver, without any service in between.

A cached read is three Redis round trips (feed_svc/home_feed.py): the follow
list and the hidden authors; the pushed timeline and the reader's own (and a
few followees') newest tweet ids; then the bodies, like counts and the
reader's like flags of the candidates. No CQL: a cached read needs none."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.load import percentile
from common.cache import connect_redis
from common.hidden import hidden_key
from common.keys import feed_key, tweet_key
from infra import topology

IN_FLIGHT = 32
PACED_RPS = 100  # the REST feed step at this rate (the quick ladder's first) is set against this
PULLED = 3  # followees whose recent ids a read with celebrities would pull


async def one_read(redis: Any, user_id: int) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        pipe.get(feed_key("following", user_id))
        pipe.get(hidden_key(user_id))
        following, _ = await pipe.execute()
    ids = [int(p.split(":")[0]) for p in (following or b"").decode().split(",") if p.split(":")[0].isdigit()]
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zrevrangebyscore(feed_key("timeline", user_id), "+inf", "-inf", start=0, num=31)
        for author in [user_id, *ids[:PULLED]]:
            pipe.zrevrange(tweet_key("author_recent", author), 0, 22)
        members, *_ = await pipe.execute()
    tweet_ids = [int(m) for m in members if m.isdigit()][:21] or [0]
    async with redis.pipeline(transaction=False) as pipe:
        for t in tweet_ids:
            pipe.get(tweet_key("body", t))
        for t in tweet_ids:
            pipe.hget(tweet_key("like_count", t), "n")
        pipe.hmget(tweet_key("liked", user_id), [str(t) for t in tweet_ids])
        await pipe.execute(raise_on_error=False)


async def measure(user_ids: list[int], reads: int) -> dict[str, Any]:
    # A connection per read in flight: the services' smaller pool would make this
    # measure queueing in the client, not the calls.
    redis = connect_redis(f"redis://{topology.HOST}:{topology.REDIS_PORT}/0", max_connections=IN_FLIGHT)
    # Latency: one read at a time.
    latencies: list[float] = []
    for n in range(reads):
        started = time.perf_counter()
        await one_read(redis, user_ids[n % len(user_ids)])
        latencies.append((time.perf_counter() - started) * 1000)
    # Paced: one read started every 1/PACED_RPS s whether or not the last has
    # finished, as the feed ladder's first step offers its reads; between reads
    # the client and Redis sleep and wake up again, which back to back they do not.
    paced: list[float] = []

    async def timed(user_id: int, due: float) -> None:
        # From when the read was due, as the HTTP load generator times a request.
        await one_read(redis, user_id)
        paced.append((time.perf_counter() - due) * 1000)

    tasks = []
    due = time.perf_counter()
    for n in range(reads):
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        tasks.append(asyncio.create_task(timed(user_ids[n % len(user_ids)], due)))
        due += 1 / PACED_RPS
    await asyncio.gather(*tasks)
    paced.sort()
    # Throughput: IN_FLIGHT reads in flight.
    started = time.perf_counter()
    done = 0

    async def worker(offset: int) -> None:
        nonlocal done
        for n in range(offset, reads, IN_FLIGHT):
            await one_read(redis, user_ids[n % len(user_ids)])
            done += 1

    await asyncio.gather(*(worker(i) for i in range(IN_FLIGHT)))
    elapsed = time.perf_counter() - started
    await redis.aclose()
    latencies.sort()
    return {
        "reads": reads,
        "p50_ms": round(percentile(latencies, 0.5), 2),
        "p90_ms": round(percentile(latencies, 0.9), 2),
        "p99_ms": round(percentile(latencies, 0.99), 2),
        "p999_ms": round(percentile(latencies, 0.999), 2),
        "throughput_rps_32_in_flight": round(done / elapsed, 1),
        "paced_rps": PACED_RPS,
        "paced_p50_ms": round(percentile(paced, 0.5), 2),
    }
