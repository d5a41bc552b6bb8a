"""Internal user ids: one per person, looked up from (channel, platform user id).

The mapping lives in one Redis hash so every router agrees on it. A new sender
gets a fresh random id; operators may later point several platform identities
at the same id to link one person across channels.
"""

from __future__ import annotations

import secrets
from typing import Final

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.errors import RedisUnavailable

IDENTITY_KEY: Final = "stockade:identity"
_ID_BYTES: Final = 8


def identity_field(channel: str, platform_user: str) -> str:
    """The hash field for one platform identity; the channel name contains no ':'."""
    return f"{channel}:{platform_user}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def new_user_id() -> str:
    return "u" + secrets.token_hex(_ID_BYTES)


class Identities:
    """Resolves platform identities to internal user ids, creating them on first contact."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client

    async def resolve(self, channel: str, platform_user: str) -> str:
        field = identity_field(channel, platform_user)
        try:
            existing = await self._client.hget(IDENTITY_KEY, field)
            if existing is None:
                # HSETNX makes two routers racing on a first message agree on one id.
                await self._client.hsetnx(IDENTITY_KEY, field, new_user_id())
                existing = await self._client.hget(IDENTITY_KEY, field)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise RedisUnavailable(f"identity lookup failed: {type(exc).__name__}") from None
        if existing is None:
            raise RedisUnavailable("identity vanished right after it was written")
        return _text(existing)

    async def lookup(self, channel: str, platform_user: str) -> str | None:
        """The id of a platform identity already seen, or None; never creates one."""
        try:
            found = await self._client.hget(IDENTITY_KEY, identity_field(channel, platform_user))
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise RedisUnavailable(f"identity lookup failed: {type(exc).__name__}") from None
        return None if found is None else _text(found)

    async def link(self, channel: str, platform_user: str, user_id: str) -> str | None:
        """Point a platform identity at `user_id` (one person on several channels); the id
        it had before, if any. Its old agent and workspace stay with the old id."""
        field = identity_field(channel, platform_user)
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hget(IDENTITY_KEY, field)
                pipe.hset(IDENTITY_KEY, field, user_id)
                before, _ = await pipe.execute()
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise RedisUnavailable(f"identity link failed: {type(exc).__name__}") from None
        return None if before is None else _text(before)

    async def everyone(self) -> dict[str, list[str]]:
        """Every internal user id, with the platform identities ("channel:user") it has."""
        try:
            mapping = await self._client.hgetall(IDENTITY_KEY)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise RedisUnavailable(f"identity listing failed: {type(exc).__name__}") from None
        users: dict[str, list[str]] = {}
        for field, user_id in mapping.items():
            users.setdefault(_text(user_id), []).append(_text(field))
        return {user: sorted(fields) for user, fields in sorted(users.items())}
