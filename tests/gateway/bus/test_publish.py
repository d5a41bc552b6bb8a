"""Publishing, reading, acking, dedupe and consumer groups against a real redis-server."""

from __future__ import annotations

import asyncio
import traceback
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from gateway.bus import IN_STREAM, Bus, Delivery, agent_stream, keys, out_stream
from gateway.envelope import Inbound, Outbound, decode
from gateway.errors import EnvelopeError, RedisUnavailable
from gateway.settings import BusSettings
from tests.services import RedisProcess

from . import FAST, consuming, eventually, inbound


async def test_publish_read_ack_round_trip(redis: aioredis.Redis) -> None:
    bus = Bus(redis, FAST)
    await bus.ensure_group(IN_STREAM, "router")
    sent = inbound(1, text="héllo wörld 👋")
    entry_id = await bus.publish(IN_STREAM, sent)
    assert entry_id is not None

    got = await bus.read(IN_STREAM, "router", "r1")

    assert got == [Delivery(IN_STREAM, "router", entry_id, sent, 1)]
    assert await bus.lag(IN_STREAM, "router") == 1  # pending until acked
    await bus.ack(got[0])
    assert await bus.lag(IN_STREAM, "router") == 0
    assert await bus.read(IN_STREAM, "router", "r1", block_ms=0) == []


async def test_outbound_envelopes_travel_unchanged(redis: aioredis.Redis) -> None:
    bus = Bus(redis, FAST)
    stream = out_stream("telegram")
    await bus.ensure_group(stream, "sender")
    reply = Outbound(
        channel="telegram",
        conversation_id="42",
        text="**done**",
        outbound_id="r-1",
        extras={"parse_mode": "MarkdownV2"},
    )
    await bus.publish(stream, reply)
    (got,) = await bus.read(stream, "sender", "s1")
    assert got.envelope == reply


async def test_group_created_late_still_sees_entries_published_before_it(
    redis: aioredis.Redis,
) -> None:
    bus = Bus(redis, FAST)
    await bus.publish(IN_STREAM, inbound(1))
    await bus.ensure_group(IN_STREAM, "router")
    await bus.ensure_group(IN_STREAM, "router")  # a second time is harmless
    assert [d.envelope.event_id for d in await bus.read(IN_STREAM, "router", "r1")] == ["1"]


async def test_agent_streams_keep_each_users_order(redis: aioredis.Redis) -> None:
    bus = Bus(redis, FAST)
    for i in range(300):
        user = "alice" if i % 3 else "bob"
        await bus.publish(agent_stream(user), inbound(i, user=user))
    for user in ("alice", "bob"):
        await bus.ensure_group(agent_stream(user), "supervisor")
        seen: list[int] = []
        while batch := await bus.read(agent_stream(user), "supervisor", "s1", count=7, block_ms=0):
            seen.extend(int(d.envelope.event_id) for d in batch)
            for delivery in batch:
                await bus.ack(delivery)
        expected = [i for i in range(300) if (i % 3 != 0) == (user == "alice")]
        assert seen == expected


async def test_two_consumers_in_a_group_share_work_without_duplicates(
    redis: aioredis.Redis,
) -> None:
    bus = Bus(redis, FAST)
    await bus.ensure_group(IN_STREAM, "router")
    for i in range(500):
        await bus.publish(IN_STREAM, inbound(i))
    taken: dict[str, list[str]] = {"r1": [], "r2": []}
    while True:
        first = await bus.read(IN_STREAM, "router", "r1", count=13, block_ms=0)
        second = await bus.read(IN_STREAM, "router", "r2", count=13, block_ms=0)
        if not first and not second:
            break
        for name, batch in (("r1", first), ("r2", second)):
            taken[name].extend(d.envelope.event_id for d in batch)
            for delivery in batch:
                await bus.ack(delivery)
    assert taken["r1"] and taken["r2"]
    assert not set(taken["r1"]) & set(taken["r2"])
    assert sorted(taken["r1"] + taken["r2"], key=int) == [str(i) for i in range(500)]


async def test_consume_handles_and_acks_every_entry(redis: aioredis.Redis) -> None:
    bus = Bus(redis, FAST)
    seen: list[str] = []

    async def handler(delivery: Delivery) -> None:
        seen.append(delivery.envelope.event_id)

    async with consuming(bus, IN_STREAM, "router", "r1", handler):
        for i in range(250):
            await bus.publish(IN_STREAM, inbound(i))

        async def all_done() -> bool:
            return len(seen) == 250 and await bus.lag(IN_STREAM, "router") == 0

        await eventually(all_done)
    assert seen == [str(i) for i in range(250)]


async def test_duplicate_dedupe_key_is_published_once(redis: aioredis.Redis) -> None:
    bus = Bus(redis, FAST)
    event = inbound(7)
    first = await bus.publish(IN_STREAM, event, dedupe=event.dedupe_key)
    second = await bus.publish(IN_STREAM, event, dedupe=event.dedupe_key)
    assert first is not None
    assert second is None
    assert await redis.xlen(IN_STREAM) == 1


async def test_dedupe_marker_lives_in_redis_with_the_configured_ttl(
    redis: aioredis.Redis,
) -> None:
    bus = Bus(redis, BusSettings(dedupe_ttl_s=60))
    event = inbound(8)
    await bus.publish(IN_STREAM, event, dedupe=event.dedupe_key)
    ttl = await redis.ttl(keys.dedupe(IN_STREAM, event.dedupe_key))
    assert 0 < ttl <= 60


async def test_same_dedupe_key_publishes_again_once_its_marker_expired(
    redis: aioredis.Redis,
) -> None:
    bus = Bus(redis, FAST)
    event = inbound(9)
    assert await bus.publish(IN_STREAM, event, dedupe=event.dedupe_key) is not None
    # Expire the marker now instead of waiting out the 60 s minimum TTL.
    await redis.pexpire(keys.dedupe(IN_STREAM, event.dedupe_key), 1)
    await asyncio.sleep(0.01)
    assert await bus.publish(IN_STREAM, event, dedupe=event.dedupe_key) is not None
    assert await redis.xlen(IN_STREAM) == 2


async def test_dedupe_survives_a_new_bus_and_client(
    redis: aioredis.Redis, redis_server: RedisProcess
) -> None:
    event = inbound(10)
    assert await Bus(redis, FAST).publish(IN_STREAM, event, dedupe=event.dedupe_key)
    other = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        again = await Bus(other, FAST).publish(IN_STREAM, event, dedupe=event.dedupe_key)
    finally:
        await other.aclose()
    assert again is None
    assert await redis.xlen(IN_STREAM) == 1


async def test_dedupe_keys_are_scoped_to_their_stream(redis: aioredis.Redis) -> None:
    bus = Bus(redis, FAST)
    event = inbound(11)
    assert await bus.publish(IN_STREAM, event, dedupe=event.dedupe_key)
    assert await bus.publish(agent_stream("u1"), event, dedupe=event.dedupe_key)


async def test_concurrent_duplicates_publish_exactly_once(redis: aioredis.Redis) -> None:
    bus = Bus(redis, FAST)
    event = inbound(12)
    results = await asyncio.gather(
        *(bus.publish(IN_STREAM, event, dedupe=event.dedupe_key) for _ in range(50))
    )
    assert sum(result is not None for result in results) == 1
    assert await redis.xlen(IN_STREAM) == 1


async def test_publish_trims_streams_to_about_maxlen(redis: aioredis.Redis) -> None:
    bus = Bus(redis, BusSettings(stream_maxlen=1_000))
    for i in range(3_000):
        await bus.publish(IN_STREAM, inbound(i))
    # Approximate trimming drops whole nodes of 100 entries, never the newest.
    assert 1_000 <= await redis.xlen(IN_STREAM) < 1_200


async def test_a_decode_responses_client_works_the_same(redis_server: RedisProcess) -> None:
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        await client.flushall()
        bus = Bus(client, FAST)
        await bus.ensure_group(IN_STREAM, "router")
        event = inbound(13, text="ünïcödé ✓")
        entry_id = await bus.publish(IN_STREAM, event, dedupe=event.dedupe_key)
        await client.xadd(IN_STREAM, {"v": "1", "kind": "in", "text": b"\xff\xfe"})
        (got,) = await bus.read(IN_STREAM, "router", "r1")
        assert (got.entry_id, got.envelope) == (entry_id, event)
        await bus.ack(got)
        (dead,) = await bus.dead_letters(IN_STREAM)
        assert "UTF-8" in dead.reason
        assert await bus.lag(IN_STREAM, "router") == 0
    finally:
        await client.aclose()


async def test_lag_counts_undelivered_and_pending_entries(redis: aioredis.Redis) -> None:
    bus = Bus(redis, FAST)
    assert await bus.lag(IN_STREAM, "router") == 0  # no stream yet
    for i in range(10):
        await bus.publish(IN_STREAM, inbound(i))
    assert await bus.lag(IN_STREAM, "router") == 10  # no group yet
    await bus.ensure_group(IN_STREAM, "router")
    batch = await bus.read(IN_STREAM, "router", "r1", count=4)
    assert await bus.lag(IN_STREAM, "router") == 10
    await bus.ack(batch[0])
    assert await bus.lag(IN_STREAM, "router") == 9
    # An XDEL inside the unread range makes Redis give up on its own lag figure.
    unread = await redis.xrange(IN_STREAM, count=10)
    await redis.xdel(IN_STREAM, unread[6][0])
    assert await bus.lag(IN_STREAM, "router") == 8


async def test_missing_redis_surfaces_as_redis_unavailable(tmp_path: Path) -> None:
    client = aioredis.Redis.from_url(f"unix://{tmp_path}/absent.sock")
    bus = Bus(client, FAST)
    errors: list[RedisUnavailable] = []
    try:
        for call in (
            bus.publish(IN_STREAM, inbound(1)),
            bus.publish(IN_STREAM, inbound(1), dedupe="test:1"),
            bus.read(IN_STREAM, "router", "r1"),
            bus.ensure_group(IN_STREAM, "router"),
            bus.lag(IN_STREAM, "router"),
        ):
            with pytest.raises(RedisUnavailable) as caught:
                await call
            errors.append(caught.value)
    finally:
        await client.aclose()
    for error in errors:
        assert error.retryable
        assert str(error).startswith("Redis did not answer")
        assert "absent.sock" in str(error)
        # One clean error: no chained redis-py traceback under it.
        report = "".join(traceback.format_exception(error))
        assert "redis.exceptions" not in report
        assert "During handling" not in report and "direct cause" not in report


async def test_concurrent_publishes_each_get_their_own_entry(redis: aioredis.Redis) -> None:
    bus = Bus(redis, FAST)
    events = [inbound(i) for i in range(300)]
    ids = await asyncio.gather(
        *(bus.publish(IN_STREAM, event, dedupe=event.dedupe_key) for event in events)
    )
    stored = {entry_id.decode(): fields for entry_id, fields in await redis.xrange(IN_STREAM)}
    assert len(set(ids)) == 300
    for event, entry_id in zip(events, ids, strict=True):
        assert entry_id is not None
        assert decode(stored[entry_id]) == event


async def test_a_failing_publish_in_a_shared_round_trip_fails_alone(
    redis: aioredis.Redis,
) -> None:
    bus = Bus(redis, FAST)
    broken = out_stream("broken")
    await redis.set(broken, "not a stream")
    results = await asyncio.gather(
        bus.publish(IN_STREAM, inbound(1)),
        bus.publish(broken, inbound(2)),
        bus.publish(IN_STREAM, inbound(3)),
        return_exceptions=True,
    )
    assert isinstance(results[0], str) and isinstance(results[2], str)
    assert isinstance(results[1], ResponseError)
    assert await redis.xlen(IN_STREAM) == 2


async def test_publish_loads_its_script_again_after_a_script_flush(
    redis: aioredis.Redis,
) -> None:
    bus = Bus(redis, FAST)
    assert await bus.publish(IN_STREAM, inbound(1))
    await redis.script_flush()
    assert await bus.publish(IN_STREAM, inbound(2))
    await redis.script_flush()
    many = await asyncio.gather(*(bus.publish(IN_STREAM, inbound(i)) for i in range(3, 13)))
    assert all(many)
    assert await redis.xlen(IN_STREAM) == 12


async def test_a_cancelled_publish_does_not_hold_up_the_others(redis: aioredis.Redis) -> None:
    bus = Bus(redis, FAST)
    doomed = asyncio.create_task(bus.publish(IN_STREAM, inbound(0)))
    others = [asyncio.create_task(bus.publish(IN_STREAM, inbound(i))) for i in range(1, 20)]
    doomed.cancel()
    async with asyncio.timeout(5):
        ids = await asyncio.gather(*others)
    assert all(ids)


@pytest.mark.parametrize(
    "text",
    [
        'quotes " and \\ backslashes, {"json": [1]}',
        "NUL \x00 and controls \t\n\r",
        "emoji 👩‍👩‍👧 flags 🇺🇦 and astral 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
        "right-to-left עברית العربية and 中文, हिन्दी",
        "\u2028 line and paragraph \u2029 separators",
        "",
    ],
)
async def test_any_text_travels_byte_for_byte(redis: aioredis.Redis, text: str) -> None:
    bus = Bus(redis, FAST)
    await bus.ensure_group(IN_STREAM, "router")
    sent = Inbound(
        channel="test",
        event_id="e-1",
        sender_id="s",
        conversation_id="c",
        text=text,
        received_at=1.25,
        sender_name=text,
        extras={"k": text, text: "v"},
    )
    await bus.publish(IN_STREAM, sent, dedupe=sent.dedupe_key)
    (got,) = await bus.read(IN_STREAM, "router", "r1")
    assert got.envelope == sent


async def test_lone_surrogate_text_is_refused_as_an_envelope_error(
    redis: aioredis.Redis,
) -> None:
    bus = Bus(redis, FAST)
    with pytest.raises(EnvelopeError, match="surrogate"):
        await bus.publish(IN_STREAM, inbound(1, text="broken \ud800 pair"))
    assert await redis.exists(IN_STREAM) == 0


async def test_group_starting_now_sees_only_later_entries(redis: aioredis.Redis) -> None:
    bus = Bus(redis, FAST)
    await bus.publish(IN_STREAM, inbound("before"))
    await bus.ensure_group(IN_STREAM, "console", start="$")
    await bus.publish(IN_STREAM, inbound("after"))
    got = await bus.read(IN_STREAM, "console", "c1", block_ms=0)
    assert [d.envelope.event_id for d in got] == ["after"]


async def test_drop_group_removes_it_and_tolerates_a_missing_one(redis: aioredis.Redis) -> None:
    bus = Bus(redis, FAST)
    await bus.drop_group(IN_STREAM, "console")  # no stream yet
    await bus.ensure_group(IN_STREAM, "console")
    await bus.publish(IN_STREAM, inbound(1))
    await bus.read(IN_STREAM, "console", "c1")
    await bus.drop_group(IN_STREAM, "console")
    await bus.drop_group(IN_STREAM, "console")  # already gone
    assert await redis.xinfo_groups(IN_STREAM) == []
