"""The Slack adapter under the contract suite: the real adapter against `tests/fakes/slack`.

With a webhook server in the context the adapter runs in HTTP mode and events are
signed Events API requests; without one it runs in Socket Mode and events are
envelopes on the fake's WebSocket. `deliver` returns once Slack would consider the
event acknowledged (HTTP 200, or the Socket Mode ack).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

import aiohttp
from pydantic import SecretStr

from channels._shared.webhooks import WebhookServer
from channels.base import Channel, ChannelContext
from channels.slack.adapter import build
from gateway.settings import SlackSettings
from tests.channels.contract import Event, OpenHarness, Sent
from tests.fakes.slack import (
    BOT_USER_ID,
    FakeSlack,
    escape,
    event_callback,
    message_event,
    post_webhook,
    running_fake_slack,
    signed_request,
)

SIGNING_SECRET: Final = "fake-signing-secret"
FILE_BYTES: Final = b"a small text file\n"
HTTP_FEATURES: Final = frozenset(("redelivery", "signatures", "rate_limit", "groups", "files"))
SOCKET_FEATURES: Final = frozenset(("redelivery", "rate_limit", "groups", "files"))
FEATURES: Final = HTTP_FEATURES
"""What the contract suite may check: it always gives a webhook server."""


def group_channel(title: str) -> str:
    """A stable channel id for a group title."""
    return f"C{zlib.crc32(title.encode()):08X}"


class SlackHarness:
    name = "slack"
    max_text = 40_000

    def __init__(
        self, fake: FakeSlack, channel: Channel, webhooks: WebhookServer | None, path: str
    ) -> None:
        self.fake = fake
        self.channel = channel
        self.features = HTTP_FEATURES if webhooks is not None else SOCKET_FEATURES
        self._webhooks = webhooks
        self._path = path
        self._bodies: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(1)
        self._client = aiohttp.ClientSession()

    def bold(self, word: str) -> str:
        return f"*{word}*"

    async def aclose(self) -> None:
        await self._client.close()

    @property
    def webhook_url(self) -> str:
        assert self._webhooks is not None
        return self._webhooks.public_url(self._path)

    def body_for(self, event: Event) -> dict[str, Any]:
        """The Events API callback the platform sends for `event`, under a new event id."""
        event_id = f"Ev{next(self._ids):08d}"
        self.fake.users[event.sender_id] = event.sender_name
        files = None
        if event.file_name:
            files = [self.fake.add_file(event.file_name, FILE_BYTES, "text/plain")]
        ts = self.fake.next_ts()
        if event.group_title:
            channel = group_channel(event.group_title)
            self.fake.channels[channel] = event.group_title
            text = f"<@{BOT_USER_ID}> {escape(event.text)}"
            payload = message_event(
                text, user=event.sender_id, channel=channel, ts=ts, kind="app_mention", files=files
            )
        else:
            channel = f"D{event.sender_id}"
            payload = message_event(
                escape(event.text),
                user=event.sender_id,
                channel=channel,
                ts=ts,
                subtype="file_share" if files else "",
                files=files,
            )
        return event_callback(payload, event_id)

    async def deliver(self, event: Event) -> str:
        body = self.body_for(event)
        self._bodies[body["event_id"]] = body
        await self._send(body, retry=0)
        return str(body["event_id"])

    async def redeliver(self, event_id: str) -> None:
        await self._send(self._bodies[event_id], retry=1)

    async def _send(self, body: dict[str, Any], *, retry: int) -> None:
        if self._webhooks is None:
            envelope_id = await self.fake.send_envelope("events_api", body, retry_attempt=retry)
            await self.fake.wait_for_ack(envelope_id)
            return
        raw = json.dumps(body).encode()
        headers = signed_request(raw, "application/json", secret=SIGNING_SECRET)
        if retry:
            headers["X-Slack-Retry-Num"] = str(retry)
            headers["X-Slack-Retry-Reason"] = "http_timeout"
        await self._mounted()
        status, answer = await post_webhook(self.webhook_url, raw, headers, self._client)
        if status != 200:
            raise AssertionError(f"the adapter answered {status}: {answer[:200]!r}")

    async def forged(self, event: Event) -> int:
        if self._webhooks is None:
            raise NotImplementedError("Socket Mode frames are not signed")
        raw = json.dumps(self.body_for(event)).encode()
        headers = signed_request(raw, "application/json", secret="not-" + SIGNING_SECRET)
        await self._mounted()
        status, _ = await post_webhook(self.webhook_url, raw, headers, self._client)
        return status

    async def _mounted(self) -> None:
        assert self._webhooks is not None
        async with asyncio.timeout(5):
            while not self._webhooks.mounted(self._path):
                await asyncio.sleep(0.005)

    def throttle_next_send(self, retry_after_s: float) -> None:
        self.fake.throttle_next_send(retry_after_s)

    def sent(self) -> list[Sent]:
        return [Sent(p.channel, p.text, p.thread_ts) for p in self.fake.posted]

    def refused_sends(self) -> int:
        return self.fake.refused


def settings_for(
    fake: FakeSlack, *, http: bool, webhook_path: str = "/slack/events"
) -> SlackSettings:
    return SlackSettings(
        enabled=True,
        mode="http" if http else "socket",
        bot_token=SecretStr(fake.bot_token),
        app_token=SecretStr(fake.app_token),
        signing_secret=SecretStr(SIGNING_SECRET),
        webhook_path=webhook_path,
        api_base=fake.api_base,
        files_base=fake.files_base,
    )


@asynccontextmanager
async def open_harness(context: ChannelContext) -> AsyncIterator[SlackHarness]:
    async with running_fake_slack() as fake:
        settings = settings_for(fake, http=context.webhooks is not None)
        channel = build(settings, context)
        harness = SlackHarness(fake, channel, context.webhooks, settings.webhook_path)
        try:
            yield harness
        finally:
            await harness.aclose()


_OPENS_A_HARNESS: OpenHarness = open_harness
