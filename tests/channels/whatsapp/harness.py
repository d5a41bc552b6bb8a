"""The WhatsApp adapter against the Twilio fake, as the contract suite sees a platform."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Final

from pydantic import SecretStr

from channels._shared.chunking import TWILIO_LIMIT
from channels._shared.markdown import to_plain
from channels._shared.webhooks import WebhookLimits, WebhookServer
from channels.base import Channel, ChannelContext
from channels.whatsapp.adapter import build
from gateway.settings import WhatsAppSettings
from tests.channels.contract import Event, Sent
from tests.fakes.twilio import FakeTwilio, running_twilio

FROM_NUMBER: Final = "whatsapp:+14155238886"
FILE_BYTES: Final = b"a small text file\n"


def settings_for(fake: FakeTwilio) -> WhatsAppSettings:
    return WhatsAppSettings(
        enabled=True,
        account_sid=fake.account_sid,
        auth_token=SecretStr(fake.auth_token),
        from_number=FROM_NUMBER,
        api_base=fake.url,
        media_base=fake.url,
    )


class WhatsAppHarness:
    name = "whatsapp"
    features = frozenset(("redelivery", "signatures", "rate_limit", "files"))
    max_text = TWILIO_LIMIT

    def __init__(self, fake: FakeTwilio, context: ChannelContext, webhooks: WebhookServer) -> None:
        self.fake = fake
        self.context = context
        self.webhooks = webhooks
        self.settings = settings_for(fake)
        self.channel: Channel = build(self.settings, context)
        self._delivered: dict[str, dict[str, str]] = {}

    def local_url(self, path: str) -> str:
        """Where the webhook server listens (the fake posts only to this machine)."""
        return f"http://127.0.0.1:{self.webhooks.port}{path}"

    def public_url(self, path: str) -> str:
        """What Twilio believes it calls, and signs."""
        return self.webhooks.public_url(path)

    @property
    def messages_url(self) -> str:
        return self.local_url(self.settings.webhook_path)

    def bold(self, word: str) -> str:
        return to_plain(f"**{word}**")

    def params(self, event: Event) -> dict[str, str]:
        media: tuple[tuple[str, str], ...] = ()
        if event.file_name:
            url = self.fake.add_media(FILE_BYTES, "text/plain", event.file_name)
            media = ((url, "text/plain"),)
        return self.fake.inbound(
            event.text, number=event.sender_id, profile_name=event.sender_name, media=media
        )

    async def post(self, params: dict[str, str], *, token: str | None = None) -> int:
        """Post a message webhook, signed for the public URL (with `token`: forged)."""
        path = self.settings.webhook_path
        return await self.fake.signed_post(
            self.local_url(path), params, sign_url=self.public_url(path), token=token
        )

    async def deliver(self, event: Event) -> str:
        params = self.params(event)
        status = await self.post(params)
        if status != 200:
            raise AssertionError(f"the adapter answered a signed message with {status}")
        sid = params["MessageSid"]
        self._delivered[sid] = params
        return sid

    async def redeliver(self, event_id: str) -> None:
        status = await self.post(self._delivered[event_id])
        if status != 200:
            raise AssertionError(f"the adapter answered a redelivery with {status}")

    async def forged(self, event: Event) -> int:
        return await self.post(self.params(event), token="not-the-auth-token")

    def throttle_next_send(self, retry_after_s: float) -> None:
        self.fake.throttle_next_send(retry_after_s)

    def sent(self) -> list[Sent]:
        return [Sent(conversation_id=m.to, text=m.body) for m in self.fake.sent]

    def refused_sends(self) -> int:
        return self.fake.refused


@asynccontextmanager
async def open_harness(context: ChannelContext) -> AsyncIterator[WhatsAppHarness]:
    """The harness; with no webhook server in `context`, one of its own on 127.0.0.1."""
    async with AsyncExitStack() as stack:
        fake = await stack.enter_async_context(running_twilio())
        webhooks = context.webhooks
        if webhooks is None:
            webhooks = await stack.enter_async_context(
                WebhookServer("127.0.0.1", 0, WebhookLimits())
            )
            context = dataclasses.replace(context, webhooks=webhooks)
        yield WhatsAppHarness(fake, context, webhooks)
