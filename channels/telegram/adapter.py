"""Telegram through python-telegram-bot's `Bot`, with our own update loop.

PTB's `Application`/`Updater` confirm an update to Telegram as soon as they fetch
it; here the next `getUpdates` offset (or the webhook's 200) is given only after
`publish` returned, so an update is on the bus before Telegram forgets it.
The bot token is part of every API and file URL: no URL, and no PTB error text
unscrubbed, ever reaches a log line or an exception message.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable
from typing import Final, TypeVar

import aiohttp
from telegram import Bot, BotCommand, BotCommandScopeChat, LinkPreviewOptions, ReplyParameters
from telegram.constants import ChatAction
from telegram.error import BadRequest, TelegramError

from channels._shared.chunking import TELEGRAM_LIMIT, chunk_telegram_html
from channels._shared.markdown import to_telegram_html
from channels._shared.outbox import send_parts
from channels._shared.starting import until_started
from channels._shared.webhooks import Webhook, WebhookRequest, WebhookResponse
from channels.base import Admission, Capabilities, ChannelContext, Publish
from channels.telegram import convert
from channels.telegram._errors import call, platform_error, redact_url_loggers
from channels.telegram._files import with_received_files
from channels.telegram._polling import Admit, poll
from channels.telegram._request import AiohttpRequest
from gateway.envelope import Outbound
from gateway.errors import ConfigError, PlatformError
from gateway.settings import TelegramSettings

__all__ = ["TelegramChannel", "build", "platform_error"]

T = TypeVar("T")

SECRET_HEADER: Final = "X-Telegram-Bot-Api-Secret-Token"
REPLY_MEMORY: Final = 10_000
"""Update ids remembered with their message id, so a reply can quote the message.
Replies sent by another process than the one that received find none and are sent
unquoted; `allow_sending_without_reply` makes a stale one harmless too."""
NO_PREVIEW: Final = LinkPreviewOptions(is_disabled=True)

log = logging.getLogger("stockade.channels.telegram")


class TelegramChannel:
    def __init__(self, settings: TelegramSettings, context: ChannelContext, token: str) -> None:
        # PTB 22 warns on each read of a time period unless opted in to timedeltas
        # (even inside RetryAfter's constructor); the code below reads timedeltas.
        os.environ.setdefault("PTB_TIMEDELTA", "true")
        self._settings = settings
        self._context = context
        self._token = token
        redact_url_loggers(token)  # before the Bot, which logs its URL when made
        if settings.secret_token is not None:
            redact_url_loggers(settings.secret_token.get_secret_value(), "<secret_token>")
        api_base = settings.api_base.rstrip("/")
        self._file_prefix = f"{api_base}/file/bot"
        self._poller = AiohttpRequest()
        self._updates_url = f"{api_base}/bot{token}/getUpdates"
        self._bot = Bot(
            token,
            base_url=f"{api_base}/bot",
            base_file_url=self._file_prefix,
            request=AiohttpRequest(connections=16),
            get_updates_request=self._poller,  # so the Bot opens and closes it
        )
        self._identity: convert.BotIdentity | None = None
        self._ready_lock = asyncio.Lock()
        self._messages: OrderedDict[str, int] = OrderedDict()

    @property
    def name(self) -> str:
        return convert.NAME

    @property
    def capabilities(self) -> Capabilities:
        return convert.CAPABILITIES

    async def _call(self, awaitable: Awaitable[T]) -> T:
        return await call(awaitable, self._token)

    async def _ready(self) -> convert.BotIdentity:
        async with self._ready_lock:
            if self._identity is None:
                await self._call(self._bot.initialize())  # getMe
                me = self._bot.bot
                username = self._settings.bot_username.lstrip("@") or me.username or ""
                self._identity = convert.BotIdentity(id=me.id, username=username)
            return self._identity

    async def receive(self, publish: Publish) -> None:
        try:
            identity = await until_started(
                self._ready, platform=convert.NAME, what="getMe", log=log
            )
            await self._set_menus()
            async with aiohttp.ClientSession() as session:
                admit = functools.partial(self._admit, publish, session, identity)
                if self._settings.mode == "webhook":
                    await self._serve_webhook(admit)
                else:
                    await self._poll(admit)
        finally:
            await self.aclose()

    async def _set_menus(self) -> None:
        """Everyone's commands in the bot's menu; every command in each operator's own
        private chat with the bot (its id is theirs). A menu not set is logged only."""
        menus: list[tuple[BotCommandScopeChat | None, tuple[tuple[str, str], ...]]] = [
            (None, self._context.commands)
        ]
        for operator in self._context.operators.get(convert.NAME, ()):
            if not (operator.isascii() and operator.isdigit()):
                log.warning("telegram: operator id %r is not a number: no menu for it", operator)
                continue
            menus.append((BotCommandScopeChat(int(operator)), self._context.operator_commands))
        for scope, listed in menus:
            if not listed:
                continue
            commands = [BotCommand(n.lstrip("/"), d) for n, d in listed]
            try:
                await self._call(self._bot.set_my_commands(commands, scope=scope))
            except PlatformError as exc:
                whose = "the" if scope is None else f"operator {scope.chat_id}'s"
                log.warning("telegram: %s command menu was not set (%s)", whose, exc)

    async def aclose(self) -> None:
        """Close the HTTP connections; a later call opens them again."""
        self._identity = None
        await self._bot.shutdown()

    async def _poll(self, admit: Admit) -> None:
        await until_started(
            lambda: self._call(self._bot.delete_webhook()),
            platform=convert.NAME,
            what="deleteWebhook",
            log=log,
        )
        await poll(self._bot, self._poller, self._updates_url, self._settings.poll_timeout_s, admit)

    async def _serve_webhook(self, admit: Admit) -> None:
        webhooks = self._context.webhooks
        secret_token = self._settings.secret_token
        if webhooks is None or secret_token is None:
            raise ConfigError("telegram", "mode", "webhook mode needs a webhook server and secret")
        secret = secret_token.get_secret_value().encode()
        path = self._settings.webhook_path

        def verify(request: WebhookRequest) -> bool:
            given = request.headers.get(SECRET_HEADER)
            if given is None:
                return False
            return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), secret)

        async def handle(request: WebhookRequest) -> WebhookResponse:
            try:
                update = convert.parse_update(json.loads(request.body))
            except (ValueError, RecursionError) as exc:  # WireError is a ValueError
                log.warning(
                    "telegram webhook: not an update (%s); answered 400", type(exc).__name__
                )
                return WebhookResponse(status=400, body=b"not an update")
            await admit(update)  # a failure answers 500: Telegram delivers it again
            return WebhookResponse(status=200)

        webhooks.mount(Webhook(path=path, verify=verify, handle=handle, name=convert.NAME))
        try:
            url = webhooks.public_url(path)
            await until_started(
                lambda: self._call(
                    self._bot.set_webhook(
                        url=url,
                        secret_token=secret.decode(),
                        allowed_updates=convert.ALLOWED_UPDATES,
                    )
                ),
                platform=convert.NAME,
                what="setWebhook",
                log=log,
            )
            await asyncio.Event().wait()  # until cancelled
        finally:
            webhooks.unmount(path)

    async def _admit(
        self,
        publish: Publish,
        session: aiohttp.ClientSession,
        identity: convert.BotIdentity,
        update: convert.Update,
    ) -> Admission | None:
        """Publish one update's message; None when it is nothing for the agent."""
        inbound = convert.to_inbound(update, identity, time.time())
        if inbound is None or update.message is None:
            return None
        if update.message.files:
            inbound = await with_received_files(
                inbound,
                update.message.files,
                bot=self._bot,
                token=self._token,
                file_prefix=self._file_prefix,
                session=session,
                media=self._context.media,
                blobs=self._context.blobs,
            )
        admission = await publish(inbound)
        self._messages[inbound.event_id] = update.message.message_id
        while len(self._messages) > REPLY_MEMORY:
            self._messages.popitem(last=False)
        return admission

    async def send(self, outbound: Outbound) -> None:
        try:
            chat = convert.parse_id(outbound.conversation_id, "conversation id")
            thread = (
                convert.parse_id(outbound.thread_id, "thread id") if outbound.thread_id else None
            )
        except ValueError as exc:
            raise PlatformError(f"telegram: {exc}") from None
        await self._ready()
        quoted = self._messages.get(outbound.reply_to) if outbound.reply_to else None
        parts = chunk_telegram_html(to_telegram_html(outbound.text), TELEGRAM_LIMIT)

        async def send_part(index: int, part: str) -> None:
            reply = (
                ReplyParameters(message_id=quoted, allow_sending_without_reply=True)
                if index == 0 and quoted is not None
                else None
            )
            await self._send_part(chat, thread, part, reply)

        await send_parts(self._context.deliveries, outbound, parts, send_part)

    async def _send_part(
        self, chat: int, thread: int | None, part: str, reply: ReplyParameters | None
    ) -> None:
        send = functools.partial(
            self._bot.send_message,
            chat_id=chat,
            message_thread_id=thread,
            reply_parameters=reply,
            link_preview_options=NO_PREVIEW,
        )
        try:
            await send(text=part, parse_mode="HTML")
            return
        except BadRequest as exc:
            if "can't parse entities" not in exc.message.lower():
                raise platform_error(exc, self._token) from None
        except TelegramError as exc:
            raise platform_error(exc, self._token) from None
        # The rendering is meant to be valid; if Telegram disagrees, the words still go out.
        log.warning("telegram: a reply part was refused as HTML; sent as plain text")
        await self._call(send(text=convert.html_to_text(part)))

    async def show_typing(self, conversation_id: str, thread_id: str) -> None:
        try:
            chat = convert.parse_id(conversation_id, "conversation id")
            thread = convert.parse_id(thread_id, "thread id") if thread_id else None
        except ValueError as exc:
            raise PlatformError(f"telegram: {exc}") from None
        await self._ready()
        await self._call(
            self._bot.send_chat_action(
                chat_id=chat, action=ChatAction.TYPING, message_thread_id=thread
            )
        )


def build(settings: TelegramSettings, context: ChannelContext) -> TelegramChannel:
    if settings.token is None:
        raise ConfigError("telegram", "token", "required")
    if settings.mode == "webhook" and (context.webhooks is None or settings.secret_token is None):
        raise ConfigError(
            "telegram", "mode", "webhook mode needs a webhook server and secret_token"
        )
    return TelegramChannel(settings, context, settings.token.get_secret_value())
