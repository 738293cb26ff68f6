"""graph_svc business rules: sign-up and user look-up."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from common.errors import AlreadyExists, InvalidArgument, NotFound
from common.ids import IdGenerator
from graph_svc.accounts import Account, Passwords, username_key, validate_password, validate_username
from graph_svc.store import GraphStore


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Graph:
    def __init__(
        self,
        store: GraphStore,
        passwords: Passwords,
        ids: IdGenerator,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._store = store
        self._passwords = passwords
        self._ids = ids
        self._clock = clock

    async def sign_up(self, username: str, password: str) -> Account:
        validate_username(username)
        validate_password(password)
        key = username_key(username)
        if await self._store.user_id_by_name(key) is not None:
            raise AlreadyExists(f"username {username!r} is taken", field="username")
        now = self._clock()
        account = Account(
            user_id=self._ids.next_id(),
            username=username,
            # CQL timestamps keep milliseconds; keep the same here so replies match reads.
            created_at=now.replace(microsecond=now.microsecond // 1000 * 1000),
            password_hash=await self._passwords.hash(password),
        )
        # The user row goes first: a crash before the claim leaves an unreachable
        # row, never a username that points at nothing.
        await self._store.insert_user(account)
        if not await self._store.claim_username(key, account.user_id):
            await self._store.delete_user(account.user_id)
            raise AlreadyExists(f"username {username!r} is taken", field="username")
        return account

    async def get_user(self, user_id: int) -> Account:
        if user_id <= 0:
            raise InvalidArgument("user_id must be a positive integer", field="user_id")
        account = await self._store.get_user(user_id)
        if account is None:
            raise NotFound(f"user {user_id} does not exist")
        return account
