"""The acting-user metadata on a direct call to a service port (not through the
edge, which sets it from a verified token): an out-of-range value, or the entry
twice, is INVALID_ARGUMENT, never INTERNAL; a missing one, or one that is no
positive number, is UNAUTHENTICATED (through the edge, a token whose subject is
no user: tests/e2e/test_write_path.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import pytest
from chirp.graph.v1 import graph_pb2, graph_pb2_grpc
from chirp.tweet.v1 import tweet_pb2, tweet_pb2_grpc

from common.identity import USER_ID_HEADER
from infra import topology

MAX_ID = 2**63 - 1
OUT_OF_RANGE = [str(2**63), str(2**64 + 5), "9" * 40, "9" * 5000]
NOT_A_USER = ["-5", "0", "abc", "", "+5", " 5", "5 ", "5_0", "0x10", "1e3", "05"]

Metadata = tuple[tuple[str, str], ...]
Call = Callable[[Metadata], object]


def port_of(name: str) -> int:
    service = next(s for s in topology.SERVICES if s.name == name)
    return topology.instances(service)[0].port


@pytest.fixture(scope="module")
def calls() -> Iterator[dict[str, Call]]:
    """One acting-user call per service, each on its first instance's own port."""
    with (
        grpc.insecure_channel(f"{topology.HOST}:{port_of('tweet_svc')}") as tweets,
        grpc.insecure_channel(f"{topology.HOST}:{port_of('graph_svc')}") as graph,
    ):
        tweet = tweet_pb2_grpc.TweetServiceStub(tweets)
        users = graph_pb2_grpc.GraphServiceStub(graph)
        yield {
            "like": lambda md: tweet.LikeTweet(tweet_pb2.LikeTweetRequest(tweet_id=MAX_ID), metadata=md, timeout=5),
            "post": lambda md: tweet.CreateTweet(tweet_pb2.CreateTweetRequest(text="direct"), metadata=md, timeout=5),
            "follow": lambda md: users.FollowUser(graph_pb2.FollowUserRequest(user_id=MAX_ID), metadata=md, timeout=5),
            "unfollow": lambda md: users.UnfollowUser(
                graph_pb2.UnfollowUserRequest(user_id=MAX_ID), metadata=md, timeout=5
            ),
        }


def status_of(call: Call, metadata: list[tuple[str, str]]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call(tuple(metadata))
    error = caught.value
    assert isinstance(error, grpc.Call)
    return error.code(), str(error.details())


@pytest.mark.parametrize("method", ["like", "post", "follow", "unfollow"])
@pytest.mark.parametrize("value", OUT_OF_RANGE, ids=lambda v: f"{v[:12]}x{len(v)}")
def test_an_out_of_range_acting_user_is_invalid_argument(calls: dict[str, Call], method: str, value: str) -> None:
    code, message = status_of(calls[method], [(USER_ID_HEADER, value)])
    assert code == grpc.StatusCode.INVALID_ARGUMENT, message
    assert USER_ID_HEADER in message


@pytest.mark.parametrize("method", ["like", "post", "follow", "unfollow"])
@pytest.mark.parametrize("value", NOT_A_USER)
def test_an_acting_user_that_is_no_positive_number_is_unauthenticated(
    calls: dict[str, Call], method: str, value: str
) -> None:
    code, message = status_of(calls[method], [(USER_ID_HEADER, value)])
    assert code == grpc.StatusCode.UNAUTHENTICATED, message


@pytest.mark.parametrize("method", ["like", "follow"])
def test_two_acting_users_are_invalid_argument(calls: dict[str, Call], method: str) -> None:
    code, message = status_of(calls[method], [(USER_ID_HEADER, "7"), (USER_ID_HEADER, "8")])
    assert code == grpc.StatusCode.INVALID_ARGUMENT, message


@pytest.mark.parametrize("method", ["like", "post", "follow", "unfollow"])
def test_no_acting_user_is_unauthenticated(calls: dict[str, Call], method: str) -> None:
    code, message = status_of(calls[method], [])
    assert code == grpc.StatusCode.UNAUTHENTICATED, message


@pytest.mark.parametrize("method", ["like", "unfollow"])
def test_the_largest_id_is_accepted_as_an_acting_user(calls: dict[str, Call], method: str) -> None:
    """It gets as far as the target (which does not exist), not refused for its own id."""
    code, message = status_of(calls[method], [(USER_ID_HEADER, str(MAX_ID - 1))])
    assert code == grpc.StatusCode.NOT_FOUND, message
