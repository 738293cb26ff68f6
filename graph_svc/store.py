"""All CQL of graph_svc."""

from __future__ import annotations

from datetime import UTC, datetime

from cassandra.query import PreparedStatement

from common.cql import CqlSession
from graph_svc.accounts import Account


class GraphStore:
    def __init__(self, cql: CqlSession) -> None:
        self._cql = cql
        self._q: dict[str, PreparedStatement] = {}

    async def prepare(self) -> None:
        statements = {
            "insert_user": "INSERT INTO users (user_id, username, password_hash, created_at) VALUES (?, ?, ?, ?)",
            "delete_user": "DELETE FROM users WHERE user_id = ?",
            "claim_name": "INSERT INTO users_by_name (username_key, user_id) VALUES (?, ?) IF NOT EXISTS",
            "get_user": "SELECT user_id, username, password_hash, created_at FROM users WHERE user_id = ?",
            "get_by_name": "SELECT user_id FROM users_by_name WHERE username_key = ?",
        }
        for name, query in statements.items():
            self._q[name] = await self._cql.prepare(query)

    async def insert_user(self, account: Account) -> None:
        await self._cql.execute(
            self._q["insert_user"],
            (account.user_id, account.username, account.password_hash, account.created_at),
        )

    async def delete_user(self, user_id: int) -> None:
        await self._cql.execute(self._q["delete_user"], (user_id,))

    async def claim_username(self, key: str, user_id: int) -> bool:
        """Lightweight transaction: True when `key` was free and is now ours."""
        rows = await self._cql.execute(self._q["claim_name"], (key, user_id))
        return bool(rows and rows[0][0])

    async def get_user(self, user_id: int) -> Account | None:
        rows = await self._cql.execute(self._q["get_user"], (user_id,))
        if not rows:
            return None
        row = rows[0]
        return Account(
            user_id=row.user_id,
            username=row.username,
            password_hash=row.password_hash,
            created_at=_utc(row.created_at),
        )

    async def user_id_by_name(self, key: str) -> int | None:
        rows = await self._cql.execute(self._q["get_by_name"], (key,))
        return rows[0].user_id if rows else None


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value
