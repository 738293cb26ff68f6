"""graph_svc's ListFollowerIds, the fan-out worker's walk over an author's
followers, on graph_svc's own port (an internal RPC: not at the edge): the first
page carries the follower count, so one call per tweet tells the worker whether
to push and to whom; later pages do not repeat it."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import httpx
import pytest
from chirp.graph.v1 import graph_internal_pb2, graph_internal_pb2_grpc

from infra import topology
from tests.e2e.test_feed import follow, follower_count
from tests.e2e.test_write_path import new_accounts


@pytest.fixture(scope="module")
def graph() -> Iterator[graph_internal_pb2_grpc.GraphInternalServiceStub]:
    service = next(s for s in topology.SERVICES if s.name == "graph_svc")
    with grpc.insecure_channel(f"{topology.HOST}:{topology.instances(service)[0].port}") as channel:
        yield graph_internal_pb2_grpc.GraphInternalServiceStub(channel)


def test_the_first_page_of_followers_carries_the_count_and_later_pages_do_not(
    edge: httpx.Client, graph: graph_internal_pb2_grpc.GraphInternalServiceStub
) -> None:
    author, *followers = new_accounts(edge, 4, "fp")
    for follower in followers:
        follow(edge, follower, author.user_id)

    first = graph.ListFollowerIds(
        graph_internal_pb2.ListFollowerIdsRequest(user_id=int(author.user_id), page_size=2), timeout=5
    )
    assert first.HasField("follower_count")
    assert first.follower_count == follower_count(edge, author.user_id) == 3
    assert len(first.user_ids) == 2 and first.next_page_token

    rest = graph.ListFollowerIds(
        graph_internal_pb2.ListFollowerIdsRequest(
            user_id=int(author.user_id), page_size=2, page_token=first.next_page_token
        ),
        timeout=5,
    )
    assert not rest.HasField("follower_count")
    assert {*first.user_ids, *rest.user_ids} == {int(f.user_id) for f in followers}
    assert not rest.next_page_token


def test_an_account_nobody_follows_has_a_first_page_with_a_count_of_zero(
    edge: httpx.Client, graph: graph_internal_pb2_grpc.GraphInternalServiceStub
) -> None:
    (loner,) = new_accounts(edge, 1, "fp")
    reply = graph.ListFollowerIds(graph_internal_pb2.ListFollowerIdsRequest(user_id=int(loner.user_id)), timeout=5)
    assert reply.HasField("follower_count") and reply.follower_count == 0
    assert list(reply.user_ids) == [] and not reply.next_page_token
