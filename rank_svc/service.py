"""RankService RPC handlers: serve the list the rank worker computed, from this
process's copy of it; no computing here."""

from __future__ import annotations

import grpc
from chirp.rank.v1 import rank_pb2, rank_pb2_grpc

from common.errors import InvalidArgument
from rank_svc.reads import TrendingCopy
from rank_svc.store import MAX_TRENDING

DEFAULT_LIMIT = 10


class RankService(rank_pb2_grpc.RankServiceServicer):
    def __init__(self, trending: TrendingCopy) -> None:
        self._trending = trending

    async def ListTrending(
        self, request: rank_pb2.ListTrendingRequest, context: grpc.aio.ServicerContext
    ) -> rank_pb2.ListTrendingResponse:
        if request.limit < 0:
            raise InvalidArgument("limit must not be negative", field="limit")
        limit = min(request.limit or DEFAULT_LIMIT, MAX_TRENDING)
        tweets = await self._trending.tweets()
        return rank_pb2.ListTrendingResponse(tweets=tweets[:limit])
