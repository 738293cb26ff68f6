"""The tweet cache contract (common/tweet_cache.py): bodies encoded once by tweet_svc,
read and assembled into a feed page by feed_svc from their bytes alone."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime

from chirp.feed.v1 import feed_pb2
from chirp.tweet.v1 import tweet_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from redis.exceptions import ResponseError

from common.keys import TWEET_DELETED, tweet_key
from common.tweet_cache import (
    ALL,
    COUNT_FIELDS,
    RECENT_GRACE_SECONDS,
    TOP,
    author_of,
    count_due,
    decode_body,
    encode_body,
    parse_reads,
    parse_recent,
    queue_reads,
    recent_due,
    response_bytes,
    with_viewer_fields,
)
from tests.unit.test_redis_cluster_safety import FakeRedis, client, record
from tweet_svc.cache import TweetCache

CREATED_MS = 1_764_000_000_123


class FakePipelineRecorder:
    def __init__(self) -> None:
        self.queued: list[tuple[str, tuple[object, ...]]] = []

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args: self.queued.append((name, args))


def expected(tweet_id: int, author_id: int, text: str, like_count: int, liked: bool) -> tweet_pb2.Tweet:
    created = Timestamp(seconds=CREATED_MS // 1000, nanos=CREATED_MS % 1000 * 1_000_000)
    return tweet_pb2.Tweet(
        tweet_id=tweet_id,
        author_id=author_id,
        author_username="ada_99",
        text=text,
        created_at=created,
        like_count=like_count,
        liked_by_me=liked,
    )


def test_a_page_assembled_from_encoded_bodies_parses_as_the_response_built_from_messages() -> None:
    rows = [
        (7_400_000_000_000_000_001, 42, "héllo 👋\nworld", 0, False),
        (7_400_000_000_000_000_002, 2**40, "x" * 140, 1, True),
        (3, 1, "", 2**31 - 1, False),
    ]
    encoded = [with_viewer_fields(encode_body(t, a, "ada_99", text, CREATED_MS), n, f) for t, a, text, n, f in rows]

    for token in ("", "opaque-token_123"):
        page = feed_pb2.GetHomeFeedResponse.FromString(response_bytes(encoded, token))
        assert page == feed_pb2.GetHomeFeedResponse(tweets=[expected(*row) for row in rows], next_page_token=token)


def test_the_author_is_read_from_the_bytes_and_other_values_are_not_bodies() -> None:
    body = encode_body(7_400_000_000_000_000_001, 2**40 + 5, "ada", "hi", CREATED_MS)
    assert author_of(body) == 2**40 + 5
    old_json = json.dumps([5, "ada", "hi", CREATED_MS]).encode()  # the `tw:` layout
    for other in (old_json, TWEET_DELETED, b"", body[:1]):
        assert author_of(other) is None
        assert decode_body(other) is None
    for tweet_id, author_id in ((1, 1), (127, 128), (2**63 - 1, 2**63 - 1), (300, 0x7F)):
        assert author_of(encode_body(tweet_id, author_id, "ada", "hi", CREATED_MS)) == author_id
    head = encode_body(300, 2**35, "", "", 0)[:10]  # tweet_id (tag and 2 bytes), author_id (tag and 6)
    assert author_of(head) == 2**35
    assert author_of(head[:-1]) is None  # the author's varint cut short
    assert author_of(b"\x08" + b"\x80" * 10 + b"\x01\x10\x05") is None  # an eleven-byte tweet_id
    assert author_of(b"\x08\x01\x10" + b"\xff" * 9 + b"\x7f") is None  # ten bytes, beyond 64 bits
    assert author_of(b"\x08\x01\x10" + b"\xff" * 9 + b"\x01") == -1  # ten bytes: all 64 bits (an int64's -1)


def test_a_read_sorts_bodies_markers_counts_and_misses() -> None:
    body = encode_body(11, 5, "ada", "hi", CREATED_MS)
    ids = [11, 12, 13, 14]
    counts = [[b"3", b"2000"], [None, None], ResponseError("WRONGTYPE"), [b"-2", b"1000"]]
    replies = [body, TWEET_DELETED, b'[5, "ada", "hi", 1]', None, *counts]
    found = parse_reads(ids, replies, now_ms=1500)
    assert found.bodies == {11: body}
    assert found.deleted == {12}  # 13 (old JSON) and 14 are misses
    assert found.counts == {11: 3, 14: 0}  # WRONGTYPE is a miss; a count never goes below 0
    assert found.due == {14}  # past its refresh time: served, and to be rebuilt


def test_a_count_without_a_refresh_time_is_due() -> None:
    found = parse_reads([11], [None, [b"4", None]], now_ms=0)
    assert found.counts == {11: 4} and found.due == {11}
    assert not count_due(b"1001", 1000.0) and count_due(b"1000", 1000.0) and count_due(None, 0.0)


def test_the_viewers_flags_come_from_one_hmget_and_absent_ones_are_misses() -> None:
    fake = FakePipelineRecorder()
    queue_reads(fake, [11, 12, 13], viewer_id=5)
    assert fake.queued[-1] == ("hmget", (tweet_key("liked", 5), ["11", "12", "13"]))
    assert [name for name, _ in fake.queued].count("hmget") == 4  # three counts, then the flags
    replies: list[object] = [None] * 3 + [[None, None]] * 3 + [[b"7400000000000000001:1", None, b"0:0"]]
    found = parse_reads([11, 12, 13], replies)
    assert found.liked == {11} and found.not_liked == {13}  # 12: ask tweet_svc
    queue_reads(without := FakePipelineRecorder(), [11], viewer_id=0)
    assert without.queued == [("get", (tweet_key("body", 11),)), ("hmget", (tweet_key("like_count", 11), COUNT_FIELDS))]


def test_recent_ids_answer_only_when_the_set_covers_the_limit() -> None:
    assert parse_recent([ALL.encode(), b"30", b"20"], 5) == ([30, 20], True)
    assert parse_recent([ALL.encode(), b"30", b"20", b"10"], 2) == ([30, 20], False)
    assert parse_recent([TOP.encode(), b"30", b"20"], 2) == ([30, 20], False)
    assert parse_recent([TOP.encode(), b"30"], 2) is None
    assert parse_recent([b"30", b"20"], 1) is None  # no marker: written by a post, never filled
    assert parse_recent([], 1) is None


async def test_tweet_svc_writes_what_the_contract_reads_and_treats_old_values_as_misses() -> None:
    fake = FakeRedis()
    cache = TweetCache(client(fake), ttl_seconds=60)
    tweet = record(7_400_000_000_000_000_009, author_id=77)
    await cache.put([tweet])

    raw = fake.data[tweet_key("body", tweet.tweet_id)]
    assert author_of(raw) == 77
    assert parse_reads([tweet.tweet_id], [raw, None]).bodies == {tweet.tweet_id: raw}
    assert (await cache.get([tweet.tweet_id]))[0] == {tweet.tweet_id: tweet}

    old = record(7_400_000_000_000_000_010)
    created_ms = int(datetime(2026, 1, 2, tzinfo=UTC).timestamp() * 1000)
    fake.data[tweet_key("body", old.tweet_id)] = json.dumps([7, "ada", "x", created_ms]).encode()
    assert await cache.get([old.tweet_id]) == ({}, set())  # a miss, not a crash


def test_a_recent_ids_set_is_due_once_its_remaining_life_is_the_grace_or_less() -> None:
    grace_ms = int(RECENT_GRACE_SECONDS * 1000)
    assert recent_due(grace_ms) and recent_due(0) and not recent_due(grace_ms + 1)
    assert recent_due(-1)  # no expiry: renewed, which sets one
    assert not recent_due(-2)  # gone: a reader's fill makes it
