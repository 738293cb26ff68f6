"""FeedService RPC handlers."""

from __future__ import annotations

from chirp.feed.v1 import feed_pb2_grpc


class FeedService(feed_pb2_grpc.FeedServiceServicer):
    pass
