"""run_reads (common/cache.py) packs its commands with hiredis: the bytes must be the ones
redis-py's async connection packs for the same commands, for every command ReadBatch
records and every kind of argument the read path passes (text, ids, scores, bounds)."""

from __future__ import annotations

from redis.asyncio.connection import Connection

from common.cache import ReadBatch, pack_reads
from common.hidden import hidden_key
from common.keys import feed_key, tweet_key
from common.tweet_cache import queue_reads


def test_the_reads_pack_to_the_bytes_redis_py_sends() -> None:
    batch = ReadBatch()
    batch.get(feed_key("following", 7))
    batch.get(hidden_key(7))
    batch.hget(tweet_key("like_count", 2**62), "n")
    batch.hmget(tweet_key("liked", 7), ["1", "2", "é"])
    batch.zscore(feed_key("timeline", 7), "built")
    batch.zrevrange(tweet_key("author_recent", 7), 0, -1)
    batch.pttl(tweet_key("author_recent", 7))
    batch.zrangebyscore(feed_key("timeline", 7), 1764000000000, 1764000000000.5)
    batch.zrangebyscore(feed_key("timeline", 7), float("-inf"), float("inf"))
    batch.zrevrangebyscore(feed_key("timeline", 7), "(1764000000000", "-inf", 0, 21)
    queue_reads(batch, [2**63 - 1, 1], viewer_id=7)

    packed = pack_reads(batch.commands)

    assert packed == b"".join(Connection().pack_commands(batch.commands))
    assert packed.startswith(b"*2\r\n$3\r\nGET\r\n$5\r\nfo2:7\r\n*2\r\n$3\r\nGET\r\n$7\r\nhid:{7}\r\n")
    assert packed.count(b"\r\n*") == len(batch.commands) - 1
