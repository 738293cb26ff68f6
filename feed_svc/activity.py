"""Push only to those who read: which followers the fan-out worker skips, and how
a skipped reader's timeline comes back.

Each reader has a record of their last home-feed read in Redis (a string per
user, so a batch of followers is one pipeline of single-key GETs, Redis-Cluster
safe). feed_svc writes it at most once per RECORD_EVERY_SECONDS per reader and
process (ReadMarks), fire and forget, so a read costs no extra round trip.

The fan-out worker (ActiveReaders) pushes to a follower whose record is at most
CHIRP_ACTIVE_DAYS old, and to one with no record at all: an account that never
read, or whose record Redis lost. Unknown means active, and the worker starts
the record's clock then (SET NX), so a new account is pushed to for a whole
window after its first delivery and a lost record costs pushes, never tweets.
A follower whose record is older than the window is skipped (no write) and
their Redis timeline deleted: that frees its memory and makes their
next read a miss, which rebuilds it (`rebuild`): record the read first, so the
worker pushes every tweet it handles from then on, then pull the newest tweets
of the accounts they follow and merge them (there is no durable copy of a
timeline: feed_svc/fanout.py). A tweet the worker skipped was stored before it
was skipped, so before the pull. The same rebuild serves a timeline Redis lost.

Correctness never rests on the record being right: the worker deletes the
timeline of everyone it skips, and a missing timeline is always rebuilt.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from common.keys import feed_key
from feed_svc.merge import merge

DAY_SECONDS = 86400.0
# A reader's record is written at most this often per feed_svc process; a window
# much shorter than this (CHIRP_ACTIVE_DAYS below about 0.1) makes readers who
# read continuously look inactive now and then, which costs rebuilds, not tweets.
RECORD_EVERY_SECONDS = 3600.0
# Readers whose last record this process remembers (LRU); one forgotten is written again.
REMEMBERED_READERS = 100_000
# A record outlives any sensible window; once it expires the account is unknown
# again, so pushed to for one more window before it is skipped.
RECORD_TTL_SECONDS = 400 * DAY_SECONDS
# A timeline lives this much longer than the window after its reader's last
# recorded read (FeedCache's timeline_ttl): one read within the window renews it,
# and the timeline of a reader gone for good expires, where it stayed until a
# fan-out found them inactive, which never came if nobody they follow posts.
TIMELINE_GRACE_DAYS = 1.0
# Newest tweets pulled per followed account when a timeline is rebuilt: what
# tweet_svc serves from its cache (its RECENT_DEPTH).
REBUILD_DEPTH = 50
AUTHORS_PER_PULL = 500  # tweet_svc's ListRecentTweetIds limit


class ReadMarks:
    """Which readers this process recorded recently, so most reads write nothing."""

    def __init__(
        self,
        every_seconds: float = RECORD_EVERY_SECONDS,
        capacity: int = REMEMBERED_READERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._every = every_seconds
        self._capacity = capacity
        self._clock = clock
        self._written: OrderedDict[int, float] = OrderedDict()

    def due(self, user_id: int) -> bool:
        """Whether this read should write the record; if so it counts as written
        (call `forget` when the write fails)."""
        now = self._clock()
        last = self._written.get(user_id)
        if last is not None and now < last + self._every:
            return False
        self._written[user_id] = now
        self._written.move_to_end(user_id)
        while len(self._written) > self._capacity:
            self._written.popitem(last=False)
        return True

    def written(self, user_id: int) -> None:
        self._written[user_id] = self._clock()
        self._written.move_to_end(user_id)

    def forget(self, user_id: int) -> None:
        self._written.pop(user_id, None)


def split_by_activity(
    user_ids: Sequence[int], last_reads: Sequence[int | None], now_ms: int, window_ms: int
) -> tuple[list[int], list[int], list[int]]:
    """(recently read, no record, inactive): the first two are pushed to."""
    active: list[int] = []
    unknown: list[int] = []
    inactive: list[int] = []
    for user_id, last in zip(user_ids, last_reads, strict=True):
        if last is None:
            unknown.append(user_id)
        elif last >= now_ms - window_ms:
            active.append(user_id)
        else:
            inactive.append(user_id)
    return active, unknown, inactive


class ActivityCache(Protocol):
    """What ActiveReaders needs of feed_svc/cache.py's FeedCache."""

    async def last_reads(self, user_ids: Sequence[int]) -> list[int | None]: ...

    async def start_read_clocks(self, user_ids: Sequence[int], now_ms: int, ttl_ms: int) -> None: ...


class ActiveReaders:
    """The fan-out worker's view: which of a batch of followers to push to."""

    def __init__(self, cache: ActivityCache, window_days: float, clock: Callable[[], float] = time.time) -> None:
        self._cache = cache
        self._window_ms = int(window_days * DAY_SECONDS * 1000)
        self._clock = clock

    async def split(self, user_ids: Sequence[int]) -> tuple[list[int], list[int]]:
        """(push to these, skip these)."""
        now_ms = int(self._clock() * 1000)
        last = await self._cache.last_reads(user_ids)
        active, unknown, inactive = split_by_activity(user_ids, last, now_ms, self._window_ms)
        if unknown:
            await self._cache.start_read_clocks(unknown, now_ms, int(RECORD_TTL_SECONDS * 1000))
        return active + unknown, inactive


# (author ids, before or 0, limit per author) -> [(tweet id, author id)]
RecentIds = Callable[[Sequence[int], int, int], Awaitable[list[tuple[int, int]]]]


async def pull_recent(
    recent_ids: RecentIds, authors: Sequence[int], depth: int = REBUILD_DEPTH, before: int = 0
) -> list[tuple[int, int]]:
    """(tweet id, author id) of the newest `depth` tweets of each author below `before`
    (0: no bound), in calls tweet_svc accepts (AUTHORS_PER_PULL authors each), made at once."""
    calls = [
        recent_ids(authors[start : start + AUTHORS_PER_PULL], before, depth)
        for start in range(0, len(authors), AUTHORS_PER_PULL)
    ]
    replies = [await calls[0]] if len(calls) == 1 else await asyncio.gather(*calls)  # most reads: one call, no task
    return [pair for reply in replies for pair in reply]


def rebuilt_timeline(pulled: Sequence[tuple[int, int]], size: int, depth: int = REBUILD_DEPTH) -> list[int]:
    """A timeline as pushing would have made it, from the accounts' newest tweets
    (`depth` of each, pulled now): deduplicated, newest first, at most `size`, and cut
    where it could have a gap: below the oldest pulled tweet of an account that gave
    all `depth`, that account may have older tweets not pulled. So it reaches back at
    least `depth` tweets, exactly as pushing would have, and further when the accounts
    post less."""
    count: dict[int, int] = {}
    oldest: dict[int, int] = {}
    for tweet_id, author_id in pulled:
        count[author_id] = count.get(author_id, 0) + 1
        oldest[author_id] = min(oldest.get(author_id, tweet_id), tweet_id)
    horizon = max((oldest[a] for a, n in count.items() if n >= depth), default=0)
    return merge((t for t, _ in pulled if t >= horizon), before=None)[:size]


def read_record_key(user_id: int) -> str:
    """A reader's record: when they last read their home feed, in ms."""
    return feed_key("read_at", user_id)
