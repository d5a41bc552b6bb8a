"""Which roles are up: each process beats into one Redis hash; /status reads it.

stockade:alive    hash "<role>:<consumer>" -> epoch seconds of its last beat
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Final

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway._aio import raise_if_cancelling

ALIVE_KEY: Final = "stockade:alive"
BEAT_S: Final = 5.0
STALE_S: Final = 3 * BEAT_S
"""A process silent this long counts as down; its field is removed by the next reader."""
FORGET_S: Final = 3_600.0

log = logging.getLogger("stockade.heartbeat")


async def beat_forever(client: aioredis.Redis, role: str, consumer: str) -> None:
    """Beat every BEAT_S until cancelled; a missed beat is logged, never fatal."""
    field = f"{role}:{consumer}"
    try:
        while True:
            raise_if_cancelling()
            try:
                await client.hset(ALIVE_KEY, field, repr(time.time()))
            except (RedisError, OSError) as exc:
                log.warning("heartbeat of %s missed: %s", role, type(exc).__name__)
            await asyncio.sleep(BEAT_S)
    finally:
        # A clean stop says so at once; a crash is noticed after STALE_S.
        try:
            await asyncio.shield(client.hdel(ALIVE_KEY, field))
        except (RedisError, OSError, asyncio.CancelledError) as exc:
            log.debug("heartbeat of %s not cleared: %s", role, type(exc).__name__)


def count_alive(
    beats: dict[str, float], now: float, stale_s: float = STALE_S
) -> tuple[dict[str, int], dict[str, int]]:
    """Processes per role that beat recently, and those that went quiet."""
    up: Counter[str] = Counter()
    down: Counter[str] = Counter()
    for field, at in beats.items():
        role = field.split(":", 1)[0]
        (up if now - at <= stale_s else down)[role] += 1
    return dict(up), dict(down)


async def read_beats(
    client: aioredis.Redis, clock: Callable[[], float] = time.time
) -> dict[str, float]:
    """Every beat, after forgetting processes silent for an hour."""
    raw = await client.hgetall(ALIVE_KEY)
    now = clock()
    beats: dict[str, float] = {}
    gone: list[bytes | str] = []
    for field, value in raw.items():
        try:
            at = float(value)
        except ValueError:
            at = 0.0
        if now - at > FORGET_S:
            gone.append(field)
            continue
        beats[field.decode() if isinstance(field, bytes) else str(field)] = at
    if gone:
        await client.hdel(ALIVE_KEY, *gone)
    return beats


def stopped_consumers(
    client: aioredis.Redis, clock: Callable[[], float] = time.time
) -> Callable[[], Awaitable[set[str]]]:
    """For `Bus(gone=...)`: the consumers whose process beat once and then went quiet
    for STALE_S. A consumer that never beats (an agent's door, a test) is never one."""

    last: tuple[float, set[str]] = (float("-inf"), set())

    async def gone() -> set[str]:
        nonlocal last
        now = clock()
        if now - last[0] < BEAT_S / 2:
            return last[1]  # several streams of one process ask at once
        beats = await read_beats(client, clock)
        found = {
            field.split(":", 1)[1]
            for field, at in beats.items()
            if ":" in field and now - at > STALE_S
        }
        last = (now, found)
        return found

    return gone
