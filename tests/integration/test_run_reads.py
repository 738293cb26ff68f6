"""common/cache.run_reads against the stack's Redis: the read path's pipelines sent
without redis-py's per-command layers must answer what a redis-py pipeline answers,
keep the connection in step after an error reply, and time out (then read as a miss)
when Redis does not answer."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from common.cache import RedisClient, connect_redis, run_reads
from common.tweet_cache import CachedTweets
from feed_svc.cache import FeedCache


def queue(pipe: Any, tag: str) -> None:
    pipe.get(f"rr:{tag}:s")
    pipe.get(f"rr:{tag}:absent")
    pipe.hget(f"rr:{tag}:h", "n")
    pipe.hmget(f"rr:{tag}:h", ["n", "gone", "m"])
    pipe.zscore(f"rr:{tag}:z", "b")
    pipe.zrevrange(f"rr:{tag}:z", 0, 1)
    pipe.zrevrangebyscore(f"rr:{tag}:z", "+inf", "-inf", start=0, num=2)
    pipe.zrangebyscore(f"rr:{tag}:z", 2, 3)
    pipe.hget(f"rr:{tag}:s", "n")  # WRONGTYPE: an error reply amid the others
    pipe.get(f"rr:{tag}:s")


@pytest.fixture
async def tag(redis: RedisClient) -> AsyncIterator[str]:
    tag = secrets.token_hex(4)
    await redis.set(f"rr:{tag}:s", b"body")
    await redis.hset(f"rr:{tag}:h", mapping={"n": "3", "m": "1:1"})
    await redis.zadd(f"rr:{tag}:z", {"a": 1, "b": 2, "c": 3})
    yield tag
    for key in ("s", "h", "z"):
        await redis.delete(f"rr:{tag}:{key}")


async def test_run_reads_answers_what_a_pipeline_answers(redis: RedisClient, tag: str) -> None:
    replies = await run_reads(redis, lambda pipe: queue(pipe, tag))

    async with redis.pipeline(transaction=False) as pipe:
        queue(pipe, tag)
        expected = await pipe.execute(raise_on_error=False)
    assert len(replies) == len(expected) == 10
    assert replies[:4] == expected[:4] == [b"body", None, b"3", [b"3", None, b"1:1"]]
    assert replies[4] is not None and float(replies[4]) == expected[4] == 2.0  # raw bytes, not redis-py's float
    assert replies[5:8] == expected[5:8] == [[b"c", b"b"], [b"c", b"b"], [b"b", b"c"]]
    assert isinstance(replies[8], ResponseError) and isinstance(expected[8], ResponseError)
    assert replies[9] == b"body"  # the reply after the error is still this command's: in step
    assert await run_reads(redis, lambda pipe: pipe.get(f"rr:{tag}:s")) == [b"body"]


async def silent_server() -> tuple[asyncio.Server, int]:
    """Accepts connections and never answers: a Redis that hangs."""

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(-1)
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_a_redis_that_does_not_answer_times_out_and_reads_as_a_miss() -> None:
    server, port = await silent_server()
    client = connect_redis(f"redis://127.0.0.1:{port}", timeout_seconds=0.2)
    try:
        with pytest.raises(RedisTimeoutError):
            await run_reads(client, lambda pipe: queue(pipe, "hung"))
        cache = FeedCache(client, timeline_size=20, following_ttl=30, celebrity_ttl=5)
        assert await cache.tweets([1, 2], viewer_id=7) == CachedTweets()
        assert (await cache.home_reads(7, None, 31, 21)).timeline is None
    finally:
        await client.aclose()
        server.close()
