"""ListFollowerIds' first page carries the follower count; the counts row is read
only when the page is not the last (one CQL read fewer per tweet of most authors)."""

from __future__ import annotations

from typing import Any

from chirp.graph.v1 import graph_internal_pb2

from graph_svc.service import GraphInternalService


class FakeGraph:
    def __init__(self, followers: list[int], counted: int) -> None:
        self.followers = followers
        self.counted = counted  # what the counts row says
        self.count_reads = 0

    async def follower_ids(self, user_id: int, page_size: int, page_token: str) -> tuple[list[int], str]:
        start = int(page_token or 0)
        page = self.followers[start : start + page_size]
        more = start + page_size < len(self.followers)
        return page, str(start + page_size) if more else ""

    async def follower_count(self, user_id: int) -> int:
        self.count_reads += 1
        return self.counted


async def first_page(graph: FakeGraph, page_size: int) -> Any:
    service = GraphInternalService(graph, None)  # type: ignore[arg-type]
    request = graph_internal_pb2.ListFollowerIdsRequest(user_id=1, page_size=page_size)
    return await service.ListFollowerIds(request, None)  # type: ignore[arg-type]


async def test_a_first_page_that_is_the_last_counts_its_ids_without_reading_the_counts_row() -> None:
    graph = FakeGraph([5, 4, 3], counted=3)
    reply = await first_page(graph, 10)
    assert list(reply.user_ids) == [5, 4, 3] and not reply.next_page_token
    assert reply.HasField("follower_count") and reply.follower_count == 3
    assert graph.count_reads == 0


async def test_a_first_page_with_more_after_it_carries_the_counts_row() -> None:
    graph = FakeGraph(list(range(100, 0, -1)), counted=100)
    reply = await first_page(graph, 10)
    assert len(reply.user_ids) == 10 and reply.next_page_token
    assert reply.follower_count == 100 and graph.count_reads == 1


async def test_nobody_following_counts_zero() -> None:
    graph = FakeGraph([], counted=0)
    reply = await first_page(graph, 10)
    assert reply.HasField("follower_count") and reply.follower_count == 0 and graph.count_reads == 0
