"""What a home-feed read hydrates (each tweet is two Redis commands on the cached path):
only what the page shows and one more, unless filtering thinned that, and then the
same page as hydrating the whole round would give. Over the in-memory world of
test_feed_rules, with tweet_svc's BatchGetTweets counted."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from chirp.tweet.v1 import tweet_pb2

from feed_svc.home_feed import HomeFeed
from feed_svc.merge import ASK_SLACK
from feed_svc.store import CelebrityStore
from tests.unit.test_feed_rules import NORMAL, READER, THRESHOLD, TIMELINE_SIZE, World, newest_first


class Counted:
    def __init__(self, world: World) -> None:
        self.world = world
        self.asked: list[int] = []
        self.feed = HomeFeed(
            world.cache,
            cast(CelebrityStore, world.store),
            world.graph.following_ids,
            world.tweets.recent_ids,
            self.batch_tweets,
            THRESHOLD,
            TIMELINE_SIZE,
            world.registry,
        )

    async def batch_tweets(self, tweet_ids: Sequence[int], viewer_id: int = 0) -> list[tweet_pb2.Tweet]:
        self.asked += tweet_ids
        return await self.world.tweets.batch_tweets(tweet_ids, viewer_id)

    async def page(self, size: int, token: str = "") -> tuple[list[int], str]:
        tweets, next_token = await self.feed.page(READER, size, token)
        return [t.tweet_id for t in tweets], next_token


async def test_an_unfiltered_page_hydrates_what_it_shows_and_one_more() -> None:
    world = World()
    await world.follow(READER, NORMAL)
    posted = [await world.post(NORMAL) for _ in range(40)]
    counted = Counted(world)

    ids, token = await counted.page(5)

    assert ids == newest_first(posted)[:5] and token
    assert counted.asked == newest_first(posted)[:6]  # not the round's 5 + 1 + ASK_SLACK


async def test_a_thinned_page_hydrates_the_slack_and_shows_the_same_tweets() -> None:
    world = World()
    await world.follow(READER, NORMAL)
    posted = [await world.post(NORMAL) for _ in range(40)]
    # Deleted in tweet_svc, the event not applied yet: still in the pushed timeline.
    gone = newest_first(posted)[:3]
    world.tweets.deleted.update(gone)
    live = newest_first(set(posted) - set(gone))
    counted = Counted(world)

    ids, token = await counted.page(5)

    assert ids == live[:5]
    assert counted.asked == newest_first(posted)[: 6 + ASK_SLACK]  # the first 6, then the slack
    walked = list(ids)
    while token:
        ids, token = await counted.page(5, token)
        walked += ids
    assert walked == live  # no repeat, no gap
