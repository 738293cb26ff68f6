"""FeedService RPC handlers."""

from __future__ import annotations

import grpc
from chirp.feed.v1 import feed_pb2, feed_pb2_grpc

from common.identity import acting_user
from common.pagination import page_size
from common.tweet_cache import response_bytes
from feed_svc.home_feed import HomeFeed


class FeedService(feed_pb2_grpc.FeedServiceServicer):
    def __init__(self, feed: HomeFeed) -> None:
        self._feed = feed

    async def GetHomeFeed(
        self, request: feed_pb2.GetHomeFeedRequest, context: grpc.aio.ServicerContext
    ) -> feed_pb2.GetHomeFeedResponse:
        user_id = acting_user(context)
        tweets, token = await self._feed.page(user_id, page_size(request.page_size), request.page_token)
        # One parse of the concatenated encoded tweets, not one message built per tweet.
        return feed_pb2.GetHomeFeedResponse.FromString(response_bytes([t.encoded for t in tweets], token))
