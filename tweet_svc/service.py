"""TweetService RPC handlers."""

from __future__ import annotations

from chirp.tweet.v1 import tweet_pb2_grpc


class TweetService(tweet_pb2_grpc.TweetServiceServicer):
    pass
