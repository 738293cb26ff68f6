"""liked_by_me on trending (rank_svc/reads.py ViewerLikes): the viewer's flags come
from tweet_svc's cache where it has them, exact either way, and tweet_svc is asked
only for the tweets it has no flag of. How the service applies them to its shared
copy of the list: tests/unit/test_viewer_flags.py."""

from __future__ import annotations

from collections.abc import Sequence

from common.tweet_cache import CachedTweets
from rank_svc.reads import ViewerLikes
from tests.unit.test_viewer_flags import Likes


class Cache:
    """tweet_svc's cache of like flags: viewer -> {tweet: liked} for the fields present."""

    def __init__(self, flags: dict[int, dict[int, bool]]) -> None:
        self.flags = flags

    async def __call__(self, viewer_id: int, tweet_ids: Sequence[int]) -> CachedTweets:
        mine = self.flags.get(viewer_id, {})
        return CachedTweets(
            liked={t for t in tweet_ids if mine.get(t) is True},
            not_liked={t for t in tweet_ids if mine.get(t) is False},
        )


async def test_cached_flags_answer_without_asking_tweet_svc() -> None:
    store = Likes({5: {20}})
    likes = ViewerLikes(Cache({5: {10: False, 20: True, 30: False}}), store)
    assert await likes.liked(5, [30, 20, 10]) == {20}
    assert store.calls == []


async def test_only_the_tweets_without_a_cached_flag_are_asked_for() -> None:
    # 40 was liked and 20 unliked since the store was read: each wrote its field
    # before it was acknowledged, so the cache is right where the store lags.
    store = Likes({5: {30, 20}})
    likes = ViewerLikes(Cache({5: {20: False, 40: True}}), store)
    assert await likes.liked(5, [40, 30, 20, 10]) == {40, 30}
    assert store.calls == [(5, [30, 10])]


async def test_a_cache_miss_for_all_of_them_asks_for_all_of_them() -> None:
    # Redis down, or the viewer's hash expired: every flag comes from the store.
    store = Likes({5: {20}, 6: {30}})
    likes = ViewerLikes(Cache({6: {30: True}}), store)  # another viewer's flags are not this one's
    assert await likes.liked(5, [30, 20]) == {20}
    assert store.calls == [(5, [30, 20])]
