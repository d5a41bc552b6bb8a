"""The router on a real Redis: commands answered in the core, the rest queued per user."""

from __future__ import annotations

import dataclasses

import redis.asyncio as aioredis

from gateway.bus import IN_STREAM, WAKE_STREAM, Bus, agent_stream, out_stream
from gateway.envelope import Inbound, Outbound, decode_inbound, decode_outbound, encode
from gateway.policy import Identities
from gateway.router import ROUTER_GROUP
from gateway.settings import AccessSettings, BusSettings, ChannelAccess, Settings
from tests.gateway.routing import route

SETTINGS = BusSettings(claim_idle_ms=100, max_deliveries=2, block_ms=50)
OPEN = ChannelAccess(dm_policy="open")
ROUTING = Settings(bus=SETTINGS, access=AccessSettings(telegram=OPEN, slack=OPEN))


def message(text: str, event_id: str, sender: str = "7", channel: str = "telegram") -> Inbound:
    return Inbound(
        channel=channel,
        event_id=event_id,
        sender_id=sender,
        conversation_id=f"chat-{sender}",
        text=text,
        received_at=1.0,
        thread_id="t1",
    )


async def route_all(client: aioredis.Redis) -> None:
    """Run a router until every inbound entry is routed and acknowledged."""
    await route(client, ROUTING)


async def test_a_command_is_answered_and_never_reaches_an_agent(redis: aioredis.Redis) -> None:
    bus = Bus(redis, SETTINGS)
    await bus.publish(IN_STREAM, message("/help", "1"), dedupe="telegram:1")
    await route_all(redis)
    [(_, fields)] = await redis.xrange(out_stream("telegram"))
    reply = decode_outbound(fields)
    assert "Commands:" in reply.text
    assert reply.conversation_id == "chat-7"
    assert reply.reply_to == "1" and reply.thread_id == "t1"
    assert reply.outbound_id == "telegram:1:cmd"
    assert [key async for key in redis.scan_iter(match="stockade:agent:*")] == []
    assert await redis.xlen(WAKE_STREAM) == 0
    pending = await redis.xpending(IN_STREAM, ROUTER_GROUP)
    assert pending["pending"] == 0


async def test_messages_are_queued_in_order_on_the_senders_own_stream(
    redis: aioredis.Redis,
) -> None:
    bus = Bus(redis, SETTINGS)
    for n in range(5):
        await bus.publish(IN_STREAM, message(f"m{n}", str(n)), dedupe=f"telegram:{n}")
    await bus.publish(IN_STREAM, message("other", "9", sender="8"), dedupe="telegram:9")
    await route_all(redis)

    ada = await Identities(redis).resolve("telegram", "7")
    bob = await Identities(redis).resolve("telegram", "8")
    assert ada != bob
    queued = [decode_inbound(f) for _, f in await redis.xrange(agent_stream(ada))]
    assert [m.text for m in queued] == [f"m{n}" for n in range(5)]
    assert {m.user_id for m in queued} == {ada}
    assert [decode_inbound(f).text for _, f in await redis.xrange(agent_stream(bob))] == ["other"]
    woken = [decode_inbound(f) for _, f in await redis.xrange(WAKE_STREAM)]
    # Different senders are routed at the same time: only each one's order holds.
    assert [m.text for m in woken if m.user_id == ada] == [f"m{n}" for n in range(5)]
    assert [m.text for m in woken if m.user_id == bob] == ["other"]
    assert len(woken) == 6
    assert await redis.xlen(out_stream("telegram")) == 0


async def test_the_same_person_on_another_channel_is_another_user_until_linked(
    redis: aioredis.Redis,
) -> None:
    identities = Identities(redis)
    first = await identities.resolve("telegram", "7")
    assert await identities.resolve("telegram", "7") == first
    assert await identities.resolve("slack", "7") != first


async def test_an_outbound_envelope_on_the_inbound_stream_is_dead_lettered(
    redis: aioredis.Redis,
) -> None:
    bus = Bus(redis, SETTINGS)
    stray = Outbound(channel="telegram", conversation_id="1", text="x", outbound_id="o1")
    await redis.xadd(IN_STREAM, encode(stray))  # type: ignore[arg-type]
    await bus.publish(IN_STREAM, message("/whoami", "2"), dedupe="telegram:2")
    await route_all(redis)
    assert await redis.xlen(out_stream("telegram")) == 1
    [letter] = await bus.dead_letters(IN_STREAM)
    assert "outbound" in letter.reason


async def test_group_chatter_not_addressed_to_the_bot_is_dropped_without_an_identity(
    redis: aioredis.Redis,
) -> None:
    bus = Bus(redis, SETTINGS)
    chatter = dataclasses.replace(
        message("lunch?", "1", sender="8"), is_direct=False, mentioned=False
    )
    asked = dataclasses.replace(message("@bot hello", "2"), is_direct=False, mentioned=True)
    await bus.publish(IN_STREAM, chatter, dedupe="telegram:1")
    await bus.publish(IN_STREAM, asked, dedupe="telegram:2")
    await route_all(redis)

    user = await Identities(redis).resolve("telegram", "7")
    queued = [decode_inbound(f).text for _, f in await redis.xrange(agent_stream(user))]
    assert queued == ["@bot hello"]
    assert await Identities(redis).lookup("telegram", "8") is None
    assert (await redis.xpending(IN_STREAM, ROUTER_GROUP))["pending"] == 0


async def test_a_command_in_a_group_is_answered_only_when_addressed(redis: aioredis.Redis) -> None:
    bus = Bus(redis, SETTINGS)
    other_bots = dataclasses.replace(message("/help", "1"), is_direct=False, mentioned=False)
    ours = dataclasses.replace(message("/help", "2"), is_direct=False, mentioned=True)
    await bus.publish(IN_STREAM, other_bots, dedupe="telegram:1")
    await bus.publish(IN_STREAM, ours, dedupe="telegram:2")
    await route_all(redis)
    replies = [decode_outbound(f) for _, f in await redis.xrange(out_stream("telegram"))]
    assert [r.reply_to for r in replies] == ["2"]
