"""The Slack adapter: bolt's AsyncApp over Socket Mode or signed HTTP, chat.postMessage out.

Acknowledgement follows durability: the app runs with `process_before_response`, so
the Socket Mode ack or the HTTP response goes out only after the listener returned,
and the listener returns only after the envelope is on the bus. A failure on the way
answers 500 (or leaves the envelope unacked), and Slack delivers the event again;
its `event_id` (a slash command's `trigger_id`) is the dedupe key, so a redelivery
of something already published is dropped by the bus, never by us. Slack expects the
ack within 3 s; name lookups and file downloads count against that, and an event
that takes longer is simply delivered again and deduplicated.

In HTTP mode the shared webhook server checks the signature on the raw bytes before
anything is parsed; bolt checks it again on the same bytes, which costs one HMAC.

slack_sdk logs each Web API response whole at DEBUG; the ticket in the Socket Mode
URL that apps.connections.open answers with is masked there.

The SDK's own retry handlers are off: `send_with_retry` alone decides when to send
again, honouring Slack's Retry-After (read from the header here, since the SDK's
handler only parses whole seconds).

At start the bot token (auth.test) and, in Socket Mode, the app token
(apps.connections.open) are tried: a refusal ends `receive` with a non-retryable
`PlatformError`, an outage is waited out.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import aiohttp
from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler
from slack_bolt.app.async_app import AsyncApp
from slack_bolt.context.ack.async_ack import AsyncAck
from slack_bolt.context.async_context import AsyncBoltContext
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient

from channels._shared.media import receive_files
from channels._shared.outbox import send_parts
from channels._shared.redact import RedactMatches, redact
from channels._shared.starting import until_started
from channels._shared.webhooks import Webhook, WebhookRequest, WebhookResponse
from channels.base import Capabilities, ChannelContext, Publish
from channels.slack import convert
from channels.slack._errors import platform_error, start_call
from channels.slack._names import channel_names, user_names
from gateway.envelope import Attachment, Outbound
from gateway.errors import ConfigError, PlatformUnavailable
from gateway.settings import SlackSettings

log = logging.getLogger("stockade.channels.slack")

MAX_MENTION_LOOKUPS: Final = 8
"""Bounds the users.info calls one message can cause."""
_ANYTHING: Final = re.compile(".*")
_RESPONSE_LOGGERS: Final = ("slack_sdk.web.async_base_client",)
"""Where slack_sdk logs each Web API request and response, at DEBUG."""
_SOCKET_TICKETS: Final = RedactMatches(re.compile(r"ticket=[^&'\"\s]+"), "ticket=<ticket>")
"""A Socket Mode URL's one-time ticket, which opens a connection that receives the
app's events."""


class SlackChannel:
    """Slack through bolt: events and slash commands in, mrkdwn replies out."""

    def __init__(self, settings: SlackSettings, context: ChannelContext) -> None:
        if settings.bot_token is None:
            raise ConfigError("configuration", "slack.bot_token", "required")
        if settings.mode == "socket" and settings.app_token is None:
            raise ConfigError("configuration", "slack.app_token", 'required when mode = "socket"')
        secret = settings.signing_secret.get_secret_value() if settings.signing_secret else ""
        if settings.mode == "http" and (context.webhooks is None or not secret.strip()):
            raise ConfigError(
                "configuration", "slack.mode", '"http" needs a webhook server and signing_secret'
            )
        self._settings = settings
        self._context = context
        self._token = settings.bot_token.get_secret_value()
        self._verifier = SignatureVerifier(secret) if secret.strip() else None
        redact(_RESPONSE_LOGGERS, _SOCKET_TICKETS)  # before the client's first request
        base = settings.api_base if settings.api_base.endswith("/") else settings.api_base + "/"
        self._client = AsyncWebClient(token=self._token, base_url=base, retry_handlers=[])
        self._app = AsyncApp(
            name="stockade",
            client=self._client,
            signing_secret=secret,
            process_before_response=True,
            # Socket Mode frames are not signed; in HTTP mode bolt checks again what
            # the webhook server already verified.
            request_verification_enabled=settings.mode == "http",
        )
        self._app.event(_ANYTHING)(self._event_listener())
        self._app.command(_ANYTHING)(self._command_listener())
        self._users = user_names(self._client)
        self._channels = channel_names(self._client)
        self._publish: Publish | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def name(self) -> str:
        return convert.NAME

    @property
    def capabilities(self) -> Capabilities:
        return convert.CAPABILITIES

    # -- receiving ---------------------------------------------------------------------

    async def receive(self, publish: Publish) -> None:
        # bolt checks the bot token only when the first event comes; checked here, a
        # refused one stops the channel at start instead.
        await until_started(
            functools.partial(start_call, "auth.test", "bot token", self._client.auth_test),
            platform=convert.NAME,
            what="auth.test",
            log=log,
        )
        async with aiohttp.ClientSession() as session:
            self._session, self._publish = session, publish
            try:
                if self._settings.mode == "socket":
                    await self._run_socket_mode()
                else:
                    await self._run_http()
            finally:
                self._session, self._publish = None, None

    async def _run_socket_mode(self) -> None:
        app_token = self._settings.app_token
        assert app_token is not None  # checked when built
        # The SDK retries a refused app token every 10 s, forever: the first
        # connection's URL is asked for here, where a refusal ends the start.
        opened = await until_started(
            functools.partial(
                start_call,
                "apps.connections.open",
                "app token",
                functools.partial(
                    self._client.apps_connections_open, app_token=app_token.get_secret_value()
                ),
            ),
            platform=convert.NAME,
            what="apps.connections.open",
            log=log,
        )
        handler = AsyncSocketModeHandler(
            self._app, app_token.get_secret_value(), web_client=self._client
        )
        handler.client.wss_uri = opened["url"]  # the SDK connects with it, asks for no other
        try:
            await handler.connect_async()  # type: ignore[no-untyped-call]  # bolt leaves it unannotated
            await asyncio.get_running_loop().create_future()  # until cancelled
        finally:
            await handler.close_async()  # type: ignore[no-untyped-call]

    async def _run_http(self) -> None:
        webhooks = self._context.webhooks
        assert webhooks is not None  # checked when built
        path = self._settings.webhook_path
        webhooks.mount(Webhook(path, self._verify, self._handle, convert.NAME))
        try:
            await asyncio.get_running_loop().create_future()  # until cancelled
        finally:
            webhooks.unmount(path)

    def _verify(self, request: WebhookRequest) -> bool:
        """Slack's v0 signature over timestamp and raw body, within five minutes."""
        timestamp = request.headers.get("X-Slack-Request-Timestamp")
        signature = request.headers.get("X-Slack-Signature")
        if self._verifier is None or not timestamp or not signature:
            return False
        try:
            return self._verifier.is_valid(request.body, timestamp, signature)
        except ValueError:  # a timestamp that is not a number
            return False

    async def _handle(self, request: WebhookRequest) -> WebhookResponse:
        bolt_request = AsyncBoltRequest(
            body=request.body.decode("utf-8", "replace"),
            headers={key: value for key, value in request.headers.items()},
        )
        response = await self._app.async_dispatch(bolt_request)
        headers = response.first_headers()
        content_type = headers.get("content-type", "text/plain").split(";", 1)[0].strip()
        return WebhookResponse(
            status=response.status,
            body=response.body.encode("utf-8"),
            content_type=content_type or "text/plain",
        )

    def _event_listener(self) -> Callable[..., Awaitable[None]]:
        # A closure, not a method: bolt injects arguments by parameter name.
        async def on_event(body: dict[str, Any], ack: AsyncAck, context: AsyncBoltContext) -> None:
            own = convert.BotIdentity(context.bot_user_id or "", context.bot_id or "")
            await self._on_event(body, own)
            await ack()

        return on_event

    def _command_listener(self) -> Callable[..., Awaitable[None]]:
        async def on_command(body: dict[str, Any], ack: AsyncAck) -> None:
            await self._on_command(body)
            await ack()  # no text: the answer comes as an ordinary message

        return on_command

    def _publisher(self) -> Publish:
        if self._publish is None:
            raise PlatformUnavailable("slack: an event arrived while not receiving")
        return self._publish

    async def _on_event(self, body: dict[str, Any], own: convert.BotIdentity) -> None:
        message = convert.parse_event(body)
        if message is None or not convert.is_for_us(message, own):
            return
        publish = self._publisher()
        mentions = convert.mentioned_users(message.text)[:MAX_MENTION_LOOKUPS]
        direct = convert.is_direct(message)
        sender, conversation, *mention_names = await asyncio.gather(
            self._users.get(message.user) if message.user else _nothing(),
            self._channels.get(message.channel) if not direct else _nothing(),
            *(self._users.get(user) for user in mentions),
        )
        attachments, notes = await self._files(message)
        inbound = convert.message_inbound(
            message,
            bot_user_id=own.user_id,
            sender_name=sender,
            conversation_name=conversation,
            names={u: n for u, n in zip(mentions, mention_names, strict=True) if n},
            attachments=attachments,
            notes=notes,
            now=time.time(),
        )
        admission = await publish(inbound)
        log.debug("slack: event %s %s", inbound.event_id, admission.value)

    async def _on_command(self, body: dict[str, Any]) -> None:
        command = convert.parse_command(body)
        if command is None:
            log.info("slack: a slash command without its ids was ignored")
            return
        publish = self._publisher()
        sender = await self._users.get(command.user_id)
        inbound = convert.command_inbound(
            command, sender_name=sender, conversation_name="", now=time.time()
        )
        admission = await publish(inbound)
        log.debug("slack: command %s %s", inbound.event_id, admission.value)

    async def _files(
        self, message: convert.SlackMessage
    ) -> tuple[tuple[Attachment, ...], list[str]]:
        refs = convert.file_refs(message)
        if not refs or self._session is None:
            return (), []
        return await receive_files(
            self._session,
            refs,
            self._context.media,
            self._context.blobs,
            allowed_prefixes=(self._settings.files_base,),
            headers={"Authorization": f"Bearer {self._token}"},
        )

    # -- sending -----------------------------------------------------------------------

    async def send(self, outbound: Outbound) -> None:
        async def send_part(index: int, part: str) -> None:
            await self._post(outbound.conversation_id, part, outbound.thread_id)

        await send_parts(
            self._context.deliveries, outbound, convert.render(outbound.text), send_part
        )

    async def _post(self, channel: str, text: str, thread_id: str) -> None:
        try:
            await self._client.chat_postMessage(
                channel=channel, text=text, thread_ts=thread_id or None, mrkdwn=True
            )
        except SlackApiError as exc:
            raise platform_error(exc) from None
        except (SlackClientError, aiohttp.ClientError, TimeoutError) as exc:
            raise PlatformUnavailable(
                f"slack: chat.postMessage failed ({type(exc).__name__})"
            ) from None

    async def show_typing(self, conversation_id: str, thread_id: str) -> None:
        """Slack shows no typing indicator for bots."""


async def _nothing() -> str:
    return ""


def build(settings: SlackSettings, context: ChannelContext) -> SlackChannel:
    return SlackChannel(settings, context)
