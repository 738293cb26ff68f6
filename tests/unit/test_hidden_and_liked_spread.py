"""Per-reader caches filled together (a warm-up, a cold start) must not all end together:
the hidden-author sets (common/hidden.py) fall due to be loaded again at points spread by
the reader's id, and the like-state hashes (common/tweet_cache.py) live lifetimes spread
the same way, never longer than LIKED_SECONDS."""

from __future__ import annotations

from typing import cast

from common.cache import RedisClient
from common.hidden import HIDDEN_REFRESH_FRACTION, HIDDEN_REFRESH_SPREAD, HIDDEN_SECONDS, HiddenAuthorsCache
from common.ids import IdGenerator
from common.singleflight import due_point_ms, id_share
from common.tweet_cache import LIKED_SECONDS, LIKED_SPREAD, liked_ttl_ms
from feed_svc.cache import FOLLOWING_REFRESH_FRACTION, FOLLOWING_REFRESH_SPREAD, FeedCache
from tests.unit.test_following_refresh import ScriptsOnly
from tests.unit.test_singleflight import TokenStore


async def nobody(user_id: int) -> frozenset[int]:
    return frozenset()


def deciles(values: list[float], low: float, high: float) -> list[int]:
    width = (high - low) / 10
    return [sum(low + i * width <= v < low + (i + 1) * width for v in values) for i in range(10)]


def test_like_state_lifetimes_spread_over_their_last_quarter_and_never_exceed_the_bound() -> None:
    ids = IdGenerator(8)
    users = [ids.next_id() for _ in range(2000)]
    lifetimes = [liked_ttl_ms(u) for u in users]
    low, high = LIKED_SECONDS * 1000 * (1 - LIKED_SPREAD), LIKED_SECONDS * 1000
    assert all(low <= t <= high for t in lifetimes)
    assert min(deciles([float(t) for t in lifetimes], low, high + 1)) > 100, "lifetimes bunch up"  # 200 if even
    assert liked_ttl_ms(users[0]) == liked_ttl_ms(users[0])  # the same in every process
    assert liked_ttl_ms(users[0], 10.0) <= 10_000


def test_hidden_sets_fall_due_near_their_end_at_points_spread_by_reader() -> None:
    cache = HiddenAuthorsCache(TokenStore(), nobody, redis=None)
    ttl_ms = HIDDEN_SECONDS * 1000
    high = ttl_ms * HIDDEN_REFRESH_FRACTION
    low = high * (1 - HIDDEN_REFRESH_SPREAD)
    ids = IdGenerator(9)
    users = [ids.next_id() for _ in range(2000)]
    points = [high * (1 - HIDDEN_REFRESH_SPREAD * id_share(u)) for u in users]
    assert min(deciles(points, low, high)) > 100, "due points bunch up"
    user, point = users[0], int(points[0])
    assert cache.due(user, point - 1)
    assert cache.due(user, 0)
    assert cache.due(user, -1)  # no expiry: a fill always sets one
    assert not cache.due(user, point + 2)
    assert not cache.due(user, int(high) + 1)  # early in its life
    assert not cache.due(user, -2)  # gone
    assert not cache.due(user, None)  # not read
    assert not cache.due(user, ConnectionError())  # not answered


def test_a_reloads_due_point_in_redis_is_the_readers_due_boundary() -> None:
    """The claim scripts check `due_point_ms` in Redis; a reader asks for a reload by
    `due`/`following_due`: the two agree, so a key a reader found due is claimable
    and one just reloaded is not."""
    hidden = HiddenAuthorsCache(TokenStore(), nobody, redis=None)
    feed = FeedCache(cast(RedisClient, ScriptsOnly()), timeline_size=20, following_ttl=300, celebrity_ttl=60)
    ids = IdGenerator(10)
    for user in (ids.next_id() for _ in range(500)):
        point = hidden.due_point_ms(user)
        assert hidden.due(user, point) and not hidden.due(user, point + 1)
        point = due_point_ms(user, 300_000, FOLLOWING_REFRESH_FRACTION, FOLLOWING_REFRESH_SPREAD)
        assert feed.following_due(user, point) and not feed.following_due(user, point + 1)
