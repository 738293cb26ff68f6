"""Where a cached follow list falls due to be loaded again (feed_svc/cache.py)."""

from __future__ import annotations

from typing import cast

from common.cache import RedisClient
from common.ids import IdGenerator
from common.singleflight import due_point_ms
from feed_svc.cache import FOLLOWING_REFRESH_FRACTION, FOLLOWING_REFRESH_SPREAD, FeedCache

TTL_MS = 300_000


def following_refresh_point(user_id: int) -> float:
    """The part of its lifetime a reader's follow list has left when it falls due."""
    return due_point_ms(user_id, TTL_MS, FOLLOWING_REFRESH_FRACTION, FOLLOWING_REFRESH_SPREAD) / TTL_MS


def test_due_points_fall_in_the_last_fifth_and_spread_over_it() -> None:
    """Readers whose lists were filled together (ids made one after another, as a sign-up
    burst makes them) fall due across the span, not at one point of it."""
    ids = IdGenerator(5)
    points = [following_refresh_point(ids.next_id()) for _ in range(2000)]
    low = FOLLOWING_REFRESH_FRACTION * (1 - FOLLOWING_REFRESH_SPREAD)
    assert all(low <= p <= FOLLOWING_REFRESH_FRACTION for p in points)
    width = (FOLLOWING_REFRESH_FRACTION - low) / 10
    counts = [sum(low + i * width <= p < low + (i + 1) * width for p in points) for i in range(10)]
    assert min(counts) > 100, f"due points bunch up: {counts}"  # 200 each if even


def test_a_reader_falls_due_at_the_same_point_every_time() -> None:
    user = IdGenerator(6).next_id()
    assert following_refresh_point(user) == following_refresh_point(user)


class ScriptsOnly:
    """Enough of a Redis client to build a FeedCache that sends nothing."""

    def register_script(self, script: str) -> object:
        return script


def test_due_by_the_lists_ttl_left() -> None:
    cache = FeedCache(cast(RedisClient, ScriptsOnly()), timeline_size=20, following_ttl=300, celebrity_ttl=60)
    user = IdGenerator(7).next_id()
    point_ms = TTL_MS * following_refresh_point(user)
    assert cache.following_due(user, int(point_ms) - 1)
    assert cache.following_due(user, 0)
    assert cache.following_due(user, -1)  # no expiry: a fill always sets one
    assert not cache.following_due(user, int(point_ms) + 2)
    assert not cache.following_due(user, -2)  # gone
    assert not cache.following_due(user, ConnectionError())  # not answered
