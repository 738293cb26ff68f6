"""Blocks and mutes in the home feed and trending: the pure filter and round-size
rules (feed_svc/merge.py, rank_svc/reads.py), then feed_svc's real HomeFeed over
the in-memory World of test_feed_rules and rank_svc's real RankService over a
fixed list, each with a stand-in for graph_svc's ListHiddenAuthorIds."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import grpc
import pytest
from chirp.rank.v1 import rank_pb2
from chirp.tweet.v1 import tweet_pb2

from common.hidden import BLOCKERS_UNLISTED
from common.identity import USER_ID_HEADER
from feed_svc import home_feed
from feed_svc.home_feed import HomeFeed
from feed_svc.merge import ASK_SLACK, MAX_ASK, next_ask, visible
from feed_svc.store import CelebrityStore
from rank_svc.reads import TrendingCopy, visible_trending
from rank_svc.service import RankService
from tests.unit.test_feed_rules import THRESHOLD, TIMELINE_SIZE, World, newest_first, with_followers

READER, OTHER, NORMAL, MUTED, STAR, BLOCKER = 1, 2, 10, 11, 20, 40

# ---- pure rules ----------------------------------------------------------------------------


def test_visible_keeps_order_and_drops_gone_unfollowed_and_hidden_authors() -> None:
    authors = {90: NORMAL, 80: MUTED, 70: OTHER, 60: NORMAL, 50: READER}  # 40 was deleted
    allowed = {NORMAL, MUTED, READER}
    assert visible([90, 80, 70, 60, 50, 40], authors, allowed, {MUTED}) == [90, 60, 50]
    assert visible([90, 80, 70, 60, 50, 40], authors, allowed, set()) == [90, 80, 60, 50]


def test_each_short_round_looks_four_times_further_up_to_one_batch() -> None:
    first = next_ask(0, 21)
    assert first == 21 + ASK_SLACK
    second = next_ask(first, 21)
    assert second == 4 * first
    assert next_ask(second, 21) == 4 * second
    assert next_ask(4 * second, 21) == MAX_ASK
    assert next_ask(0, 101) == 101 + ASK_SLACK  # page_size 100: the first round as before


def test_trending_for_a_viewer_skips_hidden_authors_and_still_fills_the_limit() -> None:
    listed = [tweet_pb2.Tweet(tweet_id=i, author_id=a) for i, a in enumerate([MUTED, NORMAL, MUTED, OTHER, STAR], 1)]
    assert [t.tweet_id for t in visible_trending(listed, {MUTED}, 3)] == [2, 4, 5]
    assert [t.tweet_id for t in visible_trending(listed, {MUTED, STAR}, 3)] == [2, 4]
    assert visible_trending(listed, set(), 2) == listed[:2]


# ---- the home feed -------------------------------------------------------------------------


class Hiding:
    """graph_svc's ListHiddenAuthorIds: muted and blocked ids and who blocks the reader."""

    def __init__(self) -> None:
        self.muted: dict[int, set[int]] = {}
        self.blocked: dict[int, set[int]] = {}
        self.calls: list[int] = []
        self.listed_blockers: int | None = None  # graph_svc's BLOCKERS_LISTED; None: all
        self.asked: list[list[int]] = []  # GetRelations calls, by the authors asked about

    async def __call__(self, user_id: int) -> frozenset[int]:
        self.calls.append(user_id)
        blocked_by = sorted(b for b, blocked in self.blocked.items() if user_id in blocked)
        if self.listed_blockers is not None and len(blocked_by) > self.listed_blockers:
            blocked_by = [*blocked_by[: self.listed_blockers], BLOCKERS_UNLISTED]
        return frozenset(self.muted.get(user_id, set()) | self.blocked.get(user_id, set()) | set(blocked_by))

    async def blockers_among(self, user_id: int, author_ids: Sequence[int]) -> set[int]:
        self.asked.append(list(author_ids))
        return {a for a in author_ids if user_id in self.blocked.get(a, set())}


class Pulls:
    """tweet_svc's ListRecentTweetIds, recording whose tweets were pulled."""

    def __init__(self, world: World) -> None:
        self._world = world
        self.authors: set[int] = set()

    async def __call__(self, authors: Sequence[int], before: int, limit: int) -> list[tuple[int, int]]:
        self.authors.update(authors)
        return await self._world.tweets.recent_ids(authors, before, limit)


def hiding_world() -> tuple[World, Hiding, Pulls]:
    world = World()
    hiding, pulls = Hiding(), Pulls(world)
    world.feed = HomeFeed(
        world.cache,
        cast(CelebrityStore, world.store),
        world.graph.following_ids,
        pulls,
        world.tweets.batch_tweets,
        THRESHOLD,
        TIMELINE_SIZE,
        world.registry,
        hidden_authors=hiding,
        blockers_among=hiding.blockers_among,
    )
    return world, hiding, pulls


def by(world: World, *authors: int) -> list[int]:
    return newest_first([t for t, a in world.tweets.author_of.items() if a in authors])


async def test_a_muted_pushed_author_and_a_muted_celebrity_are_hidden_and_still_followed() -> None:
    world, hiding, pulls = hiding_world()
    for author in (NORMAL, MUTED, STAR):
        await world.follow(READER, author)
    await with_followers(world, STAR, THRESHOLD)
    for author in [NORMAL, MUTED, STAR, READER] * 5:
        await world.post(author)
    assert await world.read_through(READER, 4) == by(world, NORMAL, MUTED, STAR, READER)

    hiding.muted[READER] = {MUTED, STAR}
    pulls.authors.clear()

    assert await world.read_through(READER, 4) == by(world, NORMAL, READER)
    assert STAR not in pulls.authors  # a hidden celebrity is not even pulled
    assert world.cached(READER) >= set(by(world, MUTED))  # muting unfollows nothing, sweeps nothing
    assert MUTED in world.graph.follows[READER]

    hiding.muted[READER] = set()  # unmute
    assert await world.read_through(READER, 4) == by(world, NORMAL, MUTED, STAR, READER)


async def test_a_block_hides_both_ways_for_pushed_and_pulled_tweets() -> None:
    world, hiding, _ = hiding_world()
    for author in (NORMAL, BLOCKER):
        await world.follow(READER, author)
    await world.follow(BLOCKER, READER)
    await world.follow(BLOCKER, STAR)
    await world.follow(READER, STAR)
    await with_followers(world, STAR, THRESHOLD)
    for author in [NORMAL, BLOCKER, READER, STAR] * 3:
        await world.post(author)

    # Checked before the unfollows that a block brings reach the fan-out worker.
    hiding.blocked[BLOCKER] = {READER}
    assert await world.read_through(READER, 5) == by(world, NORMAL, STAR, READER)
    assert await world.read_through(BLOCKER, 5) == by(world, BLOCKER, STAR)

    hiding.blocked[READER] = {STAR}  # the reader blocks a celebrity: its pulled tweets go too
    assert await world.read_through(READER, 5) == by(world, NORMAL, READER)
    assert await world.read_through(STAR, 5) == by(world, STAR)


async def test_blockers_past_those_the_set_lists_are_asked_about_and_hidden() -> None:
    world, hiding, _ = hiding_world()
    for author in (NORMAL, BLOCKER, OTHER):
        await world.follow(READER, author)
    for author in [NORMAL, BLOCKER, OTHER, READER] * 3:
        await world.post(author)
    hiding.listed_blockers = 1  # lists OTHER (the lower id) of the two below, not BLOCKER
    hiding.blocked[BLOCKER] = {READER}
    hiding.blocked[OTHER] = {READER}

    # Checked before the unfollows that the blocks bring reach the fan-out worker.
    assert await world.read_through(READER, 5) == by(world, NORMAL, READER)
    assert hiding.asked and all(READER not in asked and OTHER not in asked for asked in hiding.asked)

    hiding.listed_blockers, hiding.asked = None, []  # every blocker listed: nobody is asked
    assert await world.read_through(READER, 5) == by(world, NORMAL, READER)
    assert hiding.asked == []


async def test_one_page_asks_about_each_author_once_over_its_rounds() -> None:
    world, hiding, _ = hiding_world()
    for author in (NORMAL, BLOCKER, OTHER):
        await world.follow(READER, author)
    for author in [NORMAL] * 5 + [OTHER, OTHER, NORMAL]:  # the page's first part is short
        await world.post(author)
    hiding.listed_blockers = 1
    hiding.blocked[BLOCKER] = {READER}
    hiding.blocked[OTHER] = {READER}

    ids, _ = await world.page(READER, 2)

    assert ids == by(world, NORMAL)[:2]
    asked = [author for call in hiding.asked for author in call]
    assert asked == [NORMAL]  # asked in the first part, not again in the second


async def test_a_mute_applies_to_the_next_page_of_a_walk_in_progress() -> None:
    world, hiding, _ = hiding_world()
    for author in (NORMAL, MUTED):
        await world.follow(READER, author)
    for author in [NORMAL, MUTED] * 10:
        await world.post(author)

    first, token = await world.page(READER, 4)
    hiding.muted[READER] = {MUTED}
    rest = []
    while token:
        ids, token = await world.page(READER, 4, token)
        rest.append(ids)

    everyone = by(world, NORMAL, MUTED)
    assert first == everyone[:4]
    below = [t for t in by(world, NORMAL) if t < first[-1]]
    assert [t for ids in rest for t in ids] == below
    assert all(len(ids) == 4 for ids in rest[:-1])
    assert len(hiding.calls) == 1 + len(rest)  # one lookup per page, none per tweet


async def test_pages_stay_full_past_hundreds_of_a_muted_authors_pushed_entries() -> None:
    world, hiding, _ = hiding_world()
    for author in (NORMAL, MUTED):
        await world.follow(READER, author)
    old = [await world.post(NORMAL) for _ in range(12)]
    for _ in range(300):  # muted but followed: every one of these stays in the timeline
        await world.post(MUTED)
    new = [await world.post(NORMAL) for _ in range(3)]
    hiding.muted[READER] = {MUTED}

    pages = await world.every_page(READER, 5)

    assert [t for ids in pages for t in ids] == newest_first(old + new)
    assert [len(ids) for ids in pages] == [5, 5, 5]


async def test_when_every_round_is_filtered_away_the_page_is_short_but_the_walk_has_no_gap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(home_feed, "MAX_ROUNDS", 1)  # so filtering outlasts the rounds
    world, hiding, _ = hiding_world()
    for author in (NORMAL, MUTED):
        await world.follow(READER, author)
    old = [await world.post(NORMAL) for _ in range(3)]
    for _ in range(40):
        await world.post(MUTED)
    hiding.muted[READER] = {MUTED}

    pages = await world.every_page(READER, 5)

    assert [t for ids in pages for t in ids] == newest_first(old)
    assert pages[0] == [] and len(pages) > 1  # the first round saw only muted entries


# ---- trending -------------------------------------------------------------------------------


class Context:
    def __init__(self, user_id: int | None) -> None:
        self._metadata = () if user_id is None else ((USER_ID_HEADER, str(user_id)),)

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata


def trending_service(listed: list[tweet_pb2.Tweet], hiding: Hiding) -> RankService:
    async def load() -> list[tweet_pb2.Tweet]:
        return listed

    return RankService(TrendingCopy(load), hiding, blockers_among=hiding.blockers_among)


async def list_trending(service: RankService, viewer: int | None, limit: int) -> list[int]:
    reply = await service.ListTrending(
        rank_pb2.ListTrendingRequest(limit=limit), cast(grpc.aio.ServicerContext, Context(viewer))
    )
    return [t.tweet_id for t in reply.tweets]


async def test_trending_hides_blocked_and_muted_authors_for_that_viewer_only() -> None:
    listed = [tweet_pb2.Tweet(tweet_id=i, author_id=a) for i, a in enumerate([MUTED, NORMAL, BLOCKER, OTHER] * 3, 1)]
    hiding = Hiding()
    hiding.muted[READER] = {MUTED}
    hiding.blocked[BLOCKER] = {READER}
    service = trending_service(listed, hiding)

    assert await list_trending(service, READER, 4) == [2, 4, 6, 8]  # filled from further down the list
    assert await list_trending(service, BLOCKER, 4) == [1, 2, 3, 4]  # the reader has no tweets listed
    assert await list_trending(service, OTHER, 4) == [1, 2, 3, 4]
    assert await list_trending(service, None, 4) == [1, 2, 3, 4]  # anonymous: unfiltered
    assert hiding.calls == [READER, BLOCKER, OTHER]  # one lookup per signed-in request, none anonymous

    hiding.muted[READER] = set()
    assert await list_trending(service, READER, 3) == [1, 2, 4]  # unmuted at once; still blocked


async def test_trending_asks_about_blockers_past_those_the_set_lists() -> None:
    listed = [tweet_pb2.Tweet(tweet_id=i, author_id=a) for i, a in enumerate([BLOCKER, NORMAL, OTHER, STAR] * 3, 1)]
    hiding = Hiding()
    hiding.listed_blockers = 1
    hiding.blocked[OTHER] = {READER}  # listed
    hiding.blocked[BLOCKER] = {READER}  # past the list
    service = trending_service(listed, hiding)

    assert await list_trending(service, READER, 3) == [2, 4, 6]
    # Only the authors about to be shown, each once: first NORMAL, STAR and BLOCKER, then none new.
    assert hiding.asked == [[BLOCKER, NORMAL, STAR]]
    assert await list_trending(service, BLOCKER, 3) == [1, 2, 3]  # blocks nobody who blocks them
