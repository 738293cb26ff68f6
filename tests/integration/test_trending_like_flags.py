"""rank_svc reads a viewer's like flags from tweet_svc's cache (`ul:<viewer>`) against
the real Redis, written as tweet_svc writes them (common/tweet_cache.py LikedStates):
a like or unlike shows at once, a fill never hides either, and tweet_svc is asked
only for the tweets the hash has no field of."""

from __future__ import annotations

from collections.abc import Sequence

from common.cache import RedisClient
from common.ids import IdGenerator
from common.keys import tweet_key
from common.tweet_cache import LIKED_SECONDS, LikedStates, liked_ttl_ms
from rank_svc.reads import ViewerLikes
from rank_svc.store import TweetCacheReader


class Store:
    """tweet_svc's ListLikedTweetIds: what `user_likes` says, and the calls made."""

    def __init__(self) -> None:
        self.liked: set[int] = set()
        self.calls: list[list[int]] = []

    async def __call__(self, user_id: int, tweet_ids: Sequence[int]) -> set[int]:
        self.calls.append(list(tweet_ids))
        return self.liked & set(tweet_ids)


async def test_flags_are_exact_after_a_like_and_an_unlike(redis: RedisClient) -> None:
    ids = IdGenerator(907)
    viewer, liked, plain = (ids.next_id() for _ in range(3))
    states = LikedStates(redis)
    store = Store()
    likes = ViewerLikes(TweetCacheReader(redis).tweets, store)
    try:
        assert await likes.liked(viewer, [liked, plain]) == set()
        assert store.calls == [[liked, plain]]  # nothing cached yet

        # What tweet_svc does when asked: a fill, which lands only where no field is.
        token = await states.fill_token(viewer)
        await states.fill(viewer, token, [liked, plain], set())
        store.calls.clear()
        assert await likes.liked(viewer, [liked, plain]) == set()
        assert store.calls == []

        store.liked.add(liked)  # user_likes, then the flag, then the acknowledgement
        await states.record(viewer, liked, ids.next_id(), True)
        assert await likes.liked(viewer, [liked, plain]) == {liked}
        await states.fill(viewer, token, [liked], set())  # a fill that read the store before the like
        assert await likes.liked(viewer, [liked, plain]) == {liked}

        store.liked.discard(liked)
        await states.record(viewer, liked, ids.next_id(), False)
        assert await likes.liked(viewer, [liked, plain]) == set()
        assert store.calls == []
    finally:
        await redis.delete(tweet_key("liked", viewer))


async def test_a_users_hash_lives_its_spread_lifetime_from_its_creation(redis: RedisClient) -> None:
    """The hash lives `liked_ttl_ms(user)` from whichever write creates it (a fill's token
    or a like), at most LIKED_SECONDS, and later writes do not extend it."""
    ids = IdGenerator(908)
    states = LikedStates(redis)
    by_token, by_like = ids.next_id(), ids.next_id()
    try:
        await states.fill_token(by_token)
        await states.record(by_like, ids.next_id(), ids.next_id(), True)
        for user in (by_token, by_like):
            lifetime = liked_ttl_ms(user)
            assert lifetime <= LIKED_SECONDS * 1000
            assert lifetime - 2_000 < await redis.pttl(tweet_key("liked", user)) <= lifetime
        await redis.pexpire(tweet_key("liked", by_like), 5_000)
        await states.record(by_like, ids.next_id(), ids.next_id(), False)
        await states.fill_token(by_like)
        assert await redis.pttl(tweet_key("liked", by_like)) <= 5_000
    finally:
        for user in (by_token, by_like):  # one key a command: the keys may live on two cluster nodes
            await redis.delete(tweet_key("liked", user))
