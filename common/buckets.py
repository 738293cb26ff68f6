"""Time buckets that split a growing list (followers, a user's tweets) into
bounded partitions, walked newest first."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

BUCKET_MS = 30 * 24 * 3600 * 1000  # about a month
NEWEST = 2**31 - 1  # above every bucket: a walk without a cursor starts here
BUCKETS_LISTED_AT_ONCE = 64  # buckets one listing query asks for

T = TypeVar("T")


def bucket_of(unix_ms: int) -> int:
    return unix_ms // BUCKET_MS


async def walk_newest_first(
    buckets_from: Callable[[int, int], Awaitable[Iterable[int]]],
    read: Callable[[int, bool, int], Awaitable[Iterable[T]]],
    limit: int,
    cursor_bucket: int | None,
) -> list[T]:
    """Up to `limit` items of a bucketed list, newest first.

    `buckets_from(start, most)` lists the list's buckets at or below `start`,
    newest first (one query); `read(bucket, from_cursor, want)` reads up to
    `want` items of one bucket, only those past the cursor when `from_cursor`.
    Buckets are read one after the other until `limit` items are found; the
    cursor's bucket is the only one read from the cursor on. A listing that
    comes back full is followed by the next one below it, so a list whose
    buckets hold few items each (one a month for years, or months emptied by
    deletes) is walked to its end, never cut off at the first listing.
    """
    start = NEWEST if cursor_bucket is None else cursor_bucket
    found: list[T] = []
    while True:
        listed = list(await buckets_from(start, BUCKETS_LISTED_AT_ONCE))
        for bucket in listed:
            want = limit - len(found)
            if want <= 0:
                return found
            found += await read(bucket, bucket == cursor_bucket, want)
        lowest = min(listed, default=0)
        # A short listing is the end; so is one not below `start` (it could only repeat).
        if len(found) >= limit or len(listed) < BUCKETS_LISTED_AT_ONCE or not 0 < lowest <= start:
            return found
        start = lowest - 1
