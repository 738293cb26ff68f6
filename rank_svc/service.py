"""RankService RPC handlers: serve the list the rank worker computed, from this
process's copy of it; no computing here. A signed-in viewer gets the list
without the authors they mute or block or who block them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import grpc
from chirp.rank.v1 import rank_pb2, rank_pb2_grpc
from chirp.tweet.v1 import tweet_pb2

from common.errors import InvalidArgument
from common.hidden import BlockersAmong, without_blockers
from common.identity import optional_user
from rank_svc.reads import LikedTweetIds, TrendingCopy, visible_trending, with_liked

DEFAULT_LIMIT = 10
# The API's cap on `limit`; the computed list may hold more, so a viewer who hides
# some authors can still get a full answer.
MAX_LIMIT = 100

# viewer id -> authors whose tweets the viewer must not see (common/hidden.py)
HiddenAuthors = Callable[[int], Awaitable[frozenset[int]]]


class RankService(rank_pb2_grpc.RankServiceServicer):
    def __init__(
        self,
        trending: TrendingCopy,
        hidden_authors: HiddenAuthors,
        liked_tweet_ids: LikedTweetIds | None = None,
        blockers_among: BlockersAmong | None = None,
    ) -> None:
        self._trending = trending
        self._hidden_authors = hidden_authors
        self._liked_tweet_ids = liked_tweet_ids
        self._blockers_among = blockers_among

    async def ListTrending(
        self, request: rank_pb2.ListTrendingRequest, context: grpc.aio.ServicerContext
    ) -> rank_pb2.ListTrendingResponse:
        if request.limit < 0:
            raise InvalidArgument("limit must not be negative", field="limit")
        limit = min(request.limit or DEFAULT_LIMIT, MAX_LIMIT)
        viewer = optional_user(context)
        if viewer is None:
            return rank_pb2.ListTrendingResponse(tweets=(await self._trending.tweets())[:limit])
        # Once per request, from the versioned cache (common/hidden.py) that every block and
        # mute invalidates before it is acknowledged: a change applies to the next read.
        tweets, hidden = await asyncio.gather(self._trending.tweets(), self._hidden_authors(viewer))
        shown, _ = await without_blockers(
            viewer,
            hidden - {viewer},
            lambda hiding: visible_trending(tweets, hiding, limit),
            _author,
            self._blockers_among,
        )
        if self._liked_tweet_ids is not None and shown:
            shown = with_liked(shown, await self._liked_tweet_ids(viewer, [t.tweet_id for t in shown]))
        return rank_pb2.ListTrendingResponse(tweets=shown)


def _author(tweet: tweet_pb2.Tweet) -> int:
    return tweet.author_id
