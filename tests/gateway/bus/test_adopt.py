"""A stopped process's pending entries are taken over once its heartbeat goes quiet, long
before `claim_idle_ms`; a living process, or a consumer that never beats, keeps its own."""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from gateway.bus import IN_STREAM, Bus
from gateway.heartbeat import ALIVE_KEY, STALE_S, stopped_consumers
from gateway.settings import BusSettings

from . import inbound

SLOW_CLAIM = BusSettings(claim_idle_ms=600_000, block_ms=20)


async def held_by(redis: aioredis.Redis, consumer: str) -> list[str]:
    """Entry ids `consumer` read and did not ack, after 1 s (adoption's minimum idle)."""
    bus = Bus(redis, SLOW_CLAIM)
    await bus.ensure_group(IN_STREAM, "router")
    for i in range(3):
        await bus.publish(IN_STREAM, inbound(i))
    taken = await bus.read(IN_STREAM, "router", consumer)
    time.sleep(1.05)  # noqa: ASYNC251  (the entries must be idle, nothing else runs)
    return [d.entry_id for d in taken]


async def test_the_entries_of_a_process_that_stopped_beating_are_taken_over(
    redis: aioredis.Redis,
) -> None:
    held = await held_by(redis, "router-dead")
    await redis.hset(ALIVE_KEY, "router:router-dead", repr(time.time() - STALE_S - 1))
    heir = Bus(redis, SLOW_CLAIM, gone=stopped_consumers(redis))
    adopted = await heir.read(IN_STREAM, "router", "router-alive")
    assert [d.entry_id for d in adopted] == held
    assert {d.deliveries for d in adopted} == {2}  # a take-over counts as a delivery
    consumers = {c["name"] for c in await redis.xinfo_consumers(IN_STREAM, "router")}
    assert b"router-alive" in consumers


async def test_a_living_process_and_a_consumer_that_never_beats_keep_their_entries(
    redis: aioredis.Redis,
) -> None:
    await held_by(redis, "router-busy")
    await redis.hset(ALIVE_KEY, "router:router-busy", repr(time.time()))
    heir = Bus(redis, SLOW_CLAIM, gone=stopped_consumers(redis))
    assert await heir.read(IN_STREAM, "router", "router-other", block_ms=0) == []

    await redis.delete(ALIVE_KEY)  # as an agent's door: it never beats
    later = Bus(redis, SLOW_CLAIM, gone=stopped_consumers(redis))
    assert await later.read(IN_STREAM, "router", "router-third", block_ms=0) == []
    pending = await redis.xpending(IN_STREAM, "router")
    assert pending["pending"] == 3


async def test_a_stopped_consumer_with_nothing_pending_is_removed_from_the_group(
    redis: aioredis.Redis,
) -> None:
    bus = Bus(redis, SLOW_CLAIM)
    await bus.ensure_group(IN_STREAM, "router")
    await bus.publish(IN_STREAM, inbound(1))
    [done] = await bus.read(IN_STREAM, "router", "router-gone")
    await bus.ack(done)
    await redis.hset(ALIVE_KEY, "router:router-gone", repr(time.time() - STALE_S - 1))
    heir = Bus(redis, SLOW_CLAIM, gone=stopped_consumers(redis))
    await heir.read(IN_STREAM, "router", "router-heir", block_ms=0)
    consumers = {c["name"] for c in await redis.xinfo_consumers(IN_STREAM, "router")}
    assert b"router-gone" not in consumers
