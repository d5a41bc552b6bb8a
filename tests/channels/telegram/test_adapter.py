"""The Telegram adapter end to end: real PTB against the Bot API fake, a real Redis bus."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Final

import aiohttp
import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr

from channels._shared.media import MediaPolicy
from channels._shared.webhooks import WebhookLimits, WebhookServer
from channels.base import Admission, ChannelContext
from channels.telegram.adapter import TelegramChannel, build
from gateway.bus import IN_STREAM, Blobs, Bus, Deliveries, out_stream
from gateway.envelope import Inbound, Outbound, decode_inbound, reply
from gateway.errors import PlatformError, RateLimited, RedisUnavailable
from gateway.settings import BusSettings, TelegramSettings
from tests.channels.contract import Event
from tests.channels.running import on_bus, refused_at_start
from tests.channels.telegram.harness import open_harness
from tests.fakes import telegram as tg
from tests.fakes.telegram import FakeTelegram, running_telegram

COMMANDS: Final = (("help", "What the bot can do"), ("usage", "Spending so far"))
SECRET: Final = "webhook-secret_0123456789"
BUS: Final = BusSettings(claim_idle_ms=500, block_ms=50)


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with running_telegram() as server:
        yield server


@pytest.fixture
async def channels() -> AsyncIterator[list[TelegramChannel]]:
    """Channels a test sends through without `receive`; their connections are closed after."""
    opened: list[TelegramChannel] = []
    yield opened
    for channel in opened:
        await channel.aclose()


def make_context(
    redis: aioredis.Redis,
    webhooks: WebhookServer | None = None,
    media: MediaPolicy | None = None,
    operators: tuple[str, ...] = (),
) -> ChannelContext:
    return ChannelContext(
        blobs=Blobs(redis),
        media=media or MediaPolicy(),
        deliveries=Deliveries(redis),
        webhooks=webhooks,
        commands=COMMANDS,
        operator_commands=(*COMMANDS, ("kill", "Remove an agent")),
        operators={"telegram": operators},
    )


def polling(fake: FakeTelegram, **overrides: object) -> TelegramSettings:
    return TelegramSettings.model_validate(
        {
            "enabled": True,
            "token": SecretStr(fake.token),
            "api_base": fake.api_base,
            "poll_timeout_s": 2,
            **overrides,
        }
    )


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def inbound(redis: aioredis.Redis, count: int = 1, timeout_s: float = 5.0) -> list[Inbound]:
    deadline = time.monotonic() + timeout_s
    while (await redis.xlen(IN_STREAM)) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"fewer than {count} envelopes on {IN_STREAM}")
        await asyncio.sleep(0.01)
    return [decode_inbound(fields) for _, fields in await redis.xrange(IN_STREAM)]


@asynccontextmanager
async def receiving(
    channel: TelegramChannel, publish: Callable[[Inbound], Awaitable[Admission]]
) -> AsyncIterator[None]:
    task = asyncio.create_task(channel.receive(publish))
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_message_becomes_an_envelope_and_the_reply_goes_out_as_html(
    fake: FakeTelegram, redis: aioredis.Redis
) -> None:
    channel = build(polling(fake), make_context(redis))
    async with on_bus(channel, redis) as bus:
        message = fake.message("hello **there**")
        fake.add_update(message)
        (envelope,) = await inbound(redis)
        assert envelope.channel == "telegram"
        assert envelope.sender_id == "1001" and envelope.sender_name == "Ada Lovelace"
        assert envelope.conversation_id == "1001" and envelope.is_direct
        await bus.publish(out_stream("telegram"), reply(envelope, "**hi** & bye", "final"))
        await until(lambda: len(fake.sent) == 1)
    sent = fake.sent[0]
    assert sent.chat_id == "1001"
    assert sent.text == "<b>hi</b> &amp; bye"
    assert sent.parse_mode == "HTML"
    assert sent.link_preview_options == {"is_disabled": True}
    # The reply quotes the message it answers, which is not the update's id.
    assert sent.reply_parameters == {
        "message_id": message["message_id"],
        "allow_sending_without_reply": True,
    }


async def test_start_registers_the_commands_and_leaves_webhook_mode(
    fake: FakeTelegram, redis: aioredis.Redis
) -> None:
    channel = build(polling(fake), make_context(redis))
    async with receiving(channel, _accept):
        await until(lambda: bool(fake.offsets))
    assert fake.commands == [
        [
            {"command": "help", "description": "What the bot can do"},
            {"command": "usage", "description": "Spending so far"},
        ]
    ]
    methods = [method for method, _ in fake.calls]
    assert methods[:4] == ["getMe", "setMyCommands", "deleteWebhook", "getUpdates"]


async def test_each_operator_gets_every_command_in_their_own_chat_and_a_refusal_is_logged(
    fake: FakeTelegram, redis: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    fake.unknown_chats.add("5150")  # an operator who never wrote to the bot
    context = make_context(redis, operators=("4242", "5150", "@boss"))
    channel = build(polling(fake), context)
    async with receiving(channel, _accept):
        await until(lambda: bool(fake.offsets))  # polling: it went on after the refusals
    everyone = [
        {"command": "help", "description": "What the bot can do"},
        {"command": "usage", "description": "Spending so far"},
    ]
    assert fake.commands == [everyone]
    assert fake.chat_commands == {
        "4242": [*everyone, {"command": "kill", "description": "Remove an agent"}]
    }
    assert "operator 5150's command menu was not set" in caplog.text
    assert "operator id '@boss' is not a number" in caplog.text
    assert fake.token not in caplog.text


async def test_another_bots_message_arrives_marked_from_bot_and_the_bots_own_does_not(
    fake: FakeTelegram, redis: aioredis.Redis
) -> None:
    channel = build(polling(fake), make_context(redis))
    other = tg.user(9, "Other", "", "otherbot", is_bot=True)
    async with on_bus(channel, redis):
        fake.add_update(fake.group_message("my own answer", sender=tg.bot_user()))
        fake.add_update(fake.group_message("beep", sender=other))
        fake.add_update(fake.group_message("hello"))
        # Updates are taken in order, so the person's message arriving means all were seen.
        envelopes = await inbound(redis, count=2)
    assert [(e.sender_id, e.from_bot) for e in envelopes] == [("9", True), ("1001", False)]
    assert not any("my own answer" in e.text for e in envelopes)


async def _accept(inbound: Inbound) -> Admission:
    return Admission.ACCEPTED


async def test_the_offset_is_confirmed_only_after_publish_returned(
    fake: FakeTelegram, redis: aioredis.Redis
) -> None:
    entered, release = asyncio.Event(), asyncio.Event()
    published: list[str] = []

    async def slow_publish(inbound: Inbound) -> Admission:
        entered.set()
        await release.wait()
        published.append(inbound.event_id)
        return Admission.ACCEPTED

    channel = build(polling(fake), make_context(redis))
    async with receiving(channel, slow_publish):
        update_id = fake.add_update(fake.message("one"))
        await asyncio.wait_for(entered.wait(), 5)
        await asyncio.sleep(0.1)  # time enough for a premature getUpdates
        assert update_id + 1 not in fake.offsets
        release.set()
        await until(lambda: update_id + 1 in fake.offsets)
    assert published == [str(update_id)]


async def test_a_failed_publish_leaves_the_update_unconfirmed_and_it_comes_again(
    fake: FakeTelegram, redis: aioredis.Redis
) -> None:
    attempts: list[str] = []

    async def flaky_publish(inbound: Inbound) -> Admission:
        attempts.append(inbound.event_id)
        if len(attempts) == 1:
            raise RedisUnavailable("redis went away")
        return Admission.ACCEPTED

    channel = build(polling(fake), make_context(redis))
    async with receiving(channel, flaky_publish):
        update_id = fake.add_update(fake.message("one"))
        await until(lambda: update_id + 1 in fake.offsets)
        confirmed_at = fake.offsets.index(update_id + 1)
    assert attempts == [str(update_id), str(update_id)]
    # Every getUpdates before the confirmation asked from before the update.
    assert all(o is None or o <= update_id for o in fake.offsets[:confirmed_at])


async def test_a_redelivered_update_is_published_once(
    fake: FakeTelegram, redis: aioredis.Redis
) -> None:
    channel = build(polling(fake), make_context(redis))
    async with on_bus(channel, redis):
        update_id = fake.add_update(fake.message("once"))
        await inbound(redis)
        confirmed = fake.offsets.count(update_id + 1)
        fake.redeliver(update_id)
        # Fetched again, published as a duplicate, and confirmed again.
        await until(lambda: fake.offsets.count(update_id + 1) > confirmed)
        assert await redis.xlen(IN_STREAM) == 1


async def test_a_429_is_retried_after_the_wait_telegram_asked_for(
    fake: FakeTelegram, redis: aioredis.Redis, channels: list[TelegramChannel]
) -> None:
    channel = build(polling(fake), make_context(redis))
    channels.append(channel)
    fake.throttle_next_send(0.2)
    started = time.monotonic()
    await channel.send(Outbound("telegram", "1001", "patience", "o-1"))
    assert time.monotonic() - started >= 0.2
    assert [m.text for m in fake.sent] == ["patience"]
    assert len(fake.called("sendMessage")) == 2


async def test_a_reply_past_the_limit_is_sent_in_parts_the_fake_accepts(
    fake: FakeTelegram, redis: aioredis.Redis, channels: list[TelegramChannel]
) -> None:
    channel = build(polling(fake), make_context(redis))
    channels.append(channel)
    text = "\n\n".join(f"**Paragraph {i}** " + "é😀 word " * 60 for i in range(40))
    await channel.send(Outbound("telegram", "-100200", text, "o-2", thread_id="77"))
    assert len(fake.sent) > 1
    assert fake.refused == 0
    assert all(m.message_thread_id == "77" for m in fake.sent)
    assert all(tg.utf16_units(tg.parse_html(m.text)) <= tg.MAX_TEXT for m in fake.sent)


async def test_a_part_telegram_cannot_parse_is_sent_as_plain_text(
    fake: FakeTelegram,
    redis: aioredis.Redis,
    channels: list[TelegramChannel],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        "channels.telegram.adapter.to_telegram_html", lambda md: "<b>broken <i>nesting</b></i>"
    )
    channel = build(polling(fake), make_context(redis))
    channels.append(channel)
    await channel.send(Outbound("telegram", "1001", "whatever", "o-3"))
    assert fake.refused == 1
    assert [(m.text, m.parse_mode) for m in fake.sent] == [("broken nesting", "")]


async def test_a_refused_send_is_a_platform_error_without_the_token(
    fake: FakeTelegram, redis: aioredis.Redis, channels: list[TelegramChannel]
) -> None:
    channel = build(polling(fake, token=SecretStr("999:wrong-token")), make_context(redis))
    channels.append(channel)
    with pytest.raises(PlatformError) as caught:
        await channel.send(Outbound("telegram", "1001", "hi", "o-4"))
    assert "wrong-token" not in str(caught.value)
    assert not isinstance(caught.value, RateLimited)


async def test_a_rejected_token_stops_the_channel_at_start_without_showing_it(
    fake: FakeTelegram, redis: aioredis.Redis
) -> None:
    channel = build(polling(fake, token=SecretStr("999:rejected-token")), make_context(redis))
    error = await refused_at_start(channel, redis)
    assert "rejected by the server" in str(error)
    assert "rejected-token" not in str(error)


async def test_telegram_down_at_start_is_waited_out(
    fake: FakeTelegram, redis: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    fake.outage_calls = 2
    channel = build(polling(fake), make_context(redis))
    with caplog.at_level(logging.INFO, logger="stockade.channels.telegram"):
        async with on_bus(channel, redis):
            fake.add_update(fake.message(text="still there?"))
            (envelope,) = await inbound(redis)
    assert envelope.text == "still there?"
    assert "retrying getMe until it works" in caplog.text
    assert "telegram: getMe works again" in caplog.text


async def test_typing_is_shown_in_the_chat_and_topic(
    fake: FakeTelegram, redis: aioredis.Redis, channels: list[TelegramChannel]
) -> None:
    channel = build(polling(fake), make_context(redis))
    channels.append(channel)
    await channel.show_typing("-100200", "9")
    assert fake.actions == [("-100200", "typing", "9")]


async def test_a_photo_arrives_as_an_attachment_whose_bytes_are_in_the_blob_store(
    fake: FakeTelegram, redis: aioredis.Redis
) -> None:
    data = b"\x89PNG fake image bytes"
    fake.add_file("ph-1", data, "photos/file_1.png", "image/png")
    channel = build(polling(fake), make_context(redis))
    async with on_bus(channel, redis):
        fake.add_update(fake.message(caption="look", photo=tg.photo("ph-1", len(data))))
        (envelope,) = await inbound(redis)
    assert envelope.text == "look"
    (attachment,) = envelope.attachments
    assert (attachment.kind, attachment.content_type, attachment.size) == (
        "image",
        "image/png",
        len(data),
    )
    assert await Blobs(redis).get(attachment.blob) == data
    # Only the largest resolution was asked for.
    assert [c["file_id"] for c in fake.called("getFile")] == ["ph-1"]


async def test_a_file_announced_too_large_becomes_a_note_and_is_not_fetched(
    fake: FakeTelegram, redis: aioredis.Redis
) -> None:
    fake.add_file("big-1", b"x" * 10, "documents/big.bin")
    policy = MediaPolicy(max_bytes=1000)
    channel = build(polling(fake), make_context(redis, media=policy))
    async with on_bus(channel, redis):
        big = tg.document("big-1", "huge.pdf", "application/pdf", 5_000_000)
        fake.add_update(fake.message(caption="see attached", document=big))
        (envelope,) = await inbound(redis)
    assert envelope.attachments == ()
    assert envelope.text.startswith("see attached\n[file 'huge.pdf' was not received: larger than")
    assert fake.called("getFile") == []


@asynccontextmanager
async def webhook_channel(
    fake: FakeTelegram, redis: aioredis.Redis
) -> AsyncIterator[tuple[WebhookServer, Bus]]:
    async with WebhookServer("127.0.0.1", 0, WebhookLimits()) as webhooks:
        settings = polling(fake, mode="webhook", secret_token=SecretStr(SECRET))
        channel = build(settings, make_context(redis, webhooks))
        async with on_bus(channel, redis) as bus:
            await fake.webhook_set()
            yield webhooks, bus


async def test_webhook_mode_takes_only_updates_with_the_right_secret(
    fake: FakeTelegram, redis: aioredis.Redis
) -> None:
    async with webhook_channel(fake, redis) as (webhooks, _):
        assert fake.webhook_url == webhooks.public_url("/telegram")
        assert fake.webhook_secret == SECRET
        forged = fake.make_update(fake.message("forged"))
        assert await fake.post_update(forged, "not-the-secret-0123456789") == 403
        assert await fake.post_update(forged, "") == 403
        assert await redis.xlen(IN_STREAM) == 0
        update = fake.make_update(fake.message("genuine"))
        assert await fake.post_update(update) == 200
        assert await fake.post_update(update) == 200  # a duplicate is acknowledged too
        (envelope,) = await inbound(redis)
        assert envelope.text == "genuine"
        assert await redis.xlen(IN_STREAM) == 1


async def test_webhook_mode_answers_400_to_a_body_that_is_not_an_update(
    fake: FakeTelegram, redis: aioredis.Redis
) -> None:
    async with webhook_channel(fake, redis) as (webhooks, _), aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{webhooks.port}/telegram"
        headers = {tg.SECRET_HEADER: SECRET}
        for body in (b"{not json", b"[1, 2]", b'{"message": {}}'):
            async with session.post(url, data=body, headers=headers) as response:
                assert response.status == 400
    assert await redis.xlen(IN_STREAM) == 0


async def test_webhook_mode_unmounts_when_cancelled(
    fake: FakeTelegram, redis: aioredis.Redis
) -> None:
    async with webhook_channel(fake, redis) as (webhooks, _):
        pass
    update = fake.make_update(fake.message("late"))
    async with webhooks, aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{webhooks.port}/telegram"
        async with session.post(url, json=update, headers={tg.SECRET_HEADER: SECRET}) as response:
            assert response.status == 404


@pytest.mark.parametrize("webhook", [False, True], ids=["polling", "webhook"])
async def test_the_contract_harness_delivers_files_and_groups_in_both_modes(
    redis: aioredis.Redis, webhook: bool
) -> None:
    async with AsyncExitStack() as stack:
        webhooks = None
        if webhook:
            webhooks = await stack.enter_async_context(
                WebhookServer("127.0.0.1", 0, WebhookLimits())
            )
        harness = await stack.enter_async_context(open_harness(make_context(redis, webhooks)))
        assert ("signatures" in harness.features) == webhook
        await stack.enter_async_context(on_bus(harness.channel, redis))
        first = await harness.deliver(Event("in a group", group_title="Engines"))
        second = await harness.deliver(Event("with a file", file_name="notes.txt"))
        await harness.redeliver(first)
        if webhook:
            assert await harness.forged(Event("forged")) == 403
        group, filed = await inbound(redis, 2)
        await asyncio.sleep(0.2)
        assert await redis.xlen(IN_STREAM) == 2
    assert (group.event_id, group.conversation_name, group.mentioned) == (first, "Engines", True)
    assert group.text == f"@{tg.BOT_USERNAME} in a group"
    assert filed.event_id == second and filed.attachments[0].name == "notes.txt"


async def test_no_log_line_holds_the_token(
    fake: FakeTelegram, redis: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake.add_file("d-1", b"text", "documents/d-1.txt", "text/plain")
    channel = build(polling(fake), make_context(redis))
    async with on_bus(channel, redis) as bus:
        msg = fake.message(caption="file", document=tg.document("d-1", "a.txt", size=4))
        fake.add_update(msg)
        (envelope,) = await inbound(redis)
        fake.throttle_next_send(0.01)
        await bus.publish(out_stream("telegram"), reply(envelope, "ok", "final"))
        await until(lambda: len(fake.sent) == 1)
    assert any("sendMessage" in r.getMessage() for r in caplog.records)  # API calls are logged
    assert not [r for r in caplog.records if fake.token in r.getMessage()]
