"""Typing cues: a channel's follower stops when it is told to."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import redis.asyncio as aioredis

from gateway.bus import TypingCue, announce_typing, typing_cues
from gateway.errors import RedisUnavailable
from tests.services import RedisProcess

DELAYS_S = (0, 0.0002, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.05)


async def _follow(cues: AsyncIterator[TypingCue]) -> None:
    async for _ in cues:
        pass


async def test_following_stops_when_cancelled_at_any_point_of_its_start(
    redis_server: RedisProcess,
) -> None:
    """A channel that fails at once cancels its cue follower while it still connects
    and subscribes. redis-py can lose that cancellation; the follower must stop anyway,
    or the channel's task group, and the whole role, would never end."""
    for delay_s in DELAYS_S * 3:
        client = aioredis.Redis.from_url(redis_server.url)  # a new connection each time
        task = asyncio.create_task(_follow(typing_cues(client, "telegram")))
        await asyncio.sleep(delay_s)
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=3)
        await client.aclose()
        assert done, f"still following {delay_s * 1000:g} ms in, 3 s after its cancellation"


async def test_following_goes_on_after_redis_restarts() -> None:
    with tempfile.TemporaryDirectory(prefix="stk-c-", dir="/tmp") as tmp:
        server = RedisProcess(Path(tmp))
        server.start()
        client = aioredis.Redis.from_url(server.url)
        seen: list[str] = []

        async def follow() -> None:
            async for cue in typing_cues(client, "telegram"):
                seen.append(cue.reply_to)

        async def cue_until_seen(reply_to: str) -> None:
            async with asyncio.timeout(20):
                while reply_to not in seen:
                    with contextlib.suppress(RedisUnavailable):  # the server still starts
                        await announce_typing(client, TypingCue("telegram", "c1", "", reply_to))
                    await asyncio.sleep(0.1)

        task = asyncio.create_task(follow())
        try:
            await cue_until_seen("before")
            server.stop()
            await asyncio.sleep(1.5)  # the follower meets the outage
            server.start()
            await cue_until_seen("after")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await client.aclose()
            server.stop()
