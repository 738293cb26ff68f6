"""Redis client set-up; Redis holds only derived data that can be rebuilt."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

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
