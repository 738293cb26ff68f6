"""Like events and how a batch of them folds into a tweet's stored like state.

Every like/unlike carries a version (a time-ordered id). For each (tweet,
user) the stored row keeps the newest version applied; an event with a
version at or below it was applied before (a replay) or is stale, and
changes nothing. So re-delivery and replay leave counts exact.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.events import LikeEvent


@dataclass(frozen=True)
class LikeState:
    liked: bool
    version: int


NEVER = LikeState(liked=False, version=-1)


def fold(count: int, stored: dict[int, LikeState], events: list[LikeEvent]) -> tuple[int, dict[int, LikeState]]:
    """Apply `events` (one tweet) to its count and rows; returns (new count, changed rows)."""
    current = dict(stored)
    changed: dict[int, LikeState] = {}
    for event in sorted(events, key=lambda e: e.version):
        before = current.get(event.user_id, NEVER)
        if event.version <= before.version:
            continue
        if event.liked != before.liked:
            count += 1 if event.liked else -1
        current[event.user_id] = changed[event.user_id] = LikeState(event.liked, event.version)
    return count, changed


def count_after(applied_count: int, applied_liked: bool, liked: bool) -> int:
    """The count a like/unlike request reports while Redis is unreachable: the stored count
    with the caller's change (others' likes the worker has not applied yet are missing)."""
    return applied_count - (1 if applied_liked else 0) + (1 if liked else 0)
