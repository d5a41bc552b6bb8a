"""Drive the real router on a real Redis: publish inbound messages, route them, read replies."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools

import redis.asyncio as aioredis

from gateway.app import router as make_router
from gateway.bus import IN_STREAM, Bus, out_stream
from gateway.envelope import Inbound, Outbound, decode_outbound
from gateway.router import ROUTER_GROUP
from gateway.settings import AccessSettings, BusSettings, ChannelAccess, Settings

BUS = BusSettings(claim_idle_ms=100, max_deliveries=2, block_ms=50)
ADMIN_ID = "1000"
ADMIN = ChannelAccess(dm_policy="pairing", admins=(ADMIN_ID,))
_events = itertools.count(1)


def settings(access: AccessSettings | None = None) -> Settings:
    return Settings(bus=BUS, access=access or AccessSettings(telegram=ADMIN))


def dm(sender: str, text: str, channel: str = "telegram", **kw: object) -> Inbound:
    inbound = Inbound(
        channel=channel,
        event_id=f"e{next(_events)}",
        sender_id=sender,
        sender_name=f"name-{sender}",
        conversation_id=f"chat-{sender}",
        text=text,
        received_at=1.0,
    )
    return dataclasses.replace(inbound, **kw)  # type: ignore[arg-type]


async def route(client: aioredis.Redis, config: Settings, *messages: Inbound) -> None:
    """Publish `messages` and run a router until every one is routed."""
    bus = Bus(client, BUS)
    for message in messages:
        await bus.publish(IN_STREAM, message, dedupe=message.dedupe_key)
    task = asyncio.create_task(make_router(client, config).run("r1"))
    try:
        async with asyncio.timeout(10):
            while await bus.lag(IN_STREAM, ROUTER_GROUP) > 0:
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def replies(client: aioredis.Redis, channel: str = "telegram") -> list[Outbound]:
    return [decode_outbound(f) for _, f in await client.xrange(out_stream(channel))]


async def answer(client: aioredis.Redis, config: Settings, message: Inbound) -> str:
    """Route one message and return the text of the reply to it ("" when there is none)."""
    await route(client, config, message)
    for outbound in await replies(client, message.channel):
        if outbound.reply_to == message.event_id:
            return outbound.text
    return ""
