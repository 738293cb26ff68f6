"""graph_svc's store against the real Cassandra: the batch user read (more ids than one IN
list holds, in the order asked, with their counts, unknown ids left out), name claims, and
a follower list spread over more months than one listing holds, follow rows written by
an instance whose clock is ahead, and block rows removed and written again."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from common.buckets import BUCKETS_LISTED_AT_ONCE
from common.cql import IN_LIST_SIZE, CqlSession
from common.ids import IdGenerator
from common.kafka import TOPIC_FOLLOWS
from common.outbox import Event, Outbox
from graph_svc.accounts import Account
from graph_svc.relations import RelationStore
from graph_svc.store import FollowEdge, GraphStore, follow_bucket
from tests.conftest import build_graph, unique_name


async def test_users_past_one_in_list_come_back_in_the_order_asked_with_their_counts(cql: CqlSession) -> None:
    store = GraphStore(cql, Outbox(cql, None))
    await store.prepare()
    ids = IdGenerator(906)
    created = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    users = [ids.next_id() for _ in range(IN_LIST_SIZE + 30)]
    set_counts = await cql.prepare("UPDATE follow_counts SET follower_count = ?, following_count = ? WHERE user_id = ?")
    try:
        for n, user_id in enumerate(users):
            await store.insert_user(Account(user_id, f"u{user_id % 10**12}", created, f"hash{n}"))
            if n % 2 == 0:  # every other user has a counts row; the rest count as 0
                await cql.execute(set_counts, (n, n + 1, user_id))
        unknown = ids.next_id()
        asked = [*reversed(users[:70]), unknown, *users[70:], users[3]]

        found = await store.get_users(asked)

        expected = [*reversed(users[:70]), *users[70:]]
        assert [a.user_id for a in found] == expected
        by_id = {a.user_id: a for a in found}
        for n, user_id in enumerate(users):
            account = by_id[user_id]
            assert account.username == f"u{user_id % 10**12}"
            assert account.password_hash == f"hash{n}"
            assert account.created_at == created
            assert (account.follower_count, account.following_count) == ((n, n + 1) if n % 2 == 0 else (0, 0))
        assert await store.follower_counts(users) == {u: n for n, u in enumerate(users) if n % 2 == 0}
        assert await store.get_users([unknown]) == []
    finally:
        for user_id in users:
            await store.delete_user(user_id)
            await cql.execute("DELETE FROM follow_counts WHERE user_id = %s", (user_id,))


async def test_a_name_claim_is_ours_again_for_the_same_user_and_refused_to_another(cql: CqlSession) -> None:
    """A sign-up whose claim applied but whose reply was lost may claim again: the name is
    still its own. Another user's claim of it is refused."""
    store = GraphStore(cql, Outbox(cql, None))
    await store.prepare()
    ids = IdGenerator(907)
    key, owner, other = f"claim{ids.next_id()}", ids.next_id(), ids.next_id()
    delete = await cql.prepare("DELETE FROM users_by_name WHERE username_key = ?")
    try:
        assert await store.claim_username(key, owner)
        assert await store.claim_username(key, owner)  # an earlier try of the same claim applied
        assert not await store.claim_username(key, other)
        assert await store.user_id_by_name(key) == owner
    finally:
        await cql.execute(delete, (key,))


async def test_followers_spread_over_more_months_than_one_listing_are_all_listed(cql: CqlSession) -> None:
    """One follower a month for 70 months, and 70 months emptied by unfollows below them:
    the fan-out's page of 5,000 (ListFollowerIds) and a walk from a cursor list every
    follower, where the walk used to stop after the newest 64 months."""
    store = GraphStore(cql, Outbox(cql, None))
    await store.prepare()
    ids = IdGenerator(908)
    followee = ids.next_id()
    months = BUCKETS_LISTED_AT_ONCE + 6
    newest = datetime(2026, 11, 15, 12, 0, tzinfo=UTC)
    add_follower = await cql.prepare(
        "INSERT INTO followers_by_time (user_id, bucket, followed_at, follower_id) VALUES (?, ?, ?, ?)"
    )
    add_bucket = await cql.prepare("INSERT INTO follower_buckets (user_id, bucket) VALUES (?, ?)")
    followed = []  # (when, follower), newest first
    for i in range(months):
        at = newest - timedelta(days=31 * i)
        follower = ids.next_id()
        await cql.execute(add_follower, (followee, follow_bucket(at), at, follower))
        await cql.execute(add_bucket, (followee, follow_bucket(at)))
        followed.append((at, follower))
    oldest = follow_bucket(followed[-1][0])
    for bucket in range(oldest - 1, oldest - 1 - months, -1):  # listed, but every follow undone
        await cql.execute(add_bucket, (followee, bucket))
    try:
        edges = await store.followers(followee, 5001, None)
        assert [e.user_id for e in edges] == [f for _, f in followed]
        # From a cursor in the third month: the rest, older first listing and all.
        cursor = FollowEdge(edges[2].user_id, edges[2].followed_at_ms)
        rest = await store.followers(followee, 5001, cursor)
        assert [e.user_id for e in rest] == [f for _, f in followed[3:]]
    finally:
        drop = await cql.prepare("DELETE FROM followers_by_time WHERE user_id = ? AND bucket = ?")
        for at, _ in followed:
            await cql.execute(drop, (followee, follow_bucket(at)))
        await cql.execute(await cql.prepare("DELETE FROM follower_buckets WHERE user_id = ?"), (followee,))


async def test_the_reads_that_settle_a_follow_racing_an_unfollow(cql: CqlSession) -> None:
    """A follow reads its edge again after writing its rows, and an unfollow looks for the
    rows after removing the edge (graph_svc/domain.py): both reads on the real store."""
    store = GraphStore(cql, Outbox(cql, None))
    await store.prepare()
    ids = IdGenerator(909)
    follower, followee = ids.next_id(), ids.next_id()
    at = datetime(2026, 11, 30, 8, 0, 0, 123000, tzinfo=UTC)
    add_row = await cql.prepare("INSERT INTO following_by_time (user_id, followed_at, followee_id) VALUES (?, ?, ?)")
    drop_rows = await cql.prepare("DELETE FROM following_by_time WHERE user_id = ?")
    try:
        assert await store.edge_time(follower, followee) is None
        assert await store.add_edge(follower, followee, at) == (True, at)
        assert await store.edge_time(follower, followee) == at
        assert not await store.follow_listed(follower, followee, at)
        await cql.execute(add_row, (follower, at, followee))
        assert await store.follow_listed(follower, followee, at)
        assert not await store.follow_listed(follower, followee, at + timedelta(milliseconds=1))
        assert not await store.follow_listed(follower, ids.next_id(), at)
        assert not await store.remove_edge(follower, followee, at + timedelta(milliseconds=1))  # not that follow
        assert await store.remove_edge(follower, followee, at)
        assert await store.edge_time(follower, followee) is None
    finally:
        await store.remove_edge(follower, followee, at)
        await cql.execute(drop_rows, (follower,))


async def test_an_unfollow_deletes_rows_a_follow_wrote_from_a_clock_ahead_of_its_own(cql: CqlSession) -> None:
    """A follow's list rows carry the follow's time, which the instance that made it took
    from its own clock; the unfollow, on an instance whose clock is behind that, must
    still delete them, and a repeat of that follow must not bring them back."""
    outbox = Outbox(cql, None)
    await outbox.prepare()
    store = GraphStore(cql, outbox)
    await store.prepare()
    ids = IdGenerator(910)
    follower, followee = ids.next_id(), ids.next_id()
    for user_id in (follower, followee):  # real users: the events reach the fan-out worker
        await store.insert_user(Account(user_id, f"u{user_id % 10**12}", datetime.now(UTC)))
    at = datetime.fromtimestamp(round(time.time() + 2, 3), UTC)  # made 2 s "ahead" of this host
    bucket = follow_bucket(at)
    # The rows as a follow made there wrote them: at its clock's time.
    ahead_us = int(at.timestamp() * 1000) * 1000
    add_following = await cql.prepare(
        "INSERT INTO following_by_time (user_id, followed_at, followee_id) VALUES (?, ?, ?) USING TIMESTAMP ?"
    )
    add_follower = await cql.prepare(
        "INSERT INTO followers_by_time (user_id, bucket, followed_at, follower_id) VALUES (?, ?, ?, ?) USING TIMESTAMP ?"
    )

    def event(kind: str) -> Event:
        payload = {"type": kind, "follower_id": follower, "followee_id": followee, "at_ms": 0, "followed_at_ms": 0}
        return Event(event_id=ids.next_id(), topic=TOPIC_FOLLOWS, key=follower, payload=payload)

    try:
        await cql.execute(add_following, (follower, at, followee, ahead_us))
        await cql.execute(add_follower, (followee, bucket, at, follower, ahead_us))
        await cql.execute("INSERT INTO follower_buckets (user_id, bucket) VALUES (%s, %s)", (followee, bucket))
        assert await store.follow_listed(follower, followee, at)
        assert [e.user_id for e in await store.followers(followee, 10, None)] == [follower]

        await store.delete_follow_lists(follower, followee, at, event("unfollow"))  # at once, from here
        assert not await store.follow_listed(follower, followee, at)
        assert await store.followers(followee, 10, None) == []

        await store.write_follow_lists(follower, followee, at, event("follow"))  # a late repeat of the follow
        assert not await store.follow_listed(follower, followee, at)
        assert await store.followers(followee, 10, None) == []
    finally:
        await cql.execute("DELETE FROM following_by_time WHERE user_id = %s", (follower,))
        await cql.execute("DELETE FROM followers_by_time WHERE user_id = %s AND bucket = %s", (followee, bucket))
        await cql.execute("DELETE FROM follower_buckets WHERE user_id = %s", (followee,))


async def test_block_rows_removed_then_written_again_stay_whatever_the_clocks(cql: CqlSession) -> None:
    """A block's rows written again after their removal are not left under the removal's
    tombstone: a block made again with a time before the unblock's (a host whose clock is
    behind: the actor's rows are written by lightweight transactions only), and a block
    repeated after an unblock that died between its listing deletes and its membership
    delete."""
    relations = RelationStore(cql)
    await relations.prepare()
    ids = IdGenerator(911)
    blocker, blocked = ids.next_id(), ids.next_id()
    at = datetime.fromtimestamp(round(time.time(), 3), UTC)
    try:
        assert await relations.claim("block", blocker, blocked, at) == at
        await relations.write_listing("block", blocker, blocked, at)
        await relations.remove("block", blocker, blocked, at)
        assert await relations.since("block", blocker, blocked) is None
        assert await relations.blockers_of(blocked, 10) == []

        behind = at - timedelta(seconds=2)  # made again, by a host 2 s behind the unblock's
        assert await relations.claim("block", blocker, blocked, behind) == behind
        await relations.write_listing("block", blocker, blocked, behind)
        assert await relations.blockers_of(blocked, 10) == [blocker]
        assert [r.user_id for r in await relations.listing("block", blocker, 10, None)] == [blocked]

        # An unblock that deleted the listing rows and died before the membership row:
        for statement, params in (
            (
                "DELETE FROM blocks_by_time WHERE blocker_id = %s AND blocked_at = %s AND blocked_id = %s IF EXISTS",
                (blocker, behind, blocked),
            ),
            ("DELETE FROM blocked_by WHERE blocked_id = %s AND blocker_id = %s", (blocked, blocker)),
        ):
            await cql.execute(statement, params)
        assert await relations.since("block", blocker, blocked) == behind
        assert await relations.blockers_of(blocked, 10) == []
        # ... then the block repeated: the claim finds the old time, and the rows come back.
        assert await relations.claim("block", blocker, blocked, datetime.now(UTC)) == behind
        await relations.write_listing("block", blocker, blocked, behind)
        assert await relations.blockers_of(blocked, 10) == [blocker]
        assert [r.user_id for r in await relations.listing("block", blocker, 10, None)] == [blocked]
    finally:
        listed = await relations.since("block", blocker, blocked)
        if listed is not None:
            await relations.remove("block", blocker, blocked, listed)


async def test_a_follow_repeated_after_an_unfollow_died_before_removing_the_edge_follows_anew(
    cql: CqlSession,
) -> None:
    """An unfollow deletes the follow's rows, then removes the edge. One that died between
    the two leaves the edge; a follow repeated then would write the rows again at the
    follow's time, under the unfollow's delete: it finishes the unfollow and follows anew."""
    graph = await build_graph(cql, IdGenerator(912))
    store = graph._store
    follower = (await graph.sign_up(unique_name("Fa"), "correct horse")).user_id
    followee = (await graph.sign_up(unique_name("Fb"), "correct horse")).user_id
    await graph.follow(follower, followee)
    at = await store.edge_time(follower, followee)
    assert at is not None and await store.follow_listed(follower, followee, at)

    await store.delete_follow_lists(follower, followee, at, graph._event("unfollow", follower, followee, at))
    assert await store.edge_time(follower, followee) == at  # the edge the unfollow did not reach

    await graph.follow(follower, followee)
    again = await store.edge_time(follower, followee)
    assert again is not None and again != at
    assert await store.follow_listed(follower, followee, again)
    assert [a.user_id for a in (await graph.following(follower, 10, "")).accounts] == [followee]
    assert (await graph.get_user(followee)).follower_count == 1
