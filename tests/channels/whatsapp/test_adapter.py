"""The WhatsApp adapter end to end: the Twilio fake, a real webhook server, real Redis."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import urlencode

import aiohttp
import pytest
import redis.asyncio as aioredis

from channels._shared.media import MediaPolicy
from channels._shared.runner import run_channel
from channels._shared.webhooks import WebhookLimits, WebhookServer
from channels.base import ChannelContext
from channels.whatsapp.adapter import build
from gateway.bus import IN_STREAM, Blobs, Bus, Deliveries, out_stream
from gateway.envelope import Inbound, Outbound
from gateway.errors import PlatformError
from gateway.settings import BusSettings
from tests.channels.contract import FEATURES, Event, Harness
from tests.channels.whatsapp.harness import WhatsAppHarness, open_harness, settings_for
from tests.fakes.twilio import FakeTwilio, running_twilio

FAST = BusSettings(claim_idle_ms=100, block_ms=20, max_deliveries=3)
PUBLIC = "https://bot.example.org"
"""Only ever a string in a signature: nothing is sent to it."""


async def eventually(check: Callable[[], Awaitable[bool]], *, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(0.01)


@dataclass
class Rig:
    harness: WhatsAppHarness
    bus: Bus
    redis: aioredis.Redis
    context: ChannelContext
    seen: list[Inbound] = field(default_factory=list)

    @property
    def fake(self) -> FakeTwilio:
        return self.harness.fake

    @property
    def deliveries(self) -> Deliveries:
        return self.context.deliveries

    async def inbound(self) -> list[Inbound]:
        """Every envelope the channel put on the bus so far."""
        for delivery in await self.bus.read(IN_STREAM, "tests", "t", block_ms=0):
            envelope = delivery.envelope
            assert isinstance(envelope, Inbound)
            self.seen.append(envelope)
        return self.seen

    async def reply(self, to: str, text: str, outbound_id: str = "r1") -> Outbound:
        outbound = Outbound("whatsapp", to, text, outbound_id=outbound_id)
        await self.bus.publish(out_stream("whatsapp"), outbound)
        return outbound


async def _mounted(url: str) -> bool:
    # Unmounted paths answer 404; a mounted one refuses an unsigned request with 403.
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status == 403


@contextlib.asynccontextmanager
async def running(
    redis: aioredis.Redis, *, public_base_url: str = "", media: MediaPolicy | None = None
) -> AsyncIterator[Rig]:
    bus = Bus(redis, FAST)
    await bus.ensure_group(IN_STREAM, "tests")
    limits = WebhookLimits(public_base_url=public_base_url)
    async with WebhookServer("127.0.0.1", 0, limits) as webhooks:
        context = ChannelContext(
            blobs=Blobs(redis),
            media=media or MediaPolicy(),
            deliveries=Deliveries(redis),
            webhooks=webhooks,
        )
        async with open_harness(context) as harness:
            task = asyncio.create_task(run_channel(harness.channel, bus, "whatsapp-test"))
            try:
                await eventually(lambda: _mounted(harness.messages_url))
                yield Rig(harness, bus, redis, context)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


@pytest.fixture
async def rig(redis: aioredis.Redis) -> AsyncIterator[Rig]:
    async with running(redis) as started:
        yield started


async def test_a_signed_message_becomes_an_envelope_and_its_reply_carries_a_status_callback(
    rig: Rig,
) -> None:
    sid = await rig.harness.deliver(Event("hello **there**", sender_id="15550001111"))

    [inbound] = await rig.inbound()
    assert inbound.event_id == sid
    assert inbound.sender_id == "15550001111"
    assert inbound.conversation_id == "whatsapp:+15550001111"
    assert inbound.sender_name == "Ada Lovelace"
    assert inbound.text == "hello **there**"
    assert inbound.is_direct

    await rig.reply(inbound.conversation_id, "Hi **Ada**, see [docs](https://example.org/d)")
    await eventually(lambda: _true(bool(rig.fake.sent)))
    [sent] = rig.fake.sent
    assert sent.to == "whatsapp:+15550001111"
    assert sent.from_ == "whatsapp:+14155238886"
    assert sent.body == "Hi *Ada*, see docs (https://example.org/d)"
    assert sent.status_callback == rig.harness.public_url("/twilio/status")
    # The receipt is written once Twilio's answer is back, after the fake saw the send.
    await eventually(
        lambda: _is_not_none(rig.deliveries.receipt("whatsapp", sent.sid)), within=10.0
    )
    receipt = await rig.deliveries.receipt("whatsapp", sent.sid)
    assert receipt is not None
    assert receipt.status == "accepted"
    assert receipt.outbound_id == "r1"


async def _true(value: bool) -> bool:
    return value


async def _is_not_none(value: Awaitable[object]) -> bool:
    return await value is not None


async def test_the_message_webhook_answers_empty_twiml(rig: Rig) -> None:
    params = rig.fake.inbound("hi")
    url = rig.harness.messages_url
    headers = {"X-Twilio-Signature": rig.fake.signature(url, params)}
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=params, headers=headers) as response,
    ):
        assert response.status == 200
        assert response.content_type == "text/xml"
        assert await response.text() == (
            '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
        )


def _flipped(params: dict[str, str]) -> bytes:
    body = bytearray(urlencode(params).encode())
    index = body.index(b"Body=") + len(b"Body=")
    body[index] ^= 0x01
    return bytes(body)


FORGERIES: dict[str, Callable[[FakeTwilio, str, dict[str, str]], dict[str, object]]] = {
    "no signature header": lambda fake, url, params: {"signature": ""},
    "signed with another token": lambda fake, url, params: {"token": "wrong-token-123"},
    "garbage signature": lambda fake, url, params: {"signature": "bm90IGEgc2lnbmF0dXJl"},
    "one body byte flipped": lambda fake, url, params: {
        "signature": fake.signature(url, params),
        "body": _flipped(params),
    },
    "a parameter added": lambda fake, url, params: {
        "signature": fake.signature(url, params),
        "body": urlencode({**params, "Added": "1"}).encode(),
    },
    "a parameter removed": lambda fake, url, params: {
        "signature": fake.signature(url, params),
        "body": urlencode({k: v for k, v in params.items() if k != "ProfileName"}).encode(),
    },
    "signed for another path": lambda fake, url, params: {
        "sign_url": url.replace("/twilio/whatsapp", "/twilio/other")
    },
    "signed for another host": lambda fake, url, params: {
        "sign_url": url.replace("127.0.0.1", "attacker.example")
    },
    "signed with a query the request lacks": lambda fake, url, params: {"sign_url": url + "?x=1"},
}


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
async def test_a_forged_message_is_refused_with_403_and_nothing_is_enqueued(
    rig: Rig, forgery: str
) -> None:
    url = rig.harness.messages_url
    params = rig.fake.inbound("transfer everything")
    options = FORGERIES[forgery](rig.fake, url, params)
    status = await rig.fake.signed_post(url, params, **options)  # type: ignore[arg-type]
    assert status == 403
    assert await rig.redis.xlen(IN_STREAM) == 0


async def test_the_same_signature_is_accepted_again_when_nothing_was_forged(rig: Rig) -> None:
    # The counterpart of the matrix above: the unmodified request passes.
    url = rig.harness.messages_url
    params = rig.fake.inbound("hello")
    assert await rig.fake.signed_post(url, params) == 200


async def test_a_forged_status_callback_is_refused(rig: Rig) -> None:
    url = rig.harness.local_url("/twilio/status")
    params = {"MessageSid": "SM" + "1" * 32, "MessageStatus": "delivered"}
    assert await rig.fake.signed_post(url, params, token="wrong-token-123") == 403


async def test_behind_a_proxy_the_signature_covers_the_public_url(redis: aioredis.Redis) -> None:
    params_url = f"{PUBLIC}/twilio/whatsapp"
    async with running(redis, public_base_url=PUBLIC) as rig:
        params = rig.fake.inbound("via the proxy")
        local = rig.harness.messages_url
        assert await rig.fake.signed_post(local, params, sign_url=params_url) == 200
        # Signed for the address the request really reached: not what Twilio signs.
        assert await rig.fake.signed_post(local, rig.fake.inbound("x")) == 403
        assert len(await rig.inbound()) == 1
        # Replies name the public status URL, which is what Twilio will call.
        await rig.reply("whatsapp:+15551234567", "ok")
        await eventually(lambda: _true(bool(rig.fake.sent)))
        assert rig.fake.sent[0].status_callback == f"{PUBLIC}/twilio/status"
        status = await rig.fake.status_callback(
            rig.fake.sent[0].sid, "delivered", via=rig.harness.local_url("/twilio/status")
        )
        assert status == 200


async def test_without_the_public_base_a_signature_for_the_public_url_fails(
    redis: aioredis.Redis,
) -> None:
    async with running(redis) as rig:
        params = rig.fake.inbound("via the proxy")
        status = await rig.fake.signed_post(
            rig.harness.messages_url, params, sign_url=f"{PUBLIC}/twilio/whatsapp"
        )
        assert status == 403
        assert await rig.redis.xlen(IN_STREAM) == 0


async def test_a_replayed_message_sid_is_enqueued_once(rig: Rig) -> None:
    sid = await rig.harness.deliver(Event("only once"))
    await rig.harness.redeliver(sid)
    await rig.harness.redeliver(sid)
    assert [m.event_id for m in await rig.inbound()] == [sid]


async def test_a_signed_message_without_a_sid_is_answered_400(rig: Rig) -> None:
    params = rig.fake.inbound("no id")
    del params["MessageSid"]
    assert await rig.fake.signed_post(rig.harness.messages_url, params) == 400
    assert await rig.redis.xlen(IN_STREAM) == 0


async def test_a_long_reply_is_sent_in_parts_within_1600_characters(rig: Rig) -> None:
    words = [f"word{i:04d}" for i in range(500)]
    text = " ".join(words)
    await rig.reply("whatsapp:+15551234567", text)
    await eventually(lambda: _true(sum(len(m.body) for m in rig.fake.sent) >= len(text) - 5))
    assert len(rig.fake.sent) == 3  # 4,499 characters
    assert rig.fake.refused == 0
    assert all(len(m.body) <= 1600 for m in rig.fake.sent)
    assert " ".join(m.body for m in rig.fake.sent).split() == words
    for message in rig.fake.sent:
        await eventually(
            lambda sid=message.sid: _is_not_none(rig.deliveries.receipt("whatsapp", sid)),
            within=10.0,
        )
        receipt = await rig.deliveries.receipt("whatsapp", message.sid)
        assert receipt is not None
        assert receipt.outbound_id == "r1"


async def test_a_429_is_retried_after_the_retry_after_twilio_gave(rig: Rig) -> None:
    rig.fake.throttle_next_send(0.3)
    started = time.monotonic()
    await rig.reply("whatsapp:+15551234567", "after the wait")
    await eventually(lambda: _true(bool(rig.fake.sent)))
    assert time.monotonic() - started >= 0.3
    assert rig.fake.send_attempts == 2
    assert [m.body for m in rig.fake.sent] == ["after the wait"]


async def test_a_delivered_status_is_recorded_on_the_receipt(rig: Rig) -> None:
    await rig.reply("whatsapp:+15551234567", "hello")
    await eventually(lambda: _true(bool(rig.fake.sent)))
    sid = rig.fake.sent[0].sid
    assert await rig.fake.status_callback(sid, "sent") == 200
    assert await rig.fake.status_callback(sid, "delivered") == 200
    receipt = await rig.deliveries.receipt("whatsapp", sid)
    assert receipt is not None
    assert receipt.status == "delivered"
    assert await rig.deliveries.failures("whatsapp") == []


async def test_an_undelivered_status_is_reported_as_a_failure(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    await rig.reply("whatsapp:+15551234567", "the secret plan", outbound_id="r-lost")
    await eventually(lambda: _true(bool(rig.fake.sent)))
    sid = rig.fake.sent[0].sid
    assert await rig.fake.status_callback(sid, "undelivered", "63016") == 200
    [failure] = await rig.deliveries.failures("whatsapp")
    assert (failure.platform_id, failure.status, failure.error) == (sid, "undelivered", "63016")
    assert failure.outbound_id == "r-lost"
    warning = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(sid in line and "63016" in line for line in warning)
    assert not any("secret plan" in r.getMessage() for r in caplog.records)


async def test_a_status_for_an_unknown_message_is_answered_200(rig: Rig) -> None:
    url = rig.harness.local_url("/twilio/status")
    params = {"MessageSid": "SM" + "2" * 32, "MessageStatus": "failed", "ErrorCode": "30008"}
    assert await rig.fake.signed_post(url, params) == 200
    assert await rig.deliveries.failures("whatsapp") == []


async def test_media_are_fetched_with_the_account_credentials_into_blobs(rig: Rig) -> None:
    image = b"\xff\xd8\xff" + b"jpeg" * 100
    voice = b"OggS" + b"\x00" * 200
    media = (
        (rig.fake.add_media(image, "image/jpeg"), "image/jpeg"),
        (rig.fake.add_media(voice, "audio/ogg"), "audio/ogg"),
    )
    params = rig.fake.inbound("", media=media)
    assert await rig.fake.signed_post(rig.harness.messages_url, params) == 200

    [inbound] = await rig.inbound()
    assert inbound.text == ""
    photo, note = inbound.attachments
    assert (photo.kind, photo.content_type, photo.size) == ("image", "image/jpeg", len(image))
    assert photo.name.startswith("ME") and photo.name.endswith(".jpg")
    assert await rig.context.blobs.get(photo.blob) == image
    assert (note.kind, note.name[-4:]) == ("voice", ".ogg")
    assert await rig.context.blobs.get(note.blob) == voice


async def test_an_oversize_file_becomes_a_note_in_the_text(redis: aioredis.Redis) -> None:
    async with running(redis, media=MediaPolicy(max_bytes=1_000)) as rig:
        url = rig.fake.add_media(b"x" * 5_000, "application/pdf", "big.pdf")
        params = rig.fake.inbound("see attached", media=((url, "application/pdf"),))
        assert await rig.fake.signed_post(rig.harness.messages_url, params) == 200
        [inbound] = await rig.inbound()
        assert inbound.attachments == ()
        assert inbound.text.startswith("see attached\n[file 'big.pdf' was not received")


async def test_media_outside_the_media_base_are_never_fetched(rig: Rig) -> None:
    # Refused before any request: the address is only compared, never called.
    foreign = "https://media.attacker.example/x.jpg"
    lookalike = rig.fake.url + ".attacker.example/x.jpg"
    params = rig.fake.inbound("look", media=((foreign, "image/jpeg"), (lookalike, "image/jpeg")))
    assert await rig.fake.signed_post(rig.harness.messages_url, params) == 200
    [inbound] = await rig.inbound()
    assert inbound.attachments == ()
    assert inbound.text.count("it is not hosted by the platform") == 2
    assert rig.fake.media_requests == 0


async def test_a_refused_send_raises_platform_error_with_the_twilio_code_and_no_secret(
    redis: aioredis.Redis,
) -> None:
    async with running_twilio() as fake, WebhookServer("127.0.0.1", 0, WebhookLimits()) as hooks:
        channel = build(
            settings_for(fake),
            ChannelContext(Blobs(redis), MediaPolicy(), Deliveries(redis), hooks),
        )
        try:
            fake.fail_next_send(400, 21211)
            with pytest.raises(PlatformError) as raised:
                await channel.send(Outbound("whatsapp", "whatsapp:+1", "hi", outbound_id="o1"))
        finally:
            await channel.aclose()
    assert type(raised.value) is PlatformError
    assert "21211" in str(raised.value)
    assert fake.auth_token not in str(raised.value)
    assert fake.send_attempts == 1


async def test_a_server_error_is_retried_then_sent(redis: aioredis.Redis) -> None:
    async with running_twilio() as fake, WebhookServer("127.0.0.1", 0, WebhookLimits()) as hooks:
        channel = build(
            settings_for(fake),
            ChannelContext(Blobs(redis), MediaPolicy(), Deliveries(redis), hooks),
        )
        try:
            fake.fail_next_send(503, 20503)
            await channel.send(Outbound("whatsapp", "whatsapp:+1", "hi", outbound_id="o1"))
        finally:
            await channel.aclose()
    assert fake.send_attempts == 2
    assert [m.body for m in fake.sent] == ["hi"]


async def test_wrong_credentials_are_a_refusal_not_a_retry(redis: aioredis.Redis) -> None:
    async with running_twilio() as fake, WebhookServer("127.0.0.1", 0, WebhookLimits()) as hooks:
        settings = settings_for(fake).model_copy(update={"account_sid": "AC" + "9" * 32})
        channel = build(
            settings, ChannelContext(Blobs(redis), MediaPolicy(), Deliveries(redis), hooks)
        )
        try:
            with pytest.raises(PlatformError) as raised:
                await channel.send(Outbound("whatsapp", "whatsapp:+1", "hi", outbound_id="o1"))
        finally:
            await channel.aclose()
    assert "20003" in str(raised.value)
    assert fake.unauthorized == 1


async def test_build_refuses_a_context_without_a_webhook_server(redis: aioredis.Redis) -> None:
    async with running_twilio() as fake:
        context = ChannelContext(Blobs(redis), MediaPolicy(), Deliveries(redis), None)
        with pytest.raises(ValueError, match="webhook"):
            build(settings_for(fake), context)


async def test_the_channel_unmounts_its_webhooks_when_cancelled(redis: aioredis.Redis) -> None:
    async with WebhookServer("127.0.0.1", 0, WebhookLimits()) as hooks:
        context = ChannelContext(Blobs(redis), MediaPolicy(), Deliveries(redis), hooks)
        async with open_harness(context) as harness:

            async def publish(_: Inbound) -> object:
                raise AssertionError("nothing is published")

            task = asyncio.create_task(harness.channel.receive(publish))  # type: ignore[arg-type]
            await eventually(lambda: _mounted(harness.messages_url))
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            async with (
                aiohttp.ClientSession() as session,
                session.get(harness.messages_url) as response,
            ):
                assert response.status == 404


async def test_the_harness_meets_the_contract_and_a_forged_delivery_gets_403(rig: Rig) -> None:
    harness: Harness = rig.harness
    assert harness.features <= FEATURES
    assert "groups" not in harness.features
    assert harness.bold("w") == "*w*"
    assert await harness.forged(Event("forged")) == 403
    sid = await harness.deliver(Event("with a file", sender_id="1001", file_name="notes.txt"))
    [inbound] = await rig.inbound()
    assert (inbound.event_id, inbound.sender_id) == (sid, "1001")
    [attachment] = inbound.attachments
    assert (attachment.name, attachment.kind, attachment.content_type) == (
        "notes.txt",
        "file",
        "text/plain",
    )


async def test_no_secret_reaches_the_logs(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    url = rig.fake.add_media(b"data", "image/png")
    params = rig.fake.inbound("hi", media=((url, "image/png"),))
    assert await rig.fake.signed_post(rig.harness.messages_url, params) == 200
    rig.fake.throttle_next_send(0.01)
    await rig.reply("whatsapp:+15551234567", "hello")
    await eventually(lambda: _true(bool(rig.fake.sent)))
    await rig.fake.status_callback(rig.fake.sent[0].sid, "failed", "30008")
    encoded = base64.b64encode(f"{rig.fake.account_sid}:{rig.fake.auth_token}".encode()).decode()
    for record in caplog.records:
        line = record.getMessage()
        assert rig.fake.auth_token not in line
        assert encoded not in line


async def test_a_hostile_file_name_arrives_neutralised(rig: Rig) -> None:
    hostile = "\u202e\u200b\U000e0041\x1b\x07\ufeff\U000e0101\u2066"
    await rig.harness.deliver(Event("file", file_name=f"re{hostile}port.txt"))
    [inbound] = await rig.inbound()
    assert [a.name for a in inbound.attachments] == ["report.txt"]
