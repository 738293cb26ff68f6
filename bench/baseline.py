"""Scenario (f): the raw Redis and CQL calls one cached home-feed read needs,
made from Python with the same drivers, without any service in between.

A cached read is: the follow list (Redis GET), the celebrity registry
(Redis pipeline), the pushed timeline (Redis pipeline), the celebrities'
recent ids (Redis MGET), the reader's own recent tweets (two CQL queries),
tweet bodies (Redis MGET) and like counts (pipelined HGET)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.load import percentile
from common.cache import connect_redis
from common.cql import CqlSession
from infra import topology


async def one_read(redis: Any, cql: CqlSession, q: dict[str, Any], user_id: int) -> None:
    following = await redis.get(f"fo:{user_id}")
    ids = [p.split(":")[0] for p in (following or b"").decode().split(",") if p]
    async with redis.pipeline(transaction=False) as pipe:
        pipe.sismember("celebrities", "built")
        pipe.smismember("celebrities", ids or ["0"])
        await pipe.execute()
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zscore(f"tl:{user_id}", "built")
        pipe.zrevrangebyscore(f"tl:{user_id}", "+inf", "-inf", start=0, num=31)
        _, members = await pipe.execute()
    await redis.mget([f"cel:{i}" for i in ids[:3]] or ["cel:0"])
    buckets = await cql.execute(q["buckets"], (user_id, 2**31 - 1, 64))
    if buckets:
        await cql.execute(q["recent"], (user_id, buckets[0].bucket, 50))
    tweet_ids = [int(m) for m in members if m != b"built"][:21]
    await redis.mget([f"tw:{t}" for t in tweet_ids] or ["tw:0"])
    async with redis.pipeline(transaction=False) as pipe:
        for t in tweet_ids or [0]:
            pipe.hget(f"lc:{t}", "n")  # like state hash (tweet_svc/cache.py)
        await pipe.execute()


async def measure(user_ids: list[int], reads: int) -> dict[str, Any]:
    redis = connect_redis(f"redis://{topology.HOST}:{topology.REDIS_PORT}/0")
    cql = await CqlSession.connect([topology.HOST], topology.CQL_PORT, "chirp", 5.0)
    q = {
        "buckets": await cql.prepare(
            "SELECT bucket FROM user_tweet_buckets WHERE author_id = ? AND bucket <= ? LIMIT ?"
        ),
        "recent": await cql.prepare("SELECT tweet_id FROM user_tweets WHERE author_id = ? AND bucket = ? LIMIT ?"),
    }
    # Latency: one read at a time.
    latencies: list[float] = []
    for n in range(reads):
        started = time.perf_counter()
        await one_read(redis, cql, q, user_ids[n % len(user_ids)])
        latencies.append((time.perf_counter() - started) * 1000)
    # Throughput: 32 reads in flight.
    started = time.perf_counter()
    done = 0

    async def worker(offset: int) -> None:
        nonlocal done
        for n in range(offset, reads, 32):
            await one_read(redis, cql, q, user_ids[n % len(user_ids)])
            done += 1

    await asyncio.gather(*(worker(i) for i in range(32)))
    elapsed = time.perf_counter() - started
    await redis.aclose()
    cql.close()
    latencies.sort()
    return {
        "reads": reads,
        "p50_ms": round(percentile(latencies, 0.5), 2),
        "p90_ms": round(percentile(latencies, 0.9), 2),
        "p99_ms": round(percentile(latencies, 0.99), 2),
        "p999_ms": round(percentile(latencies, 0.999), 2),
        "throughput_rps_32_in_flight": round(done / elapsed, 1),
    }
