"""Twilio's auth token stays out of every log line at DEBUG and out of every error.

The token signs Twilio's webhooks (checked here), and goes out in Basic auth with the
account SID (not a secret) on each send and media download. The Twilio SDK logs each
request's method, URL and headers at INFO, leaving out Authorization.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr

from channels._shared.media import MediaPolicy
from channels._shared.runner import run_channel
from channels._shared.webhooks import WebhookLimits, WebhookServer
from channels.base import ChannelContext
from channels.whatsapp.adapter import build
from gateway.bus import IN_STREAM, Blobs, Bus, Deliveries, out_stream
from gateway.envelope import Inbound, Outbound, decode_inbound, reply
from gateway.errors import PlatformError
from gateway.settings import BusSettings
from tests.channels.contract import Event
from tests.channels.log_secrets import canary, debug_log
from tests.channels.whatsapp.harness import WhatsAppHarness, settings_for
from tests.fakes.twilio import running_twilio

ACCOUNT_SID = "AC" + "1" * 32


def basic(account_sid: str, token: str) -> str:
    """The Basic auth credentials as they go out: base64 of "SID:token"."""
    return base64.b64encode(f"{account_sid}:{token}".encode()).decode()


async def eventually(check: Callable[[], Awaitable[bool]]) -> None:
    async with asyncio.timeout(10):
        while not await check():
            await asyncio.sleep(0.01)


async def mounted(url: str) -> bool:
    # Unmounted paths answer 404; a mounted one refuses an unsigned request with 403.
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status == 403


async def entries(redis: aioredis.Redis, count: int) -> list[Inbound]:
    async with asyncio.timeout(10):
        while len(found := [decode_inbound(f) for _, f in await redis.xrange(IN_STREAM)]) < count:
            await asyncio.sleep(0.01)
    return found


async def test_no_log_line_at_debug_holds_the_auth_token(redis: aioredis.Redis) -> None:
    token = canary("auth-")
    with debug_log() as log:
        async with (
            running_twilio(ACCOUNT_SID, token) as fake,
            WebhookServer("127.0.0.1", 0, WebhookLimits()) as webhooks,
        ):
            context = ChannelContext(Blobs(redis), MediaPolicy(), Deliveries(redis), webhooks)
            harness = WhatsAppHarness(fake, context, webhooks)
            bus = Bus(redis, BusSettings(block_ms=50))
            task = asyncio.create_task(run_channel(harness.channel, bus, "whatsapp-test"))
            try:
                await eventually(lambda: mounted(harness.messages_url))
                await harness.deliver(Event("with a file", file_name="notes.txt"))
                assert await harness.forged(Event("forged")) == 403
                [inbound] = await entries(redis, 1)
                assert inbound.attachments  # fetched with the account's Basic auth
                fake.throttle_next_send(0.01)
                await bus.publish(out_stream("whatsapp"), reply(inbound, "hi **there**", "final"))
                await eventually(lambda: _true(bool(fake.sent)))
                assert await fake.status_callback(fake.sent[0].sid, "undelivered", "63016") == 200
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    assert log.of("twilio"), "the Twilio SDK logged no request"
    assert log.holding(token, basic(ACCOUNT_SID, token)) == []


async def test_a_refused_auth_token_is_a_platform_error_without_the_token(
    redis: aioredis.Redis,
) -> None:
    wrong = canary("wrong-")
    with debug_log() as log:
        async with (
            running_twilio(ACCOUNT_SID) as fake,
            WebhookServer("127.0.0.1", 0, WebhookLimits()) as webhooks,
        ):
            settings = settings_for(fake).model_copy(update={"auth_token": SecretStr(wrong)})
            context = ChannelContext(Blobs(redis), MediaPolicy(), Deliveries(redis), webhooks)
            channel = build(settings, context)
            try:
                with pytest.raises(PlatformError) as raised:
                    await channel.send(Outbound("whatsapp", "whatsapp:+1", "hi", outbound_id="o"))
            finally:
                await channel.aclose()
    assert fake.unauthorized == 1 and "20003" in str(raised.value)
    assert wrong not in str(raised.value) and wrong not in repr(raised.value)
    assert basic(ACCOUNT_SID, wrong) not in str(raised.value)
    assert [line for line in log.of("twilio") if line.level >= logging.INFO]
    assert log.holding(wrong, basic(ACCOUNT_SID, wrong)) == []


async def _true(value: bool) -> bool:
    return value
