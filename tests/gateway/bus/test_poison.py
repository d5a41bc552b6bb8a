"""Poison entries and failing handlers end in the dead-letter stream; the consumer goes on."""

from __future__ import annotations

import asyncio
import logging

import pytest
import redis.asyncio as aioredis

from gateway.bus import IN_STREAM, Bus, Delivery, dead_letter_stream, keys
from gateway.envelope import encode
from gateway.errors import EnvelopeError
from gateway.settings import BusSettings

from . import FAST, consuming, eventually, inbound


async def _add_poison(redis: aioredis.Redis) -> dict[str, str]:
    """Append three undecodable entries; returns entry id → expected reason fragment."""
    wrong_version = {**encode(inbound("v99")), "v": "99"}
    bad_utf8 = {**encode(inbound("utf8")), "text": b"caf\xc3\x28 \xff"}
    poison = {
        "garbage": {"foo": "bar"},
        "wrong version": wrong_version,
        "bad utf-8": bad_utf8,
    }
    expected = {
        "garbage": "unsupported schema version",
        "wrong version": "unsupported schema version '99'",
        "bad utf-8": "not valid UTF-8",
    }
    ids: dict[str, str] = {}
    for name, fields in poison.items():
        raw_id = await redis.xadd(IN_STREAM, fields)  # type: ignore[arg-type]
        ids[raw_id.decode()] = expected[name]
    return ids


async def test_undecodable_entries_are_dead_lettered_and_the_good_ones_delivered(
    redis: aioredis.Redis,
) -> None:
    bus = Bus(redis, FAST)
    await bus.ensure_group(IN_STREAM, "router")
    await bus.publish(IN_STREAM, inbound(1))
    poison = await _add_poison(redis)
    await bus.publish(IN_STREAM, inbound(2))

    got = await bus.read(IN_STREAM, "router", "r1")

    assert [d.envelope.event_id for d in got] == ["1", "2"]
    dead = await bus.dead_letters(IN_STREAM)
    assert [d.source_id for d in dead] == list(poison)
    for letter in dead:
        assert poison[letter.source_id] in letter.reason
        assert (letter.stream, letter.group, letter.deliveries) == (IN_STREAM, "router", 1)
    # The original bytes are kept exactly, invalid UTF-8 included.
    assert dead[2].fields[b"text"] == b"caf\xc3\x28 \xff"
    assert dead[0].fields == {b"foo": b"bar"}
    summary = await redis.xpending(IN_STREAM, "router")
    assert summary["pending"] == 2  # the two good ones, not yet acked


async def test_consume_keeps_processing_good_entries_after_poison(
    redis: aioredis.Redis,
) -> None:
    bus = Bus(redis, FAST)
    seen: list[str] = []

    async def handler(delivery: Delivery) -> None:
        seen.append(delivery.envelope.event_id)

    await bus.ensure_group(IN_STREAM, "router")
    for i in range(10):
        await bus.publish(IN_STREAM, inbound(i))
    await _add_poison(redis)
    for i in range(10, 20):
        await bus.publish(IN_STREAM, inbound(i))

    async with consuming(bus, IN_STREAM, "router", "r1", handler):

        async def done() -> bool:
            return len(seen) == 20 and await bus.lag(IN_STREAM, "router") == 0

        await eventually(done)

    assert seen == [str(i) for i in range(20)]
    assert len(await bus.dead_letters(IN_STREAM)) == 3


async def test_always_failing_handler_is_dead_lettered_after_max_deliveries(
    redis: aioredis.Redis,
) -> None:
    bus = Bus(redis, FAST)
    attempts: dict[str, int] = {}

    async def handler(delivery: Delivery) -> None:
        event_id = delivery.envelope.event_id
        attempts[event_id] = attempts.get(event_id, 0) + 1
        if event_id == "bad":
            raise RuntimeError(f"cannot handle {event_id}")

    await bus.ensure_group(IN_STREAM, "router")
    for i in range(10):
        await bus.publish(IN_STREAM, inbound(i))
    await bus.publish(IN_STREAM, inbound("bad"))
    for i in range(10, 20):
        await bus.publish(IN_STREAM, inbound(i))

    async with consuming(bus, IN_STREAM, "router", "r1", handler):

        async def dead_lettered() -> bool:
            return bool(await bus.dead_letters(IN_STREAM))

        await eventually(dead_lettered)
        await eventually(lambda: bus_lag_is_zero(bus))

    (letter,) = await bus.dead_letters(IN_STREAM)
    assert letter.reason == "RuntimeError: cannot handle bad"
    assert letter.deliveries == FAST.max_deliveries
    assert letter.envelope() == inbound("bad")
    assert attempts.pop("bad") == FAST.max_deliveries
    assert attempts == {str(i): 1 for i in range(20)}
    assert await redis.keys(keys.failure(IN_STREAM, "router", "*")) == []


async def bus_lag_is_zero(bus: Bus) -> bool:
    return await bus.lag(IN_STREAM, "router") == 0


async def test_handler_that_fails_once_is_retried_after_claim_idle(
    redis: aioredis.Redis,
) -> None:
    bus = Bus(redis, FAST)
    attempts: list[int] = []

    async def handler(delivery: Delivery) -> None:
        attempts.append(delivery.deliveries)
        if delivery.deliveries == 1:
            raise ConnectionResetError("platform hung up")

    await bus.publish(IN_STREAM, inbound(1))
    async with consuming(bus, IN_STREAM, "router", "r1", handler):
        await eventually(lambda: bus_lag_is_zero(bus))
    assert attempts == [1, 2]
    assert await bus.dead_letters(IN_STREAM) == []


async def test_entry_delivered_too_often_is_dead_lettered_with_the_last_recorded_reason(
    redis: aioredis.Redis,
) -> None:
    settings = BusSettings(claim_idle_ms=100, block_ms=20, max_deliveries=2)
    bus = Bus(redis, settings)
    await bus.ensure_group(IN_STREAM, "router")
    await bus.publish(IN_STREAM, inbound(1))
    (first,) = await bus.read(IN_STREAM, "router", "r1")
    await bus.fail(first, "provider returned 503")
    await asyncio.sleep(0.15)
    (second,) = await bus.read(IN_STREAM, "router", "r2")
    assert second.deliveries == 2
    # r2 crashes without calling fail(); the next reclaim is the third delivery.
    await asyncio.sleep(0.15)

    assert await bus.read(IN_STREAM, "router", "r3", block_ms=0) == []

    (letter,) = await bus.dead_letters(IN_STREAM)
    assert (letter.reason, letter.deliveries, letter.source_id) == (
        "provider returned 503",
        3,
        first.entry_id,
    )
    assert await bus.lag(IN_STREAM, "router") == 0


async def test_entry_never_failed_explicitly_gets_a_generic_dead_letter_reason(
    redis: aioredis.Redis,
) -> None:
    bus = Bus(redis, BusSettings(claim_idle_ms=100, block_ms=20, max_deliveries=1))
    await bus.ensure_group(IN_STREAM, "router")
    await bus.publish(IN_STREAM, inbound(1))
    await bus.read(IN_STREAM, "router", "r1")
    await asyncio.sleep(0.15)
    assert await bus.read(IN_STREAM, "router", "r2", block_ms=0) == []
    (letter,) = await bus.dead_letters(IN_STREAM)
    assert letter.reason == "delivered 2 times without an ack"


async def test_failure_reasons_are_truncated(redis: aioredis.Redis) -> None:
    bus = Bus(redis, BusSettings(max_deliveries=1))
    await bus.ensure_group(IN_STREAM, "router")
    await bus.publish(IN_STREAM, inbound(1))
    (delivery,) = await bus.read(IN_STREAM, "router", "r1")
    await bus.fail(delivery, "x" * 10_000)
    (letter,) = await bus.dead_letters(IN_STREAM)
    assert letter.reason == "x" * 500


async def test_pending_entry_trimmed_away_is_dead_lettered_as_missing(
    redis: aioredis.Redis,
) -> None:
    bus = Bus(redis, FAST)
    await bus.ensure_group(IN_STREAM, "router")
    await bus.publish(IN_STREAM, inbound(1))
    (delivery,) = await bus.read(IN_STREAM, "router", "r1")
    await redis.xtrim(IN_STREAM, maxlen=0)

    # A restarted r1 re-reads its PEL and finds the entry's fields gone.
    assert await Bus(redis, FAST).read(IN_STREAM, "router", "r1", block_ms=0) == []

    (letter,) = await bus.dead_letters(IN_STREAM)
    assert letter.source_id == delivery.entry_id
    assert "trimmed" in letter.reason
    assert letter.fields == {}
    assert await redis.xlen(dead_letter_stream(IN_STREAM)) == 1


async def test_handler_failure_is_logged_with_the_entry_but_without_message_text(
    redis: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    bus = Bus(redis, BusSettings(claim_idle_ms=100, block_ms=20, max_deliveries=1))

    async def handler(delivery: Delivery) -> None:
        raise ValueError(f"cannot parse {delivery.envelope.text}")

    entry_id = await bus.publish(IN_STREAM, inbound(1, text="my secret diary"))
    assert entry_id is not None
    with caplog.at_level(logging.INFO, logger="stockade.bus"):
        async with consuming(bus, IN_STREAM, "router", "r1", handler):
            await eventually(lambda: bus_lag_is_zero(bus))
    messages = [record.getMessage() for record in caplog.records]
    assert any(entry_id in m and "ValueError" in m for m in messages)
    assert not any("secret" in m for m in messages)
    (letter,) = await bus.dead_letters(IN_STREAM)
    assert letter.reason == "ValueError: cannot parse my secret diary"


async def test_handler_raising_envelope_error_is_dead_lettered_without_retries(
    redis: aioredis.Redis,
) -> None:
    bus = Bus(redis, FAST)
    calls: list[int] = []

    async def handler(delivery: Delivery) -> None:
        calls.append(delivery.deliveries)
        raise EnvelopeError("the inbound stream carried an outbound envelope")

    await bus.publish(IN_STREAM, inbound(1))
    async with consuming(bus, IN_STREAM, "router", "r1", handler):
        await eventually(lambda: bus_lag_is_zero(bus))
        await asyncio.sleep(3 * FAST.claim_idle_ms / 1000)
    assert calls == [1]
    (letter,) = await bus.dead_letters(IN_STREAM)
    assert letter.reason == "EnvelopeError: the inbound stream carried an outbound envelope"
    assert letter.deliveries == 1
