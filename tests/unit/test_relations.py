"""Blocks and mutes (graph_svc/relations.py) with graph_svc's real follow rules
over in-memory stores: what a block does to follows and counts, who may follow
whom, idempotency, the private paged lists and the internal reads."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

import pytest

from common.errors import InvalidArgument, NotFound, PermissionDenied, ResourceExhausted
from common.ids import IdGenerator
from common.limits import Limit, LocalCounters, UserLimits
from graph_svc.accounts import Account
from graph_svc.domain import Graph
from graph_svc.relations import CANNOT_FOLLOW, UNBLOCK_TO_FOLLOW, Kind, Listed, Relation, Relations
from graph_svc.store import _ms
from tests.unit.test_follow_counts import Clock, FakeGraphStore, FakeOutbox


class FakeRelationStore:
    """The rows of graph_svc.relations.RelationStore, in memory."""

    def __init__(self) -> None:
        self.since_rows: dict[tuple[Kind, int, int], datetime] = {}
        self.listed: dict[tuple[Kind, int], set[tuple[datetime, int]]] = {}
        self.blocked_by: dict[int, set[int]] = {}

    async def claim(self, kind: Kind, actor: int, target: int, at: datetime) -> datetime:
        return self.since_rows.setdefault((kind, actor, target), at)

    async def write_listing(self, kind: Kind, actor: int, target: int, at: datetime) -> None:
        self.listed.setdefault((kind, actor), set()).add((at, target))
        if kind == "block":
            self.blocked_by.setdefault(target, set()).add(actor)

    async def since(self, kind: Kind, actor: int, target: int) -> datetime | None:
        return self.since_rows.get((kind, actor, target))

    async def remove(self, kind: Kind, actor: int, target: int, at: datetime) -> None:
        self.listed.get((kind, actor), set()).discard((at, target))
        if kind == "block":
            self.blocked_by.get(target, set()).discard(actor)
        self.since_rows.pop((kind, actor, target), None)

    async def listing(self, kind: Kind, actor: int, limit: int, after: Listed | None) -> list[Listed]:
        rows = sorted(((_ms(at), target) for at, target in self.listed.get((kind, actor), set())), reverse=True)
        if after is not None:
            rows = [r for r in rows if r < (after.at_ms, after.user_id)]
        return [Listed(target, at_ms) for at_ms, target in rows[:limit]]

    async def targets(self, kind: Kind, actor: int) -> list[int]:
        return sorted(t for k, a, t in self.since_rows if k == kind and a == actor)

    async def blockers_of(self, user_id: int, limit: int) -> list[int]:
        return sorted(self.blocked_by.get(user_id, set()))[:limit]

    async def targets_among(self, kind: Kind, actor: int, candidates: Sequence[int]) -> set[int]:
        return set(await self.targets(kind, actor)) & set(candidates)

    async def blockers_among(self, user_id: int, candidates: Sequence[int]) -> set[int]:
        return self.blocked_by.get(user_id, set()) & set(candidates)


class GraphRows(FakeGraphStore):
    async def get_users(self, user_ids: Sequence[int]) -> list[Account]:
        found = [await self.get_user(u) for u in user_ids]
        return [a for a in found if a is not None]


class World:
    def __init__(self, users: Sequence[int], limits: UserLimits | None = None) -> None:
        self.graph_store = GraphRows(users)
        self.outbox = FakeOutbox()
        self.relation_store = FakeRelationStore()
        unused = cast(Any, None)
        self.graph = Graph(
            cast(Any, self.graph_store),
            cast(Any, self.outbox),
            unused,
            unused,
            IdGenerator(3),
            clock=Clock(),
            blocks=cast(Any, self.relation_store),
            limits=limits,
        )
        self.relations = Relations(cast(Any, self.relation_store), self.graph, clock=Clock(), limits=limits)

    async def counts(self, user_id: int) -> tuple[int, int]:
        account = await self.graph.get_user(user_id)
        return account.follower_count, account.following_count

    def events(self, kind: str) -> list[tuple[int, int]]:
        return [
            (e.payload["follower_id"], e.payload["followee_id"])
            for e in self.outbox.published
            if e.payload["type"] == kind
        ]


async def test_blocks_mutes_and_their_undoing_count_against_the_follow_limit() -> None:
    """Each is a write, invalidates cached sets, and a block unfollows both ways: unlimited,
    a loop of them was an unthrottled stream of writes and events."""
    world = World([1, 2, 3], UserLimits(LocalCounters(), {"follow": Limit(5, 300)}))
    await world.graph.follow(1, 2)
    await world.relations.mute(1, 3)
    await world.relations.unmute(1, 3)
    await world.relations.block(1, 3)  # its unfollows are not charged again
    await world.relations.unblock(1, 3)
    for change in (world.relations.block(1, 3), world.relations.mute(1, 2), world.graph.follow(1, 3)):
        with pytest.raises(ResourceExhausted, match="too many follows, blocks and mutes"):
            await change
    await world.relations.mute(2, 1)  # another user's own budget
    assert not world.relation_store.blocked_by.get(3)


async def test_a_block_removes_the_follows_both_ways_through_unfollow() -> None:
    world = World([1, 2, 3])
    await world.graph.follow(1, 2)
    await world.graph.follow(2, 1)
    await world.graph.follow(3, 1)
    assert await world.counts(1) == (2, 1)

    await world.relations.block(1, 2)

    assert not [edge for edge in world.graph_store.edges if set(edge) == {1, 2}]
    assert sorted(world.events("unfollow")) == [(1, 2), (2, 1)]  # so the fan-out cleans timelines up
    assert await world.counts(1) == (1, 0)  # 3 still follows 1
    assert await world.counts(2) == (0, 0)


async def test_neither_side_can_follow_across_a_block_until_it_is_lifted() -> None:
    world = World([1, 2])
    await world.relations.block(1, 2)
    with pytest.raises(PermissionDenied) as blocked:
        await world.graph.follow(2, 1)
    assert blocked.value.message == CANNOT_FOLLOW
    with pytest.raises(PermissionDenied) as blocking:
        await world.graph.follow(1, 2)
    assert blocking.value.message == UNBLOCK_TO_FOLLOW
    assert world.graph_store.edges == {}

    await world.relations.unblock(1, 2)
    await world.graph.follow(2, 1)
    await world.graph.follow(1, 2)
    assert set(world.graph_store.edges) == {(1, 2), (2, 1)}


async def test_a_follow_racing_a_block_is_undone() -> None:
    world = World([1, 2])
    add_edge = world.graph_store.add_edge

    async def block_lands_first(follower: int, followee: int, at: datetime) -> tuple[bool, datetime]:
        # The block's unfollows run after the follow's first look and before its edge exists.
        await world.relations.block(1, 2)
        return await add_edge(follower, followee, at)

    world.graph_store.add_edge = block_lands_first  # type: ignore[method-assign]
    with pytest.raises(PermissionDenied):
        await world.graph.follow(2, 1)
    assert world.graph_store.edges == {}
    assert await world.counts(1) == (0, 0)


async def test_blocking_twice_lists_once_and_unblocking_a_stranger_is_fine() -> None:
    world = World([1, 2, 3])
    await world.relations.block(1, 2)
    first = await world.relation_store.since("block", 1, 2)
    await world.relations.block(1, 2)
    assert await world.relation_store.since("block", 1, 2) == first
    page = await world.relations.blocks(1, 20, "")
    assert [a.user_id for a in page.accounts] == [2]

    await world.relations.unblock(1, 3)  # never blocked
    await world.relations.unblock(1, 2)
    await world.relations.unblock(1, 2)
    assert (await world.relations.blocks(1, 20, "")).accounts == []
    assert await world.relations.relations(2, [1]) == [Relation(1, False, False, False)]


@pytest.mark.parametrize("action", ["block", "unblock", "mute", "unmute"])
async def test_yourself_is_invalid_and_a_stranger_unknown(action: str) -> None:
    world = World([1, 2])
    act = getattr(world.relations, action)
    with pytest.raises(InvalidArgument):
        await act(1, 1)
    with pytest.raises(InvalidArgument):
        await act(1, 0)
    with pytest.raises(NotFound):
        await act(1, 99)


async def test_muting_keeps_the_follow_and_is_idempotent() -> None:
    world = World([1, 2])
    await world.graph.follow(1, 2)
    await world.relations.mute(1, 2)
    await world.relations.mute(1, 2)
    assert (1, 2) in world.graph_store.edges
    assert [a.user_id for a in (await world.relations.mutes(1, 20, "")).accounts] == [2]
    assert (await world.relations.hidden_authors(1)).muted == [2]

    await world.relations.unmute(1, 2)
    await world.relations.unmute(1, 2)
    assert (await world.relations.mutes(1, 20, "")).accounts == []
    assert (await world.relations.hidden_authors(1)).muted == []


async def test_lists_are_newest_first_paged_and_private() -> None:
    world = World(list(range(1, 9)))
    for user in range(2, 9):
        await world.relations.block(1, user)
    seen: list[int] = []
    token = ""
    while True:
        page = await world.relations.blocks(1, 3, token)
        seen += [a.user_id for a in page.accounts]
        token = page.next_page_token
        if not token:
            break
    assert seen == [8, 7, 6, 5, 4, 3, 2]

    token = (await world.relations.blocks(1, 3, "")).next_page_token
    with pytest.raises(InvalidArgument):
        await world.relations.blocks(2, 3, token)  # another user's token
    with pytest.raises(InvalidArgument):
        await world.relations.mutes(1, 3, token)  # another list's token


async def test_hidden_authors_and_relations_see_both_directions() -> None:
    world = World([1, 2, 3, 4])
    await world.relations.block(1, 2)
    await world.relations.block(3, 1)
    await world.relations.mute(1, 4)

    hidden = await world.relations.hidden_authors(1)
    assert (hidden.muted, hidden.blocked, hidden.blocked_by) == ([4], [2], [3])
    assert await world.relations.relations(1, [3, 2, 1, 4, 2]) == [
        Relation(3, blocking=False, blocked_by=True, muting=False),
        Relation(2, blocking=True, blocked_by=False, muting=False),
        Relation(1, blocking=False, blocked_by=False, muting=False),
        Relation(4, blocking=False, blocked_by=False, muting=True),
        Relation(2, blocking=True, blocked_by=False, muting=False),
    ]
    with pytest.raises(InvalidArgument):
        await world.relations.relations(1, list(range(1, 502)))


async def test_a_hidden_set_lists_a_bounded_number_of_blockers_and_says_when_there_are_more() -> None:
    world = World([1, 2, 3, 4, 5])
    world.relations = Relations(cast(Any, world.relation_store), world.graph, clock=Clock(), blockers_listed=2)
    await world.relations.block(2, 1)
    await world.relations.block(3, 1)
    await world.relations.block(1, 5)

    hidden = await world.relations.hidden_authors(1)
    assert (hidden.blocked, hidden.blocked_by, hidden.blocked_by_incomplete) == ([5], [2, 3], False)

    await world.relations.block(4, 1)
    hidden = await world.relations.hidden_authors(1)
    assert (hidden.blocked, hidden.blocked_by, hidden.blocked_by_incomplete) == ([5], [2, 3], True)
    assert (await world.relations.relations(1, [4]))[0].blocked_by  # still a blocker, asked about
