"""Every Redis key Chirp's services use, one builder per cache (as Mastodon's
FeedManager#key), so a rename or a cluster move is one edit here.

Cluster rule: a command touches one key. Work on many keys is a pipeline of
single-key commands, which a Redis Cluster client splits by node (never MGET
or another multi-key command over keys of different hash slots). No command
needs two keys together today, so no key carries a hash tag; should one ever
need to, the tag goes in its builder here (e.g. `tw:{123}` and `lc:{123}`
would share a slot).

rank_svc builds its own keys (trending tallies and its lock) in rank_svc/;
common/hidden.py its per-viewer hidden-author sets.
"""

from __future__ import annotations

from typing import Literal

# ---- tweet_svc's cache ------------------------------------------------------------
# body: a tweet's body, or TWEET_DELETED; like_count: its like count;
# author_recent: a sorted set of an author's newest tweet ids. Their layout is
# the contract in common/tweet_cache.py (bodies are encoded protobuf under `tw2:`;
# the JSON bodies `tw:` held are never read). liked: a hash of a user's like
# state of the tweets asked about lately (their liked_by_me flags).
TweetKey = Literal["body", "like_count", "author_recent", "liked"]
_TWEET_PREFIXES: dict[TweetKey, str] = {"body": "tw2", "like_count": "lc", "author_recent": "ar", "liked": "ul"}

# What a deleted tweet's body key holds instead of the body. tweet_svc writes it
# when the delete is acknowledged; the fan-out worker writes it again from the
# tweet_deleted event, so it lands even if Redis was unreachable at the delete.
TWEET_DELETED = b"-"
# Longer than any read that loaded a body just before the delete can take to
# put it back (SET NX never overwrites the marker).
TWEET_DELETED_SECONDS = 300.0


def tweet_key(family: TweetKey, entity_id: int) -> str:
    """Tweet ids for body and like_count, author ids for author_recent, user ids for liked."""
    return f"{_TWEET_PREFIXES[family]}:{entity_id}"


# ---- feed_svc's cache -------------------------------------------------------------
# timeline: a user's pushed home timeline; following: a user's cached follow
# list; read_at: when a user last read their home feed (feed_svc/activity.py:
# only readers are pushed to).
FeedKey = Literal["timeline", "following", "read_at"]
_FEED_PREFIXES: dict[FeedKey, str] = {
    "timeline": "tl",
    # `fo2:` may hold a reader's `pending:` marker (feed_svc/cache.py), which feed_svc
    # instances from before it cannot parse: it is a key of its own. The fan-out worker
    # deletes both on a follow or unfollow, so roll the fan-out workers out first.
    "following": "fo2",
    "read_at": "ra",
}
# The follow lists' key before the marker; nothing new writes it.
LEGACY_FOLLOWING_PREFIX = "fo"

# The celebrity registry's copy in Redis. Each feed_svc process reads it once per
# CHIRP_CELEBRITY_CACHE_SECONDS into memory, never once per feed read, so its one
# slot is not a hot key.
CELEBRITIES_KEY = "celebrities"


def feed_key(family: FeedKey, entity_id: int) -> str:
    """User ids, for every family."""
    return f"{_FEED_PREFIXES[family]}:{entity_id}"


def reload_claim_key(key: str) -> str:
    """The key one process sets (briefly, unless another holds it) to claim the reload
    of `key` after a read found it due, so that the other processes serving the same
    reader do not load it too. It hashes to `key`'s slot: `key`'s own hash tag when it has one, else
    `key` whole as the tag (so a key without a tag must hold no brace)."""
    start = key.find("{")
    end = key.find("}", start + 1)
    if start != -1 and end > start + 1:
        return f"{key}:reload"
    if "{" in key or "}" in key:
        raise ValueError(f"no claim key in the slot of {key!r}: a brace, but no hash tag")
    return f"{{{key}}}:reload"


def legacy_following_key(user_id: int) -> str:
    """A follow list as feed_svc cached it before `fo2:`, deleted with it."""
    return f"{LEGACY_FOLLOWING_PREFIX}:{user_id}"


# ---- rate limits and login counters (common/limits.py) ------------------------------
# Fixed-window counters, one key each. Names never contain "{": a hash tag would
# pile every counter onto one slot.
LimitFamily = Literal["post", "like", "follow", "signup", "login_pair", "login_account", "login_address"]
_LIMIT_PREFIXES: dict[LimitFamily, str] = {
    "post": "rl:post",
    "like": "rl:like",
    "follow": "rl:follow",
    "signup": "rl:signup",
    "login_pair": "lf:pair",
    "login_account": "lf:acct",
    "login_address": "lf:addr",
}


def limit_key(family: LimitFamily, subject: str | int) -> str:
    """One counter's key. Subjects are user ids, account or address subjects, or an
    account subject and an address subject joined by ":" (common/limits.py)."""
    return f"{_LIMIT_PREFIXES[family]}:{subject}"
