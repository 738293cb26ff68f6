"""Internal RPCs (GraphInternalService, TweetInternalService) are for peer
services only: the edge routes none of them, over REST or gRPC, whatever the
token, while the services themselves still answer their peers."""

from __future__ import annotations

import time
from typing import cast

import grpc
import httpx
import pytest
import redis
from chirp.graph.v1 import graph_internal_pb2, graph_internal_pb2_grpc
from chirp.tweet.v1 import tweet_internal_pb2, tweet_internal_pb2_grpc

from common.keys import tweet_key
from infra import topology
from tests.conftest import EDGE_URL, unique_name
from tests.e2e.test_users import assert_error
from tests.integration.test_durability import sign_in

PASSWORD = "correct horse"
# Every internal method under its current service and the public service that
# used to carry it (a client that kept the old path must not reach it either).
INTERNAL_PATHS = [
    f"/chirp.{pkg}.v1.{service}/{method}"
    for pkg, methods in (
        ("graph", ("BatchGetUsers", "ListFollowerIds", "ListFollowingIds")),
        ("tweet", ("BatchGetTweets", "ListRecentTweetIds", "BatchGetLikeCounts")),
    )
    for service in (f"{pkg.capitalize()}InternalService", f"{pkg.capitalize()}Service")
    for method in methods
]


@pytest.fixture(scope="module")
def session(edge: httpx.Client) -> tuple[int, str]:
    name = unique_name()
    user = edge.post("/v1/users", json={"username": name, "password": PASSWORD}).json()["user"]
    token = edge.post("/v1/sessions", json={"username": name, "password": PASSWORD}).json()["access_token"]
    return int(user["user_id"]), token


@pytest.mark.parametrize("path", INTERNAL_PATHS)
def test_internal_rpc_over_rest_is_404_with_json_body(edge: httpx.Client, session: tuple[int, str], path: str) -> None:
    user_id, token = session
    body = {"user_ids": [str(user_id)], "tweet_ids": ["1"], "author_ids": [str(user_id)], "user_id": str(user_id)}
    reply = edge.post(path, json=body, headers={"Authorization": f"Bearer {token}"})
    assert_error(reply, 404, 5)


def test_internal_rpcs_over_grpc_at_the_edge_are_unimplemented(session: tuple[int, str]) -> None:
    user_id, token = session
    md = (("authorization", f"Bearer {token}"),)
    with grpc.insecure_channel(EDGE_URL.removeprefix("http://")) as channel:
        graph = graph_internal_pb2_grpc.GraphInternalServiceStub(channel)
        tweet = tweet_internal_pb2_grpc.TweetInternalServiceStub(channel)
        calls = [
            lambda: graph.BatchGetUsers(
                graph_internal_pb2.BatchGetUsersRequest(user_ids=[user_id]), metadata=md, timeout=5
            ),
            lambda: graph.ListFollowerIds(
                graph_internal_pb2.ListFollowerIdsRequest(user_id=user_id), metadata=md, timeout=5
            ),
            lambda: graph.ListFollowingIds(
                graph_internal_pb2.ListFollowingIdsRequest(user_id=user_id), metadata=md, timeout=5
            ),
            lambda: tweet.BatchGetTweets(
                tweet_internal_pb2.BatchGetTweetsRequest(tweet_ids=[1]), metadata=md, timeout=5
            ),
            lambda: tweet.ListRecentTweetIds(
                tweet_internal_pb2.ListRecentTweetIdsRequest(author_ids=[user_id]), metadata=md, timeout=5
            ),
            lambda: tweet.BatchGetLikeCounts(
                tweet_internal_pb2.BatchGetLikeCountsRequest(tweet_ids=[1]), metadata=md, timeout=5
            ),
        ]
        for call in calls:
            with pytest.raises(grpc.RpcError) as raised:
                call()
            assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED, raised.value


def test_peers_still_reach_the_internal_services_on_the_service_ports(session: tuple[int, str]) -> None:
    user_id, _ = session
    graph_port = topology.instances(next(s for s in topology.SERVICES if s.name == "graph_svc"))[0].port
    with grpc.insecure_channel(f"{topology.HOST}:{graph_port}") as channel:
        reply = graph_internal_pb2_grpc.GraphInternalServiceStub(channel).BatchGetUsers(
            graph_internal_pb2.BatchGetUsersRequest(user_ids=[user_id]), timeout=5
        )
    assert [u.user_id for u in reply.users] == [user_id]


def tweet_svc_channel() -> grpc.Channel:
    """A channel to the first tweet_svc instance's own port, as its peers reach it."""
    port = topology.instances(next(s for s in topology.SERVICES if s.name == "tweet_svc"))[0].port
    return grpc.insecure_channel(f"{topology.HOST}:{port}")


def test_like_counts_come_without_bodies_and_count_acknowledged_likes(edge: httpx.Client) -> None:
    """BatchGetLikeCounts, as feed_svc asks it for cached bodies whose counts expired."""
    author = unique_name()
    edge.post("/v1/users", json={"username": author, "password": PASSWORD})
    token = edge.post("/v1/sessions", json={"username": author, "password": PASSWORD}).json()["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    liked = int(edge.post("/v1/tweets", json={"text": "count me"}, headers=auth).json()["tweet"]["tweet_id"])
    other = int(edge.post("/v1/tweets", json={"text": "not me"}, headers=auth).json()["tweet"]["tweet_id"])
    assert edge.post(f"/v1/tweets/{liked}/like", headers=auth).status_code == 200
    with tweet_svc_channel() as channel:
        stub = tweet_internal_pb2_grpc.TweetInternalServiceStub(channel)
        reply = stub.BatchGetLikeCounts(
            tweet_internal_pb2.BatchGetLikeCountsRequest(tweet_ids=[liked, other]), timeout=5
        )
        assert dict(reply.like_counts) == {liked: 1, other: 0}  # the like counts once acknowledged
        with pytest.raises(grpc.RpcError) as raised:
            stub.BatchGetLikeCounts(tweet_internal_pb2.BatchGetLikeCountsRequest(tweet_ids=[1] * 501), timeout=5)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_like_count_past_its_refresh_time_is_rebuilt_from_the_store(edge: httpx.Client) -> None:
    """BatchGetLikeCounts with refresh, as feed_svc asks it after serving a count past its refresh time."""
    _, auth = sign_in(edge)
    tweet_id = int(edge.post("/v1/tweets", json={"text": "recount me"}, headers=auth).json()["tweet"]["tweet_id"])
    assert edge.post(f"/v1/tweets/{tweet_id}/like", headers=auth).status_code == 200
    key = tweet_key("like_count", tweet_id)
    with redis.Redis(host=topology.HOST, port=topology.REDIS_PORT) as cache:
        deadline = time.monotonic() + 20
        while cache.hmget(key, ["c", "u"]) != [b"1", b"0"]:  # the like worker folded it: stored, none pending
            assert time.monotonic() < deadline, f"the like was never folded: {cache.hgetall(key)}"
            time.sleep(0.2)
        body = tweet_key("body", tweet_id)
        assert edge.get(f"/v1/tweets/{tweet_id}").status_code == 200  # its body is cached
        assert cache.pexpire(body, 5000)  # and near the end of its lifetime
        # Past its refresh time, and off by a write-through that was lost.
        cache.hset(key, mapping={"t": 1, "c": 5, "n": 5})
    with tweet_svc_channel() as channel:
        stub = tweet_internal_pb2_grpc.TweetInternalServiceStub(channel)
        reply = stub.BatchGetLikeCounts(
            tweet_internal_pb2.BatchGetLikeCountsRequest(tweet_ids=[tweet_id], refresh=True), timeout=5
        )
        assert dict(reply.like_counts) == {tweet_id: 1}  # the store's count
        with redis.Redis(host=topology.HOST, port=topology.REDIS_PORT) as cache:
            assert cast(int, cache.pttl(body)) > 60_000  # the body, being read, renewed as well
        again = stub.BatchGetLikeCounts(
            tweet_internal_pb2.BatchGetLikeCountsRequest(tweet_ids=[tweet_id], refresh=True), timeout=5
        )
        assert dict(again.like_counts) == {}  # no longer due: nothing rebuilt
    assert edge.get(f"/v1/tweets/{tweet_id}").json()["tweet"]["like_count"] == 1

    # A read through tweet_svc itself serves the count while due, and has it rebuilt after.
    with redis.Redis(host=topology.HOST, port=topology.REDIS_PORT) as cache:
        cache.hset(key, mapping={"t": 1, "c": 7, "n": 7})
    assert edge.get(f"/v1/tweets/{tweet_id}").json()["tweet"]["like_count"] == 7
    deadline = time.monotonic() + 10
    while edge.get(f"/v1/tweets/{tweet_id}").json()["tweet"]["like_count"] != 1:
        assert time.monotonic() < deadline, "the count past its refresh time was never rebuilt"
        time.sleep(0.2)


def test_a_recent_ids_set_past_its_refresh_time_is_renewed_from_the_store(edge: httpx.Client) -> None:
    """ListRecentTweetIds with refresh, as feed_svc asks it after serving a set past its refresh time."""
    user_id, auth = sign_in(edge)
    posted = [int(edge.post("/v1/tweets", json={"text": t}, headers=auth).json()["tweet"]["tweet_id"]) for t in "ab"]
    page = edge.get(f"/v1/users/{user_id}/tweets", params={"page_size": 10}).json()["tweets"]
    assert [int(t["tweet_id"]) for t in page] == posted[::-1]  # the set is filled
    key = tweet_key("author_recent", user_id)
    with redis.Redis(host=topology.HOST, port=topology.REDIS_PORT) as cache:
        cache.zrem(key, str(posted[1]))  # a post whose write to Redis was lost
        cache.pexpire(key, 5000)  # and the set past its refresh time
        with tweet_svc_channel() as channel:
            stub = tweet_internal_pb2_grpc.TweetInternalServiceStub(channel)
            reply = stub.ListRecentTweetIds(
                tweet_internal_pb2.ListRecentTweetIdsRequest(author_ids=[user_id], refresh=True), timeout=5
            )
        assert list(reply.tweets) == []
        assert cast(int, cache.pttl(key)) > 5000  # renewed
        assert {int(m) for m in cast(list[bytes], cache.zrange(key, 0, -1)) if m.isdigit()} == set(posted)

        # A read through tweet_svc itself serves the set while due, and has it refreshed after.
        cache.zrem(key, str(posted[1]))
        cache.pexpire(key, 25_000)  # due, and outliving the wait below: only a refresh mends it

        def page() -> list[int]:
            reply = edge.get(f"/v1/users/{user_id}/tweets", params={"page_size": 10})
            return [int(t["tweet_id"]) for t in reply.json()["tweets"]]

        assert page() == [posted[0]]  # served from the set as it is
        deadline = time.monotonic() + 10
        while page() != posted[::-1]:
            assert time.monotonic() < deadline, "the set past its refresh time was never refreshed"
            time.sleep(0.2)
        assert cast(int, cache.pttl(key)) > 30_000  # renewed
