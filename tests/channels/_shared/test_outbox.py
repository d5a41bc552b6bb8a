"""A reply's parts are each sent once, across redeliveries of the reply (real Redis)."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from channels._shared.outbox import send_parts
from gateway.bus import Deliveries
from gateway.envelope import Outbound
from gateway.errors import PlatformError

REPLY = Outbound(channel="memory", conversation_id="c", text="abc", outbound_id="memory:1:final")


async def test_a_reply_sent_again_after_a_failure_goes_on_from_the_failed_part(
    redis: aioredis.Redis,
) -> None:
    deliveries = Deliveries(redis)
    sent: list[str] = []
    refuse = {"b"}

    async def send_part(index: int, part: str) -> None:
        if part in refuse:
            raise PlatformError("the platform refused it")
        sent.append(part)

    with pytest.raises(PlatformError):
        await send_parts(deliveries, REPLY, ["a", "b", "c"], send_part)
    assert sent == ["a"]
    refuse.clear()
    await send_parts(deliveries, REPLY, ["a", "b", "c"], send_part)  # the bus's redelivery
    assert sent == ["a", "b", "c"]
    await send_parts(deliveries, REPLY, ["a", "b", "c"], send_part)  # and once more: nothing
    assert sent == ["a", "b", "c"]


async def test_parts_of_different_replies_are_kept_apart(redis: aioredis.Redis) -> None:
    deliveries = Deliveries(redis)
    sent: list[tuple[str, int]] = []
    other = Outbound(channel="memory", conversation_id="c", text="x", outbound_id="memory:2:final")

    for reply in (REPLY, other):

        async def send_part(index: int, part: str, reply: Outbound = reply) -> None:
            sent.append((reply.outbound_id, index))

        await send_parts(deliveries, reply, ["p"], send_part)
    assert sent == [("memory:1:final", 0), ("memory:2:final", 0)]
    assert await redis.ttl("stockade:sent:memory:memory:1:final") > 0
