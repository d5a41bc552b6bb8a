"""Consuming in lanes: entries of different lanes at once, those of one lane in order."""

from __future__ import annotations

import asyncio
import dataclasses

import redis.asyncio as aioredis

from gateway.bus import IN_STREAM, Bus, Delivery, Handler, Lane, by_conversation, by_sender
from gateway.envelope import reply
from gateway.settings import BusSettings

from . import eventually, inbound

SETTINGS = BusSettings(claim_idle_ms=10_000, block_ms=20, batch=50)


def from_sender(event_id: int, sender: str) -> Delivery:
    return Delivery(IN_STREAM, "g", f"{event_id}-0", dataclasses.replace(
        inbound(event_id), sender_id=sender), 1)  # fmt: skip


async def run_consumer(bus: Bus, handler: Handler, lane: Lane | None) -> asyncio.Task[None]:
    return asyncio.create_task(bus.consume(IN_STREAM, "router", "r1", handler, lane=lane))


async def nothing_pending(redis: aioredis.Redis) -> bool:
    return int((await redis.xpending(IN_STREAM, "router"))["pending"]) == 0


async def test_a_slow_sender_does_not_hold_up_the_others_and_each_keeps_its_order(
    redis: aioredis.Redis,
) -> None:
    bus = Bus(redis, SETTINGS)
    release = asyncio.Event()
    seen: list[tuple[str, str]] = []

    async def handler(delivery: Delivery) -> None:
        sender = delivery.envelope.sender_id
        if sender == "slow":
            await release.wait()
        seen.append((sender, delivery.envelope.event_id))

    # Published before the consumer starts, so that they come in one batch.
    for i in range(3):
        await bus.publish(IN_STREAM, dataclasses.replace(inbound(f"s{i}"), sender_id="slow"))
        await bus.publish(IN_STREAM, dataclasses.replace(inbound(f"q{i}"), sender_id="quick"))
    task = await run_consumer(bus, handler, by_sender)
    try:

        async def quick_done() -> bool:
            return len(seen) == 3

        await eventually(quick_done)
        assert seen == [("quick", "q0"), ("quick", "q1"), ("quick", "q2")]
        release.set()

        async def all_done() -> bool:
            return len(seen) == 6 and await nothing_pending(redis)

        await eventually(all_done)
        assert [e for s, e in seen if s == "slow"] == ["s0", "s1", "s2"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_without_lanes_a_batch_is_handled_one_entry_after_another(
    redis: aioredis.Redis,
) -> None:
    bus = Bus(redis, SETTINGS)
    running = 0
    most = 0
    handled = 0

    async def handler(delivery: Delivery) -> None:
        nonlocal running, most, handled
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.01)
        running -= 1
        handled += 1

    for i in range(6):
        await bus.publish(IN_STREAM, dataclasses.replace(inbound(i), sender_id=f"p{i}"))
    task = await run_consumer(bus, handler, None)
    try:

        async def done() -> bool:
            return handled == 6 and await nothing_pending(redis)

        await eventually(done)
        assert most == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_replies_share_a_lane_per_conversation_and_thread() -> None:
    first = inbound(1)
    replies = [
        reply(first, "a", "r1"),
        reply(first, "b", "r2"),
        reply(dataclasses.replace(first, thread_id="t"), "c", "r3"),
        reply(dataclasses.replace(first, conversation_id="chat-2"), "d", "r4"),
    ]
    lanes = [by_conversation(Delivery("s", "g", f"{i}-0", r, 1)) for i, r in enumerate(replies)]
    assert lanes[0] == lanes[1]
    assert len({lanes[1], lanes[2], lanes[3]}) == 3


def test_messages_share_a_lane_per_sender_and_channel() -> None:
    assert by_sender(from_sender(1, "a")) == by_sender(from_sender(2, "a"))
    assert by_sender(from_sender(1, "a")) != by_sender(from_sender(1, "b"))
    other_channel = dataclasses.replace(from_sender(1, "a"), envelope=dataclasses.replace(
        from_sender(1, "a").envelope, channel="other"))  # fmt: skip
    assert by_sender(other_channel) != by_sender(from_sender(1, "a"))
