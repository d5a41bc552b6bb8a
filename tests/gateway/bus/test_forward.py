"""forward / forward_many: the hand-off to the next stream and the ack are one atomic step."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from gateway.bus import IN_STREAM, Bus, agent_stream, keys, out_stream
from gateway.envelope import Outbound, decode
from gateway.errors import StaleDelivery

from . import FAST, inbound

TARGET = agent_stream("u1")


async def _pending(redis: aioredis.Redis, stream: str = IN_STREAM) -> int:
    summary = await redis.xpending(stream, "router")
    return int(summary["pending"])


async def test_forward_adds_one_target_entry_and_acks_the_source(
    redis: aioredis.Redis,
) -> None:
    bus = Bus(redis, FAST)
    await bus.ensure_group(IN_STREAM, "router")
    await bus.publish(IN_STREAM, inbound(1))
    (delivery,) = await bus.read(IN_STREAM, "router", "r1")
    routed = inbound(1, user="u1")

    new_id = await bus.forward(delivery, TARGET, routed)

    assert await _pending(redis) == 0
    (entry,) = await redis.xrange(TARGET)
    assert entry[0].decode() == new_id
    assert decode(entry[1]) == routed


async def test_forward_of_an_entry_already_acked_raises_and_writes_nothing(
    redis: aioredis.Redis,
) -> None:
    bus = Bus(redis, FAST)
    await bus.ensure_group(IN_STREAM, "router")
    await bus.publish(IN_STREAM, inbound(1))
    (delivery,) = await bus.read(IN_STREAM, "router", "r1")
    await bus.forward(delivery, TARGET, inbound(1, user="u1"))

    with pytest.raises(StaleDelivery):
        await bus.forward(delivery, TARGET, inbound(1, user="u1"))
    assert await redis.xlen(TARGET) == 1


@pytest.mark.parametrize("first", ["slow original", "reclaiming consumer"])
async def test_reclaimed_entry_is_forwarded_once_whoever_finishes_first(
    redis: aioredis.Redis, first: str
) -> None:
    bus = Bus(redis, FAST)
    await bus.ensure_group(IN_STREAM, "router")
    await bus.publish(IN_STREAM, inbound(1))
    (slow,) = await bus.read(IN_STREAM, "router", "r1")
    await asyncio.sleep(FAST.claim_idle_ms / 1000 + 0.05)
    (reclaimed,) = await bus.read(IN_STREAM, "router", "r2")
    assert (reclaimed.entry_id, reclaimed.deliveries) == (slow.entry_id, 2)
    winner, loser = (slow, reclaimed) if first == "slow original" else (reclaimed, slow)

    await bus.forward(winner, TARGET, inbound(1, user="u1"))
    with pytest.raises(StaleDelivery):
        await bus.forward(loser, TARGET, inbound(1, user="u1"))

    assert await redis.xlen(TARGET) == 1
    assert await _pending(redis) == 0


async def test_forward_many_writes_every_target_and_acks_once(redis: aioredis.Redis) -> None:
    bus = Bus(redis, FAST)
    await bus.ensure_group(IN_STREAM, "router")
    await bus.publish(IN_STREAM, inbound(1))
    (delivery,) = await bus.read(IN_STREAM, "router", "r1")
    reply = Outbound(channel="test", conversation_id="chat-1", text="hi", outbound_id="o-1")

    await bus.forward_many(delivery, [(TARGET, inbound(1, user="u1")), (out_stream("test"), reply)])

    assert await redis.xlen(TARGET) == 1
    (entry,) = await redis.xrange(out_stream("test"))
    assert decode(entry[1]) == reply
    assert await _pending(redis) == 0


async def test_failed_forward_writes_nothing_and_leaves_the_entry_pending(
    redis: aioredis.Redis,
) -> None:
    bus = Bus(redis, FAST)
    await bus.ensure_group(IN_STREAM, "router")
    await bus.publish(IN_STREAM, inbound(1))
    (delivery,) = await bus.read(IN_STREAM, "router", "r1")
    broken = out_stream("broken")
    await redis.set(broken, "not a stream")

    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await bus.forward_many(delivery, [(TARGET, inbound(1, user="u1")), (broken, inbound(1))])

    assert await redis.exists(TARGET) == 0
    assert await _pending(redis) == 1


async def test_forward_of_a_retried_entry_clears_its_failure_reason(
    redis: aioredis.Redis,
) -> None:
    bus = Bus(redis, FAST)
    await bus.ensure_group(IN_STREAM, "router")
    await bus.publish(IN_STREAM, inbound(1))
    (first,) = await bus.read(IN_STREAM, "router", "r1")
    await bus.fail(first, "model timed out")
    reason_key = keys.failure(IN_STREAM, "router", first.entry_id)
    assert await redis.get(reason_key) == b"model timed out"
    await asyncio.sleep(FAST.claim_idle_ms / 1000 + 0.05)
    (retry,) = await bus.read(IN_STREAM, "router", "r1")
    assert retry.deliveries == 2

    await bus.forward(retry, TARGET, inbound(1, user="u1"))

    assert await redis.exists(reason_key) == 0
