"""Redis client set-up; Redis holds only derived data that can be rebuilt."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)

REDIS_UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError)


def connect_redis(url: str, timeout_seconds: float = 0.5) -> aioredis.Redis:
    return aioredis.Redis.from_url(
        url,
        socket_timeout=timeout_seconds,
        socket_connect_timeout=timeout_seconds,
        health_check_interval=10,
        max_connections=64,
    )


async def redis_ping(client: aioredis.Redis) -> bool:
    try:
        return bool(await client.ping())
    except Exception:  # noqa: BLE001 - any failure means "not reachable"
        return False


class Tolerant:
    """A Redis-backed cache whose read-path calls can act as misses while Redis is down."""

    def __init__(self) -> None:
        self.down_until = 0.0  # read-path calls skip Redis until then


T = TypeVar("T")
RETRY_AFTER_SECONDS = 1.0


def tolerant(default: Any) -> Callable[[Callable[..., Awaitable[T]]], Callable[..., Awaitable[T]]]:
    """For read-path calls: while Redis is unreachable, act as a cache miss so
    reads are served from the CQL store and the other services instead."""

    def wrap(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        @functools.wraps(method)
        async def guarded(self: Tolerant, *args: Any, **kwargs: Any) -> T:
            if time.monotonic() < self.down_until:
                return default
            try:
                return await method(self, *args, **kwargs)
            except REDIS_UNAVAILABLE_ERRORS as exc:
                if time.monotonic() >= self.down_until + RETRY_AFTER_SECONDS:
                    log.warning("Redis unavailable; serving reads without it: %r", exc)
                self.down_until = time.monotonic() + RETRY_AFTER_SECONDS
                return default

        return guarded

    return wrap
