"""Peers opens channels only to the services it is given."""

from __future__ import annotations

import pytest

from common.clients import Peers


async def test_peers_open_only_the_channels_asked_for() -> None:
    peers = Peers(graph_target="ipv4:127.0.0.1:1")
    try:
        assert len(peers._channels) == 1
        with pytest.raises(RuntimeError, match="tweet_svc"):
            await peers.batch_tweets([1])
    finally:
        await peers.close()


async def test_peers_with_both_targets_close_both_channels() -> None:
    peers = Peers(graph_target="ipv4:127.0.0.1:1", tweet_target="ipv4:127.0.0.1:2")
    assert len(peers._channels) == 2
    await peers.close()


async def test_like_counts_from_a_tweet_svc_that_predates_them_come_with_the_tweets() -> None:
    """A rolling upgrade: feed_svc asks BatchGetLikeCounts of a tweet_svc that answers UNIMPLEMENTED."""
    import grpc
    from chirp.tweet.v1 import tweet_internal_pb2, tweet_internal_pb2_grpc, tweet_pb2

    class OldTweetSvc(tweet_internal_pb2_grpc.TweetInternalServiceServicer):
        async def BatchGetTweets(
            self, request: tweet_internal_pb2.BatchGetTweetsRequest, context: grpc.aio.ServicerContext
        ) -> tweet_internal_pb2.BatchGetTweetsResponse:
            return tweet_internal_pb2.BatchGetTweetsResponse(
                tweets=[tweet_pb2.Tweet(tweet_id=t, like_count=t * 10) for t in request.tweet_ids if t != 3]
            )

    server = grpc.aio.server()
    # An old tweet_svc: only BatchGetTweets (the stubs answer the rest UNIMPLEMENTED).
    tweet_internal_pb2_grpc.add_TweetInternalServiceServicer_to_server(OldTweetSvc(), server)  # type: ignore[abstract]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    peers = Peers(tweet_target=f"127.0.0.1:{port}")
    try:
        assert await peers.like_counts([1, 2, 3]) == {1: 10, 2: 20}  # 3 is gone
    finally:
        await peers.close()
        await server.stop(None)
