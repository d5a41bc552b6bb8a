"""What became of replies after a platform took them: parts sent, delivery receipts,
and failures reported.

A long reply goes out in parts; each part the platform took is recorded, so a reply
that failed half-way and comes back from the bus goes on from where it stopped
instead of sending its first parts again. Some platforms (Twilio) accept a message
and only later say whether it reached the person: the adapter records each accepted
send under the platform's id, a status callback updates it, and a failed delivery is
appended to `stockade:failed:<channel>` with what was lost, so an operator sees it
(and nothing fails silently).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Final

import redis.asyncio as aioredis

from gateway.bus._keys import PREFIX
from gateway.bus._streams import _redis_errors
from gateway.envelope import Outbound

RECEIPT_TTL_S: Final = 7 * 86_400
FAILED_MAXLEN: Final = 100_000
FAILED_STATUSES: Final = frozenset(("failed", "undelivered"))


def receipt_key(channel: str, platform_id: str) -> str:
    return f"{PREFIX}delivery:{channel}:{platform_id}"


def parts_key(channel: str, outbound_id: str) -> str:
    return f"{PREFIX}sent:{channel}:{outbound_id}"


def failed_stream(channel: str) -> str:
    return f"{PREFIX}failed:{channel}"


@dataclass(frozen=True, slots=True)
class Receipt:
    platform_id: str
    outbound_id: str
    conversation_id: str
    status: str
    error: str = ""


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


class Deliveries:
    def __init__(self, client: aioredis.Redis, ttl_s: int = RECEIPT_TTL_S) -> None:
        self._r = client
        self._ttl_s = ttl_s

    async def accepted(self, channel: str, platform_id: str, outbound: Outbound) -> None:
        """The platform took `outbound` (or one chunk of it) under `platform_id`."""
        key = receipt_key(channel, platform_id)
        with _redis_errors:
            async with self._r.pipeline(transaction=True) as pipe:
                pipe.hset(
                    key,
                    mapping={
                        "outbound_id": outbound.outbound_id,
                        "conversation_id": outbound.conversation_id,
                        "status": "accepted",
                        "at": repr(time.time()),
                    },
                )
                pipe.expire(key, self._ttl_s)
                await pipe.execute()

    async def part_sent(self, channel: str, outbound_id: str, index: int) -> bool:
        """Whether part `index` of the reply `outbound_id` was already taken by the platform."""
        with _redis_errors:
            return bool(await self._r.sismember(parts_key(channel, outbound_id), str(index)))

    async def mark_part(self, channel: str, outbound_id: str, index: int) -> None:
        """The platform took part `index`: a redelivered reply skips it."""
        key = parts_key(channel, outbound_id)
        with _redis_errors:
            async with self._r.pipeline(transaction=True) as pipe:
                pipe.sadd(key, str(index))
                pipe.expire(key, self._ttl_s)
                await pipe.execute()

    async def update(
        self, channel: str, platform_id: str, status: str, error: str = ""
    ) -> Receipt | None:
        """Record a status the platform reported; a failure is also appended to the
        channel's failed stream. None when the id is not one of ours (or expired)."""
        key = receipt_key(channel, platform_id)
        with _redis_errors:
            if not await self._r.exists(key):
                return None
            async with self._r.pipeline(transaction=True) as pipe:
                pipe.hset(key, mapping={"status": status, "error": error, "at": repr(time.time())})
                pipe.hgetall(key)
                _, fields = await pipe.execute()
        receipt = Receipt(
            platform_id=platform_id,
            outbound_id=_text(fields.get(b"outbound_id", fields.get("outbound_id"))),
            conversation_id=_text(fields.get(b"conversation_id", fields.get("conversation_id"))),
            status=status,
            error=error,
        )
        if status in FAILED_STATUSES:
            await self.report_failure(channel, receipt)
        return receipt

    async def report_failure(self, channel: str, receipt: Receipt) -> None:
        with _redis_errors:
            await self._r.xadd(
                failed_stream(channel),
                {
                    "platform_id": receipt.platform_id,
                    "outbound_id": receipt.outbound_id,
                    "conversation_id": receipt.conversation_id,
                    "status": receipt.status,
                    "error": receipt.error,
                },
                maxlen=FAILED_MAXLEN,
                approximate=True,
            )

    async def receipt(self, channel: str, platform_id: str) -> Receipt | None:
        with _redis_errors:
            fields = await self._r.hgetall(receipt_key(channel, platform_id))
        if not fields:
            return None
        get = {_text(k): _text(v) for k, v in fields.items()}
        return Receipt(
            platform_id=platform_id,
            outbound_id=get.get("outbound_id", ""),
            conversation_id=get.get("conversation_id", ""),
            status=get.get("status", ""),
            error=get.get("error", ""),
        )

    async def failures(self, channel: str, count: int = 100) -> list[Receipt]:
        """The newest `count` failed deliveries on `channel`, oldest first."""
        with _redis_errors:
            entries = await self._r.xrevrange(failed_stream(channel), count=count)
        out = []
        for _, raw in reversed(entries or []):
            get = {_text(k): _text(v) for k, v in (raw or {}).items()}
            out.append(
                Receipt(
                    platform_id=get.get("platform_id", ""),
                    outbound_id=get.get("outbound_id", ""),
                    conversation_id=get.get("conversation_id", ""),
                    status=get.get("status", ""),
                    error=get.get("error", ""),
                )
            )
        return out
