"""This deployment's id, which labels its containers so deployments sharing an engine stay apart."""

from __future__ import annotations

import secrets
from typing import Final

import redis.asyncio as aioredis

from gateway.errors import StockadeError

DEPLOYMENT_KEY: Final = "stockade:deployment"


async def deployment_id(client: aioredis.Redis) -> str:
    """This deployment's id: made once, kept in its Redis, shared by all its supervisors."""
    await client.set(DEPLOYMENT_KEY, secrets.token_hex(8), nx=True)
    value = await client.get(DEPLOYMENT_KEY)
    if value is None:
        raise StockadeError("the deployment id vanished from Redis right after it was set")
    return value.decode() if isinstance(value, bytes) else str(value)
