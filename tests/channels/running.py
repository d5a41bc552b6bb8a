"""A channel adapter run on a real bus, as the channels role runs it, for a test's length."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

import pytest
import redis.asyncio as aioredis

from channels._shared.runner import run_channel
from channels.base import Channel
from gateway.bus import Bus
from gateway.errors import PlatformError
from gateway.settings import BusSettings

BUS: Final = BusSettings(claim_idle_ms=500, block_ms=50)


@asynccontextmanager
async def on_bus(channel: Channel, redis: aioredis.Redis) -> AsyncIterator[Bus]:
    """`channel` receiving and sending through `run_channel` until the block ends."""
    bus = Bus(redis, BUS)
    task = asyncio.create_task(run_channel(channel, bus, f"{channel.name}-test"))
    try:
        yield bus
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def refused_at_start(channel: Channel, redis: aioredis.Redis) -> PlatformError:
    """The refusal `channel`'s start met, which ended it within 10 s as one
    non-retryable `PlatformError` (wrapped by `run_channel`'s task group)."""
    with pytest.raises(ExceptionGroup) as caught:
        async with asyncio.timeout(10):
            await run_channel(channel, Bus(redis, BUS), f"{channel.name}-test")
    [error] = caught.value.exceptions
    assert isinstance(error, PlatformError) and not error.retryable
    return error
