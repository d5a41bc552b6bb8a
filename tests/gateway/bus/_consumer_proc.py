"""A bus consumer run as its own process, so that a test can SIGKILL it mid-batch.

    python -m tests.gateway.bus._consumer_proc URL STREAM GROUP CONSUMER MODE STALL_AFTER

Each handled entry either applies an effect and acks in one MULTI (MODE "effect":
HINCRBY EFFECTS_KEY <event_id> 1 + XACK) or is forwarded to FORWARD_STREAM
(MODE "forward"). After STALL_AFTER entries the handler of the next one sets
STALLED_KEY and hangs, holding the rest of its batch unacked, until it is killed.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Final

import redis.asyncio as aioredis

from gateway.bus import Bus, Delivery
from gateway.settings import BusSettings

EFFECTS_KEY: Final = "stockade:test:effects"
FORWARD_STREAM: Final = "stockade:test:forwarded"
STALLED_KEY: Final = "stockade:test:stalled"


async def apply(client: aioredis.Redis, bus: Bus, mode: str, delivery: Delivery) -> None:
    """The effect of one entry, done together with its ack."""
    if mode == "forward":
        await bus.forward(delivery, FORWARD_STREAM, delivery.envelope)
        return
    async with client.pipeline(transaction=True) as pipe:
        pipe.hincrby(EFFECTS_KEY, delivery.envelope.event_id, 1)
        pipe.xack(delivery.stream, delivery.group, delivery.entry_id)
        await pipe.execute()


async def main(argv: list[str]) -> None:
    url, stream, group, consumer, mode, stall_after = argv
    client = aioredis.Redis.from_url(url)
    bus = Bus(client, BusSettings(batch=100))
    handled = 0

    async def handler(delivery: Delivery) -> None:
        nonlocal handled
        if handled == int(stall_after):
            await client.set(STALLED_KEY, delivery.entry_id)
            await asyncio.Event().wait()
        await apply(client, bus, mode, delivery)
        handled += 1

    await bus.consume(stream, group, consumer, handler)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
