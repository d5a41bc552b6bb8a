"""The bot token, the app token and the signing secret stay out of every log line at
DEBUG and out of every error, in Socket Mode and in HTTP mode; so do the one-time
tickets of Socket Mode URLs.

slack_sdk logs each Web API request and response at DEBUG (apps.connections.open
answers with the ticketed URL), and its Socket Mode client each frame and connection;
bolt logs each request it dispatches.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urlencode

import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr

from channels._shared.media import MediaPolicy
from channels._shared.runner import run_channel
from channels._shared.webhooks import WebhookLimits, WebhookServer
from channels.base import Admission, ChannelContext
from channels.slack.adapter import build
from gateway.bus import IN_STREAM, Blobs, Bus, Deliveries, out_stream
from gateway.envelope import Inbound, Outbound, decode_inbound, reply
from gateway.errors import PlatformError
from gateway.settings import BusSettings
from tests.channels.contract import Event
from tests.channels.log_secrets import DebugLog, canary, debug_log
from tests.channels.slack.harness import SlackHarness, settings_for
from tests.fakes.slack import (
    FakeSlack,
    post_webhook,
    running_fake_slack,
    signed_request,
    slash_command,
    wait_mounted,
)


@dataclass(frozen=True)
class Credentials:
    bot_token: str
    app_token: str
    signing_secret: str

    @classmethod
    def canaries(cls) -> Credentials:
        return cls(canary("xoxb-"), canary("xapp-"), canary("signing-"))

    def all(self) -> tuple[str, str, str]:
        return self.bot_token, self.app_token, self.signing_secret


def make_context(redis: aioredis.Redis, webhooks: WebhookServer | None) -> ChannelContext:
    return ChannelContext(
        blobs=Blobs(redis), media=MediaPolicy(), deliveries=Deliveries(redis), webhooks=webhooks
    )


@asynccontextmanager
async def started(
    fake: FakeSlack, redis: aioredis.Redis, signing_secret: str, webhooks: WebhookServer | None
) -> AsyncIterator[tuple[SlackHarness, Bus]]:
    settings = settings_for(fake, http=webhooks is not None).model_copy(
        update={"signing_secret": SecretStr(signing_secret)}
    )
    channel = build(settings, make_context(redis, webhooks))
    harness = SlackHarness(fake, channel, webhooks, settings.webhook_path)
    bus = Bus(redis, BusSettings(block_ms=50))
    task = asyncio.create_task(run_channel(channel, bus, "slack-test"))
    try:
        yield harness, bus
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await harness.aclose()


async def entries(redis: aioredis.Redis, count: int) -> list[Inbound]:
    async with asyncio.timeout(10):
        while len(found := [decode_inbound(f) for _, f in await redis.xrange(IN_STREAM)]) < count:
            await asyncio.sleep(0.01)
    return found


async def answer(fake: FakeSlack, bus: Bus, inbound: Inbound) -> None:
    before = len(fake.posted)
    await bus.publish(out_stream("slack"), reply(inbound, "hi **there**", "final"))
    await fake.wait_for_posts(before + 1)


def assert_sdk_debug_seen(log: DebugLog) -> None:
    assert log.of("slack_sdk", logging.DEBUG), "slack_sdk logged nothing at DEBUG"
    assert log.of("slack_bolt", logging.DEBUG), "bolt logged nothing at DEBUG"


async def test_no_log_line_at_debug_holds_a_credential_in_socket_mode(
    redis: aioredis.Redis,
) -> None:
    credentials = Credentials.canaries()
    with debug_log() as log:
        async with (
            running_fake_slack(credentials.bot_token, credentials.app_token) as fake,
            started(fake, redis, credentials.signing_secret, None) as (harness, bus),
        ):
            await harness.deliver(Event("hello", sender_id="U1001", file_name="notes.txt"))
            await harness.deliver(Event("in a room", sender_id="U1001", group_title="lab"))
            command = slash_command("/usage", "7d", user="U1001", channel="D1", trigger_id="1.2")
            await fake.wait_for_ack(await fake.send_envelope("slash_commands", command))
            first, *_ = await entries(redis, 3)
            await answer(fake, bus, first)
            # Slack closes Socket Mode connections now and then; the SDK opens another.
            await fake.close_sockets()
            async with asyncio.timeout(15):
                while len(fake.tickets) < 2:
                    await asyncio.sleep(0.01)
            await fake.wait_connected()
            await harness.deliver(Event("after a reconnect", sender_id="U1001"))
            await entries(redis, 4)
    assert len(fake.tickets) >= 2
    assert log.holding(*credentials.all(), *fake.tickets) == []
    assert_sdk_debug_seen(log)
    assert [line for line in log.lines if "ticket=<ticket>" in line.text]  # logged, masked


async def test_no_log_line_at_debug_holds_a_credential_in_http_mode(
    redis: aioredis.Redis,
) -> None:
    credentials = Credentials.canaries()
    secret = credentials.signing_secret
    with debug_log() as log:
        async with (
            running_fake_slack(credentials.bot_token, credentials.app_token) as fake,
            WebhookServer("127.0.0.1", 0, WebhookLimits()) as webhooks,
            started(fake, redis, secret, webhooks) as (harness, bus),
        ):
            await wait_mounted(harness.webhook_url)
            for event in (Event("hello", sender_id="U1001"), Event("hi", group_title="lab")):
                raw = json.dumps(harness.body_for(event)).encode()
                headers = signed_request(raw, "application/json", secret=secret)
                assert (await post_webhook(harness.webhook_url, raw, headers))[0] == 200
            form = slash_command("/usage", "7d", user="U1001", channel="D1", trigger_id="1.2")
            raw = urlencode(form).encode()
            headers = signed_request(raw, "application/x-www-form-urlencoded", secret=secret)
            assert (await post_webhook(harness.webhook_url, raw, headers))[0] == 200
            assert await harness.forged(Event("forged")) == 403
            first, *_ = await entries(redis, 3)
            await answer(fake, bus, first)
    assert log.holding(*credentials.all()) == []
    assert_sdk_debug_seen(log)


async def test_a_refused_bot_token_is_a_platform_error_without_the_token(
    redis: aioredis.Redis,
) -> None:
    wrong = canary("xoxb-")
    with debug_log() as log:
        async with running_fake_slack() as fake:
            settings = settings_for(fake, http=False).model_copy(
                update={"bot_token": SecretStr(wrong)}
            )
            channel = build(settings, make_context(redis, None))
            outbound = Outbound("slack", "D1", "hi", outbound_id="o1")
            with pytest.raises(PlatformError) as raised:
                await channel.send(outbound)
    assert "invalid_auth" in str(raised.value)
    assert wrong not in str(raised.value) and wrong not in repr(raised.value)
    assert log.holding(wrong) == []


async def test_a_refused_app_token_ends_the_start_and_no_log_line_holds_it(
    redis: aioredis.Redis,
) -> None:
    wrong = canary("xapp-")
    with debug_log() as log:
        async with running_fake_slack() as fake:
            settings = settings_for(fake, http=False).model_copy(
                update={"app_token": SecretStr(wrong)}
            )
            channel = build(settings, make_context(redis, None))
            with pytest.raises(PlatformError) as raised:
                async with asyncio.timeout(10):
                    await channel.receive(_never_called)
    assert not raised.value.retryable and "invalid_auth" in str(raised.value)
    assert wrong not in str(raised.value) and wrong not in repr(raised.value)
    assert log.holding(wrong) == []


async def _never_called(inbound: Inbound) -> Admission:
    raise AssertionError("nothing is published with a refused token")
