"""common/cache.run_reads against the stack's Redis: the read path's pipelines sent
without redis-py's per-command layers must answer what a redis-py pipeline answers,
keep the connection in step after an error reply and after a batch cut short, and
time out (then read as a miss) when Redis does not answer."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
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


async def test_replies_that_span_many_socket_reads_come_back_in_order(redis: RedisClient, tag: str) -> None:
    values = [secrets.token_bytes(1500) for _ in range(300)]  # 450 KB of replies: several reads of the socket
    await redis.mset({f"rr:{tag}:v{i}": v for i, v in enumerate(values)})
    try:

        def reads(pipe: Any) -> None:
            for i in range(len(values)):
                pipe.get(f"rr:{tag}:v{i}")
                pipe.hget(f"rr:{tag}:s", "n")  # an error reply between every two values

        replies = await run_reads(redis, reads)
        assert replies[::2] == values
        assert all(isinstance(r, ResponseError) for r in replies[1::2])
        assert await run_reads(redis, lambda pipe: pipe.get(f"rr:{tag}:s")) == [b"body"]  # nothing left unread
    finally:
        await redis.delete(*(f"rr:{tag}:v{i}" for i in range(len(values))))


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


def commands(data: bytes) -> list[list[bytes]]:
    """The commands of a packet of the Redis protocol (arrays of bulk strings)."""
    lines, found, i = data.split(b"\r\n"), [], 0
    while i < len(lines) and lines[i].startswith(b"*"):
        n = int(lines[i][1:])
        found.append([lines[i + 2 + 2 * j] for j in range(n)])
        i += 1 + 2 * n
    return found


async def late_server() -> tuple[asyncio.Server, int]:
    """Answers GET with its key and anything else (the connection's handshake) with
    OK; but of the first batch of GETs it answers the first at once and the rest only
    0.5 s later: a reader that gave up in between and kept that connection would read
    them as the next batch's."""
    late = True

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal late
        while data := await reader.read(65536):
            sent = commands(data)
            replies = [b"$%d\r\n%s\r\n" % (len(a[1]), a[1]) if a[0] == b"GET" else b"+OK\r\n" for a in sent]
            if late and [a[0] for a in sent] == [b"GET", b"GET"]:
                late = False
                writer.write(replies[0])
                await asyncio.sleep(0.5)
                replies = replies[1:]
            writer.write(b"".join(replies))
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def two_gets(first: str, second: str) -> Callable[[Any], None]:
    def queue(pipe: Any) -> None:
        pipe.get(first)
        pipe.get(second)

    return queue


async def test_replies_cut_short_are_never_read_as_the_next_batchs() -> None:
    server, port = await late_server()
    client = connect_redis(f"redis://127.0.0.1:{port}", timeout_seconds=0.2)
    try:
        # Timed out after its first reply: tried again on a new connection, in step.
        assert await run_reads(client, two_gets("k1", "k2")) == [b"k1", b"k2"]
        await asyncio.sleep(0.5)  # the late reply has reached the old connection, were it open
        assert await run_reads(client, two_gets("k3", "k4")) == [b"k3", b"k4"]
    finally:
        await client.aclose()
        server.close()

    server, port = await late_server()
    client = connect_redis(f"redis://127.0.0.1:{port}", timeout_seconds=2.0)
    try:
        # Cancelled after its first reply (a request past its deadline): not tried again,
        # and its connection goes back to the pool closed.
        batch = asyncio.ensure_future(run_reads(client, two_gets("k1", "k2")))
        await asyncio.sleep(0.2)
        batch.cancel()
        with pytest.raises(asyncio.CancelledError):
            await batch
        # At once: the late reply is not in yet, so the pool's own check of a
        # connection it lends (unread data) could not tell.
        assert await run_reads(client, two_gets("k3", "k4")) == [b"k3", b"k4"]
    finally:
        await client.aclose()
        server.close()


async def test_a_redis_that_closes_mid_batch_is_a_connection_error() -> None:
    async def close_early(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            sent = commands(data)
            if sent[0][0] == b"GET":
                writer.write(b"$2\r\nk1\r\n")  # one reply of two, then gone
                await writer.drain()
                break
            writer.write(b"+OK\r\n" * len(sent))
        writer.close()

    server = await asyncio.start_server(close_early, "127.0.0.1", 0)
    client = connect_redis(f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}", timeout_seconds=1.0)
    try:
        with pytest.raises(RedisConnectionError):
            await run_reads(client, two_gets("k1", "k2"))
    finally:
        await client.aclose()
        server.close()
