"""Sign-ups are limited per client address (CHIRP_LIMIT_SIGNUPS per
CHIRP_LIMIT_SIGNUP_WINDOW_SECONDS): each account costs a password hash, and
fresh accounts are a way around every per-user limit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import pytest

from common.errors import AlreadyExists, InvalidArgument, ResourceExhausted
from common.ids import IdGenerator
from common.limits import UNKNOWN_ADDRESS, Limit, LocalCounters, UserLimits
from graph_svc.accounts import Account
from graph_svc.domain import Graph
from tests.unit.test_follow_counts import Clock, FakeGraphStore, FakeOutbox

LIMIT = 3


class Accounts(FakeGraphStore):
    def __init__(self, users: Sequence[int] = ()) -> None:
        super().__init__(users)
        self.names: dict[str, int] = {}

    async def user_id_by_name(self, key: str) -> int | None:
        return self.names.get(key)

    async def insert_user(self, account: Account) -> None:
        self.accounts[account.user_id] = account

    async def claim_username(self, key: str, user_id: int) -> bool:
        return self.names.setdefault(key, user_id) == user_id

    async def delete_user(self, user_id: int) -> None:
        self.accounts.pop(user_id, None)


class Hashes:
    def __init__(self) -> None:
        self.hashed = 0

    async def hash(self, password: str) -> str:
        self.hashed += 1
        return f"hash:{password}"


def _graph() -> tuple[Graph, Hashes]:
    hashes = Hashes()
    limits = UserLimits(LocalCounters(), {"signup": Limit(LIMIT, 3600)})
    graph = Graph(
        cast(Any, Accounts()),
        cast(Any, FakeOutbox()),
        cast(Any, hashes),
        cast(Any, None),
        IdGenerator(5),
        clock=Clock(),
        limits=limits,
    )
    return graph, hashes


async def test_sign_ups_past_the_limit_from_one_address_are_refused_before_any_hash() -> None:
    graph, hashes = _graph()
    for n in range(LIMIT - 1):
        await graph.sign_up(f"ada{n}", "correct horse", "198.18.0.1")
    with pytest.raises(AlreadyExists):  # a taken name counts: it was an attempt
        await graph.sign_up("ada0", "correct horse", "198.18.0.1")
    with pytest.raises(ResourceExhausted, match="too many sign-ups from this address") as refused:
        await graph.sign_up("grace", "correct horse", "198.18.0.1")
    assert 1 <= refused.value.retry_after_seconds <= 3600
    assert hashes.hashed == LIMIT - 1

    # Other addresses have their own count; input refused as invalid is not counted.
    for bad in ("no spaces allowed", "x" * 40):
        with pytest.raises(InvalidArgument):
            await graph.sign_up(bad, "correct horse", "198.18.0.2")
    for n in range(LIMIT):
        await graph.sign_up(f"bob{n}", "correct horse", "198.18.0.2")
    await graph.sign_up("carol", "correct horse", UNKNOWN_ADDRESS)
    assert hashes.hashed == 2 * LIMIT
