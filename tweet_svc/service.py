"""TweetService (public) and TweetInternalService (peers only) RPC handlers:
validate, call the domain, map to protos."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpc
from chirp.tweet.v1 import tweet_internal_pb2, tweet_internal_pb2_grpc, tweet_pb2, tweet_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp

from common.identity import acting_user, metadata_value, optional_user
from common.pagination import page_size
from tweet_svc.domain import Tweets
from tweet_svc.store import TweetRecord

IDEMPOTENCY_HEADER = "idempotency-key"
RECENT_DEFAULT, RECENT_MAX = 20, 200


def tweet_proto(tweet: TweetRecord, liked_by_me: bool = False) -> tweet_pb2.Tweet:
    created = Timestamp()
    created.FromDatetime(tweet.created_at)
    return tweet_pb2.Tweet(
        tweet_id=tweet.tweet_id,
        author_id=tweet.author_id,
        author_username=tweet.author_username,
        text=tweet.text,
        created_at=created,
        like_count=tweet.like_count,
        liked_by_me=liked_by_me,
    )


def tweet_protos(tweets: Sequence[TweetRecord], liked: set[int]) -> list[tweet_pb2.Tweet]:
    """`liked`: which of them the caller likes (Tweets.liked_by, one read per response)."""
    return [tweet_proto(t, t.tweet_id in liked) for t in tweets]


class TweetService(tweet_pb2_grpc.TweetServiceServicer):
    def __init__(self, tweets: Tweets) -> None:
        self._tweets = tweets

    async def CreateTweet(
        self, request: tweet_pb2.CreateTweetRequest, context: grpc.aio.ServicerContext
    ) -> tweet_pb2.CreateTweetResponse:
        user_id = acting_user(context)
        key = metadata_value(context, IDEMPOTENCY_HEADER) or request.idempotency_key
        tweet = await self._tweets.create(user_id, request.text, key)
        return tweet_pb2.CreateTweetResponse(tweet=tweet_proto(tweet))

    async def GetTweet(
        self, request: tweet_pb2.GetTweetRequest, context: grpc.aio.ServicerContext
    ) -> tweet_pb2.GetTweetResponse:
        viewer = optional_user(context)
        tweet = await self._tweets.get(request.tweet_id, viewer=viewer)
        liked = await self._tweets.liked_by(viewer, [tweet.tweet_id])
        return tweet_pb2.GetTweetResponse(tweet=tweet_proto(tweet, tweet.tweet_id in liked))

    async def DeleteTweet(
        self, request: tweet_pb2.DeleteTweetRequest, context: grpc.aio.ServicerContext
    ) -> tweet_pb2.DeleteTweetResponse:
        await self._tweets.delete(acting_user(context), request.tweet_id)
        return tweet_pb2.DeleteTweetResponse()

    async def ListUserTweets(
        self, request: tweet_pb2.ListUserTweetsRequest, context: grpc.aio.ServicerContext
    ) -> tweet_pb2.ListUserTweetsResponse:
        viewer = optional_user(context)
        page = await self._tweets.by_author(
            request.user_id, page_size(request.page_size), request.page_token, viewer=viewer
        )
        liked = await self._tweets.liked_by(viewer, [t.tweet_id for t in page.tweets])
        return tweet_pb2.ListUserTweetsResponse(
            tweets=tweet_protos(page.tweets, liked), next_page_token=page.next_page_token
        )

    async def LikeTweet(
        self, request: tweet_pb2.LikeTweetRequest, context: grpc.aio.ServicerContext
    ) -> tweet_pb2.LikeTweetResponse:
        count = await self._tweets.set_like(acting_user(context), request.tweet_id, liked=True)
        return tweet_pb2.LikeTweetResponse(like_count=count)

    async def UnlikeTweet(
        self, request: tweet_pb2.UnlikeTweetRequest, context: grpc.aio.ServicerContext
    ) -> tweet_pb2.UnlikeTweetResponse:
        count = await self._tweets.set_like(acting_user(context), request.tweet_id, liked=False)
        return tweet_pb2.UnlikeTweetResponse(like_count=count)


class TweetInternalService(tweet_internal_pb2_grpc.TweetInternalServiceServicer):
    def __init__(self, tweets: Tweets) -> None:
        self._tweets = tweets

    async def BatchGetTweets(
        self, request: tweet_internal_pb2.BatchGetTweetsRequest, context: grpc.aio.ServicerContext
    ) -> tweet_internal_pb2.BatchGetTweetsResponse:
        ids = list(request.tweet_ids)
        # The viewer's flags come with the bodies (one user_likes read alongside the body and
        # count reads) so a caller such as feed_svc needs no second round trip for them.
        tweets, liked = await asyncio.gather(
            self._tweets.get_many(ids), self._tweets.liked_by(request.viewer_id or None, ids)
        )
        return tweet_internal_pb2.BatchGetTweetsResponse(tweets=tweet_protos(tweets, liked))

    async def ListRecentTweetIds(
        self, request: tweet_internal_pb2.ListRecentTweetIdsRequest, context: grpc.aio.ServicerContext
    ) -> tweet_internal_pb2.ListRecentTweetIdsResponse:
        if request.refresh:
            await self._tweets.refresh_recent(list(request.author_ids))
            return tweet_internal_pb2.ListRecentTweetIdsResponse()
        limit = page_size(request.limit_per_author, RECENT_DEFAULT, RECENT_MAX, field="limit_per_author")
        pairs = await self._tweets.recent_ids(list(request.author_ids), request.before_tweet_id, limit)
        return tweet_internal_pb2.ListRecentTweetIdsResponse(
            tweets=[tweet_internal_pb2.AuthoredTweetId(tweet_id=t, author_id=a) for t, a in pairs]
        )

    async def ListLikedTweetIds(
        self, request: tweet_internal_pb2.ListLikedTweetIdsRequest, context: grpc.aio.ServicerContext
    ) -> tweet_internal_pb2.ListLikedTweetIdsResponse:
        ids = list(dict.fromkeys(request.tweet_ids))
        liked = await self._tweets.liked_by(request.user_id, ids)
        return tweet_internal_pb2.ListLikedTweetIdsResponse(tweet_ids=[t for t in ids if t in liked])

    async def BatchGetLikeCounts(
        self, request: tweet_internal_pb2.BatchGetLikeCountsRequest, context: grpc.aio.ServicerContext
    ) -> tweet_internal_pb2.BatchGetLikeCountsResponse:
        if request.refresh:
            counts = await self._tweets.refresh_like_counts(list(request.tweet_ids))
        else:
            counts = await self._tweets.like_counts(list(request.tweet_ids))
        return tweet_internal_pb2.BatchGetLikeCountsResponse(like_counts=counts)
