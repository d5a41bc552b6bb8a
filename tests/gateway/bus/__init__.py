"""Tests of the Redis Streams bus, and the small helpers its test modules share."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from gateway.bus import Bus, Handler
from gateway.envelope import Inbound
from gateway.settings import BusSettings

FAST = BusSettings(claim_idle_ms=100, block_ms=20, max_deliveries=3)
"""Settings with short waits, so that retries and reclaims happen within a test."""


def inbound(event_id: str | int, *, user: str = "", text: str = "") -> Inbound:
    return Inbound(
        channel="test",
        event_id=str(event_id),
        sender_id="sender-1",
        conversation_id="chat-1",
        text=text or f"message {event_id}",
        received_at=1_700_000_000.5,
        user_id=user,
    )


async def eventually(check: Callable[[], Awaitable[bool]], *, within: float = 10.0) -> None:
    """Wait until `check()` is true; fail the test after `within` seconds."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def consuming(
    bus: Bus, stream: str, group: str, consumer: str, handler: Handler
) -> AsyncIterator[asyncio.Task[None]]:
    """Run `bus.consume` in a task for the block; a crash of the loop fails the test."""
    task = asyncio.create_task(bus.consume(stream, group, consumer, handler))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
