"""The Slack adapter end to end: the fake's wire, bolt, a real Redis bus, `run_channel`."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
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
from gateway.envelope import Inbound, Outbound, reply
from gateway.errors import ConfigError, PlatformError, RedisUnavailable
from gateway.settings import BusSettings
from tests.channels.contract import Event
from tests.channels.running import refused_at_start
from tests.channels.slack.harness import (
    FILE_BYTES,
    SIGNING_SECRET,
    SlackHarness,
    open_harness,
    settings_for,
)
from tests.fakes.slack import (
    BOT_ID,
    BOT_USER_ID,
    Ack,
    event_callback,
    message_event,
    post_webhook,
    running_fake_slack,
    signed_request,
    slash_command,
    wait_mounted,
)

OBSERVER = "observer"


def make_context(redis: aioredis.Redis, webhooks: WebhookServer | None) -> ChannelContext:
    return ChannelContext(
        blobs=Blobs(redis),
        media=MediaPolicy(),
        deliveries=Deliveries(redis),
        webhooks=webhooks,
    )


@asynccontextmanager
async def running(harness: SlackHarness, redis: aioredis.Redis) -> AsyncIterator[Bus]:
    """The harness's channel under `run_channel` on the real bus, until the block ends."""
    bus = Bus(redis, BusSettings(block_ms=50))
    await bus.ensure_group(IN_STREAM, OBSERVER)
    task = asyncio.create_task(run_channel(harness.channel, bus, "slack-test"))
    try:
        if harness.features == frozenset(("redelivery", "rate_limit", "groups", "files")):
            await harness.fake.wait_connected()
        yield bus
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@asynccontextmanager
async def socket_mode(redis: aioredis.Redis) -> AsyncIterator[tuple[SlackHarness, Bus]]:
    async with (
        open_harness(make_context(redis, None)) as harness,
        running(harness, redis) as bus,
    ):
        yield harness, bus


@asynccontextmanager
async def http_mode(redis: aioredis.Redis) -> AsyncIterator[tuple[SlackHarness, Bus]]:
    async with (
        WebhookServer("127.0.0.1", 0, WebhookLimits()) as server,
        open_harness(make_context(redis, server)) as harness,
        running(harness, redis) as bus,
    ):
        await wait_mounted(harness.webhook_url)
        yield harness, bus


async def inbounds(bus: Bus, count: int, timeout_s: float = 5.0) -> list[Inbound]:
    got: list[Inbound] = []
    async with asyncio.timeout(timeout_s):
        while len(got) < count:
            for delivery in await bus.read(IN_STREAM, OBSERVER, "o", block_ms=50):
                assert isinstance(delivery.envelope, Inbound)
                got.append(delivery.envelope)
    return got


# -- Socket Mode ---------------------------------------------------------------------


async def test_a_direct_message_is_on_the_bus_before_slack_gets_the_ack(
    redis: aioredis.Redis,
) -> None:
    async with socket_mode(redis) as (harness, bus):
        on_bus_at_ack: list[int] = []

        async def look(ack: Ack) -> None:
            on_bus_at_ack.append(await redis.xlen(IN_STREAM))

        harness.fake.on_ack = look
        event_id = await harness.deliver(Event("hello &lt; there", sender_name="Ada"))
        (inbound,) = await inbounds(bus, 1)
    assert on_bus_at_ack == [1]
    assert inbound.event_id == event_id
    assert inbound.text == "hello &lt; there"
    assert inbound.is_direct and not inbound.mentioned
    assert inbound.sender_id == "1001" and inbound.sender_name == "Ada"
    assert inbound.conversation_id == "D1001" and inbound.thread_id == ""


async def test_hung_name_lookups_do_not_hold_the_ack_past_slacks_three_seconds(
    redis: aioredis.Redis,
) -> None:
    async with socket_mode(redis) as (harness, bus):
        harness.fake.stalled = {"users.info", "conversations.info"}
        started = time.monotonic()
        await harness.deliver(Event("anyone there?", group_title="ops"))
        (inbound,) = await inbounds(bus, 1)
        assert time.monotonic() - started < 3.0
    assert inbound.text == "anyone there?"
    assert inbound.sender_name == "1001"  # the id stands in for the name


async def test_a_reply_to_a_channel_mention_is_posted_in_a_thread_under_it(
    redis: aioredis.Redis,
) -> None:
    async with socket_mode(redis) as (harness, bus):
        await harness.deliver(Event("what is **up**?", group_title="research"))
        (inbound,) = await inbounds(bus, 1)
        assert inbound.mentioned and not inbound.is_direct
        assert inbound.text == "what is **up**?"
        assert inbound.conversation_name == "research"
        assert inbound.thread_id
        await bus.publish(out_stream("slack"), reply(inbound, "**fine**, thanks", "r1"))
        (posted,) = await harness.fake.wait_for_posts(1)
    assert posted.channel == inbound.conversation_id
    assert posted.thread_ts == inbound.thread_id
    assert posted.text == "*fine*, thanks"
    assert posted.mrkdwn is True


async def test_a_failed_publish_leaves_the_event_unacknowledged_for_redelivery(
    redis: aioredis.Redis,
) -> None:
    calls: list[Inbound] = []

    async def publish(inbound: Inbound) -> Admission:
        calls.append(inbound)
        if len(calls) == 1:
            raise RedisUnavailable("redis is away")
        return Admission.ACCEPTED

    async with open_harness(make_context(redis, None)) as harness:
        task = asyncio.create_task(harness.channel.receive(publish))
        try:
            body = harness.body_for(Event("first"))
            lost = await harness.fake.send_envelope("events_api", body)
            retried = await harness.fake.send_envelope("events_api", body, retry_attempt=1)
            await harness.fake.wait_for_ack(retried)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert [a.envelope_id for a in harness.fake.acks] == [retried]
    assert lost != retried
    assert [c.event_id for c in calls] == [body["event_id"]] * 2


async def test_a_redelivered_event_is_published_once(redis: aioredis.Redis) -> None:
    async with socket_mode(redis) as (harness, bus):
        event_id = await harness.deliver(Event("once"))
        await harness.redeliver(event_id)
        await harness.deliver(Event("twice"))
        got = await inbounds(bus, 2)
    assert [i.text for i in got] == ["once", "twice"]
    assert await redis.xlen(IN_STREAM) == 2


async def test_the_bots_own_messages_and_edits_are_acked_and_dropped(
    redis: aioredis.Redis,
) -> None:
    async with socket_mode(redis) as (harness, bus):
        fake = harness.fake
        ignored = [
            message_event("mine", user=BOT_USER_ID, channel="D1", ts=fake.next_ts()),
            message_event("bot", user="U2", channel="D1", ts=fake.next_ts(), bot_id=BOT_ID),
            message_event(
                "edit", user="U2", channel="D1", ts=fake.next_ts(), subtype="message_changed"
            ),
            message_event(
                "chatter", user="U2", channel="C1", ts=fake.next_ts(), channel_type="channel"
            ),
        ]
        for number, event in enumerate(ignored):
            envelope = await fake.send_envelope("events_api", event_callback(event, f"EvX{number}"))
            await fake.wait_for_ack(envelope)
        await harness.deliver(Event("real"))
        (inbound,) = await inbounds(bus, 1)
    assert inbound.text == "real"
    assert await redis.xlen(IN_STREAM) == 1


async def test_other_bots_messages_arrive_marked_from_bot_and_our_own_do_not(
    redis: aioredis.Redis,
) -> None:
    async with socket_mode(redis) as (harness, bus):
        fake = harness.fake
        fake.users["U0OTHER"] = "Other bot"
        events = [
            message_event("mine", user=BOT_USER_ID, channel="D1", ts=fake.next_ts(), bot_id=BOT_ID),
            message_event(
                "hooked",
                user="",
                channel="D1",
                ts=fake.next_ts(),
                bot_id=BOT_ID,
                subtype="bot_message",
            ),
            message_event("beep", user="U0OTHER", channel="D1", ts=fake.next_ts(), bot_id="B0O"),
            message_event(
                "deployed",
                user="",
                channel="D1",
                ts=fake.next_ts(),
                bot_id="B0HOOK",
                subtype="bot_message",
                username="Deploy",
            ),
        ]
        for number, event in enumerate(events):
            envelope = await fake.send_envelope("events_api", event_callback(event, f"EvB{number}"))
            await fake.wait_for_ack(envelope)
        got = await inbounds(bus, 2)
    assert [(i.text, i.sender_id, i.sender_name, i.from_bot) for i in got] == [
        ("beep", "U0OTHER", "Other bot", True),
        ("deployed", "B0HOOK", "Deploy", True),
    ]
    assert await redis.xlen(IN_STREAM) == 2


async def test_a_slash_command_is_published_as_its_command_line_and_acked_empty(
    redis: aioredis.Redis,
) -> None:
    async with socket_mode(redis) as (harness, bus):
        harness.fake.users["U7"] = "Grace"
        payload = slash_command("/usage", " 7d ", user="U7", channel="D7", trigger_id="13345.1")
        envelope = await harness.fake.send_envelope("slash_commands", payload)
        ack = await harness.fake.wait_for_ack(envelope)
        (inbound,) = await inbounds(bus, 1)
    assert not ack.payload
    assert inbound.text == "/usage 7d"
    assert inbound.event_id == "13345.1"
    assert inbound.conversation_id == "D7" and inbound.is_direct
    assert inbound.sender_name == "Grace"


async def test_a_shared_file_arrives_as_an_attachment_in_the_blob_store(
    redis: aioredis.Redis,
) -> None:
    async with socket_mode(redis) as (harness, bus):
        await harness.deliver(Event("see attached", file_name="notes.txt"))
        (inbound,) = await inbounds(bus, 1)
    (attachment,) = inbound.attachments
    assert attachment.name == "notes.txt" and attachment.kind == "file"
    assert attachment.content_type == "text/plain"
    assert await Blobs(redis).get(attachment.blob) == FILE_BYTES


async def test_a_file_outside_slacks_file_host_is_refused_with_a_note(
    redis: aioredis.Redis,
) -> None:
    async with socket_mode(redis) as (harness, bus):
        fake = harness.fake
        evil = {
            "name": "x.txt",
            "mimetype": "text/plain",
            "size": 3,
            "url_private_download": "http://127.0.0.1:9/elsewhere/x.txt",
        }
        event = message_event(
            "look", user="U1", channel="D1", ts=fake.next_ts(), subtype="file_share", files=[evil]
        )
        envelope = await fake.send_envelope("events_api", event_callback(event, "EvFile"))
        await fake.wait_for_ack(envelope)
        (inbound,) = await inbounds(bus, 1)
    assert not inbound.attachments
    assert "not hosted by the platform" in inbound.text


async def test_failed_name_lookups_fall_back_to_the_ids(redis: aioredis.Redis) -> None:
    async with socket_mode(redis) as (harness, bus):
        harness.fake.fail_lookups = True
        await harness.deliver(Event("hi", sender_id="U55", group_title="ops"))
        (inbound,) = await inbounds(bus, 1)
    assert inbound.sender_name == "U55"
    assert inbound.conversation_name == inbound.conversation_id


# -- sending ---------------------------------------------------------------------------


async def test_a_rate_limited_send_is_retried_after_slacks_wait(redis: aioredis.Redis) -> None:
    async with socket_mode(redis) as (harness, bus):
        harness.throttle_next_send(0.3)
        outbound = Outbound(channel="slack", conversation_id="D1", text="hi", outbound_id="o1")
        await bus.publish(out_stream("slack"), outbound)
        (posted,) = await harness.fake.wait_for_posts(1)
    first, second = harness.fake.post_attempts
    assert second - first >= 0.3
    assert posted.text == "hi" and posted.thread_ts == ""


async def test_a_server_error_is_retried_and_a_refusal_is_raised(redis: aioredis.Redis) -> None:
    async with open_harness(make_context(redis, None)) as harness:
        harness.fake.fail_next_send(503)
        await harness.channel.send(
            Outbound(channel="slack", conversation_id="D1", text="again", outbound_id="o1")
        )
        assert [p.text for p in harness.fake.posted] == ["again"]
        with pytest.raises(PlatformError, match="channel_not_found"):
            await harness.channel.send(
                Outbound(channel="slack", conversation_id="", text="lost", outbound_id="o2")
            )


async def test_a_long_reply_is_sent_in_parts_the_platform_accepts(redis: aioredis.Redis) -> None:
    async with open_harness(make_context(redis, None)) as harness:
        text = "\n\n".join(f"Paragraph {n}. " + "word " * 150 for n in range(80))
        await harness.channel.send(
            Outbound(channel="slack", conversation_id="D1", text=text, outbound_id="o1")
        )
    posted = harness.fake.posted
    assert len(posted) > 1 and harness.fake.refused == 0
    assert all(len(p.text) <= 4_000 for p in posted)
    assert "Paragraph 79." in posted[-1].text


async def test_a_wrong_bot_token_is_a_refusal_naming_no_token(redis: aioredis.Redis) -> None:
    async with running_fake_slack() as fake:
        wrong = settings_for(fake, http=False).model_copy(
            update={"bot_token": SecretStr("xoxb-wrong-token")}
        )
        channel = build(wrong, make_context(redis, None))
        outbound = Outbound(channel="slack", conversation_id="D1", text="x", outbound_id="o")
        with pytest.raises(PlatformError) as raised:
            await channel.send(outbound)
    assert "invalid_auth" in str(raised.value)
    assert "xoxb" not in str(raised.value)


@pytest.mark.parametrize(
    ("token", "http"),
    [("bot_token", False), ("app_token", False), ("bot_token", True)],
    ids=["bot-token-socket", "app-token-socket", "bot-token-http"],
)
async def test_a_refused_token_stops_the_channel_at_start_without_showing_it(
    redis: aioredis.Redis, token: str, http: bool
) -> None:
    async with (
        running_fake_slack() as fake,
        WebhookServer("127.0.0.1", 0, WebhookLimits()) as webhooks,
    ):
        settings = settings_for(fake, http=http).model_copy(
            update={token: SecretStr("xoxq-refused-token")}
        )
        channel = build(settings, make_context(redis, webhooks if http else None))
        error = await refused_at_start(channel, redis)
    which = "bot token" if token == "bot_token" else "app token"
    assert str(error).startswith("slack: ") and f"{which} (invalid_auth)" in str(error)
    assert "refused-token" not in str(error) and not fake.tickets


async def test_slack_down_at_start_is_waited_out(
    redis: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="stockade.channels.slack"):
        async with open_harness(make_context(redis, None)) as harness:
            harness.fake.outage_calls = 2
            async with running(harness, redis) as bus:
                await harness.deliver(Event("still there?"))
                (inbound,) = await inbounds(bus, 1)
    assert inbound.text == "still there?" and harness.fake.outage_calls == 0
    assert caplog.text.count("retrying auth.test until it works") == 1
    assert "auth.test works again" in caplog.text


# -- HTTP mode ------------------------------------------------------------------------


async def test_url_verification_is_answered_with_the_challenge(redis: aioredis.Redis) -> None:
    async with http_mode(redis) as (harness, _bus):
        raw = json.dumps(
            {"token": "t", "challenge": "chal-123", "type": "url_verification"}
        ).encode()
        headers = signed_request(raw, "application/json", secret=SIGNING_SECRET)
        status, answer = await post_webhook(harness.webhook_url, raw, headers)
    assert status == 200
    assert json.loads(answer) == {"challenge": "chal-123"}


async def test_a_signed_event_is_answered_200_and_enqueued(redis: aioredis.Redis) -> None:
    async with http_mode(redis) as (harness, bus):
        event_id = await harness.deliver(Event("over http", group_title="lab"))
        (inbound,) = await inbounds(bus, 1)
    assert inbound.event_id == event_id
    assert inbound.text == "over http" and inbound.conversation_name == "lab"


def _flip_byte(raw: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    return raw.replace(b"hello", b"hellp"), headers


def _bad_signature(raw: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    return raw, signed_request(raw, "application/json", secret="another-secret")


def _stale(raw: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    old = int(time.time()) - 301
    return raw, signed_request(raw, "application/json", secret=SIGNING_SECRET, timestamp=old)


def _no_signature(raw: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    return raw, {k: v for k, v in headers.items() if k != "X-Slack-Signature"}


def _no_timestamp(raw: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    return raw, {k: v for k, v in headers.items() if k != "X-Slack-Request-Timestamp"}


def _garbage_timestamp(raw: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    return raw, {**headers, "X-Slack-Request-Timestamp": "soon"}


@pytest.mark.parametrize(
    "tamper",
    [_flip_byte, _bad_signature, _stale, _no_signature, _no_timestamp, _garbage_timestamp],
)
async def test_an_unverifiable_request_is_refused_403_and_nothing_is_enqueued(
    redis: aioredis.Redis, tamper: object
) -> None:
    assert callable(tamper)
    async with http_mode(redis) as (harness, _bus):
        raw = json.dumps(harness.body_for(Event("hello"))).encode()
        headers = signed_request(raw, "application/json", secret=SIGNING_SECRET)
        raw, headers = tamper(raw, headers)
        status, _ = await post_webhook(harness.webhook_url, raw, headers)
    assert status == 403
    assert await redis.xlen(IN_STREAM) == 0


async def test_a_retried_http_event_gives_one_envelope(redis: aioredis.Redis) -> None:
    async with http_mode(redis) as (harness, bus):
        event_id = await harness.deliver(Event("retry me"))
        await harness.redeliver(event_id)
        (inbound,) = await inbounds(bus, 1)
    assert inbound.event_id == event_id
    assert await redis.xlen(IN_STREAM) == 1


async def test_a_slash_command_over_http_is_enqueued(redis: aioredis.Redis) -> None:
    async with http_mode(redis) as (harness, bus):
        form = slash_command("/usage", "30d", user="U9", channel="C9", trigger_id="999.1")
        raw = urlencode(form).encode()
        headers = signed_request(raw, "application/x-www-form-urlencoded", secret=SIGNING_SECRET)
        status, answer = await post_webhook(harness.webhook_url, raw, headers)
        (inbound,) = await inbounds(bus, 1)
    assert status == 200 and answer == b""
    assert inbound.text == "/usage 30d" and not inbound.is_direct
    assert inbound.conversation_name == "C9"


async def test_a_forged_event_is_refused(redis: aioredis.Redis) -> None:
    async with http_mode(redis) as (harness, _bus):
        assert await harness.forged(Event("forged", group_title="lab")) == 403
    assert await redis.xlen(IN_STREAM) == 0


async def test_http_mode_without_a_webhook_server_is_refused_when_built(
    redis: aioredis.Redis,
) -> None:
    async with running_fake_slack() as fake:
        with pytest.raises(ConfigError, match=r"slack\.mode"):
            build(settings_for(fake, http=True), make_context(redis, None))
