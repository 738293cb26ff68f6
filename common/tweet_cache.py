"""The tweet cache contract, written down once: tweet_svc fills it and marks deletes
(tweet_svc/cache.py), feed_svc reads it on the home-feed path without a hop to
tweet_svc. Neither service imports the other; both import this.

- `tw2:<tweet>` (common/keys.py) holds a body: a chirp.tweet.v1.Tweet encoded
  without like_count and liked_by_me, or TWEET_DELETED. Anything else (a JSON
  body of the old `tw:` layout, a truncated value) reads as a miss.
- `lc:<tweet>`, a hash kept by tweet_svc's like script; its field `n` is the
  count with every like acknowledged so far, and its field `t` (epoch ms) when
  it is due to be rebuilt from the store. A reader serves `n` past `t` too (the
  hash lives on for as long again), and asks tweet_svc to rebuild it without
  waiting (BatchGetLikeCounts with `refresh`): so counts filled together (a
  warm-up, a cold cache) do not all turn into misses together, 30 s later.
- `ar:<author>`, a sorted set of an author's newest tweet ids with a coverage
  marker: ALL (every tweet of the author) or TOP (at least the newest
  RECENT_DEPTH when it was filled). It lives tweet_svc's lifetime for it plus
  RECENT_GRACE_SECONDS from its creation or its last refresh; once its remaining
  time (PTTL) is RECENT_GRACE_SECONDS or less it is due: a reader still serves it,
  and asks tweet_svc to refresh it from the store without waiting
  (ListRecentTweetIds with `refresh`), so sets filled together are not all
  refilled by the reads 30 s later.
- `ul:<user>`, a hash of the user's like state of tweets asked about lately:
  field <tweet> = `<version>:<0|1>`, the newest like or unlike acknowledged
  (version "0": read from the store). A field present is exact; a field absent
  is a miss (tweet_svc's ListLikedTweetIds answers it from `user_likes` and
  fills it). A like or unlike writes its field after its `user_likes` write and
  before it is acknowledged (LIKED_WRITE_SCRIPT, newer version wins). A fill
  takes the hash's token (LIKED_TOKEN_SCRIPT) before reading the store and adds
  only fields that are absent, only while the token is still there
  (LIKED_FILL_SCRIPT): so a fill read before a like can never hide it (the like
  wrote its field, which a fill never overwrites), and a fill whose hash expired
  or was evicted meanwhile (with it, maybe, a like's field) lands nowhere. The
  hash lives at most LIKED_SECONDS from its creation, which bounds how long a write
  lost with an unreachable Redis can skew a flag, as for like counts: from a quarter
  less to all of it, by the user's id (`liked_ttl_ms`), so the hashes of readers
  whose first reads came together (a warm-up, a cold start) are not all missed, and
  filled by those readers waiting on tweet_svc, in the same second a minute later.

A reader gets bodies and counts for many tweets in one pipeline of single-key
commands (Redis-Cluster-safe: no MGET across slots). A page is then assembled
from the bytes: a repeated message field's encoding is the concatenation of
its elements, and a scalar field appended after an element's body is one more
field of it, so no per-tweet message is built or parsed.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from chirp.tweet.v1 import tweet_pb2

from common.keys import TWEET_DELETED, tweet_key
from common.singleflight import id_share

RECENT_DEPTH = 50  # ids a fill of `ar:` loads per author
# How long an `ar:` set outlives its refresh time (its lifetime is tweet_svc's setting).
RECENT_GRACE_SECONDS = 30.0
# What a reader reads of an `lc:` hash: the count, and when it is due to be rebuilt.
COUNT_FIELDS = ("n", "t")
LIKED_SECONDS = 60.0
LIKED_SPREAD = 0.25  # the share of LIKED_SECONDS that users' hashes' lifetimes spread over
_TOKEN_FIELD = "~t"  # in `ul:`; never a tweet id

# Versions are Snowflake ids compared as decimal strings (Lua numbers are doubles).
# KEYS: ul:<user>. ARGV: tweet, version, liked (0|1), ttl_ms.
LIKED_WRITE_SCRIPT = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then
  local v = string.match(old, '^(%d+):')
  if #v > #ARGV[2] or (#v == #ARGV[2] and v >= ARGV[2]) then return 0 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ':' .. ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4], 'NX')
return 1
"""
# KEYS: ul:<user>. ARGV: a fresh random token, ttl_ms. Returns the hash's token.
LIKED_TOKEN_SCRIPT = """
local token = redis.call('HGET', KEYS[1], '~t')
if not token then
  token = ARGV[1]
  redis.call('HSET', KEYS[1], '~t', token)
  redis.call('PEXPIRE', KEYS[1], ARGV[2], 'NX')
end
return token
"""
# KEYS: ul:<user>. ARGV: the token taken before the store was read, then tweet, "0:<0|1>" pairs.
LIKED_FILL_SCRIPT = """
if redis.call('HGET', KEYS[1], '~t') ~= ARGV[1] then return 0 end
for i = 2, #ARGV, 2 do
  redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1])
end
return 1
"""
ALL, TOP = "all", "top"  # coverage markers of `ar:`, scored +inf so they sort first

# Wire tags (field number << 3 | wire type) of chirp.tweet.v1.Tweet.
_TWEET_ID_TAG = 0x08  # field 1, varint: every encoded body starts with it
_AUTHOR_ID_TAG = 0x10  # field 2, varint
_LIKE_COUNT_TAG = b"\x30"  # field 6, varint
_LIKED_BY_ME = b"\x38\x01"  # field 7, true
# GetHomeFeedResponse.tweets (field 1) and .next_page_token (field 2), both length-delimited.
_TWEETS_TAG = b"\x0a"
_TOKEN_TAG = b"\x12"


def encode_body(tweet_id: int, author_id: int, author_username: str, text: str, created_ms: int) -> bytes:
    tweet = tweet_pb2.Tweet(tweet_id=tweet_id, author_id=author_id, author_username=author_username, text=text)
    tweet.created_at.seconds, tweet.created_at.nanos = divmod(created_ms, 1000)
    tweet.created_at.nanos *= 1_000_000
    return tweet.SerializeToString(deterministic=True)


def decode_body(raw: bytes) -> tweet_pb2.Tweet | None:
    """The cached body as a message (tweet_svc's slower paths), None if it is not one."""
    if not raw.startswith(bytes((_TWEET_ID_TAG,))):
        return None
    try:
        return tweet_pb2.Tweet.FromString(raw)
    except Exception:  # noqa: BLE001 - protobuf's DecodeError; a value of another layout is a miss
        return None


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# An encoded body's first two fields: tweet_id and author_id, each a varint of at most
# 64 bits: up to nine bytes with the high bit set, then one with it clear (a tenth byte
# carries only bit 63, so it is 0 or 1).
_VARINT = rb"(?:[\x80-\xff]{0,8}[\x00-\x7f]|[\x80-\xff]{9}[\x00\x01])"
_HEAD = re.compile(re.escape(bytes((_TWEET_ID_TAG,))) + _VARINT + re.escape(bytes((_AUTHOR_ID_TAG,))) + _VARINT)


def author_of(body: bytes) -> int | None:
    """The author id of an encoded body (its second field), None if the value is not a body.
    Bodies are encoded by encode_body, deterministic: tweet_id, then author_id. The two
    fields are found by a regular expression and decoded by protobuf, both in C: 57 µs for
    a page's 21 bodies where reading the varints in Python took 145 (measured here)."""
    head = _HEAD.match(body)
    return None if head is None else tweet_pb2.Tweet.FromString(head.group()).author_id


def with_viewer_fields(body: bytes, like_count: int, liked_by_me: bool) -> bytes:
    """An encoded Tweet: the cached body with like_count and liked_by_me appended."""
    if like_count > 0:
        body += _LIKE_COUNT_TAG + _varint(like_count)
    if liked_by_me:
        body += _LIKED_BY_ME
    return body


def response_bytes(tweets: Sequence[bytes], next_page_token: str) -> bytes:
    """A GetHomeFeedResponse (or any message with `repeated Tweet tweets = 1; string
    next_page_token = 2`) encoded from encoded Tweets."""
    parts = [_TWEETS_TAG + _varint(len(t)) + t for t in tweets]
    if next_page_token:
        token = next_page_token.encode()
        parts.append(_TOKEN_TAG + _varint(len(token)) + token)
    return b"".join(parts)


@dataclass
class CachedTweets:
    bodies: dict[int, bytes] = field(default_factory=dict)  # encoded bodies, no counts
    deleted: set[int] = field(default_factory=set)
    counts: dict[int, int] = field(default_factory=dict)
    # The viewer's flags where `ul:` has them; tweets in neither set are misses.
    liked: set[int] = field(default_factory=set)
    not_liked: set[int] = field(default_factory=set)
    # Counts served past their refresh time (or from a hash without one).
    due: set[int] = field(default_factory=set)


def queue_reads(pipe: Any, tweet_ids: Sequence[int], viewer_id: int = 0) -> None:
    """Queues on `pipe` a GET of each body, an HMGET of each like count and its refresh
    time and, with a viewer, one HMGET of their like states of the tweets, in that order."""
    for tweet_id in tweet_ids:
        pipe.get(tweet_key("body", tweet_id))
    for tweet_id in tweet_ids:
        pipe.hmget(tweet_key("like_count", tweet_id), COUNT_FIELDS)
    if viewer_id:
        pipe.hmget(tweet_key("liked", viewer_id), [str(t) for t in tweet_ids])


def parse_reads(tweet_ids: Sequence[int], replies: Sequence[Any], now_ms: float | None = None) -> CachedTweets:
    """What `queue_reads` found (replies of a pipeline run with raise_on_error=False: a
    count stored before the like-state hash answers WRONGTYPE, a miss). `now_ms`: the
    clock the counts' refresh times are read against (this host's by default)."""
    found = CachedTweets()
    n = len(tweet_ids)
    if len(replies) > 2 * n and not isinstance(replies[2 * n], Exception):
        for tweet_id, state in zip(tweet_ids, replies[2 * n], strict=True):
            if state is not None:
                (found.liked if state[-1:] == b"1" else found.not_liked).add(tweet_id)
    for tweet_id, raw in zip(tweet_ids, replies[:n], strict=True):
        if raw is None or isinstance(raw, Exception):
            continue
        if raw == TWEET_DELETED:
            found.deleted.add(tweet_id)
        elif raw[:1] == bytes((_TWEET_ID_TAG,)):
            found.bodies[tweet_id] = raw
    found.counts, found.due = parse_counts(tweet_ids, replies[n : 2 * n], now_ms)
    return found


def parse_counts(
    tweet_ids: Sequence[int], replies: Sequence[Any], now_ms: float | None = None
) -> tuple[dict[int, int], set[int]]:
    """The counts of the HMGETs of COUNT_FIELDS, one reply per id (an error or a hash
    without `n` is a miss), and the ids among them past their refresh time."""
    now = time.time() * 1000 if now_ms is None else now_ms
    counts: dict[int, int] = {}
    due: set[int] = set()
    for tweet_id, raw in zip(tweet_ids, replies, strict=True):
        if raw is None or isinstance(raw, Exception) or raw[0] is None:
            continue
        counts[tweet_id] = max(0, int(raw[0]))
        if count_due(raw[1], now):
            due.add(tweet_id)
    return counts, due


def count_due(refresh_at: bytes | str | None, now_ms: float) -> bool:
    """Whether a like-count hash whose `t` is `refresh_at` is due to be rebuilt (one
    written before `t` existed is, as is one whose `t` is not a number). `t` is
    Redis's clock, `now_ms` this host's: they are taken to agree within seconds."""
    if refresh_at is None:
        return True
    try:
        return int(refresh_at) <= now_ms
    except ValueError:
        return True


def recent_due(pttl_ms: int) -> bool:
    """Whether an `ar:` set whose PTTL is `pttl_ms` is past its refresh time (one with no
    expiry, -1, is: a fill always sets one)."""
    return pttl_ms == -1 or 0 <= pttl_ms <= RECENT_GRACE_SECONDS * 1000


def recent_range(limit: int) -> tuple[int, int]:
    """ZREVRANGE bounds that read both markers and `limit` + 1 ids of an `ar:` set."""
    return 0, limit + 2


def parse_recent(members: Sequence[bytes | str], limit: int) -> tuple[list[int], bool] | None:
    """An author's newest ids (at most `limit`) from a ZREVRANGE of `recent_range(limit)`,
    and whether they are all the author has beyond them; None on a miss (the set is
    missing, or covers fewer than `limit`). `limit` is at most RECENT_DEPTH."""
    names = [m.decode() if isinstance(m, bytes) else m for m in members]
    ids = [int(m) for m in names if m not in (ALL, TOP)]
    if ALL in names:
        return ids[:limit], len(ids) <= limit
    if TOP in names and len(ids) >= limit:
        return ids[:limit], False
    return None


def liked_ttl_ms(user_id: int, ttl_seconds: float = LIKED_SECONDS) -> int:
    """How long the user's `ul:` hash lives from its creation: `ttl_seconds` less up to
    LIKED_SPREAD of it, by the user's id (the same in every process)."""
    return max(1, int(ttl_seconds * 1000 * (1.0 - LIKED_SPREAD * id_share(user_id))))


class LikedStates:
    """tweet_svc's writes of `ul:<user>` (the scripts above, EVALSHA: each script's text
    goes to Redis once). Every call is one script on one key."""

    def __init__(self, redis: Any, ttl_seconds: float = LIKED_SECONDS) -> None:
        self._ttl_seconds = ttl_seconds
        self._write = redis.register_script(LIKED_WRITE_SCRIPT)
        self._token = redis.register_script(LIKED_TOKEN_SCRIPT)
        self._fill = redis.register_script(LIKED_FILL_SCRIPT)

    async def record(self, user_id: int, tweet_id: int, version: int, liked: bool) -> None:
        """A like or unlike, after its `user_likes` write and before it is acknowledged."""
        await self._write(
            keys=[tweet_key("liked", user_id)],
            args=[tweet_id, str(max(0, version)), int(liked), liked_ttl_ms(user_id, self._ttl_seconds)],
        )

    async def fill_token(self, user_id: int) -> str:
        """Taken before the store is read; a fill lands only while the hash still holds it."""
        token = await self._token(
            keys=[tweet_key("liked", user_id)], args=[secrets.token_hex(8), liked_ttl_ms(user_id, self._ttl_seconds)]
        )
        return token.decode() if isinstance(token, bytes) else str(token)

    async def fill(self, user_id: int, token: str, tweet_ids: Sequence[int], liked: set[int]) -> None:
        """The user's states of `tweet_ids` as read from the store, where the hash has none."""
        args: list[str | int] = [token]
        for tweet_id in tweet_ids:
            args += [tweet_id, "0:1" if tweet_id in liked else "0:0"]
        await self._fill(keys=[tweet_key("liked", user_id)], args=args)
