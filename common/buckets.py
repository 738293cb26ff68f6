"""Time buckets that split a growing list (followers, a user's tweets) into
bounded partitions, walked newest first."""

from __future__ import annotations

BUCKET_MS = 30 * 24 * 3600 * 1000  # about a month


def bucket_of(unix_ms: int) -> int:
    return unix_ms // BUCKET_MS
