"""Account rules: usernames, passwords and how passwords are stored."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from datetime import datetime

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError

from common.errors import InvalidArgument

USERNAME_RE = re.compile(r"[A-Za-z0-9_]{1,15}")
PASSWORD_MIN, PASSWORD_MAX = 8, 128


@dataclass(frozen=True)
class Account:
    user_id: int
    username: str
    created_at: datetime
    password_hash: str = ""
    follower_count: int = 0
    following_count: int = 0


def validate_username(username: str) -> str:
    if not USERNAME_RE.fullmatch(username):
        raise InvalidArgument(
            "username must be 1 to 15 characters of letters, digits and underscore",
            field="username",
        )
    return username


def username_key(username: str) -> str:
    """Usernames are unique ignoring case; this is the key that enforces it. Only ASCII is
    folded: str.lower() maps look-alikes such as the Kelvin sign (U+212A) to ASCII letters,
    so a folded non-ASCII name could stand for an account's key. Any other name keeps its
    own key, which no account has."""
    return username.lower() if username.isascii() else username


def login_key(username: str) -> str | None:
    """The key a login looks up, or None for a name no account can have (a login answers
    that like a wrong password)."""
    return username_key(username) if USERNAME_RE.fullmatch(username) else None


def validate_password(password: str) -> str:
    if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        raise InvalidArgument(f"password must be {PASSWORD_MIN} to {PASSWORD_MAX} characters", field="password")
    return password


class Passwords:
    """argon2id hashing, run off the event loop (it is deliberately slow)."""

    def __init__(self, memory_kib: int, time_cost: int, parallelism: int) -> None:
        self._hasher = PasswordHasher(
            time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism, type=Type.ID
        )

    async def hash(self, password: str) -> str:
        return await asyncio.get_running_loop().run_in_executor(None, self._hasher.hash, password)

    async def verify(self, password_hash: str, password: str) -> bool:
        def check() -> bool:
            try:
                return self._hasher.verify(password_hash, password)
            except (VerificationError, InvalidHashError):
                return False

        return await asyncio.get_running_loop().run_in_executor(None, check)
