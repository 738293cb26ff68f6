"""A home-feed read built with the hidden-author cache of common/hidden.py reads the
reader's set in its first Redis round trip (with the follow list and timeline), so a
cached set costs no call of its own; a miss, a mute or block (which invalidates the set)
and a Redis outage still go through the cache's versioned read and graph_svc. Over the
in-memory world of test_feed_rules; the set lives in its strict fake Redis under the
key the real scripts use."""

from __future__ import annotations

from typing import cast

from prometheus_client import REGISTRY
from redis.exceptions import ConnectionError as RedisConnectionError

from common.hidden import HiddenAuthorsCache, HiddenInvalidator, Read, decode, encode, hidden_key, new_token
from feed_svc.home_feed import HomeFeed
from feed_svc.store import CelebrityStore
from tests.unit.test_feed_rules import NORMAL, READER, THRESHOLD, TIMELINE_SIZE, World, newest_first
from tests.unit.test_redis_cluster_safety import FakeRedis

MUTED = 11


class SharedHiddenStore:
    """RedisHiddenStore's four scripts over the world's fake Redis: the set under
    hidden_key (where a plain GET finds it), the tokens beside it."""

    def __init__(self, redis: FakeRedis) -> None:
        self.redis = redis
        self.tokens: dict[int, str] = {}
        self.reads = 0

    def _check(self) -> None:
        if self.redis.down is not None:
            raise self.redis.down

    async def read(self, user_id: int) -> Read:
        self.reads += 1
        self._check()
        raw = self.redis.data.get(hidden_key(user_id))
        if raw is not None:
            return Read(decode(bytes(raw)), "")
        return Read(None, self.tokens.setdefault(user_id, new_token()))

    async def fill(self, user_id: int, version: str, hidden: frozenset[int], ttl_seconds: float) -> bool:
        self._check()
        if self.tokens.get(user_id) != version:
            return False
        self.redis.data[hidden_key(user_id)] = encode(hidden).encode()
        return True

    async def invalidate(self, user_id: int) -> None:
        self._check()
        self.redis.data.pop(hidden_key(user_id), None)
        self.tokens[user_id] = new_token()

    async def reload_token(self, user_id: int, claim: str, due_ms: int) -> str | None:
        self._check()
        return self.tokens.get(user_id) if hidden_key(user_id) in self.redis.data else None

    async def end_reload(self, user_id: int, claim: str) -> None:
        pass  # one process: no claims


class Scene:
    def __init__(self) -> None:
        self.world = World()
        self.store = SharedHiddenStore(self.world.redis)
        self.muted: set[int] = set()
        self.fetches = 0
        self.world.feed = HomeFeed(
            self.world.cache,
            cast(CelebrityStore, self.world.store),
            self.world.graph.following_ids,
            self.world.tweets.recent_ids,
            self.world.tweets.batch_tweets,
            THRESHOLD,
            TIMELINE_SIZE,
            self.world.registry,
            hidden_authors=HiddenAuthorsCache(self.store, self.fetch, redis=None),
        )

    async def fetch(self, user_id: int) -> frozenset[int]:
        """graph_svc's ListHiddenAuthorIds."""
        self.fetches += 1
        return frozenset(self.muted) if user_id == READER else frozenset()


def hits() -> float:
    return REGISTRY.get_sample_value("chirp_hidden_authors_cache_total", {"result": "hit"}) or 0.0


async def test_a_cached_set_comes_with_the_first_reads_and_a_mute_still_hides_at_once() -> None:
    scene = Scene()
    world = scene.world
    for author in (NORMAL, MUTED):
        await world.follow(READER, author)
    posted = {author: [await world.post(author) for _ in range(3)] for author in (NORMAL, MUTED)}
    everyone = newest_first(posted[NORMAL] + posted[MUTED])

    assert (await world.page(READER))[0] == everyone
    assert (scene.store.reads, scene.fetches) == (1, 1)  # a miss: the versioned read, graph_svc, a fill
    assert world.redis.data[hidden_key(READER)] == b""  # nobody hidden, cached as such

    hits_before = hits()
    assert (await world.page(READER))[0] == everyone
    assert (scene.store.reads, scene.fetches) == (1, 1)  # the empty set came with the first reads
    assert ("get", (hidden_key(READER),)) in world.redis.calls
    assert hits() - hits_before == 1

    scene.muted.add(MUTED)
    await HiddenInvalidator(scene.store).invalidate([READER])  # what graph_svc does around a mute

    assert (await world.page(READER))[0] == newest_first(posted[NORMAL])
    assert (scene.store.reads, scene.fetches) == (2, 2)
    assert (await world.page(READER))[0] == newest_first(posted[NORMAL])
    assert (scene.store.reads, scene.fetches) == (2, 2)  # the new set, cached and read with the rest


async def test_while_redis_is_down_the_set_comes_from_graph_svc_without_a_second_try() -> None:
    scene = Scene()
    world = scene.world
    for author in (NORMAL, MUTED):
        await world.follow(READER, author)
    posted = {author: [await world.post(author) for _ in range(3)] for author in (NORMAL, MUTED)}
    scene.muted.add(MUTED)

    world.redis.down = RedisConnectionError("redis is down")
    ids, _ = await world.page(READER)

    assert scene.fetches == 1
    assert scene.store.reads == 0  # the first reads found Redis down: no second wait for it
    assert set(posted[MUTED]).isdisjoint(ids)
    assert hidden_key(READER) not in world.redis.data  # nothing filled without a token
