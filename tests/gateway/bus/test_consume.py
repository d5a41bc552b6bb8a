"""The consume loop: stopping on cancellation, blocking reads, a vanished group."""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis

from gateway.bus import IN_STREAM, Bus, Delivery
from gateway.settings import BusSettings
from tests.services import RedisProcess

from . import FAST, consuming, eventually, inbound


async def test_consume_stops_when_cancelled_in_the_middle_of_a_stream(
    redis: aioredis.Redis,
) -> None:
    # On Python 3.11 a cancellation can race redis-py's socket writes, whose
    # asyncio.wait_for then swallows it; several rounds make hitting that race likely.
    for round_ in range(8):
        stream = f"{IN_STREAM}:{round_}"
        bus = Bus(redis, BusSettings())
        handled = 0

        async def handler(delivery: Delivery) -> None:
            nonlocal handled
            handled += 1

        async def publish_all(bus: Bus = bus, stream: str = stream) -> None:
            for i in range(400):
                await bus.publish(stream, inbound(i))

        task = asyncio.create_task(bus.consume(stream, "router", "r1", handler))
        publisher = asyncio.create_task(publish_all())
        await asyncio.sleep(0.02 + round_ * 0.01)
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=3)
        await publisher
        assert done, f"consume ignored its cancellation in round {round_}"
        assert task.cancelled()


async def test_blocking_read_returns_before_the_client_socket_timeout(
    redis_server: RedisProcess,
) -> None:
    client = aioredis.Redis.from_url(redis_server.url, socket_timeout=0.5)
    try:
        await client.flushall()
        bus = Bus(client, BusSettings(block_ms=3_000, claim_idle_ms=60_000))
        await bus.ensure_group(IN_STREAM, "router")
        # Blocking the full 3 s would hit the 0.5 s socket timeout: RedisUnavailable.
        # Redis ends a BLOCK up to 1000/hz ms late (100 ms here), so one read in five
        # or so overshoots its time: a 400 ms block would fail within these reads.
        for _ in range(12):
            started = time.monotonic()
            assert await bus.read(IN_STREAM, "router", "r1") == []
            assert time.monotonic() - started < 0.5
    finally:
        await client.aclose()


async def test_consume_creates_the_group_again_when_its_stream_is_deleted(
    redis: aioredis.Redis,
) -> None:
    bus = Bus(redis, FAST)
    seen: list[str] = []

    async def handler(delivery: Delivery) -> None:
        seen.append(delivery.envelope.event_id)

    async def seen_all(n: int) -> bool:
        return len(seen) == n

    async with consuming(bus, IN_STREAM, "router", "r1", handler):
        await bus.publish(IN_STREAM, inbound(1))
        await eventually(lambda: seen_all(1))
        await redis.delete(IN_STREAM)
        await asyncio.sleep(0.1)
        await bus.publish(IN_STREAM, inbound(2))
        await eventually(lambda: seen_all(2))
    assert seen == ["1", "2"]
