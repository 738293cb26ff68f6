"""graph_svc's batch user read against the real store: more ids than one IN list holds,
in the order asked, with their counts, unknown ids left out."""

from __future__ import annotations

from datetime import UTC, datetime

from common.cql import IN_LIST_SIZE, CqlSession
from common.ids import IdGenerator
from common.outbox import Outbox
from graph_svc.accounts import Account
from graph_svc.store import GraphStore


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
