"""Files that came with messages, kept in Redis until the agent they were sent to fetches them.

A blob's id is the SHA-256 of its bytes, so the same file sent twice is stored once
and an id can never name other bytes. Blobs expire: an attachment is for the turn
it came with, and the agent copies it into its workspace when it reads the message.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

import redis.asyncio as aioredis

from gateway.bus._keys import PREFIX
from gateway.bus._streams import _redis_errors

BLOB_TTL_S: Final = 7 * 86_400
"""As long as a redelivered message may still be handed to its agent."""
_ID: Final = re.compile(r"[0-9a-f]{64}")


def blob_key(blob_id: str) -> str:
    if not _ID.fullmatch(blob_id):
        raise ValueError("a blob id is 64 lowercase hex digits")
    return f"{PREFIX}blob:{blob_id}"


def blob_id(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Blobs:
    """Put and get attachment bytes by their hash."""

    def __init__(self, client: aioredis.Redis, ttl_s: int = BLOB_TTL_S) -> None:
        self._r = client
        self._ttl_s = ttl_s

    async def put(self, data: bytes) -> str:
        """Store `data` (or refresh its expiry if already there); returns its id."""
        ident = blob_id(data)
        with _redis_errors:
            await self._r.set(blob_key(ident), data, ex=self._ttl_s)
        return ident

    async def get(self, ident: str) -> bytes | None:
        """The bytes stored under `ident`, or None once they expired."""
        with _redis_errors:
            value = await self._r.get(blob_key(ident))
        if value is None:
            return None
        return value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")
